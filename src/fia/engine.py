"""The FIA engine: plan an erase run, then run it (per-concept loop -> selection -> fusion).

Two steps, as a diffusers pipeline runs ``check_inputs`` before any work:

1. :func:`plan_erase` checks every input (concept names, settings, prompt
   files) and builds each concept's paired prompts (:mod:`fia.prompts`).
   It is cheap and touches no model; the CLI calls it before loading one.
2. :func:`erase` runs a plan on a pipeline. For the paper variant, for each
   concept ``c``:

   a. get its concept sensitivity ``A`` (Eq. 3) per target layer, from the
      cache (:mod:`fia.cache`) or by sampling (:func:`fia.collect.concept_sensitivity`);
   b. select its concept-sensitive neurons ``Q_c`` (Eq. 4-6, or one level
      only: ``config.selection``) and free ``A``, so memory does not grow
      with the number of concepts beyond those small masks;

   then fuse the masks of all concepts (Eq. 7-8, or the union ablation:
   ``config.fusion``) into a :class:`~fia.mask.ConceptMask`. The causal
   variant (``config.variant == "causal"``) is run by :mod:`fia.causal`, the
   rewrite variant by :mod:`fia.rewrite`.

The FIA family registers here as unlearning methods (:mod:`fia.methods`):
``fia`` (the config's variant), ``fia-causal``, ``fia-rewrite``, and the ablations
``fia-union``, ``fia-wanda``, ``fia-channel`` and ``fia-layer``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fia.cache import ConceptCache, sensitivity_key
from fia.config import FIAConfig
from fia.errors import FIAError
from fia.io import atomic_write_text
from fia.mask import ConceptMask, denoiser, fingerprint_weights
from fia.methods import register
from fia.progress import Progress, report
from fia.prompts import (
    ConceptPrompts,
    build_prompts,
    check_config_world,
    parse_concepts,
)
from fia.targets import find_targets

# each concept is this many progress units, so a concept's sampler steps show inside its share
UNITS_PER_CONCEPT = 100


@dataclass(frozen=True)
class ErasePlan:
    """A checked erase run: the concepts, the settings and (paper variant) each concept's prompts."""

    concepts: list[str]
    config: FIAConfig
    prompts: dict[str, ConceptPrompts]


def plan_erase(
    concepts: str | Sequence[str],
    config: FIAConfig | None = None,
    *,
    concept_prompts: str | Path | None = None,
    base_prompts: str | Path | None = None,
    prompts: Mapping[str, ConceptPrompts] | None = None,
) -> ErasePlan:
    """Check an erase run's inputs and build its prompts; raises :class:`FIAError` naming the problem.

    ``prompts`` gives ready :class:`ConceptPrompts` for some or all concepts;
    the others come from the task's templates, or from the prompt files
    ``concept_prompts`` / ``base_prompts`` (paper variant only: the causal
    variant builds its own evidence prompts).
    """
    config = (config or FIAConfig()).validate()
    names = parse_concepts(concepts)
    if config.variant in ("causal", "rewrite"):
        if concept_prompts is not None or base_prompts is not None:
            raise FIAError(
                f"prompt files apply to --variant paper; the {config.variant} variant builds its own "
                "prompts (name concepts to keep with --anchors)"
            )
        if config.repair is not None:
            both = sorted({c.casefold() for c in names} & {a.casefold() for a in config.anchors})
            if both:
                raise FIAError(
                    f"{', '.join(both)} is both erased and an anchor; the repair cannot restore and erase "
                    "the same concept: drop it from --anchors"
                )
        return ErasePlan(names, config, {})
    given = dict(prompts or {})
    built = {c: given.get(c) or build_prompts(c, config, concept_prompts, base_prompts) for c in names}
    return ErasePlan(names, config, built)


def erase(
    pipe: Any,
    concepts: str | Sequence[str] | ErasePlan,
    config: FIAConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    concept_prompts: str | Path | None = None,
    base_prompts: str | Path | None = None,
    prompts: Mapping[str, ConceptPrompts] | None = None,
    targets: Any = None,
    progress: Progress | None = None,
) -> ConceptMask:
    """Find the FIA pruning mask that erases ``concepts`` from ``pipe``'s denoiser.

    The model is not changed: apply the result with ``mask.apply_(pipe)``.

    Args:
        pipe: a diffusers text-to-image pipeline (SD 1.x/2.x/XL, ...).
        concepts: names (``["golf ball", "church"]`` or ``"golf ball, church"``),
            or an :class:`ErasePlan` from :func:`plan_erase` (then ``config``
            and the prompt arguments must be left out: the plan has them).
        config: hyperparameters (default: ``FIAConfig()``, the object task).
        cache_dir: folder of per-concept results for reuse and resume.
        concept_prompts / base_prompts: prompt files replacing the templates
            (one prompt per line, ``{concept}`` placeholder in concept files).
        prompts: ready :class:`ConceptPrompts` per concept (overrides the above).
        targets: a target filter ``(module, name) -> bool`` instead of
            ``config.targets``.
        progress: ``progress(done, total, message)`` (:mod:`fia.progress`).

    Returns:
        The fused :class:`ConceptMask`; ``mask.stats`` holds the fusion
        statistics (per layer and concept counts, seconds per concept).
    """
    if isinstance(concepts, ErasePlan):
        if config is not None or concept_prompts is not None or base_prompts is not None or prompts is not None:
            raise FIAError("erase got a plan and settings; put the settings in plan_erase(...) instead")
        plan = concepts
    else:
        plan = plan_erase(concepts, config, concept_prompts=concept_prompts, base_prompts=base_prompts, prompts=prompts)
    if plan.config.task == "shapeworld":
        check_config_world(pipe, plan.config.world)  # before any work
    found = find_targets(denoiser(pipe), targets if targets is not None else plan.config.targets)
    target_kind = plan.config.targets if targets is None else "custom"
    cache = ConceptCache(cache_dir) if cache_dir is not None else None
    if plan.config.variant == "causal":
        from fia.causal import causal_erase

        return causal_erase(pipe, plan.concepts, plan.config, found, target_kind=target_kind, cache=cache, progress=progress)
    if plan.config.variant == "rewrite":
        from fia.rewrite import rewrite_erase

        return rewrite_erase(pipe, plan.concepts, plan.config, found, target_kind=target_kind, progress=progress)
    return _paper_erase(pipe, plan, found, target_kind, cache, progress)


def _flat_indices(q: Tensor) -> Tensor:
    return torch.nonzero(q.reshape(-1).cpu(), as_tuple=False).reshape(-1).to(torch.int32)


def _paper_erase(
    pipe: Any, plan: ErasePlan, found: list, target_kind: str, cache: ConceptCache | None, progress: Progress | None
) -> ConceptMask:
    from fia.collect import concept_sensitivity
    from fia.core.fuse import fuse_by_rule
    from fia.core.select import select_neurons

    t_start = time.perf_counter()
    config, names = plan.config, plan.concepts
    weights = {t.name: t.module.weight for t in found}
    layers = {name: (int(w.shape[0]), int(w.shape[1])) for name, w in weights.items()}
    dtype = next(iter(weights.values())).dtype
    fingerprint = fingerprint_weights(weights)
    total_units = UNITS_PER_CONCEPT * len(names)

    selected: dict[str, dict[str, Tensor]] = {}  # concept -> layer -> flat int32 indices of Q_c
    per_concept: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(names):
        t0 = time.perf_counter()
        r2 = config.r2_for(c)
        cp = plan.prompts[c]
        key = sensitivity_key(pipe, cp, config, layers=layers, model_fingerprint=fingerprint, dtype=dtype)
        entry = cache.entry(key) if cache is not None else None
        sens = cache.load_sensitivity(entry) if cache is not None else None
        cached = sens is not None
        offset = UNITS_PER_CONCEPT * i
        report(progress, offset, total_units, f"{c}" + (" (cached)" if cached else ""))
        if sens is None:

            def step(done: int, total: int, _message: str, _c: str = c, _offset: int = offset) -> None:
                report(progress, _offset + UNITS_PER_CONCEPT * min(done, total) // max(total, 1), total_units, _c)

            sens = concept_sensitivity(
                pipe, list(cp.concept_prompts), list(cp.base_prompts), list(cp.concept_seeds), list(cp.base_seeds),
                config, found, r1=key["r1"], progress=step,
            )  # fmt: skip
            missing = set(layers) - set(sens)
            if missing:  # pragma: no cover - engine contract
                raise RuntimeError(f"concept_sensitivity returned no result for {sorted(missing)}")
            if cache is not None:
                cache.save_sensitivity(entry, {n: sens[n] for n in layers})
        q_idx = {name: _flat_indices(select_neurons(sens[name].float().cpu(), r2, config.selection)) for name in layers}
        del sens  # free A before the next concept
        selected[c] = q_idx
        seconds = time.perf_counter() - t0
        n_sel = int(sum(int(v.numel()) for v in q_idx.values()))
        per_concept[c] = {
            "seconds": round(seconds, 3),
            "cached": cached,
            "selected": n_sel,
            "r1": key["r1"],
            "r2": r2,
            "concept_prompts": len(cp.concept_prompts),
            "base_prompts": len(cp.base_prompts),
            "cache_file": entry.path.name if entry is not None else None,
        }
        report(progress, offset + UNITS_PER_CONCEPT, total_units, f"{c}: {n_sel} neurons selected")

    t_fuse = time.perf_counter()
    prune: dict[str, Tensor] = {}
    agnostic: dict[str, int] = {}
    tau: dict[str, int] = {}
    sel_counts: dict[str, dict[str, int]] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    for name, shape in layers.items():
        masks = []
        for c in names:
            m = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
            m[selected[c][name].long()] = True
            masks.append(m.reshape(shape))
        fused = fuse_by_rule(masks, config.alpha, config.fusion)
        del masks
        prune[name] = fused.prune
        agnostic[name] = int(fused.agnostic.sum())
        tau[name] = int(fused.tau_ca)
        sel_counts[name] = {c: int(selected[c][name].numel()) for c in names}
        per_layer[name] = {
            "shape": list(shape),
            "selected": sel_counts[name],
            "pruned": int(fused.prune.sum()),
            "agnostic": agnostic[name],
            "tau_ca": tau[name],
        }
    mask = ConceptMask.from_prune_masks(
        weights,
        prune,
        concepts=names,
        config=config.to_dict(),
        target_kind=target_kind,
        agnostic=agnostic,
        tau_ca=tau,
        selected=sel_counts,
        fingerprint=fingerprint,
    )
    fuse_seconds = time.perf_counter() - t_fuse
    mask.stats = {
        "concepts": names,
        "tau_ca": next(iter(tau.values())) if tau else None,
        "per_concept": per_concept,
        "per_layer": per_layer,
        "totals": {
            "pruned": mask.pruned,
            "agnostic": mask.agnostic,
            "weights": mask.total_weights,
            "pruned_share": mask.pruned_share,
        },
        "seconds": {"fuse": round(fuse_seconds, 3), "total": round(time.perf_counter() - t_start, 3)},
    }
    return mask


def write_stats(mask: ConceptMask, path: str | Path) -> Path:
    """Write ``mask.stats`` as JSON (atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(mask.stats or {}, indent=2, sort_keys=False) + "\n")
    return path


# ------------------------------------------------------------ method registry
def _fia_method(name: str):
    def run(pipe: Any, concepts: list[str], config: FIAConfig, *, preserve, prompts, progress, cache_dir) -> ConceptMask:
        """FIA as a registered method.

        ``preserve`` becomes the causal and rewrite variants' anchors (unless
        the config names its own); the paper variant keeps general neurons
        through fusion, not through named concepts, and ignores it.
        """
        if preserve and config.variant in ("causal", "rewrite") and not config.anchors:
            config = config.replace(anchors=list(preserve))
        plan = plan_erase(concepts, config, prompts=prompts if config.variant == "paper" else None)
        mask = erase(pipe, plan, cache_dir=cache_dir, progress=progress)
        mask.method = name
        return mask

    return run



_FIA_FAMILY = {
    "fia": ("Forget-It-All (the config's variant; the paper's Eq. 1-8 by default)", FIAConfig),
    "fia-causal": ("FIA's causal variant (weights scored by the model's own evidence)", lambda: FIAConfig(variant="causal")),
    "fia-rewrite": ("FIA's rewrite variant (closed-form FFN2 rewrite, no pruning)", lambda: FIAConfig(variant="rewrite")),
    "fia-union": ("FIA ablation: union fusion, no concept-agnostic retention", lambda: FIAConfig(fusion="union")),
    "fia-wanda": ("FIA ablation: wanda saliency |W| * ||X_j|| instead of Eq. 1", lambda: FIAConfig(saliency="wanda")),
    "fia-channel": ("FIA ablation: channel-level selection only (Eq. 4)", lambda: FIAConfig(selection="channel")),
    "fia-layer": ("FIA ablation: layer-level selection only (Eq. 5)", lambda: FIAConfig(selection="layer")),
}
for _name, (_description, _default) in _FIA_FAMILY.items():
    register(_name, FIAConfig, _description, default_config=_default)(_fia_method(_name))
