"""The per-concept cache of an erase run: the one module that knows its format.

An erase run with a cache folder (``fia erase`` uses ``OUT/cache``) keeps

* for the paper variant, each concept's sensitivity ``A`` (Eq. 3, one float32
  tensor per target layer) in ``<concept slug>-<key hash>.safetensors``;
* for the causal variant, each finished round's pruned entries (uint8 per
  layer) and its selection counts in ``causal-<key hash>-round<r>.safetensors``.

Each file's header holds the full key it was made with, and an entry is
used only when its key equals the one asked for exactly, so an entry of
another run (other model, prompts, seeds, r1, ...) is never reused, and a
damaged file is recomputed. Files are written atomically as soon as a
concept (or round) is done: an interrupted run resumes from there.

The key of a sensitivity entry (:func:`sensitivity_key`) covers everything
``A`` depends on: model fingerprint, scheduler and its config, concept,
prompts and seeds, ``r1``, the saliency and schedule settings, saliency kind,
``cfg_rows``, target layers and dtype. ``alpha``, ``r2``, the selection and
fusion rules and the batch size are not in it, so changing them re-fuses in
seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fia.config import FIACausalConfig, FIAConfig
from fia.io import atomic_write_bytes
from fia.prompts import ConceptPrompts
from fia.tasks import build_prompts

CACHE_FORMAT = 1
_SENSITIVITY_HEADER = "fia-sensitivity"
_ROUND_HEADER = "fia-causal"


def slugify(concept: str) -> str:
    """``"Van Gogh"`` -> ``"van-gogh"`` (file-name safe, at most 40 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", concept.casefold()).strip("-")
    return (slug or "concept")[:40]


def key_hash(key: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the key's canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _scheduler_config(pipe: Any) -> tuple[str | None, Any]:
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        return None, None
    try:
        cfg = json.loads(json.dumps(dict(scheduler.config), sort_keys=True, default=str))
    except (TypeError, ValueError, AttributeError):  # pragma: no cover - exotic scheduler configs
        cfg = None
    return type(scheduler).__name__, cfg


def sensitivity_key(
    pipe: Any,
    prompts: ConceptPrompts,
    config: FIAConfig,
    *,
    layers: dict[str, tuple[int, int]],
    model_fingerprint: str,
    dtype: torch.dtype | str,
) -> dict[str, Any]:
    """Everything concept ``prompts.concept``'s sensitivity ``A`` depends on: its cache key."""
    scheduler, scheduler_config = _scheduler_config(pipe)
    return {
        "cache_format": CACHE_FORMAT,
        "model_fingerprint": model_fingerprint,
        "scheduler": scheduler,
        "scheduler_config": scheduler_config,
        "concept": prompts.concept,
        "concept_prompts": list(prompts.concept_prompts),
        "base_prompts": list(prompts.base_prompts),
        "concept_seeds": list(prompts.concept_seeds),
        "base_seeds": list(prompts.base_seeds),
        "r1": config.r1_for(prompts.concept),
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
        "dtype": str(dtype).replace("torch.", ""),
    }


@dataclass(frozen=True)
class CacheEntry:
    """Where a concept's sensitivity lives in the cache, and the key it must carry."""

    concept: str
    path: Path
    key: dict[str, Any]


class ConceptCache:
    """A cache folder: per-concept sensitivities and the causal variant's finished rounds."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    # ------------------------------------------------------------ sensitivity A
    def entry(self, key: dict[str, Any]) -> CacheEntry:
        """The file for ``key`` (its concept is in the key)."""
        concept = key["concept"]
        return CacheEntry(concept, self.folder / f"{slugify(concept)}-{key_hash(key)}.safetensors", key)

    def load_sensitivity(self, entry: CacheEntry) -> dict[str, Tensor] | None:
        """The cached ``A`` of ``entry`` if its file exists and was made with exactly ``entry.key``."""
        loaded = _read(entry.path, _SENSITIVITY_HEADER, json.dumps(entry.key, sort_keys=True))
        if loaded is None:
            return None
        tensors, _ = loaded
        expected = {name: tuple(shape) for name, shape in entry.key["layers"]}
        if set(tensors) != set(expected) or any(tuple(tensors[n].shape) != expected[n] for n in tensors):
            return None
        return tensors

    def save_sensitivity(self, entry: CacheEntry, sens: dict[str, Tensor]) -> None:
        """Write one concept's ``A`` (per layer) under ``entry``, atomically."""
        tensors = {name: a.detach().to("cpu", torch.float32).contiguous() for name, a in sens.items()}
        _write(entry.path, tensors, {_SENSITIVITY_HEADER: json.dumps(entry.key, sort_keys=True)})

    def entries(self, pipe: Any, mask: Any, prompts: dict[str, ConceptPrompts] | None = None) -> dict[str, CacheEntry]:
        """Per concept of ``mask`` (a paper-variant mask), the entry its erase run used.

        The key is rebuilt from the mask's provenance (settings, layers, model
        fingerprint, dtype) and ``pipe``'s scheduler, exactly as the run built
        it. ``prompts`` are the run's prompt sets when they did not come from
        the task's templates (prompt files); without them the templates are used.
        """
        config = FIAConfig.from_run(mask.config)
        layers = {lm.name: (int(lm.shape[0]), int(lm.shape[1])) for lm in mask.layers}
        out = {}
        for c in mask.concepts:
            cp = (prompts or {}).get(c) or build_prompts(c, config)
            key = sensitivity_key(pipe, cp, config, layers=layers, model_fingerprint=mask.fingerprint, dtype=mask.dtype)
            out[c] = self.entry(key)
        return out

    # ------------------------------------------------------ causal variant rounds
    def round_path(self, key: str, r: int) -> Path:
        return self.folder / f"causal-{key}-round{r}.safetensors"

    def load_round(
        self, key: str, r: int, shapes: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """Round ``r``'s pruned entries (bool per layer) and selection counts, if cached under ``key``."""
        loaded = _read(self.round_path(key, r), _ROUND_HEADER, key)
        if loaded is None:
            return None
        tensors, meta = loaded
        try:
            counts = json.loads(meta["counts"])
        except (KeyError, ValueError):
            return None
        if set(tensors) != set(shapes) or any(tuple(tensors[n].shape) != shapes[n] for n in tensors):
            return None
        return {n: t.bool() for n, t in tensors.items()}, counts

    def save_round(self, key: str, r: int, prune: dict[str, Tensor], counts: dict[str, Any]) -> None:
        """One finished round: its pruned entries, and its selection counts as JSON."""
        tensors = {n: p.to(torch.uint8).contiguous() for n, p in prune.items()}
        _write(self.round_path(key, r), tensors, {_ROUND_HEADER: key, "counts": json.dumps(counts, sort_keys=True)})


def _write(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _read(path: Path, header: str, expected: str) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """The tensors and header of ``path`` if its ``header`` field equals ``expected``; else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            # the header holds exactly the string written for this key (canonical JSON or the key hash)
            if meta.get(header) != expected:
                return None
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception:  # noqa: BLE001 - a damaged entry, whatever the damage, is recomputed
        return None
    return tensors, meta


def rounds_key(
    fingerprint: str,
    concepts: list[str],
    config: FIACausalConfig,
    prompts: dict[str, Any],
    anchors: Any,
    shapes: dict[str, tuple[int, int]],
) -> str:
    """The key of a causal run's rounds: model, concepts, every setting, evidence and anchor prompts, layers.

    A repair fitted once after the last round does not change the rounds, so
    its settings are left out of the key: runs that differ only there share
    their rounds (a repair refitted every round is part of them).
    """
    settings = config.to_dict()
    if config.repair is not None and not config.repair.every_round:
        settings.pop("repair")
    return key_hash(
        {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "concepts": concepts,
            "config": settings,
            "prompts": {c: p.to_dict() for c, p in prompts.items()},
            "anchors": anchors.to_dict() if anchors else None,
            "layers": [[n, list(s)] for n, s in shapes.items()],
        }
    )
