"""The closed-form repair after pruning: give kept prompts their outputs back, hold the concept at its masked output.

Zeroing the weights a concept rests on also dents what other prompts need.
The repair changes the *unpruned* weights of each pruned row of a linear
layer ``y = W x`` so that, on the layer's inputs ``x`` under prompts that must
stay (kept prompts, Gram matrix ``G_k``), its output is as close as possible
to the unedited one, while on inputs under the concept's prompts (``G_c``)
it stays as close as possible to the *masked* output. Per row ``w`` (a row of
``W``; ``P`` its pruned columns, ``m = w`` with ``m[P] = 0`` the masked row,
``e = w - m``), the change ``d = w' - w`` minimises

    J(d) = d^T G_k d + lambda (d + e)^T G_c (d + e) + delta ||d||^2
    subject to d[P] = -w[P]      (pruned weights stay exactly zero)

``d^T G_k d = mean_x ((w' - w) . x)^2`` over kept inputs: the kept outputs'
squared error. ``(d + e)^T G_c (d + e) = mean_x ((w' - m) . x)^2`` over
concept inputs: how far the concept's output moves back from the masked
one. ``delta`` (a share of the mean diagonal of ``H``, below) keeps the
system well posed where the inputs span few directions.

With ``H = G_k + lambda G_c + delta I`` the unconstrained minimiser is
``d* = -lambda H^-1 G_c e``; the equality constraint gives, as in optimal
brain surgeon,

    d = d* - H^-1[:, P] (H^-1[P, P])^-1 (d*[P] + e[P])

Rows with no pruned entry have ``e = 0`` and keep ``d = 0``: the repair only
touches pruned rows. ``lambda = 0`` is the plain least-squares repair of
SparseGPT / OBS (kept outputs only); ``lambda -> inf`` returns the masked row.

Kept prompts may come in groups (one per kept kind, the object-less
scenes, ...): :func:`balanced_repair` reweights them so that no kept kind
absorbs the change alone (:mod:`fia.core.balance`, the loop the rewrite
shares).

Everything here is pure tensor code in float64 (no model, no hooks);
:func:`repair_layer` is checked against a brute-force constrained least
squares in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fia.core.balance import Balanced, balance_groups, group_changes, mix_grams


class RepairError(ValueError):
    """The repair's linear system cannot be solved (singular, or no kept inputs)."""


@dataclass(frozen=True)
class LayerRepair:
    """The repaired rows of one layer.

    Attributes:
        rows: int64 indices of the rows that changed (the rows with a pruned entry), sorted.
        values: float32 ``(len(rows), in_features)``: those rows after the
            repair, pruned entries exactly 0.
    """

    rows: Tensor
    values: Tensor


def damped_system(gram_keep: Tensor, gram_concept: Tensor | None, concept_weight: float, damping: float) -> Tensor:
    """``H = G_k + lambda G_c + delta * mean(diag(G_k + lambda G_c)) * I`` in float64.

    Raises :class:`RepairError` when ``G_k`` is all zero (no kept inputs).
    """
    h = gram_keep.to(torch.float64).clone()
    if float(h.diagonal().abs().sum()) == 0.0:
        raise RepairError("the kept prompts' Gram matrix is zero: no kept inputs reached this layer")
    if gram_concept is not None and concept_weight > 0:
        h += concept_weight * gram_concept.to(torch.float64)
    scale = float(h.diagonal().mean())
    h.diagonal().add_(damping * scale)
    return h


def repair_layer(
    weight: Tensor,
    prune: Tensor,
    gram_keep: Tensor,
    gram_concept: Tensor | None = None,
    *,
    concept_weight: float = 1.0,
    damping: float = 0.01,
) -> LayerRepair:
    """Repair the pruned rows of one layer (module docstring); returns the rows that changed.

    Args:
        weight: ``(out, in)`` unedited weights.
        prune: bool ``(out, in)``: the entries the mask zeroes.
        gram_keep: ``(in, in)`` mean ``x x^T`` over the kept prompts' inputs.
        gram_concept: ``(in, in)`` mean ``x x^T`` over the concept prompts' inputs, or None.
        concept_weight: ``lambda``.
        damping: ``delta``, a share of the mean diagonal of ``G_k + lambda G_c``.
    """
    if prune.shape != weight.shape:
        raise ValueError(f"prune mask has shape {tuple(prune.shape)}, weight {tuple(weight.shape)}")
    n_in = weight.shape[1]
    if gram_keep.shape != (n_in, n_in):
        raise ValueError(f"G_k has shape {tuple(gram_keep.shape)}, expected {(n_in, n_in)}")
    rows = torch.nonzero(prune.any(dim=1)).reshape(-1)
    if rows.numel() == 0:
        return LayerRepair(rows.to(torch.int64), weight.new_zeros((0, n_in), dtype=torch.float32))
    h = damped_system(gram_keep, gram_concept, concept_weight, damping)
    try:
        chol = torch.linalg.cholesky(h)
    except RuntimeError as exc:  # pragma: no cover - damping > 0 makes H positive definite
        raise RepairError(f"the repair system is singular ({exc}); raise the damping") from exc
    h_inv = torch.cholesky_inverse(chol)
    w = weight.detach().to(torch.float64)[rows]
    p = prune[rows]
    e = torch.where(p, w, torch.zeros_like(w))  # w - m
    if gram_concept is not None and concept_weight > 0:
        # d* = -lambda H^-1 G_c e, all rows at once
        d_star = -concept_weight * (e @ gram_concept.to(torch.float64)) @ h_inv  # H^-1, G_c symmetric
    else:
        d_star = torch.zeros_like(w)
    out = w + d_star
    for i in range(rows.numel()):
        cols = torch.nonzero(p[i]).reshape(-1)
        hp = h_inv[:, cols]  # H^-1[:, P]
        lam = torch.linalg.solve(hp[cols], d_star[i, cols] + e[i, cols])
        out[i] -= hp @ lam
        out[i, cols] = 0.0  # exact zeros where the mask prunes (the solve leaves ~1e-16)
    if not torch.isfinite(out).all():
        raise RepairError("the repair produced non-finite weights; raise the damping")
    return LayerRepair(rows.to(torch.int64), out.to(torch.float32))


def repaired_weight(weight: Tensor, repair: LayerRepair) -> Tensor:
    """The layer's weight after the mask and the repair: ``weight`` with the repaired rows written in.

    Every row with a pruned entry is a repaired row, so this is the whole edited layer.
    """
    out = weight.detach().to(torch.float32).clone()
    out[repair.rows] = repair.values
    return out


def balanced_repair(
    weights: Mapping[str, Tensor],
    prune: Mapping[str, Tensor],
    group_grams: Mapping[str, Mapping[str, Tensor]],
    sizes: Mapping[str, int],
    gram_concept: Mapping[str, Tensor] | None,
    *,
    concept_weight: float,
    damping: float,
    rounds: int,
) -> Balanced[dict[str, LayerRepair]]:
    """:func:`repair_layer` on every layer with a pruned entry, the kept groups balanced over ``rounds``
    (:mod:`fia.core.balance`): ``G_k`` of each solve mixes the groups' Gram matrices by their weights.

    Args:
        weights: unedited weights by layer name.
        prune: bool masks by layer name.
        group_grams: ``group -> layer -> G_g``.
        sizes: prompts per group.
        gram_concept: ``G_c`` by layer name, or None (kept term only).
        rounds: reweighting rounds; 0 is :func:`repair_layer` on the pooled ``G_k``.
    """
    if not group_grams:
        raise RepairError("the repair has no kept prompts: nothing tells it what must stay")
    layers = {name: w for name, w in weights.items() if bool(prune[name].any())}

    def solve(alpha: Mapping[str, float]) -> dict[str, LayerRepair]:
        return {
            name: repair_layer(w, prune[name], mix_grams(group_grams, sizes, alpha, name),
                               None if gram_concept is None else gram_concept[name],
                               concept_weight=concept_weight, damping=damping)
            for name, w in layers.items()
        }  # fmt: skip

    def changes(repairs: dict[str, LayerRepair]) -> dict[str, float]:
        new = {name: repaired_weight(w, repairs[name]) for name, w in layers.items()}
        return group_changes(layers, new, group_grams)

    return balance_groups(solve, changes, group_grams, rounds)
