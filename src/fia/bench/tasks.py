"""The benchmark's tasks on ShapeWorld, their sizes, prompts and held-out / tuning splits.

The two splits never share a prompt or a seed: the tuning split uses
another colour/place cycle of the prompt grammar (``TUNING_SHIFT``) and seeds
from ``TUNING_SEED`` on, the held-out split ``HELDOUT_SHIFT`` and seeds from
``HELDOUT_SEED``; a suite draws image ``j`` of its ``k``-th prompt of group
``offset`` from seed ``seed_base + 1000 * offset + 10 * k + j``
(:func:`fia.evaluate.suites.shapeworld_suite`), which stays below
``TUNING_SEED`` for the held-out split at every size used here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fia.evaluate.suites import Suite, shapeworld_reference_features, shapeworld_suite
from fia.prompts import ConceptPrompts, build_prompts
from fia.shapeworld.vocab import ATTRIBUTE_NAMES, OBJECT_NAMES, PLACE_NAMES, STYLE_NAMES, place_phrase

METHOD_ORDER = ("fia", "fia-union", "fia-wanda", "fia-channel", "fia-layer", "random", "conceptprune", "uce", "esd-x")
F4_SIZES = (1, 2, 4, 6, 8, 10)
T2_FORGET = OBJECT_NAMES[:5]
TUNING_SEED, HELDOUT_SEED = 1_000_000, 0
TUNING_SHIFT, HELDOUT_SHIFT = 1, 0

# The knob each method tunes and its candidates: the paper's value first,
# then the same number of alternatives for every method (the tuning budget).
TUNING: dict[str, tuple[str, tuple[Any, ...]]] = {
    "fia": ("r2", (0.01, 0.05, 0.2)),
    "fia-union": ("r2", (0.01, 0.05, 0.2)),
    "fia-wanda": ("r2", (0.01, 0.05, 0.2)),
    "fia-channel": ("r2", (0.01, 0.05, 0.2)),
    "fia-layer": ("r2", (0.01, 0.05, 0.2)),
    "conceptprune": ("sparsity", (0.01, 0.05, 0.2)),
    "uce": ("erase_scale", (1.0, 3.0, 10.0)),
    "esd-x": ("lr", (1e-4, 3e-4, 1e-3)),
}


@dataclass
class Sizes:
    """How many prompts, seeds and steps each measurement uses."""

    prompts_per_concept: int = 2
    images_per_prompt: int = 2
    quality_prompts: int = 10
    f4_prompts_per_concept: int = 1
    tune_prompts_per_concept: int = 2
    tune_quality_prompts: int = 6
    esd_steps: int = 30
    f4_sizes: tuple[int, ...] = F4_SIZES
    candidates: int = 3
    batch_size: int = 40
    # None: the model's own sampler and FIA's preset; --quick shortens both
    sample_steps: int | None = None
    saliency_steps: int | None = None


QUICK = Sizes(
    prompts_per_concept=1,
    images_per_prompt=1,
    quality_prompts=2,
    f4_prompts_per_concept=1,
    tune_prompts_per_concept=1,
    tune_quality_prompts=2,
    esd_steps=2,
    f4_sizes=(1, 10),
    candidates=2,
    sample_steps=4,
    saliency_steps=2,
)


# ---------------------------------------------------------------- prompts
def style_prompts(style: str, seed: int = 0) -> ConceptPrompts:
    """'a circle on the grass in the style of Ovalli' against 'a circle on the grass'."""
    concept, base = [], []
    for k, obj in enumerate(OBJECT_NAMES):
        scene = f"a {obj} {place_phrase(PLACE_NAMES[k % len(PLACE_NAMES)])}"
        concept.append(f"{scene} in the style of {style}")
        base.append(scene)
    seeds = tuple(seed + k for k in range(len(concept)))
    return ConceptPrompts(style, tuple(concept), tuple(base), seeds, seeds)


def attribute_prompts(attribute: str, seed: int = 0) -> ConceptPrompts:
    """'a burning circle on the grass' against 'a circle on the grass'."""
    concept, base = [], []
    for k, obj in enumerate(OBJECT_NAMES):
        where = place_phrase(PLACE_NAMES[k % len(PLACE_NAMES)])
        concept.append(f"a {attribute} {obj} {where}")
        base.append(f"a {obj} {where}")
    seeds = tuple(seed + k for k in range(len(concept)))
    return ConceptPrompts(attribute, tuple(concept), tuple(base), seeds, seeds)


def concept_prompts(concepts: list[str], family: str, cfg) -> dict[str, ConceptPrompts]:
    if family == "objects":
        return {c: build_prompts(c, cfg) for c in concepts}
    if family == "styles":
        return {c: style_prompts(c, cfg.seed) for c in concepts}
    return {c: attribute_prompts(c, cfg.seed) for c in concepts}


# ---------------------------------------------------------------- tasks
@dataclass
class Task:
    key: str
    suite: str  # shapeworld-objects / -styles / -attribute
    family: str  # objects / styles / attribute
    forget: list[str]
    prompts_per_concept: int
    quality_prompts: int
    keep_roles: tuple[str, ...] = ("forget", "preserve", "synonym", "quality")
    alpha: float | None = None


def tasks_for(sizes: Sizes) -> list[Task]:
    ppc, q = sizes.prompts_per_concept, sizes.quality_prompts
    out = [
        Task("T1", "shapeworld-objects", "objects", list(OBJECT_NAMES), ppc, q),
        Task("T2", "shapeworld-objects", "objects", list(T2_FORGET), ppc, q),
        Task("T3", "shapeworld-styles", "styles", list(STYLE_NAMES), ppc, q, alpha=0.8),
        Task("T4", "shapeworld-attribute", "attribute", list(ATTRIBUTE_NAMES), ppc, q),
    ]
    for x in sizes.f4_sizes:
        # F4 measures forgetting and keeping only: no synonym or quality images
        out.append(
            Task(f"F4-{x}", "shapeworld-objects", "objects", list(OBJECT_NAMES[:x]), sizes.f4_prompts_per_concept, 1,
                 keep_roles=("forget", "preserve"))  # fmt: skip
        )
    return out


def build_task_suite(task: Task, judge, oracle, ipp: int, seed: int, shift: int) -> Suite:
    def reference(factors):
        return shapeworld_reference_features(oracle, factors, 4, seed + 12345)

    suite = shapeworld_suite(
        task.suite, judge, task.forget, None, ipp, task.prompts_per_concept, task.quality_prompts,
        seed=seed, reference=reference, prompt_shift=shift,
    )  # fmt: skip
    suite.items = [it for it in suite.items if it.role in task.keep_roles]
    return suite


def family_names(family: str) -> tuple[str, ...]:
    return {"objects": OBJECT_NAMES, "styles": STYLE_NAMES, "attribute": ATTRIBUTE_NAMES}[family]
