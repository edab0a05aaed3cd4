"""FIA's causal variant: prune the weights the model's own evidence for a concept rests on.

Why a variant. On the shipped ShapeWorld model the paper's saliency (Eq. 1-2)
finds neurons that *respond* to a concept, yet zeroing them leaves the concept
drawn: their rank correlation with a causal attribution is about 0, and FIA
removes nothing at the paper's sparsity (``benchmarks/ffn_localisation.py``).
This variant keeps FIA's frame (contrastive prompts, a sparse mask on the
target linears, no weight optimised, retention of what other concepts need)
and replaces the score by a causal one, measured without any classifier.

Evidence. A latent ``z`` is sampled from concept prompt ``p`` by the model's
own guided sampler (``score_steps`` steps, all of them, with gradients). The
model's evidence that ``z`` shows ``p`` rather than its contrasts ``q_1..q_m``
is the diffusion-classifier log-odds of the *unedited* denoiser ``f``:

    E(z) = sum_{t in T} [ mean_j ||f(z_t, t, q_j) - y_t||^2 - ||f(z_t, t, p) - y_t||^2 ] / d

with ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) n`` (fixed noise ``n``), ``y_t``
the denoiser's training target (noise, velocity or sample, as the scheduler
predicts) and ``d`` the latent size. The judge stays the unedited model in
every round, so pruning cannot lower the evidence by breaking the judge.

Score and selection (:mod:`fia.core.attribution`). ``g_c(w) = w * dE_c/dw``,
averaged over the concept's prompts, is the evidence weight ``w`` carries
through the sampler; the same averaged over the anchors' prompts (concepts
that must stay) gives ``g_a``. Per round a concept takes its top ``budget / rounds``
share of all target weights by ``g_c - anchor_weight * max(g_a, 0)``.

Fusion (Eq. 7-8). In each round a weight chosen by at least
``tau_ca = max(2, ceil(alpha * C))`` of the C concepts is concept-agnostic
and kept; the others are zeroed. Then the next round re-scores on the edited
model: first-order scores go stale as weights go, and re-scoring is what
turns a weight set that dents the concept into one that removes it.

Cost per round: one backward pass through the sampler per concept, and one
for the anchors unless ``rescore_anchors`` is off (then the anchors are
scored once, on the unedited model, and their ``g_a`` serves every round).
Finished rounds are cached, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor

from fia.config import FIACausalConfig
from fia.core._fractions import top_count
from fia.core.attribution import contrast_scores, global_top_k, round_sizes
from fia.core.fuse import fuse_masks
from fia.errors import FIAError
from fia.progress import Progress, report
from fia.cache import ConceptCache, rounds_key
from fia.mask import ConceptMask
from fia.parallel import Workers
from fia.prompts import EvidencePrompts
from fia.sampling import generators, initial_latents
from fia.targets import TargetLinear, denoiser
from fia.tasks import task_of
from fia.weights import fingerprint_weights


# prompts per backward pass when config.batch_size is not set (the gradient is summed over micro-batches)
MICRO_BATCH = 16

# judge(latents, prompts, contrasts) -> summed evidence that each latent shows its
# prompt rather than its contrasts; differentiable in the latents. The default
# judge is the unedited diffusion model itself (no classifier); an external one
# (a classifier reading decoded images) gives the judge-guided upper bound of
# benchmarks/ffn_localisation.py.
Judge = Callable[[Tensor, Sequence[str], Sequence[Sequence[str]]], Tensor]


# ----------------------------------------------------------------- the model side
class _Model:
    """Text encoding, the differentiable sampler and the frozen judge of one pipeline."""

    def __init__(self, pipe: Any, targets: list[TargetLinear], config: FIACausalConfig, judge: Judge | None = None):
        self.pipe = pipe
        self.judge = judge
        self.unet = denoiser(pipe)
        self.config = config
        ucfg = getattr(self.unet, "config", None)
        if not hasattr(pipe, "encode_prompt") or getattr(ucfg, "addition_embed_type", None) is not None or not hasattr(ucfg, "sample_size"):
            raise FIAError(
                f"the causal variant runs on Stable Diffusion 1.x/2.x-style pipelines; "
                f"{type(pipe).__name__} is not one: use --variant paper"
            )
        self.targets = targets
        self.device = next(self.unet.parameters()).device
        self.dtype = next(self.unet.parameters()).dtype
        # the judge is the unedited model: its target weights are these copies
        self.pristine = {f"{t.name}.weight": t.module.weight.detach().clone() for t in targets}
        self._embeds: dict[str, Tensor] = {}
        self._uncond: Tensor | None = None

    def embed(self, prompts: Sequence[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeds]
        if missing:
            with torch.no_grad():
                emb = self.pipe.encode_prompt(missing, self.device, 1, False)[0]
            self._embeds.update({p: e for p, e in zip(missing, emb)})
        return torch.stack([self._embeds[p] for p in prompts])

    def uncond(self, n: int) -> Tensor:
        if self._uncond is None:
            self._uncond = self.embed([""])
        return self._uncond.expand(n, -1, -1)

    def micro_batch(self, ep: EvidencePrompts) -> int:
        """Prompts per backward pass of :meth:`evidence_gradient` on ``ep``."""
        # with checkpointing, memory follows the batch, not the prompts or steps
        return self.config.batch_size or min(len(ep.prompts), MICRO_BATCH)

    @staticmethod
    def judge_texts(prompts: Sequence[str], contrasts: Sequence[Sequence[str]]) -> list[str]:
        """The texts one call of the judge reads: the prompts, then their ``m`` contrasts, contrast by contrast."""
        return list(prompts) + [c[j] for j in range(len(contrasts[0])) for c in contrasts]

    def embed_as_scored(self, sets: Sequence[EvidencePrompts]) -> None:
        """Encode the prompts of ``sets`` in the batches that scoring the sets in this order encodes them in.

        A prompt's embedding can depend on the batch it is encoded with (a
        matrix product may block its rows differently), and scoring encodes
        each prompt with the others new at that point. A process that scores
        only some of a round's sets (:mod:`fia.parallel`) replays the
        encodings of all of them first, so its embeddings are bit for bit
        those of one process scoring every set; in one process this is what
        the scoring does anyway, so nothing changes.
        """
        for ep in sets:
            size = self.micro_batch(ep)
            for s in range(0, len(ep.prompts), size):
                sl = slice(s, s + size)
                self.uncond(1)  # as sample() does: the empty prompt, then the batch's prompts
                self.embed(ep.prompts[sl])
                if self.judge is None:  # as evidence() does
                    self.embed(self.judge_texts(ep.prompts[sl], ep.contrasts[sl]))

    def _scheduler(self):
        sched = copy.deepcopy(self.pipe.scheduler)
        sched.set_timesteps(self.config.score_steps, device=self.device)
        return sched

    def initial_latents(self, seeds: Sequence[int]) -> Tensor:
        """One latent per seed, drawn on the CPU by the seeding rule of :mod:`fia.sampling`."""
        return initial_latents(self.unet, seeds)

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """Final latents of the guided sampler, differentiable in the target weights."""
        sched = self._scheduler()
        n = len(prompts)
        lat = self.initial_latents(seeds) * sched.init_noise_sigma
        emb = torch.cat([self.uncond(n), self.embed(prompts)])
        g = self.config.guidance_scale
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([lat, lat]), t)
            out = self._denoise(inp, t, emb)
            u, c = out.chunk(2)
            lat = sched.step(u + g * (c - u), t, lat).prev_sample
        return lat

    def _denoise(self, inp: Tensor, t: Tensor, emb: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """One denoiser call; under autograd its activations are recomputed in the backward pass
        (gradient checkpointing), so memory holds one call's activations, not the whole sampler's."""

        def run(x: Tensor, e: Tensor) -> Tensor:
            if weights is None:
                return self.unet(x, t, encoder_hidden_states=e).sample
            return torch.func.functional_call(self.unet, weights, (x, t), {"encoder_hidden_states": e}).sample

        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(run, inp, emb, use_reentrant=False)
        return run(inp, emb)

    def evidence(self, z: Tensor, prompts: Sequence[str], contrasts: Sequence[Sequence[str]], seeds: Sequence[int]) -> Tensor:
        """Sum over images of E(z) (module docstring), judged by the unedited model or ``self.judge``."""
        if self.judge is not None:
            return self.judge(z, prompts, contrasts)
        sched = self.pipe.scheduler
        alphas = sched.alphas_cumprod.to(self.device)
        n_train = int(sched.config.num_train_timesteps)
        kind = sched.config.prediction_type
        m = len(contrasts[0])
        total = z.new_zeros(())
        for i, share in enumerate(self.config.evidence_timesteps):
            t = min(n_train - 1, int(share * n_train))
            gens = generators([int(s) * 7919 + i for s in seeds])
            noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in gens]).to(z)
            a, b = alphas[t].sqrt().to(z.dtype), (1 - alphas[t]).sqrt().to(z.dtype)
            zt = a * z + b * noise
            target = noise if kind == "epsilon" else (a * noise - b * z if kind == "v_prediction" else z)
            tt = torch.full((len(prompts),), t, device=self.device)

            # the prompt and its m contrasts in one batched call of the judge
            texts = self.judge_texts(prompts, contrasts)
            pred = self._denoise(zt.repeat(m + 1, 1, 1, 1), tt.repeat(m + 1), self.embed(texts), self.pristine)
            wide = torch.promote_types(pred.dtype, torch.float32)  # half models: square in float32
            err = (pred.to(wide) - target.to(wide).repeat(m + 1, 1, 1, 1)).pow(2).flatten(1).mean(1)
            err = err.reshape(m + 1, len(prompts))
            total = total + (err[1:].mean(0) - err[0]).sum()
        return total

    def evidence_gradient(self, ep: EvidencePrompts) -> dict[str, Tensor]:
        """``g(w) = w * dE/dw`` for every target weight, E summed over ``ep``'s prompts
        (E itself, a float, is kept in ``self.last_evidence``)."""
        weights = [t.module.weight for t in self.targets]
        flags = {p: p.requires_grad for p in self.unet.parameters()}
        for p in self.unet.parameters():
            p.requires_grad_(False)
        grads = [torch.zeros_like(w, dtype=torch.promote_types(w.dtype, torch.float32)) for w in weights]
        size = self.micro_batch(ep)
        self.last_evidence = 0.0
        try:
            for w in weights:
                w.requires_grad_(True)
            for s in range(0, len(ep.prompts), size):
                sl = slice(s, s + size)
                z = self.sample(ep.prompts[sl], ep.seeds[sl])
                e = self.evidence(z, ep.prompts[sl], ep.contrasts[sl], ep.seeds[sl])
                self.last_evidence += float(e.detach())
                for acc, gw in zip(grads, torch.autograd.grad(e, weights)):
                    acc += gw.to(acc.dtype)
        finally:
            for p, f in flags.items():
                p.requires_grad_(f)
        return {t.name: t.module.weight.detach().to(g.dtype) * g for t, g in zip(self.targets, grads)}

    def zero_(self, prune: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for t in self.targets:
                t.module.weight[prune[t.name].to(self.device)] = 0

    def write_rows_(self, repairs: dict[str, Any]) -> None:
        """Put the closed-form repair's rows into the model (over the zeroed weights)."""
        with torch.no_grad():
            for t in self.targets:
                if t.name in repairs:
                    r = repairs[t.name]
                    t.module.weight[r.rows.to(self.device)] = r.values.to(self.device, self.dtype)

    def unedited(self) -> dict[str, Tensor]:
        return {t.name: self.pristine[f"{t.name}.weight"] for t in self.targets}

    def restore_(self) -> None:
        with torch.no_grad():
            for t in self.targets:
                t.module.weight.copy_(self.pristine[f"{t.name}.weight"])

    @contextlib.contextmanager
    def as_unedited(self):
        """The target weights as the unedited model's inside the block, as they were after it."""
        with torch.no_grad():
            now = [t.module.weight.detach().clone() for t in self.targets]
            self.restore_()
        try:
            yield
        finally:
            with torch.no_grad():
                for t, w in zip(self.targets, now):
                    t.module.weight.copy_(w)


# ------------------------------------------------------------------------- erase
def evidence_and_anchors(
    names: Sequence[str], config: FIACausalConfig
) -> tuple[dict[str, EvidencePrompts], EvidencePrompts | None]:
    """Each concept's evidence prompts and the anchors' prompts (``None`` without an anchor penalty), from the task."""
    task = task_of(config)
    plans = {
        c: task.evidence_prompts(c, count=config.concept_prompts_per_concept, contrasts=config.contrasts,
                                 anchors=config.anchors, seed=config.seed)
        for c in names
    }  # fmt: skip
    anchors = None
    if config.anchor_weight > 0:
        anchors = task.anchor_prompts(names, count=config.anchor_prompts, contrasts=config.contrasts,
                                      anchors=config.anchors, seed=config.seed)  # fmt: skip
    return plans, anchors


def _evidence_gone(config: FIACausalConfig, first: float, now: float) -> bool:
    """The adaptive budget's test: the concept's mean evidence is down to ``stop_evidence`` of its first round's."""
    return config.stop_evidence is not None and first > 0 and now <= config.stop_evidence * first


@dataclass
class _Rounds:
    """What the rounds have done so far; the adaptive budget reads its evidence record."""

    names: list[str]
    shapes: dict[str, tuple[int, int]]
    pruned: dict[str, Tensor] = field(init=False)
    selected: dict[str, dict[str, int]] = field(init=False)
    agnostic: dict[str, int] = field(init=False)
    seconds: dict[str, float] = field(init=False)  # each concept's own gradients
    first_evidence: dict[str, float] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    evidence_per_round: list[dict[str, float]] = field(default_factory=list)
    per_round: list[dict[str, Any]] = field(default_factory=list)
    tau: int = 0

    def __post_init__(self) -> None:
        self.pruned = {n: torch.zeros(s, dtype=torch.bool) for n, s in self.shapes.items()}
        self.selected = {n: {c: 0 for c in self.names} for n in self.shapes}
        self.agnostic = {n: 0 for n in self.shapes}
        self.seconds = {c: 0.0 for c in self.names}

    def absorb(self, done: dict[str, Tensor], counts: dict[str, Any], config: FIACausalConfig) -> None:
        """Add a finished (or cached) round: its pruned entries, counts and evidence (which may stop a concept)."""
        self.tau = counts["tau_ca"]
        for c, e in counts.get("evidence", {}).items():
            self.first_evidence.setdefault(c, e)
            if _evidence_gone(config, self.first_evidence[c], e):
                self.stopped.add(c)
        self.evidence_per_round.append(counts.get("evidence", {}))
        for n in self.shapes:
            self.agnostic[n] += counts["agnostic"][n]
            for c in self.names:
                self.selected[n][c] += counts["selected"][n][c]
            self.pruned[n] |= done[n]


@dataclass
class _Job:
    """What every round of one run reads: the model, the prompts, the round sizes, the cache, the processes."""

    model: _Model
    names: list[str]
    plans: dict[str, EvidencePrompts]
    anchors: EvidencePrompts | None
    config: FIACausalConfig
    sizes: list[int]  # weights each concept takes per round
    cache: ConceptCache | None
    key: str  # the rounds' cache key
    workers: Workers
    progress: Progress | None
    anchor_gradient: dict[str, Tensor] | None = None  # the unedited model's g_a, kept when anchors are scored once

    @property
    def units_per_round(self) -> int:
        """Progress units of a round: one for the anchors (if any) and one per concept."""
        return len(self.names) + (1 if self.anchors is not None else 0)

    @property
    def total_units(self) -> int:
        return self.units_per_round * len(self.sizes)


def _anchor_gradient(job: _Job, edited: bool) -> dict[str, Tensor] | None:
    """The anchors' per-prompt mean ``g_a``: scored by the main process, sent to the others bit for bit.

    The anchors' prompts are not split: a gradient summed over shares would round differently.
    Without ``rescore_anchors`` it is scored once, on the unedited model (``edited``: weights are
    zeroed already, as in a run resumed from cached rounds), and kept for every later round.
    """
    if job.anchors is None:
        return None
    if job.anchor_gradient is not None:  # kept only when the anchors are scored once
        return job.anchor_gradient
    once = not job.config.rescore_anchors
    model, workers = job.model, job.workers
    if workers.is_main:
        with model.as_unedited() if once and edited else contextlib.nullcontext():
            g_anchor = {n: g / len(job.anchors.prompts) for n, g in model.evidence_gradient(job.anchors).items()}
    else:  # filled by the main process's broadcast below
        g_anchor = {t.name: torch.empty(t.module.weight.shape, device=t.module.weight.device,
                                        dtype=torch.promote_types(t.module.weight.dtype, torch.float32))
                    for t in model.targets}  # fmt: skip
    for t in model.targets:
        workers.broadcast_(g_anchor[t.name])
    if once:
        job.anchor_gradient = g_anchor
    return g_anchor


def _score_concept(
    job: _Job, c: str, g_anchor: dict[str, Tensor] | None, k: int, state: _Rounds
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Concept ``c``'s top ``k`` of this round (flat int32 indices per layer) and its record: mean evidence, seconds."""
    model, config, ep = job.model, job.config, job.plans[c]
    t0 = time.perf_counter()
    # per-prompt means, so anchor_weight does not depend on how many prompts each side has
    g_c = {n: g / len(ep.prompts) for n, g in model.evidence_gradient(ep).items()}
    evidence = model.last_evidence / len(ep.prompts)
    chosen = {}
    if not _evidence_gone(config, state.first_evidence.get(c, evidence), evidence):
        scores = {n: contrast_scores(g_c[n], None if g_anchor is None else g_anchor[n], config.anchor_weight) for n in state.shapes}
        chosen = global_top_k(scores, k, exclude=state.pruned)
    indices = {n: _flat_indices(chosen[n]) if n in chosen else torch.zeros(0, dtype=torch.int32) for n in state.shapes}
    return indices, {"evidence": evidence, "seconds": time.perf_counter() - t0}


def _flat_indices(chosen: Tensor) -> Tensor:
    return torch.nonzero(chosen.reshape(-1), as_tuple=False).reshape(-1).to(torch.int32)


def _score_round(
    job: _Job, k: int, state: _Rounds, tick: Callable[[str], None]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One round: score the anchors and every concept still running, take each one's top ``k``, fuse (Eq. 7-8).

    The running concepts are dealt over the processes (:mod:`fia.parallel`); their choices and evidence
    are gathered, so every process fuses, zeroes and stops concepts alike. Returns the round's pruned
    entries per layer and its counts (as the cache stores them), with each scored concept's mean evidence
    on the model as this round found it.
    """
    workers, names = job.workers, job.names
    running = [c for c in names if c not in state.stopped]  # a stopped concept's evidence is gone: it takes no more
    anchors_now = job.anchors is not None and job.anchor_gradient is None
    job.model.embed_as_scored(([job.anchors] if anchors_now else []) + [job.plans[c] for c in running])
    g_anchor = _anchor_gradient(job, edited=any(bool(p.any()) for p in state.pruned.values()))
    if g_anchor is not None:
        tick("anchors scored" if anchors_now else "anchors as scored before")
    mine = {}
    for p in workers.share(len(running)):
        mine[p] = _score_concept(job, running[p], g_anchor, k, state)
        tick(f"{running[p]} scored")
    scored = dict(zip(running, workers.gather_shares(len(running), mine)))
    chosen, evidence = [], {}
    for c in names:
        if c not in scored:
            chosen.append({n: torch.zeros(s, dtype=torch.bool) for n, s in state.shapes.items()})
            tick(f"{c} stopped")
            continue
        indices, record = scored[c]
        chosen.append({n: _dense(indices[n], s) for n, s in state.shapes.items()})
        evidence[c] = record["evidence"]
        state.seconds[c] += record["seconds"]
        owner = workers.owner(running.index(c))
        if owner != workers.rank:
            tick(f"{c} scored by process {owner + 1}")
    return _fuse_round(names, chosen, evidence, state.shapes, job.config.alpha)


def _dense(indices: Tensor, shape: tuple[int, int]) -> Tensor:
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    mask[indices.long()] = True
    return mask.reshape(shape)


def _fuse_round(
    names: list[str], chosen: list[dict[str, Tensor]], evidence: dict[str, float], shapes: dict[str, tuple[int, int]],
    alpha: float,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Fuse the concepts' choices of one round per layer (Eq. 7-8): the pruned entries and the round's counts."""
    done, counts = {}, {"agnostic": {}, "selected": {}, "tau_ca": 0, "evidence": evidence}
    for n in shapes:
        fused = fuse_masks([q[n] for q in chosen], alpha)
        done[n] = fused.prune
        counts["agnostic"][n] = int(fused.agnostic.sum())
        counts["selected"][n] = {c: int(q[n].sum()) for c, q in zip(names, chosen)}
        counts["tau_ca"] = int(fused.tau_ca)
    return done, counts


def _run_stats(
    mask: ConceptMask, state: _Rounds, plans: dict[str, EvidencePrompts], anchors: EvidencePrompts | None,
    grams: Any, repairs: dict[str, Any], repair_seconds: float, total_seconds: float,
) -> dict[str, Any]:
    """The run statistics ``fusion_stats.json`` records: per layer, per concept, per round, the repair, seconds."""
    tau = state.tau
    per_layer = {
        n: {"shape": list(s), "selected": state.selected[n], "pruned": int(state.pruned[n].sum()),
            "agnostic": state.agnostic[n], "tau_ca": tau}
        | ({"repaired_rows": int(repairs[n].rows.numel()) if n in repairs else 0} if grams is not None else {})
        for n, s in state.shapes.items()
    }  # fmt: skip
    stats = {
        "concepts": state.names,
        "variant": "causal",
        "evidence_per_round": state.evidence_per_round,
        "stopped": sorted(state.stopped),
        "tau_ca": tau,
        "per_concept": {c: {"seconds": round(state.seconds[c], 3), "prompts": len(plans[c].prompts)} for c in state.names},
        "anchors": {"prompts": len(anchors.prompts) if anchors else 0},
        "rounds": state.per_round,
        "per_layer": per_layer,
        "totals": {"pruned": mask.pruned, "agnostic": mask.agnostic, "weights": mask.total_weights, "pruned_share": mask.pruned_share},
        "seconds": {"total": round(total_seconds, 3)},
    }
    if grams is not None:
        stats["repair"] = {
            "keep_prompts": grams.keep_prompts, "concept_prompts": grams.concept_prompts,
            "rows": {n: int(rp.rows.numel()) for n, rp in repairs.items()}, "seconds": round(repair_seconds, 3),
        }
    return stats


def _mask_of(weights: dict[str, Tensor], state: _Rounds, names: list[str], config: FIACausalConfig, target_kind: str,
             fingerprint: str, repairs: dict | None) -> ConceptMask:
    """The mask file of the finished rounds: the pruned weights, with the repaired rows when the repair ran."""
    mask = ConceptMask.from_prune_masks(
        weights,
        state.pruned,
        concepts=names,
        config=config.to_dict(),
        target_kind=target_kind,
        agnostic=state.agnostic,
        tau_ca={n: state.tau for n in state.pruned},
        selected=state.selected,
        fingerprint=fingerprint,
    )
    return mask if repairs is None else mask.with_repair(weights, repairs)


def _round(job: _Job, r: int, state: _Rounds) -> tuple[dict[str, Tensor], dict[str, Any], bool]:
    """Round ``r``'s pruned entries and counts, from the cache when every process finds them there, else scored.

    The processes share one cache folder; a scored round is written by the main process only.
    """
    workers, cache, n_rounds = job.workers, job.cache, len(job.sizes)
    loaded = cache.load_round(job.key, r, state.shapes) if cache is not None else None
    if not workers.all_true(loaded is not None):  # all load or all score, or the collectives would part ways
        loaded = None
    unit = job.units_per_round * r
    report(job.progress, unit, job.total_units, f"round {r + 1}/{n_rounds}" + (" (cached)" if loaded else ""))
    if loaded is not None:
        return *loaded, True

    def tick(message: str) -> None:
        nonlocal unit
        unit += 1
        report(job.progress, unit, job.total_units, f"round {r + 1}/{n_rounds}: {message}")

    done, counts = _score_round(job, job.sizes[r], state, tick)
    if cache is not None and workers.is_main:
        cache.save_round(job.key, r, done, counts)
    return done, counts, False


def _repair_grams(pipe: Any, found: list[TargetLinear], job: _Job) -> Any:
    """The repair's Gram matrices of the unedited model, on the main process only (None without a repair).

    The other processes get a :class:`~fia.repair.RepairGrams` with the prompt counts and no matrices:
    the repair is fitted on the main process (:func:`_fit_repair`).
    """
    from fia.repair import RepairGrams, repair_grams

    names, config, workers = job.names, job.config, job.workers
    if config.repair is None:
        return None
    report(job.progress, 0, job.total_units, "repair: reading the kept and concept prompts' layer inputs")
    grams = repair_grams(pipe, found, names, config) if workers.is_main else None
    counts = workers.broadcast_json([grams.keep_prompts, grams.concept_prompts] if grams is not None else None)
    return grams if grams is not None else RepairGrams({}, {}, counts[0], counts[1])


def _fit_repair(job: _Job, state: _Rounds, grams: Any) -> dict[str, Any]:
    """The closed-form repair of the rows pruned so far, fitted on the main process and sent to the others bit for bit."""
    from fia.core.repair import LayerRepair
    from fia.repair import fit_repair_for

    model, workers = job.model, job.workers
    repairs = fit_repair_for(model.unedited(), state.pruned, grams, job.config) if workers.is_main else {}
    rows = workers.broadcast_json({n: int(rp.rows.numel()) for n, rp in repairs.items()} if workers.is_main else None)
    if not workers.is_main:
        width = {n: s[1] for n, s in state.shapes.items()}
        repairs = {n: LayerRepair(torch.empty(k, dtype=torch.int64), torch.empty(k, width[n], dtype=torch.float32))
                   for n, k in rows.items()}  # fmt: skip
    for n in rows:
        workers.broadcast_(repairs[n].rows)
        workers.broadcast_(repairs[n].values)
    return repairs


def causal_erase(
    pipe: Any,
    names: list[str],
    config: FIACausalConfig,
    found: list[TargetLinear],
    *,
    target_kind: str,
    cache: ConceptCache | None = None,
    progress: Progress | None = None,
    judge: Judge | None = None,
    workers: Workers | None = None,
) -> ConceptMask:
    """The causal variant's mask for ``names`` (see the module docstring).

    The model is restored before returning: apply the result with ``mask.apply_(pipe)``.
    What :func:`fia.erase` runs for a :class:`~fia.config.FIACausalConfig`. ``judge``
    replaces the model's own evidence (diagnostics only; not cached). ``workers``:
    the processes each round's concepts are split over (one process when left out).
    """
    t_start = time.perf_counter()
    model = _Model(pipe, found, config, judge)
    if judge is not None:
        cache = None  # an external judge is not part of the cache key
    weights = {t.name: t.module.weight for t in found}
    shapes = {n: (int(w.shape[0]), int(w.shape[1])) for n, w in weights.items()}
    fingerprint = fingerprint_weights(weights)
    sizes = round_sizes(top_count(config.budget, sum(w.numel() for w in weights.values())), config.rounds)
    plans, anchors = evidence_and_anchors(names, config)
    key = rounds_key(fingerprint, names, config, plans, anchors, shapes)
    job = _Job(model, names, plans, anchors, config, sizes, cache, key, workers or Workers.single(), progress)
    t_rep = time.perf_counter()
    grams = _repair_grams(pipe, found, job)  # of the unedited model, before any weight goes
    repair_seconds = time.perf_counter() - t_rep if grams is not None else 0.0
    repairs: dict[str, Any] = {}
    state = _Rounds(names, shapes)
    try:
        for r in range(len(sizes)):
            t_round = time.perf_counter()
            done, counts, cached = _round(job, r, state)
            state.absorb(done, counts, config)
            model.zero_(state.pruned)
            if grams is not None and (config.repair.every_round or r == len(sizes) - 1):
                t_rep = time.perf_counter()
                repairs = _fit_repair(job, state, grams)
                model.write_rows_(repairs)
                repair_seconds += time.perf_counter() - t_rep
            state.per_round.append({"round": r, "pruned": int(sum(int(p.sum()) for p in done.values())),
                                    "cached": cached, "seconds": round(time.perf_counter() - t_round, 3)})
        report(progress, job.total_units, job.total_units, f"{len(sizes)} rounds done")
    finally:
        model.restore_()

    mask = _mask_of(weights, state, names, config, target_kind, fingerprint, repairs if grams is not None else None)
    mask.stats = _run_stats(mask, state, plans, anchors, grams, repairs, repair_seconds, time.perf_counter() - t_start)
    return mask
