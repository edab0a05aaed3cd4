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
from fia.prompts import ConceptPrompts
from fia.tasks import build_prompts
from fia.shapeworld.vocab import ATTRIBUTE_NAMES, OBJECT_NAMES, PLACE_NAMES, STYLE_NAMES, place_phrase

# The rows of the benchmark, in table order. The project's default FIA on
# ShapeWorld is its causal variant; the random control copies its per-layer
# counts; "upper-bound" is the judge-guided attribution (it uses the judge,
# so it is a reference, not a method). The FIA ablations are registered
# methods too and run when named with --methods.
DEFAULT_FIA = "fia-causal"
UPPER_BOUND = "upper-bound"
METHOD_ORDER = ("fia", DEFAULT_FIA, "random", "conceptprune", "uce", "esd-x", UPPER_BOUND)
ABLATIONS = ("fia-union", "fia-wanda", "fia-channel", "fia-layer")
KNOWN_METHODS = METHOD_ORDER + ABLATIONS
T2_FORGET = OBJECT_NAMES[:5]
# T5, the robustness audit: two objects and a style erased together, then attacked
T5_FORGET = ("circle", "star", STYLE_NAMES[0])
T5_METHODS = ("fia", DEFAULT_FIA, "conceptprune", "uce", "esd-x")
TUNING_SEED, HELDOUT_SEED = 1_000_000, 0
TUNING_SHIFT, HELDOUT_SHIFT = 1, 0

# The knob each method tunes and its candidates: the paper's value first,
# then the same number of alternatives for every method (the tuning budget).
# The causal variant's settings were fixed when it was made, on its own
# prompts (odd colour/place pairs, seeds of its own), before this benchmark
# existed; it is not tuned here, which can only put it at a disadvantage.
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
    """How many prompts, seeds and steps each measurement uses.

    Forgetting figures: ``prompts_per_concept`` x ``images_per_prompt``
    images per class (T1, T2, F4; styles take one prompt per object, so at
    least 10 x ``images_per_prompt``), ``t4_prompts`` x ``images_per_prompt``
    for burning. Quality: ``quality_images`` per task and method (held-out
    prompts, each drawn ``quality_images / prompts`` times).
    """

    prompts_per_concept: int = 8
    images_per_prompt: int = 4
    t4_prompts: int = 16
    quality_images: int = 500
    tune_prompts_per_concept: int = 4
    tune_images_per_prompt: int = 4
    esd_steps: int = 200
    # F4's points besides x = 5 (T2 erases the first five objects) and x = 10 (T1)
    f4_sizes: tuple[int, ...] = (1,)
    candidates: int = 3
    batch_size: int = 125
    reference_renders: int = 2  # renders per quality image for the KID/FID reference
    bootstrap: int = 2000
    # None: the model's own sampler and FIA's preset; --quick shortens both
    sample_steps: int | None = None
    saliency_steps: int | None = None
    causal: dict[str, Any] | None = None  # --quick: a shorter causal variant
    attack: dict[str, Any] | None = None  # T5's AttackConfig fields (None: the audit's full budget)
    attack_quick: bool = False  # T5 at each probe's smallest budget


QUICK = Sizes(
    prompts_per_concept=1,
    images_per_prompt=2,
    t4_prompts=2,
    quality_images=12,
    tune_prompts_per_concept=1,
    tune_images_per_prompt=1,
    esd_steps=2,
    f4_sizes=(1,),
    candidates=2,
    batch_size=64,
    reference_renders=1,
    bootstrap=200,
    sample_steps=4,
    saliency_steps=2,
    causal={"rounds": 1, "score_steps": 2, "concept_prompts_per_concept": 2, "anchor_prompts": 2,
            "contrasts": 1, "evidence_timesteps": (0.5,),
            "repair": {"keep_prompts_per_concept": 1, "concept_prompts_per_concept": 2}},
    attack_quick=True,
)  # fmt: skip


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


def concept_family(concept: str) -> str:
    """``objects``, ``styles`` or ``attribute``: the ShapeWorld family a concept name belongs to."""
    for family in ("objects", "styles", "attribute"):
        if concept in family_names(family):
            return family
    raise ValueError(f"{concept!r} is not a ShapeWorld object, style or attribute")


def concept_prompts(concepts: list[str], family: str, cfg) -> dict[str, ConceptPrompts]:
    """Each concept's paired prompts for the prompt-based methods (``family`` "mixed": each concept's own)."""
    out = {}
    for c in concepts:
        own = concept_family(c) if family == "mixed" else family
        if own == "objects":
            out[c] = build_prompts(c, cfg)
        elif own == "styles":
            out[c] = style_prompts(c, cfg.seed)
        else:
            out[c] = attribute_prompts(c, cfg.seed)
    return out


# ---------------------------------------------------------------- tasks
@dataclass
class Task:
    key: str
    suite: str  # shapeworld-objects / -styles / -attribute
    family: str  # objects / styles / attribute
    forget: list[str]
    prompts_per_concept: int
    quality_prompts: int = 1
    quality_images_per_prompt: int = 1
    keep_roles: tuple[str, ...] = ("forget", "preserve", "synonym", "quality")
    alpha: float | None = None
    upper_bound: bool = False  # the judge-guided reference row is measured (object tasks it can guide)

    @property
    def has_quality(self) -> bool:
        return "quality" in self.keep_roles


def _quality_layout(images: int, prompts_available: int) -> tuple[int, int]:
    """(prompts, images per prompt) giving at least ``images`` quality images from the prompts available."""
    prompts = max(1, min(prompts_available, images))
    return prompts, -(-images // prompts)


# held-out (colour, object, place) triples: 4 per object (fia.evaluate.suites.shapeworld)
_HELDOUT_PER_OBJECT = 4


def tasks_for(sizes: Sizes) -> list[Task]:
    ppc, q = sizes.prompts_per_concept, sizes.quality_images
    kept_objects = len(OBJECT_NAMES) - len(T2_FORGET)
    t1_q = _quality_layout(q, 100)  # object-less prompts ("the grass"), cycling over the places
    t2_q = _quality_layout(q, _HELDOUT_PER_OBJECT * kept_objects)  # the kept objects' held-out triples
    all_q = _quality_layout(q, _HELDOUT_PER_OBJECT * len(OBJECT_NAMES))
    forget_only = ("forget", "preserve", "quality")
    out = [
        Task("T1", "shapeworld-objects", "objects", list(OBJECT_NAMES), ppc, *t1_q, keep_roles=forget_only),
        Task("T2", "shapeworld-objects", "objects", list(T2_FORGET), ppc, *t2_q, upper_bound=True),  # also F4 at x = 5
        Task("T3", "shapeworld-styles", "styles", list(STYLE_NAMES), ppc, *all_q, alpha=0.8),
        Task("T4", "shapeworld-attribute", "attribute", list(ATTRIBUTE_NAMES), sizes.t4_prompts, *all_q),
    ]
    for x in sizes.f4_sizes:
        # F4 measures forgetting and keeping only (x = 5 is T2, x = 10 is T1)
        out.append(Task(f"F4-{x}", "shapeworld-objects", "objects", list(OBJECT_NAMES[:x]), ppc, keep_roles=("forget", "preserve")))
    return out


def build_task_suite(task: Task, judge, oracle, ipp: int, seed: int, shift: int, *, renders: int = 2, quality: bool = True) -> Suite:
    """The task's suite judged by ``judge``; with ``quality`` its KID/FID reference is ``renders`` oracle-featured renders per quality image."""

    def reference(factors):
        return shapeworld_reference_features(oracle, factors, renders, seed + 12345)

    suite = shapeworld_suite(
        task.suite, judge, task.forget, None, ipp, task.prompts_per_concept, task.quality_prompts,
        seed=seed, reference=reference if quality else None, prompt_shift=shift,
        quality_images_per_prompt=task.quality_images_per_prompt,
    )  # fmt: skip
    suite.items = [it for it in suite.items if it.role in task.keep_roles]
    return suite


def family_names(family: str) -> tuple[str, ...]:
    """The concept names of a family; ``mixed`` (T5): objects and styles."""
    if family == "mixed":
        return tuple(OBJECT_NAMES) + tuple(STYLE_NAMES)
    return {"objects": OBJECT_NAMES, "styles": STYLE_NAMES, "attribute": ATTRIBUTE_NAMES}[family]
