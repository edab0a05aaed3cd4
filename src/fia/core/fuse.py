"""Eq. 7-8: fuse the masks of several concepts into what is pruned.

With ``C`` concepts and their masks ``Q_1..Q_C`` of one layer, count
``s[i, j] = sum_c Q_c[i, j]``. The concept-agnostic threshold is

    tau_ca = max(2, ceil(alpha * C))

Neurons with ``s >= tau_ca`` respond to most concepts, carry general image
formation and are kept (``agnostic``); neurons with ``0 < s < tau_ca`` are
concept-specific and pruned: ``W <- W * (1 - prune)``. The ``max(2, .)``
makes a single concept prune its whole mask (``ceil(alpha * 1) = 1`` would
prune nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fia.core._fractions import exact_fraction


def concept_agnostic_threshold(num_concepts: int, alpha: float) -> int:
    """Eq. 7: ``tau_ca = max(2, ceil(alpha * C))``, with ``alpha`` read as the exact decimal it prints as.

    So ``ceil(0.28 * 25)`` is 7, not the 8 that float rounding would give
    (``0.28 * 25 == 7.000000000000001``). This is the one definition of
    ``tau_ca``: the fusion, :class:`fia.config.FIAConfig` and the report all
    call it.
    """
    if num_concepts < 1:
        raise ValueError(f"need at least one concept, got {num_concepts}")
    if not (0 < alpha <= 1):
        raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}")
    return max(2, math.ceil(exact_fraction(alpha) * num_concepts))


@dataclass(frozen=True)
class FusedMask:
    """Result of Eq. 8 for one layer.

    Attributes:
        prune: bool, ``0 < counts < tau_ca``: weights to zero.
        agnostic: bool, ``counts >= tau_ca``: selected by many concepts, kept.
        counts: ``s``, how many concept masks selected each entry (uint8 for
            up to 255 concepts, int16 beyond).
        tau_ca: the threshold used.
    """

    prune: Tensor
    agnostic: Tensor
    counts: Tensor
    tau_ca: int


def fuse_masks(masks: Sequence[Tensor], alpha: float) -> FusedMask:
    """Eq. 8 over the masks of ``C = len(masks)`` concepts for one layer."""
    if len(masks) == 0:
        raise ValueError("fuse_masks needs at least one concept mask")
    shape = masks[0].shape
    dtype = torch.uint8 if len(masks) <= torch.iinfo(torch.uint8).max else torch.int16
    counts = torch.zeros(shape, dtype=dtype, device=masks[0].device)
    for m in masks:
        if m.shape != shape:
            raise ValueError(f"masks have different shapes: {tuple(shape)} and {tuple(m.shape)}")
        if m.dtype != torch.bool:
            raise ValueError(f"masks must be bool tensors, got {m.dtype}")
        counts.add_(m.to(dtype))
    tau = concept_agnostic_threshold(len(masks), alpha)
    agnostic = counts >= tau
    prune = (counts > 0) & ~agnostic
    return FusedMask(prune=prune, agnostic=agnostic, counts=counts, tau_ca=tau)


def fuse_layer_masks(masks: Mapping[str, Sequence[Tensor]], alpha: float) -> dict[str, FusedMask]:
    """:func:`fuse_masks` per layer: ``{layer: [Q_1, ..., Q_C]}`` -> ``{layer: FusedMask}``.

    Every layer must have the same number of concept masks (tau_ca depends on C).
    """
    sizes = {len(v) for v in masks.values()}
    if len(sizes) > 1:
        raise ValueError(f"layers have different numbers of concept masks: {sorted(sizes)}")
    return {name: fuse_masks(list(v), alpha) for name, v in masks.items()}


def fuse_by_rule(masks: Sequence[Tensor], alpha: float, fusion: str = "fia") -> FusedMask:
    """Eq. 8 (``fia``), or the union ablation (``union``): every selected entry is pruned.

    The union keeps nothing as concept-agnostic: every entry with a count
    of at least ``tau_ca = 1`` is pruned.
    """
    if fusion == "fia":
        return fuse_masks(masks, alpha)
    if fusion != "union":
        raise ValueError(f"unknown fusion {fusion!r}; use one of: fia, union")
    if len(masks) == 0:
        raise ValueError("fuse_by_rule needs at least one concept mask")
    counts = torch.zeros(masks[0].shape, dtype=torch.int16, device=masks[0].device)
    for m in masks:
        counts.add_(m.to(torch.int16))
    prune = counts > 0
    return FusedMask(prune=prune, agnostic=torch.zeros_like(prune), counts=counts, tau_ca=1)
