"""SPEED: closed-form erasure in the null space of the retained concepts.

Reference: O. Li, Y. Wang, X. Hu, H. Jiang, T. Liang, Y. Hao, G. Ma, F. Feng,
"SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion
Models", arXiv:2503.07392 (2025): the null-space-constrained edit of the
cross-attention projections, its closed form with the invariant equality
constraints, and the refinement of the retain set (IPF, DPA, IEC).

What is implemented
-------------------
Notation (rows are embeddings, as the projections see them): for one
cross-attention projection ``W`` (shape ``(d_out, d)``), ``C1`` holds the
embeddings of the concepts to erase (``n1`` rows), ``C*`` the anchor's
embeddings at the same token positions, ``C0`` the retain set and ``C2`` the
invariant embeddings. The edit is ``W' = W + X``.

Erase objective with the null-space constraint (the paper's, after
AlphaEdit): the update may only act on the null space of the retain set,
``X = Delta P``, so ``X c0 = 0`` for every retained ``c0``:

    min_X  ||C1 X^T - C* W^T||^2 + lamb ||X||^2     s.t.  X (I - P) = 0,  X C2^T = 0

``P`` (:func:`null_space_projector`) projects onto the eigenvectors of the
retain Gram ``C0^T C0`` whose eigenvalues are (relatively) small. With
``B = C1 P``, ``R = (C* - C1) W^T`` transposed (``d_out x n1``) and
``G = B^T B + lamb I``, the solution without invariants is
``X0 = R B G^-1`` (the paper's ``(Delta P) = R C1^T P M``,
``M = (C1 C1^T P + lamb I)^-1``, rewritten with ``P M = G^-1 P``); the
invariant equality constraints add a Lagrange term and give

    X = R B [ G^-1 - G^-1 D (D^T G^-1 D)^-1 D^T G^-1 ]

with ``D`` an orthonormal basis of the span of ``P C2^T``
(:func:`invariant_basis`, :func:`constrained_update`; the paper writes the
bracket as ``P Q M``).
Every ``X`` of this form satisfies both constraints exactly.

Refinement of the retain set (per edited projection, since it depends on ``W``):

* Influence-based Prior Filtering (IPF, :func:`influential_rows`): solve the
  erase-only update ``X_e = R C1 (C1^T C1 + lamb I)^-1`` (no retain terms),
  score each retained row by its prior shift ``||X_e c0||^2`` and keep the
  rows at or above the mean shift: the rows the erasure would disturb.
* Directed Prior Augmentation (DPA, :func:`directed_augmentations`): add
  ``augment_count`` copies of each kept row with Gaussian noise projected on
  the ``augment_rank`` right singular directions of ``W`` with the smallest
  singular values (where ``W`` barely responds, so ``W c0'`` stays close to
  ``W c0``), then filter the copies with IPF as well.
* Invariant Equality Constraints (IEC): ``C2`` holds every row of the empty
  prompt's encoding, which includes the start-of-text row; with a causal
  text encoder (CLIP: Stable Diffusion, ShapeWorld) that row is the same in
  every prompt, and the empty prompt is the unconditional branch of
  classifier-free guidance, so both stay exactly as they were. Their span
  is taken at float32's numerical rank (:data:`INVARIANT_RANK_TOL`): on
  Stable Diffusion the 77 rows use 77 of 768 dimensions, on ShapeWorld 20
  of 128, but a very narrow encoder (the 32-d test pipelines) can be filled
  by them; with no direction left to edit in any layer the method refuses
  and names ``invariants = False`` as the way out.

Which positions give the rows (``tokens``) follows :mod:`fia.baselines.uce`:
the concept's word tokens and its end-of-text token by default.

Settings and where they come from: ``lamb = 1`` is the paper's weight of
``||Delta P||^2``; ``augment_count = 10`` and value-only editing
(``projections = ("to_v",)``) are the authors' public run scripts' values;
the null-space threshold is relative here (``null_space_tol`` times the
largest eigenvalue of the retain Gram) because the paper's absolute
thresholds (1e-1, 1e-4) are tied to SD 1.4's CLIP embedding scale; the
noise rank and scale of DPA are not given in the public description and are
this module's choice (``augment_rank``, ``augment_scale``). The paper's
multi-concept runs turn IPF off (``influence_filter = False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fia.baselines import _common
from fia.baselines.uce import concept_embeddings, token_positions
from fia.config import check_nonnegative, check_nonnegative_int, check_positive_int
from fia.delta import WeightDelta
from fia.errors import FIAError
from fia.progress import Progress, report

PROJECTIONS = _common.PROJECTIONS


@dataclass(frozen=True)
class SPEEDConfig(_common.CrossAttentionEditConfig):
    """Settings of SPEED (see the module doc for the equations).

    Attributes:
        anchor: text whose embedding the erased concepts are mapped to; ``""`` maps them to "nothing".
        anchors: per-concept anchors that replace ``anchor``.
        lamb: weight of ``||X||^2`` (the paper's 1); must be > 0.
        null_space_tol: an eigenvector of the retain Gram belongs to the null
            space when its eigenvalue is at most this share of the largest.
        influence_filter: IPF on or off (off: every retained row is constrained).
        augment_count: DPA copies per kept retained row (0 turns DPA off).
        augment_rank: how many of ``W``'s smallest right singular directions carry the DPA noise.
        augment_scale: DPA noise per coordinate, as a share of the row's root-mean-square value.
        invariants: IEC on or off (the empty prompt's rows, start token included, kept exactly).
        seed: seed of the DPA noise.
        tokens: which token positions give the rows (as UCE's).
        projections: which cross-attention projections are edited.
    """

    anchor: str = ""
    anchors: dict[str, str] = field(default_factory=dict)
    lamb: float = 1.0
    null_space_tol: float = 1e-5
    influence_filter: bool = True
    augment_count: int = 10
    augment_rank: int = 8
    augment_scale: float = 1.0
    invariants: bool = True
    seed: int = 0
    tokens: Literal["concept_eos", "concept", "all"] = "concept_eos"
    projections: tuple[str, ...] = ("to_v",)

    def validate(self) -> SPEEDConfig:
        check_nonnegative("lamb", self.lamb)
        if self.lamb == 0:
            raise FIAError("lamb must be > 0 (it keeps the projected system invertible), got 0; the paper uses 1")
        check_nonnegative("null_space_tol", self.null_space_tol)
        if self.null_space_tol >= 1:
            raise FIAError(
                f"null_space_tol must be < 1 (a share of the largest eigenvalue), got {self.null_space_tol!r}"
            )
        for name in ("influence_filter", "invariants"):
            if not isinstance(getattr(self, name), bool):
                raise FIAError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("augment_count", "seed"):
            check_nonnegative_int(name, getattr(self, name))
        check_positive_int("augment_rank", self.augment_rank)
        check_nonnegative("augment_scale", self.augment_scale)
        self.check_rows_and_projections()
        return self


# ----------------------------------------------------------------- pure math
def null_space_projector(retain: Tensor, tol: float) -> Tensor:
    """``P = U0 U0^T``: the projector onto the (approximate) null space of the retain rows.

    ``retain`` is (n, d). With ``C0^T C0 = U diag(s) U^T`` (eigendecomposition,
    float64), ``U0`` holds the eigenvectors with ``s_i <= tol * max(s)``, so
    ``P`` is symmetric, idempotent and ``||P c0||^2 <= n_0 * tol * max(s)``
    for every retained row ``c0`` (``n_0`` the null space's dimension). No
    rows: ``P = I`` (nothing to keep).
    """
    c0 = retain.double()
    d = c0.shape[1]
    if c0.shape[0] == 0:
        return torch.eye(d, dtype=torch.float64)
    eigvals, eigvecs = torch.linalg.eigh(c0.T @ c0)
    null = eigvecs[:, eigvals <= tol * eigvals.max()]
    return null @ null.T


def erase_only_update(w_old: Tensor, erase_inputs: Tensor, erase_targets: Tensor, lamb: float) -> Tensor:
    """IPF's probe: ``X_e = R C1 (C1^T C1 + lamb I)^-1``, the update without retain terms.

    Minimises ``||C1 (W + X)^T - V||^2 + lamb ||X||^2`` with ``R = (V - C1 W^T)^T``;
    ``w_old`` (d_out, d), ``erase_inputs`` (n1, d), ``erase_targets`` (n1, d_out).
    """
    w, c1, v = w_old.double(), erase_inputs.double(), erase_targets.double()
    residual = (v - c1 @ w.T).T
    gram = c1.T @ c1 + lamb * torch.eye(w.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, (residual @ c1).T).T  # gram is symmetric


def prior_shift(update: Tensor, rows: Tensor) -> Tensor:
    """``||X c||^2`` for each row ``c``: how far the update moves each row's output."""
    return (rows.double() @ update.double().T).pow(2).sum(dim=1)


def influential_rows(update: Tensor, rows: Tensor) -> Tensor:
    """IPF: the rows whose prior shift under ``update`` is at least the mean shift."""
    if rows.shape[0] == 0:
        return rows
    shift = prior_shift(update, rows)
    return rows[shift >= shift.mean()]


def directed_augmentations(
    w_old: Tensor, rows: Tensor, count: int, rank: int, scale: float, generator: torch.Generator
) -> Tensor:
    """DPA: ``count`` copies of each row, ``c + eps V_min^T V_min``, (n * count, d) float64.

    ``V_min`` (rank, d) holds the right singular vectors of ``W`` with the
    smallest singular values (the exact null space of ``W`` first when
    ``d_out < d``); ``eps`` is Gaussian with standard deviation ``scale``
    times the row's root-mean-square value, so ``W c'`` stays near ``W c``.
    """
    c = rows.double()
    if count == 0 or c.shape[0] == 0:
        return c[:0]
    _, _, vh = torch.linalg.svd(w_old.double(), full_matrices=True)
    v_min = vh[-min(rank, vh.shape[0]) :]  # rows of vh come by singular value, largest first
    repeated = c.repeat_interleave(count, dim=0)
    rms = repeated.pow(2).mean(dim=1, keepdim=True).sqrt()
    noise = torch.randn(repeated.shape, generator=generator, dtype=torch.float64) * (scale * rms)
    return repeated + (noise @ v_min.T) @ v_min


INVARIANT_RANK_TOL = 1e-6
"""Invariant directions count when their singular value exceeds this share of the largest:
the numerical rank of float32 embeddings, so the constraints are exact up to rounding."""


def invariant_basis(invariant_rows: Tensor, projector: Tensor, tol: float = INVARIANT_RANK_TOL) -> Tensor:
    """``D``: an orthonormal basis (d, k) of the span of ``P C2^T``.

    Directions whose singular value is at most ``tol`` times ``C2``'s largest
    are left out (their constraint already holds to that share).
    """
    c2 = invariant_rows.double()
    if c2.shape[0] == 0:
        return c2.T
    reference = float(torch.linalg.matrix_norm(c2, ord=2))
    u, s, _ = torch.linalg.svd((c2 @ projector.double()).T, full_matrices=False)
    return u[:, s > tol * reference]


def edit_room(projector: Tensor, basis: Tensor) -> int:
    """Dimension of the directions the update may still use: ``rank(P) - rank(D)``."""
    return round(float(torch.trace(projector.double()))) - basis.shape[1]


def constrained_update(
    w_old: Tensor,
    erase_inputs: Tensor,
    erase_targets: Tensor,
    projector: Tensor,
    invariant_rows: Tensor,
    *,
    lamb: float = 1.0,
    tol: float = INVARIANT_RANK_TOL,
) -> Tensor:
    """SPEED's closed form (module doc): the update ``X`` (d_out, d), float64.

    ``X = R B [G^-1 - G^-1 D (D^T G^-1 D)^-1 D^T G^-1]`` with ``B = C1 P``,
    ``G = B^T B + lamb I``, ``R = (C* W^T - C1 W^T)^T`` and ``D`` from
    :func:`invariant_basis`. It minimises
    ``||C1 (W + X)^T - C* W^T||^2 + lamb ||X||^2`` subject to
    ``X (I - P) = 0`` and ``X C2^T = 0``.
    """
    w, c1, target = w_old.double(), erase_inputs.double(), erase_targets.double()
    if c1.shape[0] != target.shape[0]:
        raise ValueError(f"{c1.shape[0]} erase inputs but {target.shape[0]} targets")
    p = projector.double()
    residual = (target - c1 @ w.T).T
    b = c1 @ p
    g = b.T @ b + lamb * torch.eye(w.shape[1], dtype=torch.float64)
    x = torch.linalg.solve(g, (residual @ b).T).T  # X0 = R B G^-1 (G symmetric)
    d = invariant_basis(invariant_rows, p, tol)
    if d.shape[1] == 0:
        return x
    g_inv_d = torch.linalg.solve(g, d)
    # X = X0 - X0 D (D^T G^-1 D)^-1 D^T G^-1, the Lagrange correction that zeroes X D
    correction = torch.linalg.solve(d.T @ g_inv_d, g_inv_d.T)
    return x - (x @ d) @ correction


# ---------------------------------------------------------------- embeddings
def _rows(pipe: Any, texts: Sequence[str], config: SPEEDConfig, anchors: bool = False) -> tuple[Tensor, Tensor]:
    """(rows of each text at its positions, the anchors' rows at the same positions), float64."""
    rows, anchor_rows = [], []
    for text in texts:
        pos = token_positions(pipe, text, config.tokens)
        rows.append(concept_embeddings(pipe, text, pos))
        if anchors:
            anchor_rows.append(concept_embeddings(pipe, config.anchor_for(text), pos))
    dim = _common.text_embeddings(pipe, [""]).shape[-1]
    empty = torch.zeros(0, dim, dtype=torch.float64)
    cat = lambda xs: torch.cat(xs) if xs else empty
    return cat(rows), cat(anchor_rows)


def edit_inputs(
    pipe: Any, concepts: Sequence[str], config: SPEEDConfig, preserve: Sequence[str]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(erase rows C1, anchor rows C*, retain rows C0, invariant rows C2), float64."""
    c1, anchor = _rows(pipe, concepts, config, anchors=True)
    c0, _ = _rows(pipe, preserve, config)
    if config.invariants:
        c2 = _common.text_embeddings(pipe, [""])[0].double().cpu()
    else:
        c2 = c0[:0]
    return c1, anchor, c0, c2


def refined_retain_set(
    w_old: Tensor, c1: Tensor, targets: Tensor, c0: Tensor, config: SPEEDConfig, generator: torch.Generator
) -> Tensor:
    """The retain rows the null space is built from: IPF, then DPA copies filtered by IPF."""
    if c0.shape[0] == 0:
        return c0
    probe = erase_only_update(w_old, c1, targets, config.lamb) if c1.shape[0] else None
    kept = influential_rows(probe, c0) if config.influence_filter and probe is not None else c0
    extra = directed_augmentations(
        w_old, kept, config.augment_count, config.augment_rank, config.augment_scale, generator
    )
    if config.influence_filter and probe is not None:
        extra = influential_rows(probe, extra)
    return torch.cat([kept, extra])


def unlearn(
    pipe: Any,
    concepts: Sequence[str],
    config: SPEEDConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    prompts: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_dir: Any = None,
) -> WeightDelta:
    """SPEED's edit of ``pipe``'s cross-attention projections that erases ``concepts`` and keeps ``preserve``.

    Registered as ``speed``: call it through :func:`fia.unlearn`. ``pipe``
    is not changed; the result is a :class:`fia.delta.WeightDelta`.
    ``preserve`` is the retain set (on ShapeWorld, pass the kinds to keep);
    with none, only the invariant rows are kept exactly. ``prompts`` and
    ``cache_dir`` are not used: SPEED edits the names' own embeddings.
    """
    config = (config or SPEEDConfig()).validate()
    if not concepts and not preserve:
        raise FIAError("no concepts given; name at least one concept to erase")
    c1, anchor, c0, c2 = edit_inputs(pipe, concepts, config, preserve)
    edited = _common.edited_projections(pipe, config.projections)
    generator = torch.Generator().manual_seed(config.seed)
    before: dict[str, Tensor] = {}
    after: dict[str, Tensor] = {}
    kept_rows: dict[str, int] = {}
    room: dict[str, int] = {}
    with torch.no_grad():
        for done, target in enumerate(edited, start=1):
            weight = target.module.weight
            w_old = _common.float64_weight(target, c1.shape[1])
            targets = anchor @ w_old.T
            retain = refined_retain_set(w_old, c1, targets, c0, config, generator)
            projector = null_space_projector(retain, config.null_space_tol)
            update = constrained_update(w_old, c1, targets, projector, c2, lamb=config.lamb)
            before[f"{target.name}.weight"] = weight.detach().cpu().clone()
            after[f"{target.name}.weight"] = (w_old + update).to(weight.dtype)
            kept_rows[target.name] = int(retain.shape[0])
            room[target.name] = edit_room(projector, invariant_basis(c2, projector))
            report(progress, done, len(edited), f"SPEED: edited {target.name}")
    if concepts and max(room.values()) <= 0:
        raise FIAError(
            "the retain set and the invariant rows leave no direction to edit in any layer "
            "(the text embeddings are too narrow); preserve fewer concepts or set invariants=false"
        )
    return WeightDelta.from_models(
        before, after, method="speed", concepts=list(concepts), config=config.to_dict(),
        stats={"preserve": list(preserve), "retain_rows": kept_rows, "edit_room": room},
    )  # fmt: skip
