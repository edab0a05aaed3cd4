"""The benchmark's tasks on the default world (ShapeWorld 2's 32 kinds), their sizes, prompts and held-out / tuning splits.

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
from fia.shapeworld import DEFAULT_WORLD
from fia.shapeworld.vocab import ATTRIBUTE_NAMES, PLACE_NAMES, STYLE_NAMES, get_world, place_phrase
from fia.tasks import build_prompts

# The benchmark's world: the default one, 32 object kinds on a long tail.
WORLD = get_world(DEFAULT_WORLD)
KINDS: tuple[str, ...] = WORLD.object_names

# The rows of the benchmark, in table order. The project's default FIA on
# ShapeWorld is its rewrite variant (every other row's paired difference is
# taken against it); the causal variant, the pruning one, was the default
# before it; the random control copies the causal variant's per-layer
# counts; "upper-bound" is the judge-guided attribution of the causal
# variant (it uses the judge, so it is a reference, not a method). The FIA
# ablations are registered methods too and run when named with --methods.
DEFAULT_FIA = "fia-rewrite"
CAUSAL_FIA = "fia-causal"
UPPER_BOUND = "upper-bound"
METHOD_ORDER = ("fia", DEFAULT_FIA, CAUSAL_FIA, "random", "conceptprune", "uce", "speed", "esd-x", UPPER_BOUND)
ABLATIONS = ("fia-union", "fia-wanda", "fia-channel", "fia-layer")
KNOWN_METHODS = METHOD_ORDER + ABLATIONS

# The order in which F4 erases kinds: x = 1, 2, 5 (T2), 10 (T1), 20, 25 are
# its first x, so every point erases the kinds of the one before. The first
# ten (T1) are five common kinds (10 % to 4.9 % of training scenes) and five
# rare ones (0.7 % to 0.5 %) taken in turn; the other 22 follow in a seeded
# shuffle (numpy default_rng(0)), and the last 7 are never erased.
F4_ORDER: tuple[str, ...] = (
    "house", "arrow", "circle", "five", "tree", "drop", "square", "em", "two", "mushroom",
    "ex", "flag", "key", "ring", "heart", "three", "crescent", "bolt", "cross", "wye",
    "kay", "triangle", "bell", "four", "aitch", "hourglass", "diamond", "fish", "seven", "tee", "star", "eight",
)  # fmt: skip
T1_FORGET = F4_ORDER[:10]
T2_FORGET = F4_ORDER[:5]
# F4's points besides x = 5 (T2) and x = 10 (T1), and the methods drawn on its
# whole curve: the paper's FIA, the default, the causal variant and the closed-form multi-concept
# peer (every method is on it at x = 5 and 10; the whole curve for all of them
# would not fit the benchmark's hour)
F4_SIZES = (1, 2, 20, 25)
F4_METHODS = ("fia", DEFAULT_FIA, CAUSAL_FIA, "speed")
# T5, the robustness audit: the README's two kinds (a common and a rare one)
# and a style erased together, then attacked
T5_FORGET = ("star", "arrow", STYLE_NAMES[0])
T5_METHODS = ("fia", DEFAULT_FIA, CAUSAL_FIA, "conceptprune", "uce", "speed", "esd-x")
TUNING_SEED, HELDOUT_SEED = 1_000_000, 0
TUNING_SHIFT, HELDOUT_SHIFT = 1, 0

# The knob each method tunes and its candidates: the paper's value first,
# then the same number of alternatives for every method (the tuning budget).
# The causal variant's settings were fixed when it was made, on its own
# prompts (odd colour/place pairs), and it is not tuned here.
# SPEED's lamb weighs the update's size: smaller values erase harder.
TUNING: dict[str, tuple[str, tuple[Any, ...]]] = {
    "fia": ("r2", (0.01, 0.05, 0.2)),
    "fia-union": ("r2", (0.01, 0.05, 0.2)),
    "fia-wanda": ("r2", (0.01, 0.05, 0.2)),
    "fia-channel": ("r2", (0.01, 0.05, 0.2)),
    "fia-layer": ("r2", (0.01, 0.05, 0.2)),
    "conceptprune": ("sparsity", (0.01, 0.05, 0.2)),
    "uce": ("erase_scale", (1.0, 3.0, 10.0)),
    "speed": ("lamb", (1.0, 0.1, 0.01)),
    "esd-x": ("lr", (1e-4, 3e-4, 1e-3)),
}


@dataclass
class Sizes:
    """How many prompts, seeds and steps each measurement uses.

    Object tasks (T1, T2, F4) and styles (T3): ``prompts_per_concept`` x
    ``images_per_prompt`` images per kind or style, erased or kept; the
    object tasks' quality is read on the kept kinds' images, topped up with
    object-less prompts to ``quality_images``. Burning (T4) takes
    ``t4_prompts`` (at least one per kind) x ``t4_images_per_prompt``
    images. T3 and T4 are judged for quality on ``quality_images`` images
    of held-out prompts.
    """

    prompts_per_concept: int = 8
    images_per_prompt: int = 4
    t4_prompts: int = 32
    t4_images_per_prompt: int = 2
    quality_images: int = 500
    tune_prompts_per_concept: int = 4
    tune_images_per_prompt: int = 2
    esd_steps: int = 200
    f4_sizes: tuple[int, ...] = F4_SIZES
    candidates: int = 3
    batch_size: int = 128
    reference_renders: int = 2  # renders per quality image for the KID/FID reference
    bootstrap: int = 2000
    # None: the model's own sampler and FIA's preset; --quick shortens both
    sample_steps: int | None = None
    saliency_steps: int | None = None
    causal: dict[str, Any] | None = None  # --quick: a shorter causal variant
    rewrite: dict[str, Any] | None = None  # --quick: the rewrite on fewer prompts
    attack: dict[str, Any] | None = None  # T5's AttackConfig fields (None: the audit's full budget)
    attack_quick: bool = False  # T5 at each probe's smallest budget
    t5_forget: tuple[str, ...] = T5_FORGET


QUICK = Sizes(
    prompts_per_concept=1,
    images_per_prompt=1,
    t4_prompts=1,
    t4_images_per_prompt=1,
    quality_images=12,
    tune_prompts_per_concept=1,
    tune_images_per_prompt=1,
    esd_steps=2,
    f4_sizes=(1,),
    candidates=2,
    batch_size=128,
    reference_renders=1,
    bootstrap=200,
    sample_steps=2,
    saliency_steps=2,
    causal={"rounds": 1, "score_steps": 2, "concept_prompts_per_concept": 2, "anchor_prompts": 2,
            "contrasts": 1, "evidence_timesteps": (0.5,),
            "repair": {"keep_prompts_per_concept": 1, "concept_prompts_per_concept": 2, "steps": 2}},
    rewrite={"keep_prompts_per_kind": 1, "concept_prompts_per_concept": 2, "balance_rounds": 1},
    attack={"refill": "rowcol"},  # the cheaper refill: the low-rank one dominates a smoke test's time
    attack_quick=True,
    t5_forget=T5_FORGET[1:],  # a kind and a style
)  # fmt: skip


# ---------------------------------------------------------------- prompts
def style_prompts(style: str, seed: int = 0) -> ConceptPrompts:
    """'a circle on the grass in the style of Ovalli' against 'a circle on the grass'."""
    concept, base = [], []
    for k, obj in enumerate(KINDS):
        scene = f"a {obj} {place_phrase(PLACE_NAMES[k % len(PLACE_NAMES)])}"
        concept.append(f"{scene} in the style of {style}")
        base.append(scene)
    seeds = tuple(seed + k for k in range(len(concept)))
    return ConceptPrompts(style, tuple(concept), tuple(base), seeds, seeds)


def attribute_prompts(attribute: str, seed: int = 0) -> ConceptPrompts:
    """'a burning circle on the grass' against 'a circle on the grass'."""
    concept, base = [], []
    for k, obj in enumerate(KINDS):
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
    """One table of the benchmark: what is erased and how it is judged.

    Object tasks judge every kind (erased or kept) and read quality on the
    kept kinds' images, topped up with object-less prompts to
    ``quality_images``; style and attribute tasks read it on
    ``quality_prompts`` held-out prompts' images, ``quality_images`` in all.
    """

    key: str
    suite: str  # shapeworld-objects / -styles / -attribute
    family: str  # objects / styles / attribute
    forget: list[str]
    prompts_per_concept: int
    images_per_prompt: int = 1
    quality_images: int = 0
    quality_prompts: int = 1
    keep_roles: tuple[str, ...] = ("forget", "preserve", "synonym", "quality")
    alpha: float | None = None
    upper_bound: bool = False  # the judge-guided reference row is measured (object tasks it can guide)
    random_control: bool = False  # the random control is measured (the object tables)
    curve_point: bool = False  # one of F4's own points: only F4_METHODS are measured

    @property
    def has_quality(self) -> bool:
        return "quality" in self.keep_roles and self.quality_images > 0


# held-out (colour, object, place) triples: 4 per kind (fia.evaluate.suites.shapeworld), at most 100 prompts a block
_HELDOUT_PROMPTS = min(100, 4 * len(KINDS))


def tasks_for(sizes: Sizes) -> list[Task]:
    """T1-T4 and F4's own points, at ``sizes``."""
    ppc, ipp, q = sizes.prompts_per_concept, sizes.images_per_prompt, sizes.quality_images
    heldout = min(_HELDOUT_PROMPTS, q)
    no_synonyms = ("forget", "preserve", "quality")
    out = [
        Task("T1", "shapeworld-objects", "objects", list(T1_FORGET), ppc, ipp, q, keep_roles=no_synonyms,
             random_control=True),  # F4 at x = 10
        Task("T2", "shapeworld-objects", "objects", list(T2_FORGET), ppc, ipp, q, upper_bound=True,
             random_control=True),  # F4 at x = 5
        Task("T3", "shapeworld-styles", "styles", list(STYLE_NAMES), ppc, ipp, q,
             heldout, alpha=0.8),
        Task("T4", "shapeworld-attribute", "attribute", list(ATTRIBUTE_NAMES), sizes.t4_prompts,
             sizes.t4_images_per_prompt, q, heldout),
    ]  # fmt: skip
    for x in sizes.f4_sizes:
        out.append(Task(f"F4-{x}", "shapeworld-objects", "objects", list(F4_ORDER[:x]), ppc, ipp, q, keep_roles=no_synonyms,
                        curve_point=True))
    return out


def build_task_suite(task: Task, judge, oracle, seed: int, shift: int, *, renders: int = 2, quality: bool = True) -> Suite:
    """The task's suite judged by ``judge``; with ``quality`` its KID/FID reference is ``renders`` oracle-featured renders per quality image."""

    def reference(factors):
        return shapeworld_reference_features(oracle, factors, renders, seed + 12345)

    objects = task.suite == "shapeworld-objects"
    # every kind in F4's order, erased or kept: a kind's prompts and seeds are then the same in every object task
    kept = [k for k in F4_ORDER if k not in task.forget] if objects else None
    suite = shapeworld_suite(
        task.suite, judge, task.forget, kept, task.images_per_prompt, task.prompts_per_concept, task.quality_prompts,
        seed=seed, reference=reference if quality else None, prompt_shift=shift,
        quality_images=task.quality_images, quality_from_kept=objects,
    )  # fmt: skip
    suite.items = [it for it in suite.items if it.role in task.keep_roles]
    return suite


def family_names(family: str) -> tuple[str, ...]:
    """The concept names of a family; ``mixed`` (T5): objects and styles."""
    if family == "mixed":
        return KINDS + tuple(STYLE_NAMES)
    return {"objects": KINDS, "styles": STYLE_NAMES, "attribute": ATTRIBUTE_NAMES}[family]
