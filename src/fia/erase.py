"""Erase concepts: per-concept sensitivity (cached, resumable) -> selection -> fusion.

For each concept ``c``:

1. build its paired prompts (:mod:`fia.prompts`);
2. get its concept sensitivity ``A`` (Eq. 3) per target layer, from the
   cache or by sampling (:func:`fia.collect.concept_sensitivity`);
3. select its concept-sensitive neurons ``Q_c = select(A, r2_c)`` (Eq. 4-6)
   and free ``A``: only the selected indices are kept, so memory does not
   grow with the number of concepts beyond those small masks.

Then the masks of all concepts are fused (Eq. 7-8) into a
:class:`~fia.mask.ConceptMask`.

Cache: with ``cache_dir``, each concept's ``A`` is written (atomically, as
soon as the concept is done) to ``<cache_dir>/<concept slug>-<hash>.safetensors``,
where the hash covers everything ``A`` depends on: the model fingerprint,
the scheduler, the concept, its prompts and seeds, ``r1``, the saliency and
schedule settings, the saliency kind, ``cfg_rows``, the target layers and the
dtype. So adding or dropping a concept, or changing ``alpha`` or ``r2``,
re-fuses in seconds; an interrupted run resumes from the concepts already
done. ``alpha``, ``r2`` and the batch size (which never changes a result) are
not part of the key. :func:`concept_cache_key` defines the key; the
evaluation report finds a run's entries with it (:func:`run_cache_entries`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fia.config import FIAConfig
from fia.errors import FIAError
from fia.io import atomic_write_bytes, atomic_write_text
from fia.mask import ConceptMask, denoiser, fingerprint_weights
from fia.prompts import ConceptPrompts, build_prompts, concept_value, parse_concepts

CACHE_FORMAT = 1
_CACHE_KEY = "fia-sensitivity"

# progress(event, **info); events: "concept_start" (concept, index, total, cached),
# "concept_progress" (concept, done, total), "concept_done" (concept, seconds, cached, selected),
# "fuse_done" (seconds)
ProgressFn = Callable[..., None]


def slugify(concept: str) -> str:
    """``"Van Gogh"`` -> ``"van-gogh"`` (file-name safe, at most 40 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", concept.casefold()).strip("-")
    return (slug or "concept")[:40]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def sensitivity_settings(
    pipe: Any,
    prompts: ConceptPrompts,
    config: FIAConfig,
    *,
    r1: float,
    layers: dict[str, tuple[int, int]],
    model_fingerprint: str,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Everything a concept's sensitivity ``A`` depends on (the cache key's content)."""
    scheduler = getattr(pipe, "scheduler", None)
    sched_cfg: Any = None
    if scheduler is not None and hasattr(scheduler, "config"):
        try:
            sched_cfg = json.loads(json.dumps(dict(scheduler.config), sort_keys=True, default=str))
        except Exception:  # pragma: no cover - exotic scheduler configs
            sched_cfg = None
    return {
        "cache_format": CACHE_FORMAT,
        "model_fingerprint": model_fingerprint,
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        "scheduler_config": sched_cfg,
        "concept": prompts.concept,
        "concept_prompts": list(prompts.concept_prompts),
        "base_prompts": list(prompts.base_prompts),
        "concept_seeds": list(prompts.concept_seeds),
        "base_seeds": list(prompts.base_seeds),
        "r1": r1,
        "saliency_steps": config.saliency_steps,
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "saliency": config.saliency,
        # wanda entries cached before its rows were scaled to unit length hold
        # another reduction; this marker keeps them from being reused (energy
        # entries keep their keys)
        **({"wanda_rows": "unit-length"} if config.saliency == "wanda" else {}),
        "cfg_rows": config.cfg_rows,
        "eps": config.eps,
        "targets": config.targets,
        "layers": [[name, list(shape)] for name, shape in layers.items()],
        "dtype": _dtype_name(dtype),
    }


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path, concept: str, settings: dict[str, Any]) -> Path:
    return Path(cache_dir) / f"{slugify(concept)}-{settings_hash(settings)}.safetensors"


def concept_cache_key(
    pipe: Any,
    concept: str,
    prompts: ConceptPrompts,
    config: FIAConfig,
    *,
    layers: dict[str, tuple[int, int]],
    model_fingerprint: str,
    dtype: torch.dtype | str,
) -> dict[str, Any]:
    """The settings ``concept``'s sensitivity ``A`` is cached under in a run (its cache key).

    This is the one definition of the key: :func:`erase` writes and reads
    ``A`` at ``cache_path(cache_dir, concept, key)``, and the evaluation
    report finds the entry a run used the same way (:func:`run_cache_entries`),
    so it never picks up an entry made with other settings.
    """
    r1 = concept_value(config.r1_overrides, concept, config.r1)
    return sensitivity_settings(
        pipe, prompts, config, r1=r1, layers=layers, model_fingerprint=model_fingerprint, dtype=dtype
    )


def run_config(mask: ConceptMask) -> FIAConfig:
    """The :class:`FIAConfig` of the run that made ``mask`` (extra keys such as an ablation's are left out)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(FIAConfig)}
    return FIAConfig.from_dict({k: v for k, v in (mask.config or {}).items() if k in known})


def run_cache_entries(
    cache_dir: str | Path,
    pipe: Any,
    mask: ConceptMask,
    prompts: dict[str, ConceptPrompts] | None = None,
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Per concept of ``mask``, the cache file its erase run used and that file's key.

    The key is rebuilt from the mask's provenance (settings, layers, model
    fingerprint, dtype) and ``pipe``'s scheduler. ``prompts`` are the run's
    prompt sets when they did not come from the task's templates (prompt
    files); without them the templates are used.
    """
    config = run_config(mask)
    layers = {lm.name: (int(lm.shape[0]), int(lm.shape[1])) for lm in mask.layers}
    out = {}
    for c in mask.concepts:
        cp = (prompts or {}).get(c) or build_prompts(c, config)
        key = concept_cache_key(pipe, c, cp, config, layers=layers, model_fingerprint=mask.fingerprint, dtype=mask.dtype)
        out[c] = (cache_path(cache_dir, c, key), key)
    return out


def save_sensitivity(path: Path, sens: dict[str, Tensor], settings: dict[str, Any]) -> None:
    """Write one concept's ``A`` (per layer) with its settings, atomically."""
    from safetensors.torch import save

    tensors = {name: a.detach().to("cpu", torch.float32).contiguous() for name, a in sens.items()}
    data = save(tensors, metadata={_CACHE_KEY: json.dumps(settings, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_sensitivity(path: Path, settings: dict[str, Any]) -> dict[str, Tensor] | None:
    """The cached ``A`` at ``path`` if it exists and was made with exactly ``settings``."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if json.loads(meta.get(_CACHE_KEY, "null")) != json.loads(json.dumps(settings, sort_keys=True)):
                return None
            sens = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception:
        return None  # a damaged cache entry is recomputed
    expected = {name: tuple(shape) for name, shape in settings["layers"]}
    if set(sens) != set(expected) or any(tuple(sens[n].shape) != expected[n] for n in sens):
        return None
    return sens


def _flat_indices(q: Tensor) -> Tensor:
    return torch.nonzero(q.reshape(-1).cpu(), as_tuple=False).reshape(-1).to(torch.int32)


def _compute_sensitivity(pipe, prompts: ConceptPrompts, config: FIAConfig, targets, r1: float, progress) -> dict[str, Tensor]:
    from fia import collect

    return collect.concept_sensitivity(
        pipe,
        list(prompts.concept_prompts),
        list(prompts.base_prompts),
        list(prompts.concept_seeds),
        list(prompts.base_seeds),
        config,
        targets,
        r1=r1,
        progress=progress,
    )


def erase(
    pipe: Any,
    concepts: str | Sequence[str],
    config: FIAConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    concept_prompts: str | Path | None = None,
    base_prompts: str | Path | None = None,
    prompts: dict[str, ConceptPrompts] | None = None,
    targets: Any = None,
    progress: ProgressFn | None = None,
) -> ConceptMask:
    """Find the FIA pruning mask that erases ``concepts`` from ``pipe``'s denoiser.

    The model is not changed: apply the result with ``mask.apply_(pipe)``.

    Args:
        pipe: a diffusers text-to-image pipeline (SD 1.x/2.x/XL, ...).
        concepts: names (``["golf ball", "church"]`` or ``"golf ball, church"``).
        config: hyperparameters (default: ``FIAConfig()``, the object task).
        cache_dir: folder of per-concept results for reuse and resume.
        concept_prompts / base_prompts: prompt files replacing the templates
            (one prompt per line, ``{concept}`` placeholder in concept files).
        prompts: ready :class:`ConceptPrompts` per concept (overrides the above).
        targets: a target filter ``(module, name) -> bool`` instead of
            ``config.targets``.
        progress: ``progress(event, **info)`` callback (see module source).

    Returns:
        The fused :class:`ConceptMask`; ``mask.stats`` holds the fusion
        statistics (per layer and concept counts, seconds per concept).
    """
    from fia.core.fuse import fuse_masks
    from fia.core.select import select_concept_neurons
    from fia.targets import find_targets

    t_start = time.perf_counter()
    config = (config or FIAConfig()).validate()
    names = parse_concepts(concepts)
    if config.variant == "causal" and (concept_prompts is not None or base_prompts is not None):
        raise FIAError(
            "prompt files apply to --variant paper; the causal variant builds its own evidence "
            "prompts (name concepts to keep with --anchors)"
        )
    plan = {c: (prompts or {}).get(c) or build_prompts(c, config, concept_prompts, base_prompts) for c in names}
    model = denoiser(pipe)
    found = find_targets(model, targets if targets is not None else config.targets)
    target_kind = config.targets if targets is None else "custom"
    weights = {t.name: t.module.weight for t in found}
    layers = {name: (int(w.shape[0]), int(w.shape[1])) for name, w in weights.items()}
    dtype = next(iter(weights.values())).dtype
    fingerprint = fingerprint_weights(weights)
    cache = Path(cache_dir) if cache_dir is not None else None
    emit = progress or (lambda *a, **k: None)
    if config.variant == "causal":
        from fia.causal import causal_erase

        return causal_erase(pipe, names, config, found, target_kind=target_kind, cache_dir=cache, progress=progress)

    selected: dict[str, dict[str, Tensor]] = {}  # concept -> layer -> flat int32 indices of Q_c
    per_concept: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(names):
        t0 = time.perf_counter()
        r2 = concept_value(config.r2_overrides, c, config.r2)
        cp = plan[c]
        settings = concept_cache_key(pipe, c, cp, config, layers=layers, model_fingerprint=fingerprint, dtype=dtype)
        r1 = settings["r1"]
        path = cache_path(cache, c, settings) if cache is not None else None
        sens = load_sensitivity(path, settings) if path is not None else None
        cached = sens is not None
        emit("concept_start", concept=c, index=i, total=len(names), cached=cached)
        if sens is None:

            def _step(*args: Any, _c: str = c, **kwargs: Any) -> None:
                emit("concept_progress", concept=_c, args=args, **kwargs)

            sens = _compute_sensitivity(pipe, cp, config, found, r1, _step)
            missing = set(layers) - set(sens)
            if missing:  # pragma: no cover - engine contract
                raise RuntimeError(f"concept_sensitivity returned no result for {sorted(missing)}")
            if path is not None:
                save_sensitivity(path, {n: sens[n] for n in layers}, settings)
        q_idx = {}
        for name in layers:
            a = sens[name]
            q_idx[name] = _flat_indices(select_concept_neurons(a.float().cpu(), r2))
        del sens, a  # free A before the next concept
        selected[c] = q_idx
        seconds = time.perf_counter() - t0
        n_sel = int(sum(int(v.numel()) for v in q_idx.values()))
        per_concept[c] = {
            "seconds": round(seconds, 3),
            "cached": cached,
            "selected": n_sel,
            "r1": r1,
            "r2": r2,
            "concept_prompts": len(cp.concept_prompts),
            "base_prompts": len(cp.base_prompts),
            "cache_file": path.name if path is not None else None,
        }
        emit("concept_done", concept=c, index=i, total=len(names), seconds=seconds, cached=cached, selected=n_sel)

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
        fused = fuse_masks(masks, config.alpha)
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
    emit("fuse_done", seconds=fuse_seconds)
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


class _CallableModule(types.ModuleType):
    """Lets ``fia.erase(...)`` work even when ``fia.erase`` resolves to this module."""

    def __call__(self, *args: Any, **kwargs: Any) -> ConceptMask:
        return erase(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
