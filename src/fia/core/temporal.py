"""Eq. 3: integrate the per-step contrastive saliency over denoising steps.

    A[i, j] = 1/2 * mean_t(S_t[i, j]) / max_ij mean_t(S_t)
            + 1/2 * mean_t(1[S_t[i, j] > tau_t])

``tau_t`` is the value at the top ``r1`` share of ``S_t`` over the whole layer:
with ``k = max(1, floor(r1 * numel))``, ``tau_t`` is the k-th largest entry of
``S_t``; when fewer than ``k`` entries are positive, ``tau_t = 0`` (so every
positive entry counts as persistent). The strength term is divided by its
layer maximum (the paper adds the raw value; ``S`` has an arbitrary scale) so
that both terms lie in [0, 1]; a layer whose saliency is zero everywhere gets
strength 0.

Only running sums are kept, so memory does not depend on the number of steps:
a float32 sum of ``S_t`` and an int16 count of the steps where the entry was
persistent (1.5x the weight in float32 units; int16 counts exactly up to 32767
steps, more raise instead of wrapping or saturating).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fia.core._fractions import top_count

_MAX_STEPS = torch.iinfo(torch.int16).max


def persistence_threshold(s: Tensor, r1: float) -> float:
    """``tau_t``: the k-th largest entry of ``s``, ``k = max(1, floor(r1 * numel))``; 0 if fewer than k are positive."""
    flat = s.reshape(-1)
    k = top_count(r1, flat.numel())
    if int((flat > 0).sum()) < k:
        return 0.0
    # k-th largest == (numel - k + 1)-th smallest
    return float(torch.kthvalue(flat.float(), flat.numel() - k + 1).values)


class TimeIntegrator:
    """Running sums of Eq. 3 for one layer: ``update(S_t)`` per step, then ``result()``."""

    def __init__(self, shape: tuple[int, ...] | torch.Size, r1: float, device: torch.device | str = "cpu"):
        if not (0 < r1 <= 1):
            raise ValueError(f"r1 must lie in (0, 1], got {r1!r}")
        self.shape = tuple(shape)
        self.r1 = r1
        self.strength_sum = torch.zeros(self.shape, dtype=torch.float32, device=device)
        self.persist_count = torch.zeros(self.shape, dtype=torch.int16, device=device)
        self.steps = 0
        self.thresholds: list[float] = []

    def update(self, s_t: Tensor) -> None:
        """Add one step's ``S_t`` (>= 0, the layer's shape)."""
        if tuple(s_t.shape) != self.shape:
            raise ValueError(f"S_t has shape {tuple(s_t.shape)}, expected {self.shape}")
        if self.steps >= _MAX_STEPS:
            raise ValueError(f"TimeIntegrator counts at most {_MAX_STEPS} steps")
        tau = persistence_threshold(s_t, self.r1)
        self.thresholds.append(tau)
        self.strength_sum.add_(s_t)
        self.persist_count.add_((s_t > tau).to(torch.int16))
        self.steps += 1

    def result(self) -> Tensor:
        """``A`` (float32, in [0, 1]) from the steps seen so far."""
        if self.steps == 0:
            raise ValueError("no step was added; A is undefined")
        top = float(self.strength_sum.max())
        a = self.persist_count.to(torch.float32).div_(2 * self.steps)
        if top > 0:
            a.add_(self.strength_sum, alpha=0.5 / top)
        return a.clamp_(0.0, 1.0)
