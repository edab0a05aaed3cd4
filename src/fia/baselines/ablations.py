"""Controls for the FIA ablations.

:func:`random_mask_like` draws, for each layer, a uniformly random set of
weights with exactly the per-layer count of a given mask (e.g. a FIA
``ConceptMask``): pruning it tells how much of FIA's effect comes from *which*
weights it picks rather than from how many it removes per layer.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch
from torch import Tensor

from fia.errors import FIAError


def _layer_seed(seed: int, name: str) -> int:
    # independent of the other layers and of dict order: adding a layer
    # changes no other layer's draw
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


def random_mask_like(
    per_layer_counts: Mapping[str, int],
    shapes: Mapping[str, tuple[int, ...]],
    seed: int,
) -> dict[str, Tensor]:
    """A bool mask per layer with exactly ``per_layer_counts[name]`` True entries, uniformly placed.

    Args:
        per_layer_counts: layer name -> number of weights to select.
        shapes: layer name -> weight shape; must name the same layers.
        seed: the draw is a pure function of ``(seed, name, count, shape)``.
    """
    missing = sorted(set(per_layer_counts) ^ set(shapes))
    if missing:
        raise FIAError(f"counts and shapes must name the same layers; they differ on {missing}")
    out: dict[str, Tensor] = {}
    for name, count in per_layer_counts.items():
        shape = tuple(int(s) for s in shapes[name])
        numel = 1
        for s in shape:
            numel *= s
        if isinstance(count, bool) or not isinstance(count, int) or not (0 <= count <= numel):
            raise FIAError(f"layer {name!r}: count must be an integer in [0, {numel}], got {count!r}")
        gen = torch.Generator().manual_seed(_layer_seed(seed, name))
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=gen)[:count]] = True
        out[name] = flat.reshape(shape)
    return out


def counts_of(masks: Mapping[str, Tensor]) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """(per-layer True counts, per-layer shapes) of a mask dict, the inputs of :func:`random_mask_like`."""
    return (
        {name: int(m.sum()) for name, m in masks.items()},
        {name: tuple(m.shape) for name, m in masks.items()},
    )
