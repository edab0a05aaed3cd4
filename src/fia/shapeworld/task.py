"""The ShapeWorld prompt task: its templates, its sampler settings, its world and the variants' prompt sets.

:class:`ShapeWorldTask` is the :class:`fia.tasks.Task` of a ShapeWorld
model. Its placeholders are the places of the world's vocabulary, written as
phrases ("a circle on the grass" against "the grass"); it samples at the
model's own settings (:data:`fia.shapeworld.GENERATION_DEFAULTS`). Its world
(``shapeworld`` or ``shapeworld2``: the object kinds that are the causal
variant's contrasts and anchors and the kinds the repair and rewrite keep)
is the one the settings name, or, when they name none, the world of the model
being edited, read from its tokenizer (:func:`model_world`).

Evidence prompts draw their colour/place pairs from the 18 "odd" pairs
(:func:`scene_pair`); the evaluation suites' default split uses the even
pairs only, so no evaluation prompt is one a variant fitted on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fia.defaults import SamplerDefaults
from fia.errors import FIAError
from fia.prompts import ANCHOR_SEED_OFFSET, EvidencePrompts, RepairPrompts, RewritePrompts
from fia.tasks import Task, Template

from . import DEFAULT_WORLD, GENERATION_DEFAULTS, vocab
from .render import prompt_for

# "{place}" / "{base}" are the place's phrases in the world's vocabulary
TEMPLATE = Template(placeholders=tuple(vocab.PLACE_NAMES), concept=("a {concept} {place}",), base=("{base}",))


# ---------------------------------------------------------------- the words
def scene_pair(k: int) -> tuple[str, str]:
    """(colour, place) of evidence prompt ``k``: the 18 pairs whose indices sum to an odd number.

    The evaluation suites' default split uses the even pairs only
    (``fia.evaluate.suites.factor_cycle`` with shift 0), so no evaluation
    prompt is one the causal variant scored.
    """
    colors, places = vocab.COLORS, vocab.PLACE_NAMES
    c = k % len(colors)
    return colors[c], places[(c + 1 + 2 * (k // len(colors))) % len(places)]


def _text(obj: str | None, color: str, place: str, style: str | None = None, attribute: str | None = None) -> str:
    return prompt_for(obj, color, place, style=style, attribute=attribute)


def shapeworld_canonical(names: Sequence[str], world: str | vocab.World) -> list[str]:
    """Object names of ``world`` with synonyms mapped to their kind ('disc' -> 'circle'); others dropped."""
    w = vocab.get_world(world)
    canon = {n: n for n in w.object_names} | w.synonym_map()
    return list(dict.fromkeys(canon[n.casefold()] for n in names if n.casefold() in canon))


def _style(name: str) -> str | None:
    return next((s for s in vocab.STYLE_NAMES if s.casefold() == name.casefold()), None)


def _attribute(name: str) -> str | None:
    return next((a for a, words in vocab.ATTRIBUTES.items() if name.casefold() in (a, *words)), None)


# ------------------------------------------------------------ the model's world
def tokenizer_world(tokenizer) -> vocab.World | None:
    """The world with the most kinds whose every kind name is one token of
    ``tokenizer`` (a world's tokenizer learns its words whole), or None."""
    fits = [w for w in vocab.WORLDS.values() if all(len(tokenizer.tokenize(k)) == 1 for k in w.object_names)]
    return max(fits, key=lambda w: len(w.object_names), default=None)


def model_world(pipe: Any) -> vocab.World:
    """The world of the model ``pipe``: its tokenizer's (:func:`tokenizer_world`), else the default world."""
    tokenizer = getattr(pipe, "tokenizer", None)
    known = tokenizer_world(tokenizer) if tokenizer is not None else None
    return known if known is not None else vocab.get_world(DEFAULT_WORLD)


def check_config_world(pipe, world: str | vocab.World) -> None:
    """:class:`FIAError` when ``pipe``'s tokenizer knows every kind of a
    larger world than ``world``: erasing with the smaller world's kinds as
    the only contrasts and anchors would leave the other kinds unprotected."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return
    known, asked = tokenizer_world(tokenizer), vocab.get_world(world)
    if known is not None and len(known.object_names) > len(asked.object_names):
        raise FIAError(
            f"this model's tokenizer knows every kind of {known.name} ({len(known.object_names)} kinds) but the "
            f"settings name the world {asked.name} ({len(asked.object_names)} kinds), whose kinds would be the only "
            f"contrasts and anchors; set FIAConfig(world={known.name!r}) (the CLI reads it from the world folder)"
        )


# -------------------------------------------------------------- the prompt sets
def evidence_prompts(
    concept: str, world: vocab.World, *, count: int, contrasts: int, seed: int
) -> EvidencePrompts:
    """The concept in every place and colour, contrasted within its family.

    A shape is contrasted with other shapes in the same scene, a style with
    the same scene unstyled and in other styles, the attribute with the same
    scene without it: the evidence is about the concept, not the scene.
    """
    shapes = world.object_names
    style, attribute = _style(concept), _attribute(concept)
    own = shapeworld_canonical([concept], world)
    prompts, seeds, rows = [], [], []
    for k in range(count):
        color, place = scene_pair(k)
        obj = shapes[k % len(shapes)]
        if style is not None:
            prompts.append(_text(obj, color, place, style=style))
            others = [None] + [s for s in vocab.STYLE_NAMES if s != style]
            row = [_text(obj, color, place, style=others[j % len(others)]) for j in range(contrasts)]
        elif attribute is not None:
            prompts.append(_text(obj, color, place, attribute=attribute))
            row = [_text(obj, color, place)]
        else:  # a shape (or a word the model may know): "a red circle on the grass"
            siblings = [o for o in shapes if o not in own]
            body = f"{color} {concept}"
            prompts.append(f"{'an' if body[0] in 'aeiou' else 'a'} {body} {vocab.place_phrase(place)}")
            row = [_text(siblings[(k + j) % len(siblings)], color, place) for j in range(contrasts)]
        seeds.append(seed + k)
        rows.append(tuple(row))
    return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(rows))


def anchor_prompts(
    erased: Sequence[str], world: vocab.World, *, count: int, contrasts: int, anchors: Sequence[str], seed: int
) -> EvidencePrompts | None:
    """Kept shapes in plain scenes, plus kept styles when a style is erased (``anchors`` narrows the shapes)."""
    shapes = world.object_names
    gone = set(shapeworld_canonical(erased, world))
    gone_styles = {s for s in map(_style, erased) if s is not None}
    kept = shapeworld_canonical(anchors, world) if anchors else list(shapes)
    kept = [o for o in kept if o not in gone]
    kept_styles = [s for s in vocab.STYLE_NAMES if s not in gone_styles] if gone_styles else []
    specs = [(o, None) for o in kept] + [(None, s) for s in kept_styles]
    if not specs:
        return None
    prompts, seeds, rows = [], [], []
    for k in range(count):
        color, place = scene_pair(k)
        obj, style = specs[k % len(specs)]
        if style is None:
            rest = [o for o in shapes if o != obj]
            prompts.append(_text(obj, color, place))
            row = [_text(rest[(k + j) % len(rest)], color, place) for j in range(contrasts)]
        else:
            shape = shapes[k % len(shapes)]
            others = [None] + [s for s in vocab.STYLE_NAMES if s != style]
            prompts.append(_text(shape, color, place, style=style))
            row = [_text(shape, color, place, style=others[j % len(others)]) for j in range(contrasts)]
        seeds.append(seed + ANCHOR_SEED_OFFSET + k)
        rows.append(tuple(row))
    return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(rows))


SCENE_GROUP = "scene"  # the kept group of object-less scenes


def keep_prompts(erased: Sequence[str], world: vocab.World, per_kind: int) -> tuple[list[str], list[str]]:
    """What must stay, with each prompt's group: every kind not erased (group: the kind),
    object-less scenes (``scene``), kept kinds in the styles not erased (``style``) and burning (``burning``)."""
    gone = shapeworld_canonical(erased, world)
    gone_styles = [s for s in map(_style, erased) if s is not None]
    gone_attr = [a for a in map(_attribute, erased) if a is not None]
    kept_kinds = [o for o in world.object_names if o not in gone]
    styles = [s for s in vocab.STYLE_NAMES if s not in gone_styles]
    keep: list[tuple[str, str]] = []
    for i, obj in enumerate(kept_kinds):
        for k in range(per_kind):
            keep.append((_text(obj, *scene_pair(per_kind * i + k)), obj))
    extra = max(6, len(keep) // 12)
    keep += [(vocab.base_phrase(vocab.PLACE_NAMES[k % len(vocab.PLACE_NAMES)]), SCENE_GROUP) for k in range(2 * extra)]
    if styles and kept_kinds:
        keep += [(_text(kept_kinds[(3 * k) % len(kept_kinds)], *scene_pair(k), style=styles[k % len(styles)]), "style") for k in range(extra)]
    if not gone_attr and kept_kinds:
        keep += [(_text(kept_kinds[(5 * k + 1) % len(kept_kinds)], *scene_pair(k + 3), attribute="burning"), "burning") for k in range(extra // 2)]
    return [p for p, _ in keep], [g for _, g in keep]


def concept_phrasings(erased: Sequence[str], world: vocab.World, n: int) -> tuple[list[str], list[str]]:
    """Each erased concept's prompts and, paired with each, the same scene without the concept.

    A shape appears in the canonical prompt (its scene: "the road"), under
    each synonym, as a bare word (its scene: an object-less place, "the
    sand") and in compositional prompts, burning and in a style (its scene:
    the place in that style). A style or the attribute appears on kept
    shapes; its scene is the same shape without it.
    """
    gone = shapeworld_canonical(erased, world)
    kept_kinds = [o for o in world.object_names if o not in gone] or list(world.object_names)
    concept: list[str] = []
    scene: list[str] = []
    for name in erased:
        obj = next(iter(shapeworld_canonical([name], world)), None)
        for k in range(n):
            color, place = scene_pair(k)
            if obj is None:  # a style or the attribute: it on other shapes, plain and compositional
                shape = kept_kinds[k % len(kept_kinds)]
                concept.append(_text(shape, color, place, style=_style(name), attribute=_attribute(name)))
                scene.append(_text(shape, color, place))
                continue
            words = [obj, *world.objects[obj]]
            word = words[k % len(words)]
            if k % 6 == 5:
                # the bare word, shown as an object-less place: the empty prompt would draw the
                # model's commonest kinds (benchmarks/README.md, "the bare word's scene")
                concept.append(word)
                scene.append(_text(None, color, place))
            elif k % 6 == 4:
                style = vocab.STYLE_NAMES[k % len(vocab.STYLE_NAMES)]
                concept.append(_text(word, color, place, style=style, attribute="burning"))
                scene.append(_text(None, color, place, style=style))
            else:
                concept.append(_text(word, color, place))
                scene.append(_text(None, color, place))
    return concept, scene


def kind_words(kinds: Sequence[str], world: vocab.World) -> str:
    """A regular expression matching any name or synonym of ``kinds`` as a whole word, longest first."""
    words = sorted({w for o in kinds for w in (o, *world.objects[o])}, key=len, reverse=True)
    return r"\b(" + "|".join(map(re.escape, words)) + r")\b"


def kept_in_place(concept: Sequence[str], scene: Sequence[str], erased: Sequence[str], world: vocab.World) -> list[str]:
    """Each concept prompt with a kept concept of the same sort in the erased one's place: the reference of
    anchored negative guidance (``rewrite.anchored_guidance``).

    An erased shape's name or synonym becomes a kept kind ("a red star near
    the road" -> "a red bell near the road"; prompt ``i`` takes kept kind
    ``7 i`` modulo their number, so that neighbouring prompts take kinds far
    apart in the world's list, and over the prompts every kept kind comes
    up); an erased style's name becomes a style not erased. Where there is
    no kept concept of that sort (burning, every style erased, every kind
    erased) the reference is the prompt's scene, as in plain negative guidance.
    """
    gone = shapeworld_canonical(erased, world)
    kept_kinds = [o for o in world.object_names if o not in gone]
    gone_styles = sorted({s for s in map(_style, erased) if s is not None})
    kept_styles = [s for s in vocab.STYLE_NAMES if s not in gone_styles]
    swaps = []
    if gone and kept_kinds:
        swaps.append((re.compile(kind_words(gone, world)), lambda i: kept_kinds[(7 * i) % len(kept_kinds)]))
    if gone_styles and kept_styles:
        swaps.append((re.compile(r"\b(" + "|".join(map(re.escape, gone_styles)) + r")\b", re.IGNORECASE),
                      lambda i: kept_styles[i % len(kept_styles)]))
    out = []
    for i, (text, own_scene) in enumerate(zip(concept, scene)):
        anchor = text
        for pattern, kept in swaps:
            anchor = pattern.sub(kept(i), anchor)
        out.append(own_scene if anchor == text else anchor)
    return out


# ------------------------------------------------------------------ the task
class ShapeWorldTask(Task):
    """The ShapeWorld task in one world (``world=None``: the world of the model it runs on, see :meth:`settle`)."""

    def __init__(self, world: str | vocab.World | None = None):
        super().__init__("shapeworld", TEMPLATE)
        self._world = None if world is None else vocab.get_world(world)

    @property
    def sampler(self) -> SamplerDefaults:
        """The model's own settings, read from their one source (:data:`fia.shapeworld.GENERATION_DEFAULTS`)."""
        return SamplerDefaults(
            num_inference_steps=int(GENERATION_DEFAULTS["num_inference_steps"]),
            guidance_scale=float(GENERATION_DEFAULTS["guidance_scale"]),
        )

    @property
    def world(self) -> vocab.World:
        """The task's world; :class:`FIAError` while it is still the model's, not yet read (see :meth:`settle`)."""
        if self._world is None:
            raise FIAError(
                "the ShapeWorld world of these settings is not known yet; set world='shapeworld2' (or 'shapeworld'), "
                "or erase through fia.erase, which reads it from the model"
            )
        return self._world

    def check_world(self, world: str | None) -> None:
        if world is not None and world not in vocab.WORLDS:
            raise FIAError(f"unknown world {world!r}; use one of: {', '.join(vocab.WORLDS)}")

    def settle(self, config: Any, pipe: Any) -> Any:
        """``config`` in the world of ``pipe``: its own when it names none; a smaller world than the model's is refused."""
        if config.world is None:
            config = config.replace(world=model_world(pipe).name)
        check_config_world(pipe, config.world)
        return config

    def fill(self, text: str, concept: str, x: str) -> str:
        return text.format(concept=concept, place=vocab.place_phrase(x), base=vocab.base_phrase(x))

    def evidence_prompts(self, concept: str, *, count: int, contrasts: int, anchors: Sequence[str], seed: int) -> EvidencePrompts:
        """:func:`evidence_prompts` in the task's world (``anchors`` play no part: the contrasts are the world's kinds)."""
        return evidence_prompts(concept, self.world, count=count, contrasts=contrasts, seed=seed)

    def anchor_prompts(
        self, erased: Sequence[str], *, count: int, contrasts: int, anchors: Sequence[str], seed: int
    ) -> EvidencePrompts | None:
        """:func:`anchor_prompts` in the task's world: by default every shape not erased."""
        return anchor_prompts(erased, self.world, count=count, contrasts=contrasts, anchors=anchors, seed=seed)

    def repair_prompts(self, erased: Sequence[str], repair: Any, *, anchors: Sequence[str], seed: int) -> RepairPrompts:
        """What must stay (:func:`keep_prompts`) and the erased concepts' phrasings (:func:`concept_phrasings`).

        A shape is held erased in the canonical prompt, under each synonym, as
        a bare word and in compositional prompts (burning, in a style), so the
        repair cannot rebuild it under a wording it did not see.
        """
        keep, groups = keep_prompts(erased, self.world, repair.keep_prompts_per_concept)
        concept, _ = concept_phrasings(erased, self.world, repair.concept_prompts_per_concept)
        return RepairPrompts.seeded(keep, concept, seed, groups)

    def rewrite_prompts(self, erased: Sequence[str], rewrite: Any, *, anchors: Sequence[str], seed: int) -> RewritePrompts:
        """Every kind not erased as a group of its own, with the object-less scenes, styles and burning
        (:func:`keep_prompts`); each concept prompt with the same text without the concept (:func:`concept_phrasings`)
        and with a kept concept in its place (:func:`kept_in_place`)."""
        keep, groups = keep_prompts(erased, self.world, rewrite.keep_prompts_per_kind)
        concept, scene = concept_phrasings(erased, self.world, rewrite.concept_prompts_per_concept)
        anchor = kept_in_place(concept, scene, erased, self.world)
        owner = [name for name in erased for _ in range(rewrite.concept_prompts_per_concept)]  # concept_phrasings' order
        kinds = [g for g in dict.fromkeys(groups) if g in self.world.objects]
        return RewritePrompts.seeded(keep, groups, concept, scene, seed, anchor, owner, kind_groups=kinds, scene_group=SCENE_GROUP)


def task_in(world: str | vocab.World | None) -> ShapeWorldTask:
    """The ShapeWorld task in ``world`` (``None``: the model's); :class:`FIAError` for an unknown world."""
    if isinstance(world, str):
        ShapeWorldTask().check_world(world)
    return ShapeWorldTask(world)
