"""Balancing the kept groups of a closed-form edit: iteratively reweighted least squares.

The rewrite (:mod:`fia.core.rewrite`) and the repair (:mod:`fia.core.repair`)
hold kept prompts at their outputs through one pooled Gram matrix
``G_k = sum_g a_g n_g G_g / sum_g a_g n_g`` over groups of kept prompts (one
group per kept kind, the object-less scenes, ...; ``n_g`` prompts each,
``G_g = mean x x^T`` of the group's layer inputs). With every ``a_g = 1``
the least-squares edit lets the few groups that look most like the erased
concept absorb most of the change (on ShapeWorld: cross when star goes,
house when circle goes).

Balancing measures each group's relative output change after a solve,

    c_g = sum over layers of tr(D G_g D^T) / tr(W G_g W^T),    D = W' - W,

multiplies its weight by ``c_g / median_h c_h`` and solves again, ``rounds``
times: groups that moved more than the median weigh more in the next solve.
The unavoidable change is spread instead of falling on one kept kind.
Round 0 is the plain edit on the prompt-count-pooled ``G_k``.

Pure tensor code; the solver is passed in, so the rewrite and the repair
share the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

Result = TypeVar("Result")


def mix_grams(group_grams: Mapping[str, Mapping[str, Tensor]], sizes: Mapping[str, int], alpha: Mapping[str, float], layer: str) -> Tensor:
    """``G_k`` of one layer: the groups' Gram matrices, each weighted by its prompt count times ``alpha``."""
    total = sum(alpha[g] * sizes[g] for g in group_grams)
    return sum(alpha[g] * sizes[g] * group_grams[g][layer].to(torch.float64) for g in group_grams) / total


def relative_change(weight: Tensor, new: Tensor, gram: Tensor) -> tuple[float, float]:
    """``(tr(D G D^T), tr(W G W^T))`` with ``D = new - weight``: a group's squared output change and output energy."""
    w, g = weight.detach().to(torch.float64), gram.to(torch.float64)
    d = new.detach().to(torch.float64) - w
    return float(((d @ g) * d).sum()), float(((w @ g) * w).sum())


def group_changes(
    weights: Mapping[str, Tensor], new: Mapping[str, Tensor], group_grams: Mapping[str, Mapping[str, Tensor]]
) -> dict[str, float]:
    """``c_g`` (module docstring) of every group, over the layers of ``weights``."""
    out = {}
    for g in sorted(group_grams):
        parts = [relative_change(w, new[name], group_grams[g][name]) for name, w in weights.items()]
        out[g] = sum(d / e for d, e in parts if e > 0)
    return out


@dataclass(frozen=True)
class Balanced(Generic[Result]):
    """The last solve's result, the groups' final weights ``a_g`` and their changes ``c_g`` after it."""

    result: Result
    group_weights: dict[str, float]
    group_change: dict[str, float]


def balance_groups(
    solve: Callable[[Mapping[str, float]], Result],
    changes: Callable[[Result], dict[str, float]],
    groups: Any,
    rounds: int,
) -> Balanced[Result]:
    """Solve, then ``rounds`` times reweight the groups by ``c_g / median c`` and solve again.

    ``solve(alpha)`` fits the edit with group weights ``alpha``;
    ``changes(result)`` gives each group's ``c_g``. Stops early if the median
    change is zero (nothing left to spread).
    """
    alpha = {g: 1.0 for g in sorted(groups)}
    result = solve(alpha)
    change = changes(result)
    for _ in range(rounds):
        median = sorted(change.values())[len(change) // 2]
        if median <= 0:
            break
        alpha = {g: alpha[g] * change[g] / median for g in alpha}
        result = solve(alpha)
        change = changes(result)
    return Balanced(result, dict(alpha), change)
