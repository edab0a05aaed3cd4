"""The paper's FIA on a planned run: per-concept loop -> selection -> fusion (Eq. 1-8).

For each concept ``c`` of the plan (:func:`fia.plan.plan_erase`):

a. get its concept sensitivity ``A`` (Eq. 3) per target layer, from the
   cache (:mod:`fia.cache`) or by sampling (:func:`fia.collect.concept_sensitivity`);
b. select its concept-sensitive neurons ``Q_c`` (Eq. 4-6, or one level only:
   ``config.selection``) and free ``A``, so memory does not grow with the
   number of concepts beyond those small masks;

then fuse the masks of all concepts (Eq. 7-8, or the union ablation:
``config.fusion``) into a :class:`~fia.mask.ConceptMask`.
``fia.erase(pipe, concepts, FIAConfig(...))`` runs :func:`paper_erase`.

Launched as several processes (:mod:`fia.parallel`), each process runs a and
b for its share of the concepts (concept ``i`` on process ``i % N``); the
selections are gathered in concept order and every process fuses them, so
each returns the same mask as one process would.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from fia.cache import ConceptCache, sensitivity_key
from fia.mask import ConceptMask, fingerprint_weights
from fia.parallel import Workers
from fia.plan import ErasePlan
from fia.progress import Progress, report

# each concept is this many progress units, so a concept's sampler steps show inside its share
UNITS_PER_CONCEPT = 100


def _flat_indices(q: Tensor) -> Tensor:
    return torch.nonzero(q.reshape(-1).cpu(), as_tuple=False).reshape(-1).to(torch.int32)


def paper_erase(
    pipe: Any, plan: ErasePlan, found: list, *, target_kind: str, cache: ConceptCache | None, progress: Progress | None,
    workers: Workers | None = None,
) -> ConceptMask:
    """The paper's mask for the plan's concepts on ``found`` (the target linears of ``pipe``); ``pipe`` is unchanged.

    ``workers``: the processes the concepts are split over (one process when left out).
    """
    t_start = time.perf_counter()
    workers = workers or Workers.single()
    names = plan.concepts
    weights = {t.name: t.module.weight for t in found}
    layers = {name: (int(w.shape[0]), int(w.shape[1])) for name, w in weights.items()}
    fingerprint = fingerprint_weights(weights)
    share = workers.share(len(names))
    mine = {}  # concept position -> (layer -> flat int32 indices of Q_c, its record)
    for j, i in enumerate(share):
        mine[i] = _select_concept(pipe, plan, names[i], j, len(share), found, layers, fingerprint, cache, progress)
        if workers.launched:
            mine[i][1]["process"] = workers.rank
    if workers.launched:
        units = UNITS_PER_CONCEPT * len(share)
        report(progress, units, units, f"{len(share)} concept(s) scored here; waiting for the other processes")
    everyone = workers.gather_shares(len(names), mine)
    selected = {c: everyone[i][0] for i, c in enumerate(names)}
    per_concept = {c: everyone[i][1] for i, c in enumerate(names)}
    t_fuse = time.perf_counter()
    mask, tau, per_layer = _fuse(plan, weights, layers, selected, fingerprint, target_kind)
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
        "seconds": {"fuse": round(time.perf_counter() - t_fuse, 3), "total": round(time.perf_counter() - t_start, 3)},
    }
    return mask


def _select_concept(
    pipe: Any, plan: ErasePlan, c: str, j: int, count: int, found: list, layers: dict[str, tuple[int, int]],
    fingerprint: str, cache: ConceptCache | None, progress: Progress | None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Concept ``c``'s selected neurons per layer (Eq. 4-6) and its record for the statistics.

    ``c`` is the ``j``-th of the ``count`` concepts this process scores (all of them in one process),
    which places it on the progress bar.
    """
    from fia.collect import concept_sensitivity
    from fia.core.select import select_neurons

    t0 = time.perf_counter()
    config = plan.config
    total_units = UNITS_PER_CONCEPT * count
    dtype = found[0].module.weight.dtype
    r2 = config.r2_for(c)
    cp = plan.prompts[c]
    key = sensitivity_key(pipe, cp, config, layers=layers, model_fingerprint=fingerprint, dtype=dtype)
    entry = cache.entry(key) if cache is not None else None
    sens = cache.load_sensitivity(entry) if cache is not None else None
    cached = sens is not None
    offset = UNITS_PER_CONCEPT * j
    report(progress, offset, total_units, f"{c}" + (" (cached)" if cached else ""))
    if sens is None:

        def step(done: int, total: int, _message: str) -> None:
            report(progress, offset + UNITS_PER_CONCEPT * min(done, total) // max(total, 1), total_units, c)

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
    n_sel = int(sum(int(v.numel()) for v in q_idx.values()))
    record = {
        "seconds": round(time.perf_counter() - t0, 3),
        "cached": cached,
        "selected": n_sel,
        "r1": key["r1"],
        "r2": r2,
        "concept_prompts": len(cp.concept_prompts),
        "base_prompts": len(cp.base_prompts),
        "cache_file": entry.path.name if entry is not None else None,
    }
    report(progress, offset + UNITS_PER_CONCEPT, total_units, f"{c}: {n_sel} neurons selected")
    return q_idx, record


def _fuse(
    plan: ErasePlan, weights: dict[str, Tensor], layers: dict[str, tuple[int, int]],
    selected: dict[str, dict[str, Tensor]], fingerprint: str, target_kind: str,
) -> tuple[ConceptMask, dict[str, int], dict[str, dict[str, Any]]]:
    """Fuse every concept's selection per layer (Eq. 7-8): the mask, tau_ca per layer, the per-layer statistics."""
    from fia.core.fuse import fuse_by_rule

    config, names = plan.config, plan.concepts
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
        weights, prune, concepts=names, config=config.to_dict(), target_kind=target_kind,
        agnostic=agnostic, tau_ca=tau, selected=sel_counts, fingerprint=fingerprint,
    )  # fmt: skip
    return mask, tau, per_layer
