"""ConceptPrune: training-free erasure by pruning "skilled neurons" of FFN2.

Reference: R. Chavhan, D. Li, T. Hospedales, "ConceptPrune: Concept Editing in
Diffusion Models via Skilled Neuron Pruning", arXiv:2405.19237 (ICLR 2025),
method section (skilled-neuron discovery with the Wanda score, per timestep,
and its aggregation over timesteps; pruning of the skilled neurons).

What is implemented
-------------------
Target layers: the second linear of every transformer feed-forward block
(FFN2: the last ``nn.Linear`` of each diffusers ``FeedForward``), weight
``W`` of shape ``(C_out, C_in)``; a "neuron" is one weight ``W_ij``.

1. Wanda score (Sun et al., arXiv:2306.11695, Eq. 1), per layer and per
   denoising step ``t``, for a prompt set ``P``::

       S_t^P[i, j] = |W_ij| * || X_j ||_2

   ``X_j`` is input column ``j`` of FFN2 stacked over every position and
   every prompt of ``P`` at step ``t`` (so ``||X_j||^2`` is a sum of squares
   and batching prompts changes nothing).
2. Skilled neurons of step ``t``: among the weights whose score for the
   concept prompts exceeds that for the reference prompts,
   ``D_t = S_t^concept - S_t^reference > 0``, the top ``sparsity`` share by
   ``D_t`` (``K = max(1, floor(sparsity * n))`` with ``n`` = weights of the
   layer, or of one output row when ``group="row"`` as in Wanda's
   per-output comparison groups).
3. Aggregation over the first ``saliency_steps`` steps by frequency: a weight
   is skilled when it was selected in at least ``ceil(step_share * T)`` of the
   ``T`` steps (at least one).
4. Several concepts: the union of their skilled neurons. Pruning sets those
   weights to zero; nothing else changes. The result is a
   :class:`fia.mask.ConceptMask` (method ``conceptprune``): the pipeline is
   only read, and ``mask.apply_(pipe)`` prunes it.

Choices where the paper leaves room (each is a :class:`ConceptPruneConfig`
field): the paper tunes ``k`` per concept, our default is 1 %; the
frequency threshold defaults to half the scored steps; the sampler is the
pipeline's own (its scheduler, CFG ``7.5``, ``num_inference_steps=50``),
stopped after the first ``saliency_steps=10`` steps, the only ones scored;
with classifier-free guidance both halves of the batch feed ``X``
(``cfg_rows="both"``; ``"cond"`` keeps the text half); ties in the top-k
are broken by lower flat index; the prompt sets and seeds are FIA's own
(:meth:`fia.tasks.Task.concept_prompts`) so that both methods see the same text
and noise. ConceptPrune has no preservation term: ``preserve`` is accepted
for interface compatibility and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from fia.config import check_fraction, check_nonnegative, check_positive_int
from fia.defaults import DEFAULT_TASK, SD_SAMPLER
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.progress import Progress, report
from fia.prompts import ConceptPrompts
from fia.tasks import TASKS, get_task
from fia.targets import find_targets
from fia.sampling import capture, first_steps, generators

GROUPS = ("layer", "row")
CFG_ROWS = ("both", "cond")


@dataclass(frozen=True)
class ConceptPruneConfig:
    """Settings of ConceptPrune.

    Attributes:
        sparsity: ``k``, the share of a layer's weights selected per step
            (1 %, the paper's setting for most concepts).
        step_share: a weight is pruned if selected in at least this share of
            the scored steps.
        saliency_steps: number of first denoising steps scored; the sampler
            stops after them.
        num_inference_steps: length of the schedule those steps belong to.
        guidance_scale: classifier-free guidance of the sampler.
        seed: base seed of the prompts (as in :meth:`fia.tasks.Task.concept_prompts`).
        batch_size: prompts per sampler call (``None``: the whole set).
        cfg_rows: which rows of a guided batch form ``X``: ``both`` halves or
            the ``cond`` (text) half.
        group: top-k over the whole ``layer`` or per output ``row``.
        task: template family of the default prompts (see :mod:`fia.tasks`).
        prompt_limit: keep at most this many default prompts per set.
    """

    sparsity: float = 0.01
    step_share: float = 0.5
    saliency_steps: int = 10
    num_inference_steps: int = SD_SAMPLER.num_inference_steps
    guidance_scale: float = SD_SAMPLER.guidance_scale
    seed: int = 0
    batch_size: int | None = None
    cfg_rows: Literal["both", "cond"] = "both"
    group: Literal["layer", "row"] = "layer"
    task: str = DEFAULT_TASK
    prompt_limit: int | None = None

    def validate(self) -> ConceptPruneConfig:
        check_fraction("sparsity", self.sparsity)
        check_fraction("step_share", self.step_share)
        check_positive_int("saliency_steps", self.saliency_steps)
        check_positive_int("num_inference_steps", self.num_inference_steps)
        if self.saliency_steps > self.num_inference_steps:
            raise FIAError(
                f"saliency_steps ({self.saliency_steps}) exceed num_inference_steps "
                f"({self.num_inference_steps}); lower the first or raise the second"
            )
        check_nonnegative("guidance_scale", self.guidance_scale)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        if self.prompt_limit is not None:
            check_positive_int("prompt_limit", self.prompt_limit)
        if self.cfg_rows not in CFG_ROWS:
            raise FIAError(f"unknown cfg_rows {self.cfg_rows!r}; use one of: {', '.join(CFG_ROWS)}")
        if self.group not in GROUPS:
            raise FIAError(f"unknown group {self.group!r}; use one of: {', '.join(GROUPS)}")
        if self.task not in TASKS:
            raise FIAError(f"unknown task {self.task!r}; use one of: {', '.join(TASKS)}")
        return self

    def replace(self, **changes: Any) -> ConceptPruneConfig:
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------- pure math
def wanda_scores(weight: Tensor, sq_norms: Tensor) -> Tensor:
    """Wanda ``|W_ij| * ||X_j||`` for each step: ``sq_norms`` (T, C_in) of ``||X_j||^2`` -> (T, C_out, C_in)."""
    return weight.abs().float().unsqueeze(0) * sq_norms.float().clamp_min(0).sqrt().unsqueeze(1)


def _top_positive(d: Tensor, share: float, group: str) -> Tensor:
    """Bool mask: per group, the top ``max(1, floor(share*n))`` entries of ``d`` that are > 0.

    Ties are broken by lower index (stable descending sort).
    """
    rows = d.reshape(1, -1) if group == "layer" else d
    n = rows.shape[1]
    k = min(n, max(1, math.floor(share * n + 1e-9)))
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return (mask & (rows > 0)).reshape(d.shape)


def skilled_neurons(
    concept_scores: Tensor,
    reference_scores: Tensor,
    sparsity: float,
    step_share: float,
    group: str = "layer",
) -> Tensor:
    """Skilled neurons of one layer from per-step scores (T, C_out, C_in) -> bool (C_out, C_in).

    Per step ``t``: the top ``sparsity`` share of ``D_t = concept - reference``
    among entries with ``D_t > 0``; then kept if selected in at least
    ``max(1, ceil(step_share * T))`` steps.
    """
    if concept_scores.shape != reference_scores.shape or concept_scores.dim() != 3:
        raise ValueError(
            f"scores must both be (T, C_out, C_in); got {tuple(concept_scores.shape)} and "
            f"{tuple(reference_scores.shape)}"
        )
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    steps = concept_scores.shape[0]
    counts = torch.zeros(concept_scores.shape[1:], dtype=torch.int32)
    for t in range(steps):
        diff = concept_scores[t].float() - reference_scores[t].float()
        counts += _top_positive(diff, sparsity, group).to(torch.int32)
    need = max(1, math.ceil(step_share * steps - 1e-9))
    return counts >= need


# ------------------------------------------------------------ activations
def ffn2_linears(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """FFN2 of every transformer block (:func:`fia.targets.find_targets`), by qualified name, in module order."""
    return {t.name: t.module for t in find_targets(unet, "ffn2")}


def collect_sq_norms(
    pipe: Any,
    prompts: Sequence[str],
    config: ConceptPruneConfig,
    layers: Mapping[str, torch.nn.Linear] | None = None,
    *,
    seeds: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """``||X_j||^2`` per FFN2 layer and scored step, summed over all ``prompts``: {name: (T, C_in)}.

    Runs the pipeline's own sampler on the prompts (prompt ``k`` with seed
    ``seeds[k]``, default ``config.seed + k``) and stops it after
    ``config.saliency_steps`` steps.
    """
    seeds = list(seeds) if seeds is not None else [config.seed + k for k in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise FIAError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    layers = dict(layers) if layers is not None else ffn2_linears(pipe.unet)
    steps = config.saliency_steps
    sums = {name: torch.zeros(steps, lin.in_features, dtype=torch.float64) for name, lin in layers.items()}
    step = 0  # the denoising step the next denoiser call belongs to
    guided = config.guidance_scale > 1.0

    def add_sq_norms(name: str, _module: torch.nn.Module, args: tuple, _output: Tensor) -> None:
        if step >= steps:  # a pipeline that ignores the interrupt; first_steps reports it
            return
        x = args[0].detach()
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if guided and config.cfg_rows == "cond":
            x = x[x.shape[0] // 2 :]
        sums[name][step] += x.double().pow(2).sum(dim=(0, 1)).cpu()

    def next_step(done: int) -> None:
        nonlocal step
        step = done

    batch = config.batch_size or len(prompts)
    with capture(layers, add_sq_norms):
        for start in range(0, len(prompts), batch):
            step = 0
            first_steps(
                pipe,
                steps,
                config.num_inference_steps,
                on_step=next_step,
                prompt=list(prompts[start : start + batch]),
                guidance_scale=config.guidance_scale,
                generator=generators(seeds[start : start + batch]),
            )
    return sums


def _as_prompts(concept: str, given: Any, config: ConceptPruneConfig) -> ConceptPrompts:
    if given is None:
        cp = get_task(config.task).concept_prompts(concept, config.seed)
    elif isinstance(given, ConceptPrompts):
        cp = given
    else:
        try:
            c_list, r_list = given
        except (TypeError, ValueError):
            raise FIAError(
                f"prompts for {concept!r} must be a ConceptPrompts or a (concept prompts, reference prompts) pair"
            ) from None
        for label, lst in (("concept", c_list), ("reference", r_list)):
            if isinstance(lst, str) or not lst:
                raise FIAError(f"the {label} prompts of {concept!r} must be a non-empty list of strings")
        cp = ConceptPrompts(
            concept,
            tuple(c_list),
            tuple(r_list),
            tuple(config.seed + k for k in range(len(c_list))),
            tuple(config.seed + k for k in range(len(r_list))),
        )
    if config.prompt_limit is not None:
        n = config.prompt_limit
        cp = ConceptPrompts(
            cp.concept, cp.concept_prompts[:n], cp.base_prompts[:n], cp.concept_seeds[:n], cp.base_seeds[:n]
        )
    return cp


def unlearn(
    pipe: Any,
    concepts: Sequence[str],
    config: ConceptPruneConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    prompts: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_dir: Any = None,
) -> ConceptMask:
    """The mask of the skilled neurons of ``concepts`` in ``pipe``'s FFN2 layers.

    Registered as ``conceptprune``: call it through :func:`fia.unlearn`,
    which checks the names and the config. ``pipe`` is not changed; prune
    it with ``mask.apply_(pipe)`` (a :class:`fia.mask.ConceptMask` with
    method ``conceptprune``). ``prompts`` maps a concept to a
    :class:`fia.prompts.ConceptPrompts` or a ``(concept prompts, reference
    prompts)`` pair (seeds ``seed + k``); other concepts get FIA's prompts
    and seeds for ``config.task``. ``preserve`` is ignored (the method has
    no preservation term).
    """
    config = config or ConceptPruneConfig()
    prompts = dict(prompts or {})
    layers = ffn2_linears(pipe.unet)
    weights = {name: lin.weight.detach().cpu() for name, lin in layers.items()}
    union = {name: torch.zeros(w.shape, dtype=torch.bool) for name, w in weights.items()}
    ref_cache: dict[tuple, dict[str, Tensor]] = {}
    for n, concept in enumerate(concepts):
        report(progress, n, len(concepts), f"ConceptPrune: scoring {concept!r}")
        cp = _as_prompts(concept, prompts.get(concept), config)
        key = (cp.base_prompts, cp.base_seeds)
        if key not in ref_cache:
            ref_cache[key] = collect_sq_norms(pipe, cp.base_prompts, config, layers, seeds=cp.base_seeds)
        ref = ref_cache[key]
        con = collect_sq_norms(pipe, cp.concept_prompts, config, layers, seeds=cp.concept_seeds)
        for name, w in weights.items():
            union[name] |= skilled_neurons(
                wanda_scores(w, con[name]),
                wanda_scores(w, ref[name]),
                config.sparsity,
                config.step_share,
                config.group,
            )
    mask = ConceptMask.from_prune_masks(
        weights, union, concepts=list(concepts), config=config.to_dict(), target_kind="ffn2", method="conceptprune"
    )
    report(progress, len(concepts), len(concepts), "ConceptPrune: mask ready")
    return mask
