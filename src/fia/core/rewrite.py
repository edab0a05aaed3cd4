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

*Negative guidance* ``eta`` (ESD's target, at one layer) aims the concept
term past the scene, away from the concept: the target output is
``w x_t - eta (w x_c - w x_t)`` instead of ``w x_t``. ``eta = 0`` is the
plain rewrite; with ``eta > 0`` a concept prompt whose input already
matches its scene's is still pushed off what the concept adds.

The push's reference need not be the scene. With a reference input ``x_r``
at the same latent (``rewrite.anchored_guidance``: a mix of the scene and
the same prompt with a kept concept in the erased one's place) the target
is ``w x_t - eta (w x_c - w x_r)``: the push removes what the concept adds
over the reference. On ShapeWorld, pushing a common kind (circle) away from
an empty scene also pushes every kind away from what any object adds, and
the rare kinds are drawn past recognition; pushing it away from another
kind costs them about half as much, but erases less wherever the concept
shares its strokes with kept kinds or several common kinds go at once
(benchmarks/README.md, "anchored negative guidance").

Setting the gradient to zero, with ``G_k = mean x_k x_k^T``,
``G_c = mean x_c x_c^T``, the cross moment ``C = mean x_t x_c^T`` and the
reference's ``R = mean x_r x_c^T`` (``R = C`` when the reference is the scene):

    w' (G_k + lambda G_c + delta s I) = w G_k + lambda w (C + eta (R - G_c)) + delta s w

one symmetric positive definite system shared by every row. With
``lambda = 0`` (or ``X_t = X_c``) the solution is ``w' = w``.

*The push off the kept kinds' features.* Where a concept shares features
with kept kinds (on ShapeWorld: star's strokes with arrow, cross and bolt),
the push ``-eta W (x_c - x_r)`` also subtracts those shared features, and the
kept kinds that draw with them pay. With an orthogonal projector ``P`` on the
layer's *output* space (:func:`kept_feature_projector`: ``I - U U^T``, ``U``
the output directions the kept kinds' prompts add most over object-less
scenes) the target becomes ``w x_t - eta P W (x_c - x_r)``: the push keeps
only its part outside those directions. The pull to the scene is untouched,
so a concept whose every feature is shared is still rewritten into its
scene. The right-hand side's push ``eta W (R - G_c)`` becomes
``eta P W (R - G_c)``; the system matrix does not change.

When the layer's kept inputs are not the ones whose outputs must be held
(a refit on an edited model, where the layer sees ``x'`` but should still
answer ``w x``), the kept term is ``|w' X'_k - w X_k|^2``: ``G_k`` becomes
``mean x' x'^T`` and the right-hand side's ``w G_k`` becomes ``w X`` with
``X = mean x x'^T`` (``keep_cross``; ``None`` means ``X = G_k``).

Kept prompts come in groups (one per kept kind, the object-less scenes,
...). A plain mean lets the edit fall on the few groups that look most like
the concept (on ShapeWorld: house when circle goes). :func:`balanced_rewrite`
reweights the groups by their relative output change and solves again
(:mod:`fia.core.balance`, the loop the repair shares): an iteratively
reweighted least squares that spreads the unavoidable change evenly instead
of letting one kept kind absorb it.

Everything here is pure tensor code in float64 (no model, no hooks); the
tests check :func:`rewrite_layer` against a brute-force least squares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fia.core.balance import balance_groups, group_changes, mix_grams, relative_change
from fia.core.repair import RepairError, damped_system

__all__ = ["Rewrite", "balanced_rewrite", "kept_feature_projector", "mix_grams", "relative_change", "rewrite_layer"]


def rewrite_layer(
    weight: Tensor,
    gram_keep: Tensor,
    gram_concept: Tensor,
    cross: Tensor,
    *,
    concept_weight: float,
    damping: float,
    negative_guidance: float = 0.0,
    reference: Tensor | None = None,
    keep_cross: Tensor | None = None,
    push_projector: Tensor | None = None,
) -> Tensor:
    """The rewritten weight of one layer (module docstring), float32 ``(out, in)``.

    Args:
        weight: ``(out, in)`` unedited weights.
        gram_keep: ``(in, in)`` ``G_k``.
        gram_concept: ``(in, in)`` ``G_c``.
        cross: ``(in, in)`` ``C = mean x_t x_c^T`` (target input times concept input).
        concept_weight: ``lambda``.
        damping: ``delta``, a share of the mean diagonal of ``G_k + lambda G_c``.
        negative_guidance: ``eta`` >= 0: the concept's target is pushed past the scene's output.
        reference: ``(in, in)`` ``R = mean x_r x_c^T``, what the push is relative to; ``None``: the scene (``R = C``).
        keep_cross: ``(in, in)`` ``X = mean x x'^T`` when the kept outputs to hold are ``w x`` while the
            layer sees ``x'`` (``gram_keep`` then being ``mean x' x'^T``); ``None``: ``x' = x``.
        push_projector: ``(out, out)`` ``P``, the output directions the push may move
            (:func:`kept_feature_projector`); ``None``: all of them (``P = I``).
    """
    n_in = weight.shape[1]
    keep_cross = gram_keep if keep_cross is None else keep_cross
    moments = {"G_k": gram_keep, "G_c": gram_concept, "C": cross, "X": keep_cross, "R": cross if reference is None else reference}
    for name, m in moments.items():
        if m.shape != (n_in, n_in):
            raise ValueError(f"{name} has shape {tuple(m.shape)}, expected {(n_in, n_in)}")
    if push_projector is not None and push_projector.shape != (weight.shape[0], weight.shape[0]):
        raise ValueError(f"P has shape {tuple(push_projector.shape)}, expected {(weight.shape[0], weight.shape[0])}")
    if damping <= 0:
        raise RepairError("the rewrite needs damping > 0")
    if negative_guidance < 0:
        raise RepairError(f"the rewrite's negative guidance must be >= 0, got {negative_guidance}")
    h = damped_system(gram_keep, gram_concept, concept_weight, damping)
    ridge = float(h.diagonal().mean()) * damping / (1 + damping)  # delta * s, s the undamped mean diagonal
    w = weight.detach().to(torch.float64)
    if push_projector is not None:  # the pull to the scene, plus the push with the kept kinds' directions projected out
        ref = cross if reference is None else reference
        push = w @ (ref.to(torch.float64) - gram_concept.to(torch.float64))
        concept_rhs = w @ cross.to(torch.float64) + negative_guidance * (push_projector.to(torch.float64) @ push)
    elif reference is None:  # R = C: C + eta (C - G_c), written as before so that such edits keep their bytes
        concept_rhs = w @ ((1 + negative_guidance) * cross.to(torch.float64) - negative_guidance * gram_concept.to(torch.float64))
    else:
        concept_rhs = w @ (cross.to(torch.float64) + negative_guidance * (reference.to(torch.float64) - gram_concept.to(torch.float64)))
    rhs = w @ keep_cross.to(torch.float64) + concept_weight * concept_rhs + ridge * w
    try:
        chol = torch.linalg.cholesky(h)
    except RuntimeError as exc:  # pragma: no cover - damping > 0 makes H positive definite
        raise RepairError(f"the rewrite system is singular ({exc}); raise the damping") from exc
    # w' H = rhs  <=>  H w'^T = rhs^T (H symmetric)
    out = torch.cholesky_solve(rhs.T.contiguous(), chol).T
    if not torch.isfinite(out).all():
        raise RepairError("the rewrite produced non-finite weights; raise the damping")
    return out.to(torch.float32)


def kept_feature_projector(weight: Tensor, gram_features: Tensor, gram_baseline: Tensor, rank: int) -> Tensor:
    """``P = I - U U^T``, float64 ``(out, out)``: the push's projector off the kept kinds' features (module docstring).

    ``U`` holds the ``rank`` leading eigenvectors of the symmetric
    ``W (G_f - G_0) W^T``: the layer's output directions whose energy the
    kept kinds' inputs (``G_f``, the mean of their Gram matrices) raise most
    over the baseline's (``G_0``: object-less scenes, whose inputs hold the
    background and the unconditional rows every prompt shares). ``rank`` 0
    gives ``I``.
    """
    n_out, n_in = weight.shape
    for name, m in {"G_f": gram_features, "G_0": gram_baseline}.items():
        if m.shape != (n_in, n_in):
            raise ValueError(f"{name} has shape {tuple(m.shape)}, expected {(n_in, n_in)}")
    if not 0 <= rank <= n_out:
        raise ValueError(f"the projector's rank must lie in [0, {n_out}] (the layer's outputs), got {rank}")
    w = weight.detach().to(torch.float64)
    excess = w @ (gram_features.to(torch.float64) - gram_baseline.to(torch.float64)) @ w.T
    _, vectors = torch.linalg.eigh((excess + excess.T) / 2)  # ascending eigenvalues
    u = vectors[:, n_out - rank :]
    return torch.eye(n_out, dtype=torch.float64) - u @ u.T


@dataclass(frozen=True)
class Rewrite:
    """A balanced rewrite: the new weights per layer and the kept groups' final weights and changes."""

    weights: dict[str, Tensor]
    group_weights: dict[str, float]
    group_change: dict[str, float]  # relative output change per group, summed over layers, after the last solve


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
    negative_guidance: float = 0.0,
    reference: Mapping[str, Tensor] | None = None,
    push_projectors: Mapping[str, Tensor] | None = None,
) -> Rewrite:
    """:func:`rewrite_layer` on every layer, with ``rounds`` reweightings of the kept groups (module docstring).

    Args:
        weights: unedited weights by layer name.
        group_grams: ``group -> layer -> G_g`` (mean ``x x^T`` of the group's kept inputs).
        sizes: prompts per group (a group's weight starts proportional to it).
        gram_concept / cross: ``G_c`` and ``C`` by layer name.
        rounds: reweighting rounds; 0 is the plain rewrite with the pooled ``G_k``.
        negative_guidance: ``eta`` (module docstring).
        reference: ``R`` by layer name (module docstring); ``None``: the scene.
        push_projectors: ``P`` by layer name (:func:`kept_feature_projector`); ``None``: the whole push.
    """
    if not group_grams:
        raise RepairError("the rewrite has no kept prompts: nothing tells it what must stay")

    def solve(alpha: Mapping[str, float]) -> dict[str, Tensor]:
        return {
            name: rewrite_layer(w, mix_grams(group_grams, sizes, alpha, name), gram_concept[name], cross[name],
                                concept_weight=concept_weight, damping=damping, negative_guidance=negative_guidance,
                                reference=None if reference is None else reference[name],
                                push_projector=None if push_projectors is None else push_projectors[name])
            for name, w in weights.items()
        }

    balanced = balance_groups(solve, lambda new: group_changes(weights, new, group_grams), group_grams, rounds)
    return Rewrite(balanced.result, balanced.group_weights, balanced.group_change)
