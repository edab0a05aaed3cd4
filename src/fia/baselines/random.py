"""The random control: prune as many weights per layer as a given mask, chosen uniformly at random.

Pruning it tells how much of a mask's effect comes from *which* weights it
picks rather than from how many it removes per layer. It is registered as
the method ``random`` (:mod:`fia.registry`); its config names the mask whose
per-layer counts it copies.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fia.errors import FIAError
from fia.progress import report


@dataclass(frozen=True)
class RandomConfig:
    """Settings of the random control.

    Attributes:
        like: the :class:`fia.mask.ConceptMask` (or the path of a saved one)
            whose per-layer pruned counts the random mask copies.
        seed: the draw is a pure function of ``(seed, layer name, count, shape)``.
    """

    like: Any = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.like, (str, Path)):  # a saved mask: read once, here
            from fia.mask import ConceptMask

            object.__setattr__(self, "like", ConceptMask.load(self.like))

    def validate(self) -> RandomConfig:
        from fia.mask import ConceptMask

        if not isinstance(self.like, ConceptMask):
            raise FIAError(
                "the random control needs like=<a ConceptMask or its file>: the mask whose per-layer counts it copies"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise FIAError(f"seed must be an integer, got {self.seed!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"like": {"concepts": list(self.like.concepts), "fingerprint": self.like.fingerprint}, "seed": self.seed}


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


def random_mask(pipe: Any, like: Any, seed: int = 0):
    """A :class:`fia.mask.ConceptMask` for ``pipe`` pruning ``like``'s per-layer counts at random.

    ``like`` is a ConceptMask (made for this model) or a dict {layer name:
    bool tensor}. ``pipe`` is not changed.
    """
    from fia.mask import ConceptMask
    from fia.targets import denoiser

    model = denoiser(pipe)
    if isinstance(like, ConceptMask):
        counts = {lm.name: lm.pruned for lm in like.layers}
        shapes = {lm.name: tuple(lm.shape) for lm in like.layers}
        concepts, cfg, kind = list(like.concepts), dict(like.config), like.target_kind
    else:
        counts, shapes = counts_of(like)
        concepts, cfg, kind = [], {}, "ffn2"
    params = dict(model.named_parameters())
    weights = {}
    for name in counts:
        w = params.get(f"{name}.weight")
        if w is None or tuple(w.shape) != tuple(shapes[name]):
            raise FIAError(f"layer {name!r} of the mask is not in this model (or has another shape)")
        weights[name] = w
    masks = random_mask_like(counts, shapes, seed)
    mask = ConceptMask.from_prune_masks(
        weights, masks, concepts=concepts, config={**cfg, "random_seed": int(seed)}, target_kind=kind
    )
    mask.method = "random"
    return mask


def unlearn(pipe: Any, concepts: list[str], config: RandomConfig, *, preserve, prompts, progress, cache_dir):
    """The random control as a registered method (``preserve``, ``prompts`` and ``cache_dir`` play no part)."""
    like = config.like
    missing = [c for c in concepts if c not in like.concepts]
    if missing:
        raise FIAError(f"the mask to copy does not erase {missing}; give like= a mask made for these concepts")
    report(progress, 0, 1, "drawing the random mask")
    mask = random_mask(pipe, like, config.seed)
    report(progress, 1, 1, f"random mask: {mask.pruned} weights")
    return mask
