"""The prompt sets an erase run samples, and the seed each prompt is drawn from.

FIA contrasts two prompt sets per concept (method page, section 3 and 7):

* **concept prompts** put the concept in a context: ``"a golf ball in a park"``;
* **base prompts** are the same contexts without it: ``"a park"``.

The two sets are *paired*: every prompt built from placeholder number ``k``
(the ``k``-th place, person or object) is sampled with seed ``seed + k``, so
``"a golf ball in a park"``, ``"a golf ball near the park"`` and ``"a park"``
start from the same noise. The saliency difference then measures the
concept, not the noise.

The variants sample other sets: the causal variant's evidence and anchor
prompts (:class:`EvidencePrompts`), the repair's kept and concept prompts
(:class:`RepairPrompts`) and the rewrite's (:class:`RewritePrompts`). A task
(:mod:`fia.tasks`) builds each of them; this module holds only what they
are and their seed offsets, so that no two sets share a noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Seeds: concept prompt k gets seed + k (as the paper variant's pairs); anchor
# prompt k gets seed + ANCHOR_SEED_OFFSET + k, so no anchor image starts from
# a concept image's noise; the repair's and the rewrite's prompts draw theirs
# from offsets no evidence or anchor prompt uses.
ANCHOR_SEED_OFFSET = 1000
REPAIR_KEEP_SEED_OFFSET = 5000
REPAIR_CONCEPT_SEED_OFFSET = 6000


@dataclass(frozen=True)
class ConceptPrompts:
    """The paired prompt sets of one concept and their seeds."""

    concept: str
    concept_prompts: tuple[str, ...]
    base_prompts: tuple[str, ...]
    concept_seeds: tuple[int, ...]
    base_seeds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class EvidencePrompts:
    """Prompts the causal variant samples and scores (see :mod:`fia.causal`).

    Prompt ``k`` is sampled from seed ``seeds[k]``; the evidence of its image
    compares its denoising error with the errors under ``contrasts[k]``.
    """

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    contrasts: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": list(self.prompts), "seeds": list(self.seeds), "contrasts": [list(c) for c in self.contrasts]}


@dataclass(frozen=True)
class RepairPrompts:
    """The prompt sets the closed-form repair is fitted on (:mod:`fia.repair`); prompt ``k`` from ``seeds[k]``.

    ``keep[k]`` belongs to kept group ``keep_groups[k]`` (a kept kind, the
    object-less scenes, ...), which the balanced repair weighs.
    """

    keep: tuple[str, ...]
    keep_seeds: tuple[int, ...]
    concept: tuple[str, ...]
    concept_seeds: tuple[int, ...]
    keep_groups: tuple[str, ...] = ()

    @classmethod
    def seeded(cls, keep: Sequence[str], concept: Sequence[str], seed: int, groups: Sequence[str] | None = None) -> "RepairPrompts":
        """The sets with their seeds (offsets from ``seed`` that no evidence or anchor prompt uses);
        without ``groups`` the kept prompts form one group."""
        return cls(
            tuple(keep), tuple(seed + REPAIR_KEEP_SEED_OFFSET + k for k in range(len(keep))),
            tuple(concept), tuple(seed + REPAIR_CONCEPT_SEED_OFFSET + k for k in range(len(concept))),
            tuple(groups) if groups is not None else ("kept",) * len(keep),
        )  # fmt: skip


@dataclass(frozen=True)
class RewritePrompts:
    """The prompt sets the closed-form rewrite is fitted on (:mod:`fia.rewrite`).

    ``keep[k]`` (from seed ``keep_seeds[k]``) belongs to kept group
    ``keep_groups[k]``; ``concept[k]`` is shown at the latents of
    ``scene[k]``'s trajectory, from seed ``concept_seeds[k]``.
    ``anchor[k]`` is ``concept[k]`` with a kept concept in the erased one's
    place (its scene where there is none), the reference of anchored
    negative guidance (``rewrite.anchored_guidance``); ``owner[k]`` is the
    erased concept that ``concept[k]`` phrases. ``kind_groups`` are the kept
    groups that hold one kept kind each and ``scene_group`` the group of
    object-less scenes, where a task has them (ShapeWorld): the push off the
    kept kinds' features (``rewrite.push_off_rank``) reads them.
    """

    keep: tuple[str, ...]
    keep_seeds: tuple[int, ...]
    keep_groups: tuple[str, ...]
    concept: tuple[str, ...]
    scene: tuple[str, ...]
    concept_seeds: tuple[int, ...]
    anchor: tuple[str, ...]
    owner: tuple[str, ...]
    kind_groups: tuple[str, ...] = ()
    scene_group: str | None = None

    def __post_init__(self) -> None:
        sizes = (len(self.scene), len(self.anchor), len(self.concept_seeds), len(self.owner))
        if any(n != len(self.concept) for n in sizes):
            raise ValueError(f"{len(self.concept)} concept prompts need as many scenes, anchors, seeds and owners; got "
                             f"{', '.join(map(str, sizes))}")

    @classmethod
    def seeded(
        cls, keep: Sequence[str], groups: Sequence[str], concept: Sequence[str], scene: Sequence[str], seed: int,
        anchor: Sequence[str], owner: Sequence[str], kind_groups: Sequence[str] = (), scene_group: str | None = None,
    ) -> "RewritePrompts":
        """The sets with their seeds (the repair's offsets: the two never run together)."""
        return cls(
            tuple(keep), tuple(seed + REPAIR_KEEP_SEED_OFFSET + k for k in range(len(keep))), tuple(groups),
            tuple(concept), tuple(scene), tuple(seed + REPAIR_CONCEPT_SEED_OFFSET + k for k in range(len(concept))),
            tuple(anchor), tuple(owner), tuple(kind_groups), scene_group,
        )  # fmt: skip
