"""The ShapeWorld oracle: a small multi-head classifier that judges images.

It plays the part of the paper's judges (ResNet-50 for objects, NudeNet for
explicit content, CLIP for styles): one head per factor family. Its
penultimate features are the feature space of the ShapeWorld FID
(:func:`frechet_distance`).
"""

from __future__ import annotations

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


class Oracle(nn.Module):
    """Convolutional judge with one softmax head per factor family.

    ``predict(images)`` takes a float tensor (B, 3, H, W) in [0, 1] and
    returns class probabilities per head, labels in ``Oracle.HEADS`` order.
    """

    HEADS = HEADS

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

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[-1] != 32 or images.shape[-2] != 32:
            images = nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return images * 2 - 1

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(self._prep(images))
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.neck(h)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.forward_features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in HEADS}
        for i in range(0, len(images), batch_size):
            logits = self(images[i : i + batch_size].to(dev))
            for k, v in logits.items():
                outs[k].append(v.softmax(-1).cpu())
        self.train(was)
        return {k: torch.cat(v) for k, v in outs.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = [self.forward_features(images[i : i + batch_size].to(dev)).cpu() for i in range(0, len(images), batch_size)]
        self.train(was)
        return torch.cat(out)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "oracle.safetensors"))
        (folder / "oracle_config.json").write_text(json.dumps({**self.config, "heads": {k: list(v) for k, v in HEADS.items()}}, indent=2))

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> "Oracle":
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = json.loads((folder / "oracle_config.json").read_text())
        model = cls(width=cfg["width"], feature_dim=cfg["feature_dim"])
        model.load_state_dict(load_file(str(folder / "oracle.safetensors")))
        return model.to(device).eval()


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (B, D)."""
    a = torch.as_tensor(feats_a).double()
    b = torch.as_tensor(feats_b).double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = torch.cov(a.T).reshape(a.shape[1], a.shape[1])
    cb = torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    sa = _sqrtm_psd(ca)
    cross = _sqrtm_psd(sa @ cb @ sa)
    d = (mu_a - mu_b).pow(2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * torch.trace(cross)
    return float(d.clamp(min=0))
