"""The closed-form rewrite: concept prompts get their scene's output, kept prompts keep theirs.

Where the repair (:mod:`fia.core.repair`) only mends what a pruning mask
broke, the rewrite does the erasing itself. For a linear layer ``y = W x``
it takes, per row ``w`` of ``W``, the new row ``w'`` that minimises

    J(w') = |(w' - w) X_k|^2 + lambda |w' X_c - w X_t|^2 + delta s |w' - w|^2

(each ``|.|^2`` a mean over tokens). ``X_k`` are the layer's inputs under
prompts that must stay (kept kinds, object-less scenes, styles): their
outputs should not move. ``X_c`` and ``X_t`` are *paired* inputs: at the
same latent and timestep, ``x_c`` under a concept prompt ("a red star near
the road") and ``x_t`` under its target prompt, the same text without the
concept ("the road"). The second term asks the edited layer to answer the
concept prompt as the unedited one answers the target: the concept's
contribution is rewritten into the scene's. ``delta s`` (``s`` the mean
diagonal of ``G_k + lambda G_c``) keeps the system well posed.

Setting the gradient to zero, with ``G_k = mean x_k x_k^T``,
``G_c = mean x_c x_c^T`` and the cross moment ``C = mean x_t x_c^T``:

    w' (G_k + lambda G_c + delta s I) = w G_k + lambda w C + delta s w

one symmetric positive definite system shared by every row. With
``lambda = 0`` (or ``X_t = X_c``) the solution is ``w' = w``.

Kept prompts come in groups (one per kept kind, the object-less scenes,
...). A plain mean lets the edit fall on the few groups that look most like
the concept (on ShapeWorld: house when circle goes). :func:`balanced_rewrite`
reweights the groups, each round multiplying a group's weight by its
relative output change ``tr(D G_g D^T) / tr(W G_g W^T)`` (``D = W' - W``,
summed over layers) over the median group's, and solving again: an
iteratively reweighted least squares that spreads the unavoidable change
evenly instead of letting one kept kind absorb it.

Everything here is pure tensor code in float64 (no model, no hooks); the
tests check :func:`rewrite_layer` against a brute-force least squares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fia.core.repair import RepairError, damped_system


def rewrite_layer(
    weight: Tensor,
    gram_keep: Tensor,
    gram_concept: Tensor,
    cross: Tensor,
    *,
    concept_weight: float,
    damping: float,
) -> Tensor:
    """The rewritten weight of one layer (module docstring), float32 ``(out, in)``.

    Args:
        weight: ``(out, in)`` unedited weights.
        gram_keep: ``(in, in)`` ``G_k``.
        gram_concept: ``(in, in)`` ``G_c``.
        cross: ``(in, in)`` ``C = mean x_t x_c^T`` (target input times concept input).
        concept_weight: ``lambda``.
        damping: ``delta``, a share of the mean diagonal of ``G_k + lambda G_c``.
    """
    n_in = weight.shape[1]
    for name, m in (("G_k", gram_keep), ("G_c", gram_concept), ("C", cross)):
        if m.shape != (n_in, n_in):
            raise ValueError(f"{name} has shape {tuple(m.shape)}, expected {(n_in, n_in)}")
    if damping <= 0:
        raise RepairError("the rewrite needs damping > 0")
    h = damped_system(gram_keep, gram_concept, concept_weight, damping)
    ridge = float(h.diagonal().mean()) * damping / (1 + damping)  # delta * s, s the undamped mean diagonal
    w = weight.detach().to(torch.float64)
    rhs = w @ gram_keep.to(torch.float64) + concept_weight * (w @ cross.to(torch.float64)) + ridge * w
    try:
        chol = torch.linalg.cholesky(h)
    except RuntimeError as exc:  # pragma: no cover - damping > 0 makes H positive definite
        raise RepairError(f"the rewrite system is singular ({exc}); raise the damping") from exc
    # w' H = rhs  <=>  H w'^T = rhs^T (H symmetric)
    out = torch.cholesky_solve(rhs.T.contiguous(), chol).T
    if not torch.isfinite(out).all():
        raise RepairError("the rewrite produced non-finite weights; raise the damping")
    return out.to(torch.float32)


def relative_change(weight: Tensor, new: Tensor, gram: Tensor) -> tuple[float, float]:
    """``(tr(D G D^T), tr(W G W^T))`` with ``D = new - weight``: a group's squared output change and output energy."""
    w, g = weight.detach().to(torch.float64), gram.to(torch.float64)
    d = new.detach().to(torch.float64) - w
    return float(((d @ g) * d).sum()), float(((w @ g) * w).sum())


@dataclass(frozen=True)
class Rewrite:
    """A balanced rewrite: the new weights per layer and the kept groups' final weights and changes."""

    weights: dict[str, Tensor]
    group_weights: dict[str, float]
    group_change: dict[str, float]  # relative output change per group, summed over layers, after the last solve


def mix_grams(group_grams: Mapping[str, Mapping[str, Tensor]], sizes: Mapping[str, int], alpha: Mapping[str, float], layer: str) -> Tensor:
    """``G_k`` of one layer: the groups' Gram matrices, each weighted by its prompt count times ``alpha``."""
    total = sum(alpha[g] * sizes[g] for g in group_grams)
    return sum(alpha[g] * sizes[g] * group_grams[g][layer].to(torch.float64) for g in group_grams) / total


def balanced_rewrite(
    weights: Mapping[str, Tensor],
    group_grams: Mapping[str, Mapping[str, Tensor]],
    sizes: Mapping[str, int],
    gram_concept: Mapping[str, Tensor],
    cross: Mapping[str, Tensor],
    *,
    concept_weight: float,
    damping: float,
    rounds: int,
) -> Rewrite:
    """:func:`rewrite_layer` on every layer, with ``rounds`` reweightings of the kept groups (module docstring).

    Args:
        weights: unedited weights by layer name.
        group_grams: ``group -> layer -> G_g`` (mean ``x x^T`` of the group's kept inputs).
        sizes: prompts per group (a group's weight starts proportional to it).
        gram_concept / cross: ``G_c`` and ``C`` by layer name.
        rounds: reweighting rounds; 0 is the plain rewrite with the pooled ``G_k``.
    """
    if not group_grams:
        raise RepairError("the rewrite has no kept prompts: nothing tells it what must stay")
    groups: Sequence[str] = sorted(group_grams)
    alpha = {g: 1.0 for g in groups}

    def solve() -> dict[str, Tensor]:
        return {
            name: rewrite_layer(w, mix_grams(group_grams, sizes, alpha, name), gram_concept[name], cross[name],
                                concept_weight=concept_weight, damping=damping)
            for name, w in weights.items()
        }

    def changes(new: dict[str, Tensor]) -> dict[str, float]:
        out = {}
        for g in groups:
            parts = [relative_change(w, new[name], group_grams[g][name]) for name, w in weights.items()]
            out[g] = sum(d / e for d, e in parts if e > 0)
        return out

    new = solve()
    change = changes(new)
    for _ in range(rounds):
        median = sorted(change.values())[len(change) // 2]
        if median <= 0:
            break
        alpha = {g: alpha[g] * change[g] / median for g in groups}
        new = solve()
        change = changes(new)
    return Rewrite(new, dict(alpha), change)
