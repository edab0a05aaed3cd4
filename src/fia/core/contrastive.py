"""Eq. 2: contrastive concept saliency from streaming per-prompt statistics.

    S = max(0, mean_c(U) - mean_b(U) - std_b(U))

mean over the concept prompts; mean and population standard deviation over
the base prompts. Prompts arrive one at a time (:meth:`ContrastiveAccumulator.add`),
so memory is three float32 buffers of the weight's shape whatever the number
of prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ContrastiveAccumulator:
    """Streaming statistics of ``U`` over concept and base prompts for Eq. 2.

    Concept prompts: a float32 running sum (only their mean is needed).
    Base prompts: Welford's update of the running mean and of ``M2`` (the sum
    of squared deviations from the mean), float32. Welford is used instead of
    "sum and sum of squares" because the latter's ``E[U^2] - E[U]^2`` cancels
    catastrophically when the spread is small next to the mean, which is
    exactly the regime that decides whether a neuron survives ``- std_b``.

    Per base prompt the update is, with ``d = U - mean_old`` and ``n`` the new count::

        mean += d / n
        M2   += d * d * (n - 1) / n        # == d * (U - mean_new)

    which needs no temporary besides ``d`` (written over ``U`` when
    ``overwrite=True``).
    """

    def __init__(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu"):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self._concept_sum: Tensor | None = None
        self._base_mean: Tensor | None = None
        self._base_m2: Tensor | None = None
        self.num_concept = 0
        self.num_base = 0

    def _zeros(self) -> Tensor:
        return torch.zeros(self.shape, dtype=torch.float32, device=self.device)

    def add(self, u: Tensor, is_concept: bool, *, overwrite: bool = False) -> None:
        """Add one prompt's ``U`` to the concept set or the base set.

        ``overwrite=True`` lets the accumulator use ``u``'s memory as scratch
        (its content is then undefined); the caller's buffer is otherwise untouched.
        """
        if tuple(u.shape) != self.shape:
            raise ValueError(f"U has shape {tuple(u.shape)}, expected {self.shape}")
        if u.dtype != torch.float32:
            u = u.float()
            overwrite = True
        if is_concept:
            if self._concept_sum is None:
                self._concept_sum = self._zeros()
            self._concept_sum.add_(u)
            self.num_concept += 1
            return
        if self._base_mean is None:
            self._base_mean = self._zeros()
            self._base_m2 = self._zeros()
        self.num_base += 1
        n = self.num_base
        d = u if overwrite else u.clone()
        d.sub_(self._base_mean)
        self._base_mean.add_(d, alpha=1.0 / n)
        self._base_m2.addcmul_(d, d, value=(n - 1) / n)

    def saliency(self, out: Tensor | None = None) -> Tensor:
        """Eq. 2's ``S`` (float32, >= 0) from the prompts added so far; then reset.

        Needs at least one prompt of each set. The result is computed in the
        concept-sum buffer (or ``out``), so no extra weight-size memory is used.
        """
        if self.num_concept == 0 or self.num_base == 0:
            raise ValueError(
                f"Eq. 2 needs concept and base prompts; got {self.num_concept} concept "
                f"and {self.num_base} base"
            )
        s = self._concept_sum
        if out is not None:
            out.copy_(s)
            s = out
        s.div_(self.num_concept)
        s.sub_(self._base_mean)
        std = self._base_m2.div_(self.num_base).clamp_min_(0).sqrt_()
        s.sub_(std).clamp_min_(0)
        self.reset()
        return s

    def reset(self) -> None:
        """Forget all prompts (the buffers are released)."""
        self._concept_sum = self._base_mean = self._base_m2 = None
        self.num_concept = self.num_base = 0


def contrastive_saliency(concept_u: Tensor, base_u: Tensor) -> Tensor:
    """Eq. 2 on stacked tensors ``(P_c, ...)`` and ``(P_b, ...)`` (small inputs, tests)."""
    c = concept_u.double().mean(0)
    b = base_u.double()
    s = c - b.mean(0) - b.std(0, correction=0)
    return s.clamp_min(0).float()
