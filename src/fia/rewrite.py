"""The rewrite variant on a pipeline: collect its statistics, solve (:mod:`fia.core.rewrite`), return one edit file.

``fia.erase(pipe, concepts, FIARewriteConfig(...))`` runs
:func:`rewrite_erase`. Two kinds of sampler passes of the unedited model,
with forward hooks on the target linears (:func:`fia.sampling.capture`):

* the kept prompts, in shared batches, accumulate each group's (each kept
  kind, the object-less scenes, ...) ``G_g = mean x x^T`` over every token,
  step and guidance row;
* the concept prompts run along their scenes' trajectories
  (:func:`fia.sampling.paired_steps`), so each concept prompt's layer input
  ``x_c`` has a partner ``x_t``, the scene's input at the same latent and
  step; they give ``G_c = mean x_c x_c^T`` and ``C = mean x_t x_c^T`` (text
  rows only: the unconditional row does not depend on the prompt); with
  ``rewrite.anchored_guidance`` each batch also shows the concept prompt
  with a kept concept in its place, for the push's reference ``R``, and
  ``rewrite.anchored_below`` decides per concept whether its push takes
  that reference, from how much its prompts and their anchors move the
  edited layers at the sampler's first step (:func:`anchor_ratios`;
  recorded in ``fusion_stats.json``).

Following the scene's trajectory matters: those are the latents the edited
model should produce, so the rewrite teaches it, at each of them, to answer
the concept prompt as it answers the scene. Those latents never hold the
concept, though, and on colour/place pairs the fit never saw a concept the
edited model starts to draw is outside what it was taught.
``rewrite.concept_trajectory`` adds the same pairs along the *concept's*
own trajectory (the unedited model guided to the concept prompt), so the
rewrite also learns to answer as the scene where the concept is already
forming; ``rewrite.negative_guidance`` then aims past the scene
(:mod:`fia.core.rewrite`).

No weight is pruned. The result is a :class:`~fia.mask.ConceptMask` with no
pruned entry whose every row carries its rewritten and its original values
(format version 2), so ``apply_``, ``restore_`` and every command that
reads a mask read it. It leaves no exact zeros for a refill attack to find
(``fia attack --probe revival``).

Memory: one ``in x in`` float64 matrix per layer and kept group, plus two
for the concepts (ShapeWorld 2: 31 groups x 7 layers, about 250 MB).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fia.config import FIARewriteConfig
from fia.core.repair import LayerRepair, RepairError
from fia.core.rewrite import Rewrite, balanced_rewrite, kept_feature_projector
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.progress import Progress, report
from fia.prompts import RewritePrompts
from fia.repair import GRAM_BATCH, collect_group_grams
from fia.sampling import capture, paired_steps
from fia.targets import TargetLinear, denoiser
from fia.tasks import task_of
from fia.weights import fingerprint_weights

# prompts per sampler batch when the config sets no batch_size: kept and paired (the denoiser sees twice and
# three times as many rows). SD-sized latents take the first pair; small ones (ShapeWorld's 8 x 8, at most
# SMALL_LATENT px a side) the second, where memory is no concern and a CPU runs taller products faster
# (ShapeWorld 2, star + arrow on 2 cores: 13.0 -> 11.8 s per concept)
KEPT_BATCH, PAIRED_BATCH = GRAM_BATCH, 16
SMALL_KEPT_BATCH, SMALL_PAIRED_BATCH, SMALL_LATENT = 64, 48, 16

# each batch's x^T x is computed in float32 and summed over batches in float64: float64 products took a
# fifth of the erase on a CPU (and run at a small fraction of float32's rate on most GPUs); one batch's
# product over a few thousand rows rounds at about 1e-6 of its size, far below what the damped solve resolves
# (ShapeWorld 2, star + arrow: 14.0 -> 13.0 s per concept)
PRODUCT_DTYPE = torch.float32


def default_batches(latent: int | None) -> tuple[int, int]:
    """Prompts per batch of the kept pass and of the paired passes when the config sets no ``batch_size``,
    for latents ``latent`` px a side (``None``: unknown, the SD-sized batches)."""
    small = isinstance(latent, int) and latent <= SMALL_LATENT
    return (SMALL_KEPT_BATCH, SMALL_PAIRED_BATCH) if small else (KEPT_BATCH, PAIRED_BATCH)


def statistics_steps(config: FIARewriteConfig) -> int:
    """Sampler steps of the rewrite's passes: ``rewrite.steps``, or the schedule's own."""
    return config.rewrite.steps or config.num_inference_steps


def _batches(pipe: Any) -> tuple[int, int]:
    """:func:`default_batches` for ``pipe``'s denoiser, from its config's ``sample_size``."""
    return default_batches(getattr(denoiser(pipe), "config", {}).get("sample_size"))


class _PairedMoments:
    """Running ``sum x_c x_c^T``, ``sum x_t x_c^T`` and ``sum (x_a - x_t) x_c^T`` per layer over
    ``[uncond; concept; scene]`` batches, or ``[...; anchor]`` ones (``parts``, set per batch: 3 or 4; the
    third sum only once a batch shows anchors); each batch's products in :data:`PRODUCT_DTYPE`, their
    sums in float64."""

    def __init__(self) -> None:
        self.parts = 3
        self.sums: dict[str, list[Tensor]] = {}
        self.count: dict[str, int] = {}

    def hook(self, name: str, _module: Any, args: tuple, _output: Any) -> None:
        xc, xt, *xa = (x.reshape(-1, x.shape[-1]).to(PRODUCT_DTYPE) for x in args[0].detach().chunk(self.parts)[1:])
        moments = [xc.T @ xc, xt.T @ xc]  # G_c, C
        if name not in self.sums:
            self.sums[name], self.count[name] = [torch.zeros_like(moments[0], dtype=torch.float64) for _ in range(2)], 0
        if xa:  # the anchors' shift, held from the first batch that shows anchors; one without (x_a = x_t) adds none
            moments.append((xa[0] - xt).T @ xc)
            if len(self.sums[name]) == 2:
                self.sums[name].append(torch.zeros_like(self.sums[name][0]))
        for total, m in zip(self.sums[name], moments):
            total += m  # summed in float64
        self.count[name] += xc.shape[0]

    def means(self) -> list[dict[str, Tensor]]:
        # summed where the activations are (a GPU), solved on the CPU beside the unedited weights; divided in
        # place, so that the sums and the means are not both held
        return [{n: m[k].div_(self.count[n]).cpu() for n, m in self.sums.items() if k < len(m)} for k in range(3)]


class _FirstStepEnergy:
    """Per concept, ``sum |W (x_c - x_t)|^2`` and ``sum |W (x_a - x_t)|^2`` over every target layer, from
    ``[uncond; concept; scene; anchor]`` batches; ``owners`` names the concept of each image of the batch."""

    def __init__(self) -> None:
        self.energy: dict[str, Tensor] = {}
        self.owners: Sequence[str] = ()

    def hook(self, _name: str, module: Any, args: tuple, _output: Any) -> None:
        xc, xt, xa = (x.to(torch.float64) for x in args[0].detach().chunk(4)[1:])
        weight = module.weight.detach().to(torch.float64)
        for concept in dict.fromkeys(self.owners):
            own = [i for i, o in enumerate(self.owners) if o == concept]
            c, t, a = (x[own].reshape(-1, x.shape[-1]) for x in (xc, xt, xa))
            energy = torch.stack([((c - t) @ weight.T).square().sum(), ((a - t) @ weight.T).square().sum()]).cpu()
            self.energy[concept] = self.energy[concept] + energy if concept in self.energy else energy


def anchor_ratios(
    pipe: Any, targets: Sequence[TargetLinear], prompts: RewritePrompts, config: FIARewriteConfig, batch_size: int | None = None,
) -> dict[str, float]:
    """Per concept, ``E|W (x_a - x_t)|^2 / E|W (x_c - x_t)|^2`` over its prompts and every target layer: how much
    the kept concept put in its place moves the layers' outputs, over how much the concept itself does.

    Read at the sampler's first step, where a prompt's trajectories (the scene's, the concept's) all start
    from the same noise: one denoiser call per batch, not a pass (on ShapeWorld 2 it orders the kinds as the
    mean over every step of both trajectories does; benchmarks/README.md, "anchored negative guidance")."""
    batch_size = batch_size or config.batch_size or _batches(pipe)[1]
    acc = _FirstStepEnergy()
    with capture(targets, acc.hook):
        for s in range(0, len(prompts.concept), batch_size):
            acc.owners = prompts.owner[s : s + batch_size]
            paired_steps(pipe, prompts.concept[s : s + batch_size], prompts.scene[s : s + batch_size],
                         prompts.concept_seeds[s : s + batch_size], num_inference_steps=statistics_steps(config),
                         guidance_scale=config.guidance_scale, anchors=prompts.anchor[s : s + batch_size], stop_after=1)
    return {c: float(e[1] / e[0]) if e[0] > 0 else float("inf") for c, e in acc.energy.items()}


def anchored_shares(ratios: dict[str, float], beta: float, below: float | None) -> dict[str, dict[str, float | bool]]:
    """Per concept, its :func:`anchor_ratios` ratio and its share ``beta`` of anchoring: every concept's
    (``below`` ``None``), or only those whose ratio is below ``below`` (``rewrite.anchored_below``,
    :class:`fia.config.RewriteConfig`)."""
    out = {}
    for concept, ratio in ratios.items():
        anchored = below is None or ratio < below
        out[concept] = {"anchor_over_concept": round(ratio, 4), "anchored": anchored, "beta": beta if anchored else 0.0}
    return out


def paired_moments(
    pipe: Any, targets: Sequence[TargetLinear], prompts: RewritePrompts, config: FIARewriteConfig, batch_size: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor] | None, dict[str, dict]]:
    """``G_c``, ``C`` and ``R`` of every target over the concept prompts, shown at their scenes' latents
    (and, with ``rewrite.concept_trajectory``, at the concept's own latents too: one mean over both), and
    per concept what :func:`anchored_shares` found (empty when the push is not anchored).

    ``R = mean x_r x_c^T`` is the push's reference (:mod:`fia.core.rewrite`), ``x_r = (1 - beta_c) x_t + beta_c x_a``
    with ``x_a`` the input under the anchor prompt at the same latents and ``beta_c`` concept ``c``'s share
    (``rewrite.anchored_guidance`` where ``rewrite.anchored_below`` anchors it, else 0); ``R`` is ``None``
    when no concept is anchored (the reference is the scene, and the pass shows no anchors).
    Only the anchored concepts' prompts are shown with their anchors (the others' ``x_a`` would be ``x_t``),
    so a task none of whose concepts is anchored costs what one without anchored guidance does."""
    batch_size = batch_size or config.batch_size or _batches(pipe)[1]
    beta = config.rewrite.anchored_guidance
    shares = anchored_shares(anchor_ratios(pipe, targets, prompts, config, batch_size), beta,
                             config.rewrite.anchored_below) if beta > 0 else {}
    anchored = {c for c, share in shares.items() if share["anchored"]}
    acc = _PairedMoments()
    guides = ("follow", "prompts") if config.rewrite.concept_trajectory else ("follow",)
    with capture(targets, acc.hook):
        for guide in guides:
            for s in range(0, len(prompts.concept), batch_size):
                owners, anchors, scenes = (v[s : s + batch_size] for v in (prompts.owner, prompts.anchor, prompts.scene))
                shown = [a if o in anchored else t for o, a, t in zip(owners, anchors, scenes)] if anchored & set(owners) else None
                acc.parts = 3 if shown is None else 4
                paired_steps(
                    pipe, prompts.concept[s : s + batch_size], scenes, prompts.concept_seeds[s : s + batch_size],
                    num_inference_steps=statistics_steps(config), guidance_scale=config.guidance_scale, guide_by=guide,
                    anchors=shown,
                )
    gram_c, cross, shift = acc.means()  # shift: empty where no batch showed anchors
    if not anchored:  # the scene is every push's reference: the solve takes R = C exactly, as without anchoring
        return gram_c, cross, None, shares
    return gram_c, cross, {n: shift[n].mul_(beta).add_(cross[n]) for n in cross}, shares  # R = C + beta shift, in place


def group_grams(pipe: Any, targets: Sequence[TargetLinear], prompts: RewritePrompts, config: FIARewriteConfig) -> tuple[dict, dict]:
    """Each kept group's ``G_g`` per target, and its prompt count.

    One pass over all kept prompts in shared batches (each sample's rows go to
    its group), not one pass per group: a group holds 4-8 prompts, and on a
    CPU the sampler's small batches cost more than the rows they add
    (ShapeWorld 2, star + arrow: the erase takes 29 s instead of 45 s)."""
    grams = collect_group_grams(pipe, targets, prompts.keep, prompts.keep_seeds, prompts.keep_groups,
                                num_inference_steps=statistics_steps(config), guidance_scale=config.guidance_scale,
                                batch_size=config.batch_size or _batches(pipe)[0], product_dtype=PRODUCT_DTYPE,
                                combine_guidance=config.rewrite.keep_guided)
    return grams, dict(Counter(prompts.keep_groups))


def check_push_off(prompts: RewritePrompts, config: FIARewriteConfig, targets: Sequence[TargetLinear]) -> None:
    """:class:`FIAError` unless ``rewrite.push_off_rank`` can be met: kept kinds and object-less scenes among
    the kept groups, and a rank no larger than any edited layer's outputs (checked before any sampler pass)."""
    rank = config.rewrite.push_off_rank
    if not rank:
        return
    if not prompts.kind_groups or prompts.scene_group not in prompts.keep_groups:
        raise FIAError("rewrite.push_off_rank needs kept prompts grouped by kind beside object-less scenes "
                       "(ShapeWorld's); this task has none, so set rewrite.push_off_rank to 0")
    narrowest = min(targets, key=lambda t: t.module.weight.shape[0])
    if rank > narrowest.module.weight.shape[0]:
        raise FIAError(f"rewrite.push_off_rank is {rank}, but {narrowest.name} has only {narrowest.module.weight.shape[0]} "
                       f"outputs; set it to at most that")


def push_off_projectors(
    unedited: dict[str, Tensor], grams: dict, first: Rewrite, prompts: RewritePrompts, config: FIARewriteConfig,
) -> tuple[list[str], dict[str, Tensor]]:
    """The kept kinds the whole push moves most (``first``, a solve without projection) and, per layer, the
    projector off what they add over the object-less scenes (:func:`fia.core.rewrite.kept_feature_projector`).

    Equal weight per kind; ties in the change go to the name, so the choice is the same on every run."""
    rc = config.rewrite
    ranked = sorted(prompts.kind_groups, key=lambda g: (-first.group_change[g], g))
    stake = ranked[: rc.push_off_kinds]
    projectors = {
        n: kept_feature_projector(w, sum(grams[g][n].to(torch.float64) for g in stake) / len(stake),
                                  grams[prompts.scene_group][n], rc.push_off_rank)
        for n, w in unedited.items()
    }
    return stake, projectors


def rewrite_erase(
    pipe: Any,
    names: list[str],
    config: FIARewriteConfig,
    found: list[TargetLinear],
    *,
    target_kind: str,
    progress: Progress | None = None,
) -> ConceptMask:
    """The rewrite variant's edit for ``names`` (module docstring); the model is left unchanged.

    What :func:`fia.erase` runs for a :class:`~fia.config.FIARewriteConfig`.
    """
    rc = config.rewrite
    t_start = time.perf_counter()
    prompts = task_of(config).rewrite_prompts(names, rc, anchors=config.anchors, seed=config.seed)
    if not prompts.keep:
        raise FIAError("the rewrite has no kept prompts (every concept is erased); keep some concepts or name --anchors")
    check_push_off(prompts, config, found)
    weights = {t.name: t.module.weight for t in found}
    report(progress, 0, 3, "rewrite: the kept prompts' layer inputs")
    grams, sizes = group_grams(pipe, found, prompts, config)
    report(progress, 1, 3, "rewrite: the concept prompts at their scenes' latents")
    gram_c, cross, reference, anchoring = paired_moments(pipe, found, prompts, config)
    t_stats = time.perf_counter() - t_start
    report(progress, 2, 3, "rewrite: solving")
    t_solve = time.perf_counter()
    unedited = {n: w.detach().cpu() for n, w in weights.items()}
    stake: list[str] = []
    try:
        solve = dict(concept_weight=rc.concept_weight, damping=rc.damping, rounds=rc.balance_rounds,
                     negative_guidance=rc.negative_guidance, reference=reference)
        result = balanced_rewrite(unedited, grams, sizes, gram_c, cross, **solve)
        if rc.push_off_rank:  # solved again, the push projected off what the kinds it moved most add
            stake, projectors = push_off_projectors(unedited, grams, result, prompts, config)
            result = balanced_rewrite(unedited, grams, sizes, gram_c, cross, **solve, push_projectors=projectors)
    except RepairError as exc:
        raise FIAError(f"the rewrite cannot be fitted: {exc}") from None
    report(progress, 3, 3, "rewrite: done")
    none_pruned = {n: torch.zeros(w.shape, dtype=torch.bool) for n, w in unedited.items()}
    mask = ConceptMask.from_prune_masks(
        unedited, none_pruned, concepts=names, config=config.to_dict(), target_kind=target_kind,
        fingerprint=fingerprint_weights(weights),
    )
    rows = {n: LayerRepair(torch.arange(w.shape[0], dtype=torch.int64), result.weights[n]) for n, w in unedited.items()}
    mask = mask.with_repair(unedited, rows)
    mask.stats = _run_stats(names, prompts, result, unedited, t_stats, time.perf_counter() - t_solve, time.perf_counter() - t_start)
    if anchoring:
        mask.stats["anchoring"] = anchoring
    if stake:
        mask.stats["push_off"] = {"kinds": stake, "rank": rc.push_off_rank}
    return mask


def _run_stats(names, prompts: RewritePrompts, result, unedited: dict[str, Tensor], t_stats: float, t_solve: float, total: float) -> dict:
    """What ``fusion_stats.json`` records for a rewrite: prompt counts, per-layer change, the kept groups' balance, seconds."""
    per_layer = {
        n: {"shape": list(w.shape), "relative_change": round(float((result.weights[n] - w).norm() / w.norm()), 4)}
        for n, w in unedited.items()
    }
    worst = sorted(result.group_change.items(), key=lambda kv: -kv[1])[:5]
    return {
        "concepts": names,
        "variant": "rewrite",
        "prompts": {"keep": len(prompts.keep), "groups": len(set(prompts.keep_groups)), "concept": len(prompts.concept)},
        "per_layer": per_layer,
        "balance": {"most_changed_groups": {g: round(v, 4) for g, v in worst},
                    "group_weights": {g: round(v, 4) for g, v in sorted(result.group_weights.items())}},
        "per_concept": {c: {"seconds": round(total / max(1, len(names)), 3)} for c in names},
        "seconds": {"statistics": round(t_stats, 3), "solve": round(t_solve, 3), "total": round(total, 3)},
    }
