"""Fit the closed-form repair (:mod:`fia.core.repair`) on a pipeline: Gram matrices of the target layers' inputs.

One sampler pass per prompt set, with forward hooks on the target linears
(:func:`fia.sampling.capture`), accumulates the mean ``x x^T`` of each
layer's input over every token, sampler step and guidance row:

* ``G_k`` over the *kept* prompts (what must stay: the kinds not erased,
  object-less scenes, styles, the attribute), both guidance rows, since
  the unconditional row is part of every image's prediction;
* ``G_c`` over the *concept* prompts (each erased concept in plain,
  synonym, bare-word and compositional prompts), the text-conditioned row
  only: the unconditional row does not depend on the prompt, and holding it
  at its masked output would fight the kept term.

Both come from the unedited model, so they do not depend on the mask and a
run fits them once. Memory: one ``in x in`` float64 matrix per layer and
set (ShapeWorld: 2 x 7 x 512^2 x 8 bytes = 29 MB; SD 1.5: 2 x 198 M x 8 bytes = 3.2 GB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fia.core.repair import LayerRepair, RepairError, balanced_repair, repair_layer
from fia.errors import FIAError
from fia.sampling import capture, generate
from fia.targets import TargetLinear

# prompts per sampler batch of the statistics passes when the config sets no batch_size
GRAM_BATCH = 32


class _GramAccumulator:
    """Running sum of ``x x^T`` and the token count per layer (float64 sums)."""

    def __init__(self, targets: Sequence[TargetLinear], rows: str, guided: bool):
        self.rows = rows
        self.guided = guided  # the batch stacks [uncond; cond] rows
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {t.name: 0 for t in targets}

    def hook(self, name: str, _module: Any, args: tuple, _output: Any) -> None:
        x = args[0].detach()
        if self.rows == "cond" and self.guided:
            x = x.chunk(2)[1]  # diffusers stacks [uncond; cond]
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        g = x.T @ x
        if name in self.sums:
            self.sums[name] += g
        else:
            self.sums[name] = g
        self.counts[name] += x.shape[0]

    def means(self) -> dict[str, Tensor]:
        # summed where the activations are (a GPU), solved on the CPU beside the unedited weights
        return {n: (s / max(1, self.counts[n])).cpu() for n, s in self.sums.items()}


def collect_grams(
    pipe: Any,
    targets: Sequence[TargetLinear],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    rows: str,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int = GRAM_BATCH,
) -> dict[str, Tensor]:
    """Mean ``x x^T`` of every target's input over the sampler runs of ``prompts`` (``rows``: ``all`` or ``cond``)."""
    if not prompts:
        raise FIAError("the repair has no prompts to fit on; give it kept prompts (anchors) and concept prompts")
    acc = _GramAccumulator(targets, rows, guided=guidance_scale > 1)
    with capture(targets, acc.hook):
        for s in range(0, len(prompts), batch_size):
            generate(
                pipe, prompts[s : s + batch_size], seeds[s : s + batch_size],
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type="latent",
            )
    return acc.means()


class _GroupGramAccumulator:
    """Running ``sum x x^T`` per kept group and layer: each sample's rows (both guidance rows) go to its group,
    or, with ``combine`` (the guidance scale), the one row ``x_u + s (x_c - x_u)`` the sampler steps with.

    Each batch's product is taken in ``product_dtype`` and added to a float64 sum."""

    def __init__(self, guided: bool, product_dtype: torch.dtype = torch.float64, combine: float | None = None):
        self.guided = guided
        self.product_dtype = product_dtype
        self.combine = combine if guided else None  # an unguided sampler has one row per sample already
        self.batch_groups: list[str] = []  # the group of each prompt in the batch now running
        self.sums: dict[str, dict[str, Tensor]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def hook(self, name: str, _module: Any, args: tuple, _output: Any) -> None:
        x = args[0].detach()
        n = len(self.batch_groups)
        for g in dict.fromkeys(self.batch_groups):
            idx = [i for i, gi in enumerate(self.batch_groups) if gi == g]
            rows = x[idx].to(self.product_dtype)
            if self.guided:  # diffusers stacks [uncond; cond]: sample i is rows i and n + i
                cond = x[[n + i for i in idx]].to(self.product_dtype)
                rows = torch.cat([rows, cond]) if self.combine is None else rows + self.combine * (cond - rows)
            xg = rows.reshape(-1, x.shape[-1])
            product = (xg.T @ xg).to(torch.float64)
            sums, counts = self.sums.setdefault(g, {}), self.counts.setdefault(g, {})
            if name in sums:
                sums[name] += product
            else:
                sums[name] = product
            counts[name] = counts.get(name, 0) + xg.shape[0]

    def means(self) -> dict[str, dict[str, Tensor]]:
        # divided in place: a group's sums and means are not both held (one set per kept group)
        return {g: {n: s.div_(max(1, self.counts[g][n])).cpu() for n, s in layers.items()} for g, layers in self.sums.items()}


def collect_group_grams(
    pipe: Any,
    targets: Sequence[TargetLinear],
    prompts: Sequence[str],
    seeds: Sequence[int],
    groups: Sequence[str],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int = 32,
    product_dtype: torch.dtype = torch.float64,
    combine_guidance: bool = False,
) -> dict[str, dict[str, Tensor]]:
    """``group -> layer -> G_g``: each group's mean ``x x^T`` (every token, step and guidance row), in shared batches.

    The same statistics as one :func:`collect_grams` pass per group (up to the
    order of float sums), at the cost of one pass over all the prompts. Each
    batch's ``x^T x`` is computed in ``product_dtype`` (the rewrite takes
    float32, :data:`fia.rewrite.PRODUCT_DTYPE`) and summed in float64. With
    ``combine_guidance`` each sample's two rows count as the one guided row
    ``x_u + s (x_c - x_u)`` (``s`` = ``guidance_scale``; the rewrite's
    ``keep_guided``).
    """
    if not prompts:
        raise FIAError("the repair has no prompts to fit on; give it kept prompts (anchors) and concept prompts")
    acc = _GroupGramAccumulator(guided=guidance_scale > 1, product_dtype=product_dtype,
                                combine=guidance_scale if combine_guidance else None)
    with capture(targets, acc.hook):
        for s in range(0, len(prompts), batch_size):
            acc.batch_groups = list(groups[s : s + batch_size])
            generate(
                pipe, prompts[s : s + batch_size], seeds[s : s + batch_size],
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type="latent",
            )  # fmt: skip
    return acc.means()


def fit_repair(
    weights: dict[str, Tensor],
    prune: dict[str, Tensor],
    gram_keep: dict[str, Tensor],
    gram_concept: dict[str, Tensor] | None,
    *,
    concept_weight: float,
    damping: float,
) -> dict[str, LayerRepair]:
    """The repaired rows of every layer with a pruned entry; ``weights`` are the *unedited* weights by layer name."""
    out = {}
    for name, w in weights.items():
        p = prune[name]
        if not bool(p.any()):
            continue
        try:
            out[name] = repair_layer(
                w.detach().cpu(), p.cpu(), gram_keep[name], None if gram_concept is None else gram_concept[name],
                concept_weight=concept_weight, damping=damping,
            )
        except RepairError as exc:
            raise FIAError(f"the repair of layer {name} cannot be fitted: {exc}") from None
    return out


@dataclass(frozen=True)
class RepairGrams:
    """The repair's Gram matrices per target layer and the prompt counts they came from.

    ``keep`` pools every kept prompt; a balanced repair has instead each kept
    group's (``groups``: group -> layer -> ``G_g``, ``group_sizes``: its prompts)
    and ``keep`` is empty.
    """

    keep: dict[str, Tensor]
    concept: dict[str, Tensor]
    keep_prompts: int
    concept_prompts: int
    groups: dict[str, dict[str, Tensor]] | None = None
    group_sizes: dict[str, int] | None = None


def repair_grams(pipe: Any, targets: Sequence[TargetLinear], concepts: Sequence[str], config: Any) -> RepairGrams:
    """``G_k`` and ``G_c`` of every target on ``pipe`` (unedited), from the task's repair prompts
    (:meth:`fia.tasks.Task.repair_prompts`), at the config's guidance and its schedule (``repair.steps``
    steps when set)."""
    from fia.tasks import task_of

    if config.repair is None:
        raise FIAError("the repair needs its settings; set FIACausalConfig(repair=RepairConfig())")
    rp = task_of(config).repair_prompts(concepts, config.repair, anchors=config.anchors, seed=config.seed)
    if not rp.keep:
        raise FIAError("the repair has no kept prompts (every concept is erased); drop --repair or keep some concepts")
    # a fixed batch, whatever config.batch_size: batched kernels round a sample's activations by the batch
    # it runs in, and the repaired rows must not depend on the memory knob (tests/erase/test_batching.py)
    sampler = {"num_inference_steps": config.repair.steps or config.num_inference_steps, "guidance_scale": config.guidance_scale,
               "batch_size": GRAM_BATCH}  # fmt: skip
    concept = collect_grams(pipe, targets, rp.concept, rp.concept_seeds, rows="cond", **sampler)
    if config.repair.balance_rounds > 0:
        groups = collect_group_grams(pipe, targets, rp.keep, rp.keep_seeds, rp.keep_groups, **sampler)
        sizes = {g: rp.keep_groups.count(g) for g in groups}
        return RepairGrams({}, concept, len(rp.keep), len(rp.concept), groups, sizes)
    keep = collect_grams(pipe, targets, rp.keep, rp.keep_seeds, rows="all", **sampler)
    return RepairGrams(keep, concept, len(rp.keep), len(rp.concept))


def fit_repair_for(weights: dict[str, Tensor], prune: dict[str, Tensor], grams: RepairGrams, config: Any) -> dict[str, LayerRepair]:
    """:func:`fit_repair` with ``config.repair``'s settings."""
    rc = config.repair
    if grams.groups is None:
        return fit_repair(weights, prune, grams.keep, grams.concept, concept_weight=rc.concept_weight, damping=rc.damping)
    unedited = {name: w.detach().cpu() for name, w in weights.items()}
    try:
        balanced = balanced_repair(unedited, prune, grams.groups, grams.group_sizes, grams.concept,
                                   concept_weight=rc.concept_weight, damping=rc.damping, rounds=rc.balance_rounds)
    except RepairError as exc:
        raise FIAError(f"the balanced repair cannot be fitted: {exc}") from None
    return balanced.result
