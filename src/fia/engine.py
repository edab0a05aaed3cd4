"""``fia.erase``: plan an erase run, then run it with the implementation of its config's type.

Two steps, as a diffusers pipeline runs ``check_inputs`` before any work:

1. :func:`plan_erase` (:mod:`fia.plan`) checks every input (concept names,
   settings, prompt files) and builds the paper variant's paired prompts. It
   is cheap and touches no model; the CLI calls it before loading one.
2. :func:`erase` runs a plan on a pipeline. The config's type picks the
   implementation (:data:`fia.registry.ERASERS`): :class:`~fia.config.FIAConfig`
   the paper's FIA (:mod:`fia.paper`), :class:`~fia.config.FIACausalConfig`
   the causal variant (:mod:`fia.causal`), :class:`~fia.config.FIARewriteConfig`
   the rewrite variant (:mod:`fia.rewrite`).

The FIA family is also registered as unlearning methods (:mod:`fia.registry`):
``fia``, ``fia-causal``, ``fia-rewrite``, and the ablations ``fia-union``,
``fia-wanda``, ``fia-channel`` and ``fia-layer``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fia.config import FIASettings
from fia.errors import FIAError
from fia.io import atomic_write_text
from fia.mask import ConceptMask
from fia.parallel import Workers
from fia.plan import ErasePlan, plan_erase
from fia.progress import Progress
from fia.prompts import ConceptPrompts
from fia.registry import run_plan

__all__ = ["ErasePlan", "erase", "plan_erase", "write_stats"]


def erase(
    pipe: Any,
    concepts: str | Sequence[str] | ErasePlan,
    config: FIASettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    concept_prompts: str | Path | None = None,
    base_prompts: str | Path | None = None,
    prompts: Mapping[str, ConceptPrompts] | None = None,
    targets: Any = None,
    progress: Progress | None = None,
    workers: Workers | None = None,
    max_memory: str | int | None = None,
) -> ConceptMask:
    """Find the FIA edit that erases ``concepts`` from ``pipe``'s denoiser.

    The model is not changed: apply the result with ``mask.apply_(pipe)``.

    Args:
        pipe: a diffusers text-to-image pipeline (SD 1.x/2.x/XL, ...).
        concepts: names (``["golf ball", "church"]`` or ``"golf ball, church"``),
            or an :class:`ErasePlan` from :func:`plan_erase` (then ``config``
            and the prompt arguments must be left out: the plan has them).
        config: the settings of one FIA variant, whose type picks it:
            :class:`~fia.config.FIAConfig` (the paper's, the default:
            ``FIAConfig()``, the object task), :class:`~fia.config.FIACausalConfig`
            or :class:`~fia.config.FIARewriteConfig`.
        cache_dir: folder of per-concept results for reuse and resume.
        concept_prompts / base_prompts: prompt files replacing the templates
            (one prompt per line, ``{concept}`` placeholder in concept files).
        prompts: ready :class:`ConceptPrompts` per concept (overrides the above).
        targets: a target filter ``(module, name) -> bool`` instead of
            ``config.targets``.
        progress: ``progress(done, total, message)`` (:mod:`fia.progress`).
        workers: the processes the concepts are split over (:mod:`fia.parallel`);
            left out, those an ``accelerate launch`` or ``torchrun`` started, else
            one process. Every process returns the same mask (docs/parallel.md).
        max_memory: the memory the run may take (bytes or ``"24GB"``); the
            variants estimate their peak before any work and raise
            :class:`~fia.errors.FIAError` when it exceeds this, or, left
            out, the device's free memory (:mod:`fia.memory`).

    Returns:
        The :class:`ConceptMask`; ``mask.stats`` holds the run's statistics
        (per layer and concept counts, seconds per concept).
    """
    if isinstance(concepts, ErasePlan):
        if config is not None or concept_prompts is not None or base_prompts is not None or prompts is not None:
            raise FIAError("erase got a plan and settings; put the settings in plan_erase(...) instead")
        plan = concepts
    else:
        plan = plan_erase(concepts, config, concept_prompts=concept_prompts, base_prompts=base_prompts, prompts=prompts)
    return run_plan(pipe, plan, cache_dir=cache_dir, targets=targets, progress=progress, workers=workers, max_memory=max_memory)


def write_stats(mask: ConceptMask, path: str | Path) -> Path:
    """Write ``mask.stats`` as JSON (atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(mask.stats or {}, indent=2, sort_keys=False) + "\n")
    return path
