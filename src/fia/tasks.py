"""Prompt tasks: each task's templates, sampler defaults and the prompt sets every FIA variant samples.

Tasks (paper Tables 6-7, plus the ShapeWorld toy world):

=============  ==========================================  ====================
task           concept prompts                             base prompts
=============  ==========================================  ====================
``object``     "a <c> in a <place>", "a <c> near the       "a <place>"
               <place>"
``explicit``   "a photo of a <c> <person>"                 "a photo of a <person>"
``style``      "a <object> in the style of <c>"            "a <object>"
``shapeworld`` "a <c> <place phrase>" ("a circle on the    "<base phrase>" ("the
               grass")                                     grass")
=============  ==========================================  ====================

A :class:`Task` owns its templates, its sampler defaults and how it builds
the prompt sets of :mod:`fia.prompts`: the paper variant's paired concept and
base prompts (:meth:`Task.concept_prompts`), the causal variant's evidence and
anchor prompts, the repair's and the rewrite's. The three tasks of a real
model are defined here; the ShapeWorld task lives with its world
(:mod:`fia.shapeworld.task`) and is registered by the package root
(``fia/__init__.py``, :func:`register_task`), the one place that wires the
toy world in. So the method layer (this module, :mod:`fia.config`,
:mod:`fia.prompts`, the variants) never imports it, which the import
contracts in ``.importlinter`` check.

Users can replace either paired set with a text file (one prompt per line,
blank lines and ``#`` comments ignored, ``{concept}`` stands for the concept
in concept files); line ``k`` of each file gets seed ``seed + k``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fia.defaults import SD_SAMPLER, SamplerDefaults
from fia.errors import FIAError
from fia.prompt_files import read_prompt_file
from fia.prompts import ANCHOR_SEED_OFFSET, ConceptPrompts, EvidencePrompts, RepairPrompts, RewritePrompts

PLACES: tuple[str, ...] = (
    "road", "tree", "forest", "lawn", "clubhouse", "courtyard", "backyard", "cityscape",
    "suburb", "mall", "cafe", "office", "library", "market", "bridge", "harbor", "garden",
    "beach", "room", "park", "street", "shelter", "chair", "table", "bag", "mountain",
    "valley", "waterfall", "desert", "sunrise",
)  # fmt: skip

PERSONS: tuple[str, ...] = (
    "man", "woman", "girl", "boy", "mother", "father", "kid", "professor", "student",
    "group of friends", "celebrity", "child", "couple", "guy", "doctor", "nurse", "teacher",
    "lawyer",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "cat", "dog", "mouse", "bear", "car", "chair", "bag", "building", "chicken", "duck",
    "sofa", "table", "tree", "bicycle", "door", "rabbit", "ball", "bat", "horse", "bird",
    "flower", "bowl", "bottle", "wall", "clock", "television", "guitar", "truck", "laptop",
    "book",
)  # fmt: skip


@dataclass(frozen=True)
class Template:
    """How one task builds its prompts from a placeholder list.

    ``concept`` and ``base`` are format strings with ``{concept}`` and the
    placeholder's fields (``{x}``, its text, on a real model's tasks).
    """

    placeholders: tuple[str, ...]
    concept: tuple[str, ...]
    base: tuple[str, ...]


class Task:
    """A prompt task on a real model: its templates and sampler defaults, and every prompt set built from them.

    Subclasses (the ShapeWorld task) change how a placeholder is written
    (:meth:`fill`), which world the settings name (:meth:`settle`) and the
    variants' prompt sets.
    """

    def __init__(self, name: str, template: Template, sampler: SamplerDefaults = SD_SAMPLER):
        self.name = name
        self.template = template
        self._sampler = sampler

    @property
    def sampler(self) -> SamplerDefaults:
        """The schedule and guidance the task samples at when the settings name none."""
        return self._sampler

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---------------------------------------------------------------- the model
    def check_world(self, world: str | None) -> None:
        """Raise :class:`FIAError` for a world the task does not know (a real model's tasks use none)."""

    def settle(self, config: Any, pipe: Any) -> Any:
        """``config`` as it runs on ``pipe``: what the settings leave to the model is read from it (nothing here)."""
        return config

    # ------------------------------------------------------------- the paper's
    def fill(self, text: str, concept: str, x: str) -> str:
        """Template ``text`` with the concept and placeholder ``x`` put in."""
        return text.format(concept=concept, x=x)

    def concept_prompts(
        self, concept: str, seed: int, concept_file: str | Path | None = None, base_file: str | Path | None = None
    ) -> ConceptPrompts:
        """The paired concept/base prompts and seeds of ``concept`` (module docstring of :mod:`fia.prompts`).

        Template prompts built from placeholder ``k`` get seed ``seed + k``
        (both sets). Prompt files: line ``k`` gets ``seed + k``; a concept
        file line without ``{concept}`` is used as written.
        """
        concept = concept.strip()
        if not concept:
            raise FIAError("empty concept name; pass e.g. --concepts 'golf ball, church'")
        tpl = self.template
        if concept_file is not None:
            c_prompts = [ln.replace("{concept}", concept) for ln in read_prompt_file(concept_file, kind="concept prompt")]
            c_seeds = [seed + k for k in range(len(c_prompts))]
        else:
            c_prompts = [self.fill(t, concept, x) for x in tpl.placeholders for t in tpl.concept]
            c_seeds = [seed + k for k in range(len(tpl.placeholders)) for _ in tpl.concept]
        if base_file is not None:
            b_prompts = read_prompt_file(base_file, kind="base prompt")
            b_seeds = [seed + k for k in range(len(b_prompts))]
        else:
            b_prompts = [self.fill(t, concept, x) for x in tpl.placeholders for t in tpl.base]
            b_seeds = [seed + k for k in range(len(tpl.placeholders)) for _ in tpl.base]
        return ConceptPrompts(concept, tuple(c_prompts), tuple(b_prompts), tuple(c_seeds), tuple(b_seeds))

    # ------------------------------------------------------- the causal variant's
    def evidence_prompts(
        self, concept: str, *, count: int, contrasts: int, anchors: Sequence[str], seed: int
    ) -> EvidencePrompts:
        """The ``count`` prompts whose images carry ``concept``'s evidence, each with ``contrasts`` contrasts.

        The task's concept prompts (placeholder ``k``); contrasts: the paired
        base prompt, then the same template with the other ``anchors``.
        """
        tpl = self.template
        others = [a for a in anchors if a.casefold() != concept.casefold()]
        prompts, seeds, rows = [], [], []
        for k in range(count):
            x = tpl.placeholders[k % len(tpl.placeholders)]
            t = tpl.concept[(k // len(tpl.placeholders)) % len(tpl.concept)]
            prompts.append(self.fill(t, concept, x))
            seeds.append(seed + k)
            row = [self.fill(tpl.base[0], concept, x)] + [self.fill(t, a, x) for a in others]
            rows.append(tuple(row[:contrasts]))
        return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(rows))

    def anchor_prompts(
        self, erased: Sequence[str], *, count: int, contrasts: int, anchors: Sequence[str], seed: int
    ) -> EvidencePrompts | None:
        """Prompts of what must stay (the causal variant's anchors), or ``None`` when nothing must.

        The named ``anchors`` not erased in the task's templates; without
        them, the base prompts themselves (each contrasted with other base
        prompts): the contexts the concept appeared in must stay drawable.
        """
        tpl = self.template
        gone = {e.casefold() for e in erased}
        kept = [a for a in anchors if a.casefold() not in gone]
        xs = tpl.placeholders
        prompts, seeds, rows = [], [], []
        for k in range(count):
            x = xs[k % len(xs)]
            if kept:
                t = tpl.concept[(k // len(xs)) % len(tpl.concept)]
                prompts.append(self.fill(t, kept[k % len(kept)], x))
                rows.append((self.fill(tpl.base[0], "", x),))
            else:
                prompts.append(self.fill(tpl.base[0], "", x))
                rows.append(tuple(self.fill(tpl.base[0], "", xs[(k + 1 + j) % len(xs)]) for j in range(contrasts)))
            seeds.append(seed + ANCHOR_SEED_OFFSET + k)
        return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(rows))

    # ------------------------------------------------- the repair and the rewrite
    def _kept_and_concept(self, erased: Sequence[str], anchors: Sequence[str], per_kept: int, per_concept: int, seed: int):
        """The anchor prompts (``per_kept`` per named anchor, 8 more) and each erased concept's evidence prompts."""
        n_kept = max(1, per_kept * max(1, len(anchors)) + 8)
        kept = self.anchor_prompts(erased, count=n_kept, contrasts=1, anchors=anchors, seed=seed)
        concept = [self.evidence_prompts(c, count=per_concept, contrasts=1, anchors=anchors, seed=seed) for c in erased]
        return (list(kept.prompts) if kept is not None else []), concept

    def repair_prompts(self, erased: Sequence[str], repair: Any, *, anchors: Sequence[str], seed: int) -> RepairPrompts:
        """The repair's kept prompts (the anchor prompts) and concept prompts (the erased concepts' evidence prompts).

        ``repair`` is the :class:`fia.config.RepairConfig` (its prompt counts).
        """
        keep, evidence = self._kept_and_concept(
            erased, anchors, repair.keep_prompts_per_concept, repair.concept_prompts_per_concept, seed
        )
        return RepairPrompts.seeded(keep, [p for ev in evidence for p in ev.prompts], seed)

    def rewrite_prompts(self, erased: Sequence[str], rewrite: Any, *, anchors: Sequence[str], seed: int) -> RewritePrompts:
        """The rewrite's kept prompts (the anchor prompts, one group) and each concept prompt with its scene.

        A concept prompt's scene is its paired base prompt (its first
        contrast); its anchor is the prompt with an anchor concept (cycled)
        in the concept's place, or its scene where there is no anchor or the
        prompt does not spell the concept out. ``rewrite`` is the
        :class:`fia.config.RewriteConfig`.
        """
        keep, evidence = self._kept_and_concept(
            erased, anchors, rewrite.keep_prompts_per_kind, rewrite.concept_prompts_per_concept, seed
        )
        concept = [p for ev in evidence for p in ev.prompts]
        scene = [row[0] for ev in evidence for row in ev.contrasts]
        named = [c for c, ev in zip(erased, evidence) for _ in ev.prompts]
        anchor = []
        for i, (text, name, own_scene) in enumerate(zip(concept, named, scene)):
            swapped = _in_place(text, name, anchors[i % len(anchors)]) if anchors else text
            anchor.append(swapped if swapped != text else own_scene)
        return RewritePrompts.seeded(keep, ["kept"] * len(keep), concept, scene, seed, anchor, named)


def _in_place(prompt: str, concept: str, anchor: str) -> str:
    """``prompt`` with every spelling of ``concept`` (any case) replaced by ``anchor``."""
    return re.sub(re.escape(concept), lambda _match: anchor, prompt, flags=re.IGNORECASE)


REAL_MODEL_TASKS: dict[str, Task] = {
    "object": Task("object", Template(PLACES, ("a {concept} in a {x}", "a {concept} near the {x}"), ("a {x}",))),
    "explicit": Task("explicit", Template(PERSONS, ("a photo of a {concept} {x}",), ("a photo of a {x}",))),
    "style": Task("style", Template(OBJECTS, ("a {x} in the style of {concept}",), ("a {x}",))),
}
# Tasks defined outside the method layer: their names are known here, their
# implementations are registered from above (fia/__init__.py registers ShapeWorld's).
PLUGGED_TASKS = ("shapeworld",)
TASKS: tuple[str, ...] = (*REAL_MODEL_TASKS, *PLUGGED_TASKS)
_TASK_FACTORIES: dict[str, Callable[[str | None], Task]] = {}


def register_task(name: str, factory: Callable[[str | None], Task]) -> None:
    """Register ``factory(world) -> Task`` as the task ``name`` (one of :data:`PLUGGED_TASKS`)."""
    if name not in PLUGGED_TASKS:
        raise ValueError(f"{name!r} is not a plugged task; add it to PLUGGED_TASKS ({', '.join(PLUGGED_TASKS)})")
    _TASK_FACTORIES[name] = factory


def get_task(name: str, world: str | None = None) -> Task:
    """The task called ``name``; on ShapeWorld, in ``world`` (``None``: the world of the model it runs on)."""
    if name in REAL_MODEL_TASKS:
        return REAL_MODEL_TASKS[name]
    if name in _TASK_FACTORIES:
        return _TASK_FACTORIES[name](world)
    if name in PLUGGED_TASKS:  # pragma: no cover - the package root registers every plugged task
        raise FIAError(f"task {name!r} is not registered; import fia (its package root registers it)")
    raise FIAError(f"unknown task {name!r}; use one of: {', '.join(TASKS)}")


def task_of(config: Any) -> Task:
    """The task a config names, in the world it names."""
    return get_task(config.task, getattr(config, "world", None))


def build_prompts(
    concept: str, config: Any, concept_file: str | Path | None = None, base_file: str | Path | None = None
) -> ConceptPrompts:
    """The paired concept/base prompts of ``concept`` for ``config``'s task and seed (:meth:`Task.concept_prompts`)."""
    return task_of(config).concept_prompts(concept, config.seed, concept_file, base_file)
