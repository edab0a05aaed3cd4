"""The registry: each FIA config type's implementation, and every unlearning method under one name.

This is the one module that imports the implementations (:mod:`fia.paper`,
:mod:`fia.causal`, :mod:`fia.rewrite`, :mod:`fia.baselines`) and registers
them. Nothing imports it back except the public entry points
(:func:`fia.engine.erase`, :func:`fia.methods.unlearn`, the CLI), so there
is no import cycle: an implementation never imports the registry.

* :data:`ERASERS` maps an FIA config type to its implementation, as
  torchao's ``quantize_(model, config)`` picks its transform from the
  config's type; :func:`run_plan` runs a plan with the one its config's
  type names.
* :data:`REGISTRY` maps a method's name to its :class:`Method` (config
  type, default config, description, function). A method is a function
  ``run(pipe, concepts, config, *, preserve, prompts, progress, cache_dir)
  -> Edit``; the contract is :mod:`fia.methods`'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fia.baselines import conceptprune, esd, random, speed, uce
from fia.cache import ConceptCache
from fia.causal import causal_erase
from fia.config import AnchoredSettings, FIACausalConfig, FIAConfig, FIARewriteConfig
from fia.errors import FIAError
from fia.mask import ConceptMask, denoiser
from fia.memory import check_memory
from fia.paper import paper_erase
from fia.parallel import Workers, launched_size
from fia.plan import ErasePlan, plan_erase
from fia.progress import Progress
from fia.rewrite import rewrite_erase
from fia.targets import find_targets
from fia.tasks import task_of


# ------------------------------------------------------------ FIA's variants
def _erase_causal(pipe: Any, plan: ErasePlan, found: list, *, target_kind: str, cache, progress, workers) -> ConceptMask:
    return causal_erase(pipe, plan.concepts, plan.config, found, target_kind=target_kind, cache=cache, progress=progress,
                        workers=workers)  # fmt: skip


def _erase_rewrite(pipe: Any, plan: ErasePlan, found: list, *, target_kind: str, cache, progress, workers) -> ConceptMask:
    # the rewrite keeps nothing between runs: its statistics are cheaper than a cache's bookkeeping; it is one
    # closed-form fit, not a loop over concepts, so it is not split: every process computes the same one
    return rewrite_erase(pipe, plan.concepts, plan.config, found, target_kind=target_kind, progress=progress)


# config type -> implementation(pipe, plan, found targets, *, target_kind, cache, progress, workers) -> ConceptMask
ERASERS: dict[type, Callable[..., ConceptMask]] = {
    FIAConfig: paper_erase,
    FIACausalConfig: _erase_causal,
    FIARewriteConfig: _erase_rewrite,
}


def eraser_for(config: Any) -> Callable[..., ConceptMask]:
    """The implementation of ``config``'s type (a subclass runs its parent's)."""
    for cls in type(config).__mro__:
        if cls in ERASERS:
            return ERASERS[cls]
    names = ", ".join(cls.__name__ for cls in ERASERS)
    raise FIAError(f"no FIA variant takes a {type(config).__name__}; pass one of: {names}")


def run_plan(
    pipe: Any, plan: ErasePlan, *, cache_dir: str | Path | None = None, targets: Any = None,
    progress: Progress | None = None, workers: Workers | None = None, max_memory: str | int | None = None,
) -> ConceptMask:
    """Run a checked plan on ``pipe`` (left unchanged) with the implementation of its config's type.

    What the settings leave to the model is read from it first (on
    ShapeWorld, its world), before any work; then the memory the run will
    need is checked against ``max_memory`` or the device's free memory
    (:func:`fia.memory.check_memory`). ``workers``: the processes the
    concepts are split over; left out, those a launcher started
    (:meth:`Workers.from_environment`), one process when not launched.
    """
    eraser = eraser_for(plan.config)
    config = task_of(plan.config).settle(plan.config, pipe)
    if config != plan.config:
        plan = dataclasses.replace(plan, config=config)
    found = find_targets(denoiser(pipe), targets if targets is not None else config.targets)
    if targets is None:  # the estimate knows the named target kinds, not a custom filter
        check_memory(pipe, plan, max_memory)
    target_kind = config.targets if targets is None else "custom"
    cache = ConceptCache(cache_dir) if cache_dir is not None else None
    if workers is None:
        workers = Workers.single()
        if launched_size() > 1:  # a launcher started several processes: the model's device picks how they talk
            workers = Workers.from_environment(cpu=next(denoiser(pipe).parameters()).device.type == "cpu")
    return eraser(pipe, plan, found, target_kind=target_kind, cache=cache, progress=progress, workers=workers)


# ------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """One registered method: its name, config type, default config and function."""

    name: str
    config_type: type
    description: str
    run: Callable[..., Any]
    default_config: Callable[[], Any]


def _fia_method(name: str) -> Callable[..., ConceptMask]:
    def run(pipe: Any, concepts: list[str], config: Any, *, preserve, prompts, progress, cache_dir) -> ConceptMask:
        """An FIA variant as a registered method.

        ``preserve`` becomes the causal and rewrite variants' anchors (unless
        the config names its own); the paper variant keeps general neurons
        through fusion, not through named concepts, and ignores it.
        """
        anchored = isinstance(config, AnchoredSettings)
        if preserve and anchored and not config.anchors:
            config = config.replace(anchors=list(preserve))
        plan = plan_erase(concepts, config, prompts=None if anchored else prompts)
        mask = run_plan(pipe, plan, cache_dir=cache_dir, progress=progress)
        mask.method = name
        return mask

    return run


_FIA_FAMILY: dict[str, tuple[str, type, Callable[[], Any]]] = {
    "fia": ("Forget-It-All (the paper's Eq. 1-8)", FIAConfig, FIAConfig),
    "fia-causal": ("FIA's causal variant (weights scored by the model's own evidence)", FIACausalConfig, FIACausalConfig),
    "fia-rewrite": ("FIA's rewrite variant (closed-form FFN2 rewrite, no pruning)", FIARewriteConfig, FIARewriteConfig),
    "fia-union": ("FIA ablation: union fusion, no concept-agnostic retention", FIAConfig, lambda: FIAConfig(fusion="union")),
    "fia-wanda": ("FIA ablation: wanda saliency |W| * ||X_j|| instead of Eq. 1", FIAConfig, lambda: FIAConfig(saliency="wanda")),
    "fia-channel": ("FIA ablation: channel-level selection only (Eq. 4)", FIAConfig, lambda: FIAConfig(selection="channel")),
    "fia-layer": ("FIA ablation: layer-level selection only (Eq. 5)", FIAConfig, lambda: FIAConfig(selection="layer")),
}
_BASELINES: dict[str, tuple[str, type, Callable[..., Any]]] = {
    "conceptprune": ("prunes the FFN2 weights that fire for the concept (Chavhan et al. 2025)",
                     conceptprune.ConceptPruneConfig, conceptprune.unlearn),
    "uce": ("closed-form edit of the cross-attention keys and values (Gandikota et al. 2024)", uce.UCEConfig, uce.unlearn),
    "speed": ("closed-form cross-attention edit confined to the retained concepts' null space (Li et al. 2025)",
              speed.SPEEDConfig, speed.unlearn),
    "esd-x": ("fine-tunes the cross-attention with negative guidance (Gandikota et al. 2023)", esd.ESDConfig, esd.unlearn),
    "random": ("control: a random mask with another mask's per-layer counts", random.RandomConfig, random.unlearn),
}  # fmt: skip

REGISTRY: dict[str, Method] = {
    **{name: Method(name, cls, text, _fia_method(name), default) for name, (text, cls, default) in _FIA_FAMILY.items()},
    **{name: Method(name, cls, text, run, cls) for name, (text, cls, run) in _BASELINES.items()},
}
