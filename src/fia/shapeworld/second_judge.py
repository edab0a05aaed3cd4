"""The second ShapeWorld judge: an independent check on the oracle.

Forgetting claims are read by two judges that share no weights, no
architecture and no training data choices, so that a model which merely
fools one classifier is caught by the other. The oracle is a plain
BatchNorm/ReLU conv stack trained on renders and their VAE reconstructions;
this judge is a pre-activation residual network with GroupNorm and GELU,
average-pooled, trained from another seed on renders alone, with blur, noise,
colour and crop augmentations standing in for the VAE's softness.

It has the oracle's heads, label order, input convention and interface
(:class:`fia.shapeworld.oracle.Judge`), so either can be passed wherever a
ShapeWorld judge is expected.
"""

from __future__ import annotations

import torch
from torch import nn

from .oracle import Judge
from .vocab import SHAPEWORLD


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class _ResBlock(nn.Module):
    """norm -> GELU -> conv, twice, plus a (strided 1x1 when needed) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.skip = (
            nn.Identity() if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class SecondJudge(Judge):
    """Residual GroupNorm/GELU network: a 3x3 stem, one residual block per
    entry of ``widths`` (its channels; every block after the first halves the
    resolution: 32, 16, 8, 4 px with the default four), global average
    pooling and a GELU neck of ``feature_dim`` features read by the heads."""

    name = "judge2"

    def __init__(self, widths: tuple | list = (16, 32, 64, 80), feature_dim: int = 128, world: str = SHAPEWORLD.name):
        super().__init__()
        widths = [int(w) for w in widths]
        self.config = {"widths": widths, "feature_dim": feature_dim}
        heads = self._init_world(world)
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        blocks = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks.append(_ResBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.out_norm = _norm(cin)
        self.neck = nn.Sequential(nn.Linear(cin, feature_dim), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in heads.items()})

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(self._prep(images)))
        h = nn.functional.gelu(self.out_norm(h)).mean(dim=(2, 3))
        return self.neck(h)
