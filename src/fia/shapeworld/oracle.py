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

from .vocab import COLORS, OBJECT_NAMES, PLACE_NAMES, STYLE_NAMES

HEADS: dict[str, tuple[str, ...]] = {
    "object": OBJECT_NAMES + ("none",),
    "color": COLORS,
    "place": PLACE_NAMES,
    "style": STYLE_NAMES + ("none",),
    "attribute": ("absent", "burning"),
}


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
    linear layers in ``self.heads`` (one per entry of :data:`HEADS`). Input:
    float (B, 3, H, W) in [0, 1], resized to 32x32. A judge is saved as
    ``<name>.safetensors`` and ``<name>_config.json`` in a folder.
    """

    HEADS = HEADS
    name = "judge"
    config: dict

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
        """Class probabilities per head, labels in ``HEADS`` order."""
        parts = self._batched(lambda x: {k: v.softmax(-1).cpu() for k, v in self(x).items()}, images, batch_size)
        return {k: torch.cat([p[k] for p in parts]) for k in HEADS}

    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate features (B, D) (the oracle's are the ShapeWorld FID's space)."""
        return torch.cat(self._batched(lambda x: self.forward_features(x).cpu(), images, batch_size))

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / f"{self.name}.safetensors"))
        cfg = {**self.config, "heads": {k: list(v) for k, v in HEADS.items()}}
        (folder / f"{self.name}_config.json").write_text(json.dumps(cfg, indent=2))

    @classmethod
    def load(cls, folder: str | Path, device="cpu"):
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = json.loads((folder / f"{cls.name}_config.json").read_text())
        heads = cfg.pop("heads", None)
        if heads is not None and heads != {k: list(v) for k, v in HEADS.items()}:
            raise ValueError(f"{folder}: the saved {cls.name} has other heads than this version of ShapeWorld")
        model = cls(**cfg)
        model.load_state_dict(load_file(str(folder / f"{cls.name}.safetensors")))
        return model.to(device).eval()


class Oracle(Judge):
    """Convolutional judge with one softmax head per factor family.

    ``predict(images)`` takes a float tensor (B, 3, H, W) in [0, 1] and
    returns class probabilities per head, labels in ``Oracle.HEADS`` order.
    """

    name = "oracle"

    def __init__(self, width: int = 48, feature_dim: int = 256):
        super().__init__()
        w = width
        self.config = {"width": width, "feature_dim": feature_dim}
        self.body = nn.Sequential(
            _block(3, w, 1),
            _block(w, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 2),
        )
        self.neck = nn.Sequential(nn.Linear(8 * w, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in HEADS.items()})

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(self._prep(images))
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.neck(h)

