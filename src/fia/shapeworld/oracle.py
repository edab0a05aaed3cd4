"""The ShapeWorld oracle: a small multi-head classifier that judges images.

It plays the part of the paper's judges (ResNet-50 for objects, NudeNet for
explicit content, CLIP for styles): one head per factor family. Its
penultimate features are the feature space of the ShapeWorld FID
(:func:`fia.evaluate.metrics.frechet_distance`). What any ShapeWorld judge
shares (heads, input convention, ``predict``/``features``/``save``/``load``)
lives in :class:`Judge`; the second judge (:mod:`.second_judge`) is another
subclass.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path

import torch
from torch import nn

from .vocab import COLORS, PLACE_NAMES, SHAPEWORLD, STYLE_NAMES, World, get_world


def heads_for(world: World) -> dict[str, tuple[str, ...]]:
    """A judge's heads and label order in ``world``: one head per factor
    family, the object head ending with "none" (no object of any kind)."""
    return {
        "object": world.object_names + ("none",),
        "color": COLORS,
        "place": PLACE_NAMES,
        "style": STYLE_NAMES + ("none",),
        "attribute": ("absent", "burning"),
    }


HEADS: dict[str, tuple[str, ...]] = heads_for(SHAPEWORLD)


def kind_confidence(object_probs: torch.Tensor) -> torch.Tensor:
    """How sure the object head is of its best kind, leaving "none" out.

    With class probabilities ``p`` of the object head (the last entry is
    "none"), the confidence is ``max_k p_k / (1 - p_none)`` over the kinds
    ``k``: the top probability of the softmax over the kinds' logits alone.
    """
    kinds = object_probs[:, :-1]
    return kinds.max(dim=1).values / kinds.sum(dim=1).clamp_min(1e-12)


def fit_reject_threshold(scores: torch.Tensor, false_accept_rate: float) -> float:
    """The threshold ``tau`` above which a score accepts, chosen so that at
    most ``floor(false_accept_rate * n)`` of ``n`` calibration scores (from
    images that show no kind) are accepted.

    With the scores sorted from the highest, ``s_(0) >= s_(1) >= ...``, and
    ``m = floor(false_accept_rate * n)``, ``tau = s_(m)``: only the ``m``
    scores ranked above it can exceed it (fewer when they tie with it).
    """
    if not 0.0 <= false_accept_rate < 1.0:
        raise ValueError(f"false_accept_rate must be in [0, 1), got {false_accept_rate}")
    if len(scores) == 0:
        raise ValueError("no calibration scores: the reject threshold needs object-less images")
    ranked = torch.sort(scores.flatten().double(), descending=True).values
    return float(ranked[int(false_accept_rate * len(ranked))])


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Judge(nn.Module, metaclass=abc.ABCMeta):
    """What every ShapeWorld judge shares: input convention, heads, batched
    inference and (de)serialisation.

    A subclass builds its layers from the keyword arguments stored in
    ``self.config`` and implements :meth:`forward_features`; the heads are the
    linear layers in ``self.heads``, one per entry of ``self.HEADS`` (the
    heads of the judge's world, :func:`heads_for`). Input: float
    (B, 3, H, W) in [0, 1], resized to 32x32. A judge is saved as
    ``<name>.safetensors`` and ``<name>_config.json`` in a folder.

    The reject option: with ``reject`` set (:meth:`calibrate_reject`),
    :meth:`labels` answers "none" for an object whose best kind's
    :func:`kind_confidence` does not exceed ``reject["threshold"]``.
    """

    HEADS = HEADS
    name = "judge"
    config: dict
    reject: dict | None = None

    def _init_world(self, world: str) -> dict[str, tuple[str, ...]]:
        """Set the judge's world and heads; the first world stays implicit in
        ``config``, so judges saved before worlds existed load unchanged."""
        self.world = get_world(world)
        self.HEADS = heads_for(self.world)
        if self.world is not SHAPEWORLD:
            self.config["world"] = self.world.name
        return self.HEADS

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[-1] != 32 or images.shape[-2] != 32:
            images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return images * 2 - 1

    @abc.abstractmethod
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, D) of images in [0, 1]: each judge's own body."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.forward_features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def _batched(self, fn, images: torch.Tensor, batch_size: int) -> list:
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            return [fn(images[i : i + batch_size].to(dev)) for i in range(0, len(images), batch_size)]
        finally:
            self.train(was)

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class probabilities per head, labels in ``self.HEADS`` order."""
        parts = self._batched(lambda x: {k: v.softmax(-1).cpu() for k, v in self(x).items()}, images, batch_size)
        return {k: torch.cat([p[k] for p in parts]) for k in self.HEADS}

    def labels(self, probs: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """The verdict per head from :meth:`predict`'s probabilities: the most
        probable label, except that with a reject option an object kind at or
        below the threshold's confidence becomes "none"."""
        out = {k: [self.HEADS[k][j] for j in p.argmax(-1).tolist()] for k, p in probs.items()}
        if self.reject is not None and "object" in probs:
            unsure = (kind_confidence(probs["object"]) <= self.reject["threshold"]).tolist()
            out["object"] = ["none" if u else label for label, u in zip(out["object"], unsure)]
        return out

    def calibrate_reject(self, objectless_images: torch.Tensor, false_accept_rate: float = 0.01) -> dict:
        """Set the reject threshold from images that show no object: at most
        ``false_accept_rate`` of them get a kind's name (see
        :func:`fit_reject_threshold`). Returns the stored record."""
        scores = kind_confidence(self.predict(objectless_images)["object"])
        self.reject = {
            "threshold": fit_reject_threshold(scores, false_accept_rate),
            "false_accept_rate": false_accept_rate,
            "n_calibration": len(scores),
            "score": "max over kinds of p_kind / (1 - p_none)",
        }
        return self.reject

    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate features (B, D) (the oracle's are the ShapeWorld FID's space)."""
        return torch.cat(self._batched(lambda x: self.forward_features(x).cpu(), images, batch_size))

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / f"{self.name}.safetensors"))
        cfg = {**self.config, "heads": {k: list(v) for k, v in self.HEADS.items()}}
        if self.reject is not None:
            cfg["reject"] = self.reject
        (folder / f"{self.name}_config.json").write_text(json.dumps(cfg, indent=2))

    @classmethod
    def load(cls, folder: str | Path, device="cpu"):
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = json.loads((folder / f"{cls.name}_config.json").read_text())
        heads = cfg.pop("heads", None)
        reject = cfg.pop("reject", None)
        world = get_world(cfg.get("world", SHAPEWORLD.name))
        if heads is not None and heads != {k: list(v) for k, v in heads_for(world).items()}:
            raise ValueError(f"{folder}: the saved {cls.name} has other heads than this version of {world.name}")
        model = cls(**cfg)
        model.load_state_dict(load_file(str(folder / f"{cls.name}.safetensors")))
        model.reject = reject
        return model.to(device).eval()


class Oracle(Judge):
    """Convolutional judge with one softmax head per factor family.

    ``predict(images)`` takes a float tensor (B, 3, H, W) in [0, 1] and
    returns class probabilities per head, labels in ``Oracle.HEADS`` order.
    """

    name = "oracle"

    def __init__(self, width: int = 48, feature_dim: int = 256, world: str = SHAPEWORLD.name):
        super().__init__()
        w = width
        self.config = {"width": width, "feature_dim": feature_dim}
        heads = self._init_world(world)
        self.body = nn.Sequential(
            _block(3, w, 1),
            _block(w, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 2),
        )
        self.neck = nn.Sequential(nn.Linear(8 * w, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in heads.items()})

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(self._prep(images))
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.neck(h)

