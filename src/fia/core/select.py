"""Eq. 4-6: the concept-sensitive neurons of one layer from its ``A``.

- channel level (Eq. 4): for each output channel ``i`` (row), its top
  ``k = max(1, floor(r2 * C_in))`` inputs ``j`` by ``A[i, j]``;
- layer level (Eq. 5): the top ``K = max(1, floor(r2 * C_in * C_out))``
  entries of ``A`` over the whole layer;
- the concept mask ``Q = channel & layer`` (Eq. 6); an entry with ``A == 0``
  is never selected.

Ties are broken by position: among equal values the entry with the lower
index (column within a row for the channel level, row-major flat index for
the layer level) ranks first, as a stable descending sort would order them.
So exactly ``min(k, C_in)`` entries per row and ``K`` entries per layer are
taken before the ``A > 0`` filter, and masks are bit-identical run to run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fia.core._fractions import top_count


def _top_mask_rows(a: Tensor, k: int) -> Tensor:
    """Boolean mask of the top ``k`` entries of each row of 2-D ``a`` (ties: lower column first)."""
    n = a.shape[1]
    k = min(k, n)
    # k-th largest of each row == (n - k + 1)-th smallest
    v = torch.kthvalue(a, n - k + 1, dim=1, keepdim=True).values
    greater = a > v
    need = k - greater.sum(dim=1, keepdim=True)  # how many ties to take, >= 1
    equal = a == v
    take_equal = equal & (torch.cumsum(equal, dim=1) <= need)
    return greater | take_equal


def channel_top_k(a: Tensor, r2: float) -> Tensor:
    """Eq. 4: per output channel (row) the top ``max(1, floor(r2 * C_in))`` inputs."""
    return _top_mask_rows(a, top_count(r2, a.shape[1]))


def layer_top_k(a: Tensor, r2: float) -> Tensor:
    """Eq. 5: the top ``max(1, floor(r2 * numel))`` entries of the whole layer."""
    flat = a.reshape(1, -1)
    return _top_mask_rows(flat, top_count(r2, flat.shape[1])).reshape(a.shape)


def select_concept_neurons(a: Tensor, r2: float) -> Tensor:
    """Eq. 6: ``Q = channel_top_k(A) & layer_top_k(A) & (A > 0)``, a bool tensor shaped like ``A``.

    ``a`` is the layer's time-integrated sensitivity (C_out, C_in); ``r2`` the
    spatial sparsity. Ties are broken by lower index (see the module doc).
    """
    if a.dim() != 2:
        raise ValueError(f"A must be 2-D (C_out, C_in), got shape {tuple(a.shape)}")
    if not (0 < r2 <= 1):
        raise ValueError(f"r2 must lie in (0, 1], got {r2!r}")
    a = a.float()
    return channel_top_k(a, r2) & layer_top_k(a, r2) & (a > 0)


def select_neurons(a: Tensor, r2: float, selection: str = "both") -> Tensor:
    """Eq. 4-6 with one level possibly dropped (the selection ablations).

    ``both`` is Eq. 6 (:func:`select_concept_neurons`); ``channel`` keeps
    Eq. 4 only and ``layer`` Eq. 5 only. In every case an entry with
    ``A == 0`` is never selected.
    """
    if selection == "both":
        return select_concept_neurons(a, r2)
    a = a.float()
    if selection == "channel":
        return channel_top_k(a, r2) & (a > 0)
    if selection == "layer":
        return layer_top_k(a, r2) & (a > 0)
    raise ValueError(f"unknown selection {selection!r}; use one of: both, channel, layer")
