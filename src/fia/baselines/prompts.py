"""Concept and reference prompts for the baselines that read activations.

ConceptPrune contrasts prompts that contain a concept with reference prompts
that do not. So that every method of a benchmark sees the same text, the
default sets here are the templates FIA uses (its paper's Tables 6-7,
restated in ``docs/fia-method.md`` section 7), plus ShapeWorld templates built
from :mod:`fia.shapeworld.vocab`:

============  =========================================  ==========================
task          concept prompt                              reference prompt
============  =========================================  ==========================
object        "a <c> in a <place>", "a <c> near the       "a <place>"
              <place>"
explicit      "a photo of a <c> <person>"                 "a photo of a <person>"
style         "a <object> in the style of <c>"            "a <object>"
shapeworld    object: "a <c> <on the place>"              "the <place>"
              style:  "a <object> in the style of <c>"    "a <object>"
              colour / attribute: "a <c> <object>"        "a <object>"
============  =========================================  ==========================

Any method that takes prompts also accepts the user's own lists.
"""

from __future__ import annotations

from collections.abc import Sequence

from fia.errors import FIAError
from fia.shapeworld import vocab

PLACES = (
    "road", "tree", "forest", "lawn", "clubhouse", "courtyard", "backyard", "cityscape", "suburb", "mall",
    "cafe", "office", "library", "market", "bridge", "harbor", "garden", "beach", "room", "park",
    "street", "shelter", "chair", "table", "bag", "mountain", "valley", "waterfall", "desert", "sunrise",
)  # fmt: skip
PERSONS = (
    "man", "woman", "girl", "boy", "mother", "father", "kid", "professor", "student", "group of friends",
    "celebrity", "child", "couple", "guy", "doctor", "nurse", "teacher", "lawyer",
)  # fmt: skip
OBJECTS = (
    "cat", "dog", "mouse", "bear", "car", "chair", "bag", "building", "chicken", "duck",
    "sofa", "table", "tree", "bicycle", "door", "rabbit", "ball", "bat", "horse", "bird",
    "flower", "bowl", "bottle", "wall", "clock", "television", "guitar", "truck", "laptop", "book",
)  # fmt: skip

TASKS = ("object", "explicit", "style", "shapeworld")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _shapeworld(concept: str) -> tuple[list[str], list[str]]:
    if concept in vocab.OBJECTS:
        cp = [f"a {concept} {vocab.place_phrase(p)}" for p in vocab.PLACE_NAMES]
        rp = [vocab.base_phrase(p) for p in vocab.PLACE_NAMES]
        return cp, rp
    objects = [o for o in vocab.OBJECT_NAMES]
    if concept in vocab.STYLES:
        return [f"a {o} in the style of {concept}" for o in objects], [f"a {o}" for o in objects]
    if concept in vocab.COLORS or concept in vocab.ATTRIBUTES:
        return [f"a {concept} {o}" for o in objects], [f"a {o}" for o in objects]
    raise FIAError(
        f"{concept!r} is not a ShapeWorld object, style, colour or attribute; "
        f"pass your own prompts or use one of: {', '.join(vocab.OBJECT_NAMES + vocab.STYLE_NAMES)}"
    )


def prompt_sets(concept: str, task: str = "object", *, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Default (concept prompts, reference prompts) for ``concept`` under ``task``.

    ``limit`` keeps the first ``limit`` prompts of each list (for quick runs).
    """
    if task == "object":
        cp = [f"{_article(concept)} {concept} in a {p}" for p in PLACES]
        cp += [f"{_article(concept)} {concept} near the {p}" for p in PLACES]
        rp = [f"{_article(p)} {p}" for p in PLACES]
    elif task == "explicit":
        cp = [f"a photo of {_article(concept)} {concept} {p}" for p in PERSONS]
        rp = [f"a photo of {_article(p)} {p}" for p in PERSONS]
    elif task == "style":
        cp = [f"{_article(o)} {o} in the style of {concept}" for o in OBJECTS]
        rp = [f"{_article(o)} {o}" for o in OBJECTS]
    elif task == "shapeworld":
        cp, rp = _shapeworld(concept)
    else:
        raise FIAError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise FIAError(f"limit must be a positive integer, got {limit!r}")
        cp, rp = cp[:limit], rp[:limit]
    return cp, rp


def check_prompt_lists(concept: str, concept_prompts: Sequence[str], reference_prompts: Sequence[str]) -> None:
    for label, lst in (("concept", concept_prompts), ("reference", reference_prompts)):
        if isinstance(lst, str) or not lst:
            raise FIAError(f"the {label} prompts of {concept!r} must be a non-empty list of strings")
