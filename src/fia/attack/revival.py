"""Revival: refill a pruned model's zeros from the model itself, with no data and no training.

Pruning leaves exact zeros, and a trained network has none (no weight of
the shipped worlds' denoisers is exactly zero), so an edited model shows
an attacker *where* it was cut. "Roots Beneath the Cut" (arXiv 2603.06640)
shows that these positions leak the erased concept and that pruning-based
unlearning can be reversed from them without data or training: a pruned
weight's row and column still hold the structure it belonged to. This
module makes that guess from the edited weights alone. It never sees the
edit's file, whose stored original values a real attacker does not have:
its input is a weight matrix and the positions of its zeros.

Two refills of a layer's zeros Z (every other entry is *observed*):

* ``rowcol``: the two-way fit of the observed entries,
  ``w_ij = r_i + c_j - g`` with ``r_i`` the mean of row i's observed
  entries, ``c_j`` that of column j's and ``g`` that of all of them (a row
  or column with no observed entry takes ``g``);
* ``lowrank``: matrix completion. Trained weight matrices are far from
  random: much of each is a low-rank matrix, which its observed entries
  pin down. Starting from ``rowcol``, the zeros are set again and again to
  the best rank-k approximation of the whole matrix (hard impute); k is
  chosen on the layer itself, by hiding a share of the observed entries,
  completing, and keeping the rank that predicts them best (rank 0, no
  rank beating ``rowcol``, keeps ``rowcol``).

A repaired mask's rewritten rows (new values, pruned entries still exactly
0) are observed entries like any other: only the zeros are refilled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

REFILLS = ("rowcol", "lowrank")
# the ranks lowrank tries, the share of observed entries it hides to choose one, its impute rounds
RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
HOLDOUT_SHARE = 0.05
IMPUTE_ROUNDS = 40


def refill_rowcol(weight: Tensor, zeros: Tensor) -> Tensor:
    """``weight`` with its ``zeros`` set to ``r_i + c_j - g``, the observed entries' row, column and overall means."""
    w = weight.detach().float()
    seen = (~zeros).float()
    total = seen.sum()
    g = (w * seen).sum() / total.clamp(min=1)
    row_n, col_n = seen.sum(1), seen.sum(0)
    rows = torch.where(row_n > 0, (w * seen).sum(1) / row_n.clamp(min=1), g)
    cols = torch.where(col_n > 0, (w * seen).sum(0) / col_n.clamp(min=1), g)
    guess = rows[:, None] + cols[None, :] - g
    return torch.where(zeros, guess, w)


def hard_impute(weight: Tensor, zeros: Tensor, rank: int, start: Tensor, rounds: int = IMPUTE_ROUNDS) -> Tensor:
    """``rounds`` of: the ``zeros`` <- the same entries of the best rank-``rank`` approximation (observed entries fixed)."""
    w = weight.detach().float()
    x = start.detach().float().clone()
    for _ in range(rounds):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
        x = torch.where(zeros, approx, w)
    return x


def choose_rank(weight: Tensor, zeros: Tensor, ranks: Sequence[int] = RANKS, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The rank whose completion best predicts hidden observed entries (0: none beats ``rowcol``), and each rank's error.

    The hidden entries are a random ``HOLDOUT_SHARE`` of the observed ones;
    the error is their mean squared error relative to their mean square.
    """
    w = weight.detach().float()
    g = torch.Generator().manual_seed(seed)
    hide = ~zeros & (torch.rand(w.shape, generator=g) < HOLDOUT_SHARE).to(w.device)
    if not bool(hide.any()):
        return 0, {}
    missing = zeros | hide
    scale = float(w[hide].pow(2).mean()) or 1.0
    start = refill_rowcol(w, missing)
    errors = {0: float((start - w)[hide].pow(2).mean()) / scale}
    for rank in ranks:
        if rank >= min(w.shape):
            break
        filled = hard_impute(w, missing, rank, start)
        errors[rank] = float((filled - w)[hide].pow(2).mean()) / scale
    return min(errors, key=lambda r: (errors[r], r)), errors


def refill(weight: Tensor, zeros: Tensor, variant: str = "lowrank") -> tuple[Tensor, dict[str, Any]]:
    """``weight`` with its ``zeros`` refilled by ``variant`` (float32; other entries unchanged), and what was done."""
    if variant not in REFILLS:
        raise ValueError(f"unknown refill {variant!r}; use one of: {', '.join(REFILLS)}")
    start = refill_rowcol(weight, zeros)
    if variant == "rowcol":
        return start, {"refilled": int(zeros.sum())}
    rank, errors = choose_rank(weight, zeros)
    out = start if rank == 0 else hard_impute(weight, zeros, rank, start)
    return out, {"refilled": int(zeros.sum()), "rank": rank, "holdout_error": round(errors.get(rank, 1.0), 4)}


def zeroed_layers(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, weight)`` of every linear layer of ``model`` that has an exactly-zero weight: where it was cut."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and bool((module.weight == 0).any()):
            yield name, module.weight


@contextmanager
def refilled(model: nn.Module, variant: str = "lowrank") -> Iterator[dict[str, Any]]:
    """Inside the block, every exact zero of ``model``'s linear layers is refilled (:func:`refill`); after it, zero again.

    Yields a summary: the variant, the layers touched, the entries refilled
    and, per layer, what the refill did. The zeros are put back bit for bit
    (a ``-0.0`` stays ``-0.0``), also when the block fails.
    """
    touched: list[tuple[Tensor, Tensor, Tensor]] = []
    summary: dict[str, Any] = {"refill": variant, "layers": 0, "refilled": 0, "per_layer": {}}
    try:
        with torch.no_grad():
            for name, w in list(zeroed_layers(model)):
                zeros = w == 0
                touched.append((w, zeros, w[zeros].clone()))
                new, info = refill(w, zeros, variant)
                w[zeros] = new[zeros].to(w.dtype)
                summary["per_layer"][name] = info
                summary["layers"] += 1
                summary["refilled"] += info["refilled"]
        yield summary
    finally:
        with torch.no_grad():
            for w, zeros, kept in reversed(touched):
                w[zeros] = kept


__all__ = ["REFILLS", "choose_rank", "hard_impute", "refill", "refill_rowcol", "refilled", "zeroed_layers"]
