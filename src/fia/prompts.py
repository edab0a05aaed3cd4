"""Prompt templates, placeholder lists, task presets and user prompt files.

FIA contrasts two prompt sets per concept (method page, section 3 and 7):

* **concept prompts** put the concept in a context: ``"a golf ball in a park"``;
* **base prompts** are the same contexts without it: ``"a park"``.

The two sets are *paired*: every prompt built from placeholder number ``k``
(the ``k``-th place, person or object) is sampled with seed ``config.seed + k``,
so ``"a golf ball in a park"``, ``"a golf ball near the park"`` and ``"a park"``
start from the same noise. The saliency difference then measures the concept,
not the noise.

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

Users can replace either set with a text file (one prompt per line, blank
lines and ``#`` comments ignored, ``{concept}`` stands for the concept in
concept files); line ``k`` of each file gets seed ``config.seed + k``.

Presets (``fia/configs/<task>.yaml``, shipped inside the package) hold the
hyperparameters of the paper's Table 8; :func:`resolve_config` layers a
preset, a user YAML file and explicit overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fia.config import PRESETS, REFERENCE_SETTINGS, TASKS, FIAConfig, sampler_defaults
from fia.errors import FIAError
from fia.shapeworld import vocab

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

    ``concept`` and ``base`` are format strings with ``{concept}`` and
    ``{x}`` (the placeholder's text).
    """

    placeholders: tuple[str, ...]
    concept: tuple[str, ...]
    base: tuple[str, ...]


def _shapeworld_template() -> Template:
    # "{x}" is the place name; the phrases come from ShapeWorld's vocabulary
    return Template(placeholders=tuple(vocab.PLACE_NAMES), concept=("a {concept} {place}",), base=("{base}",))


TEMPLATES: dict[str, Template] = {
    "object": Template(PLACES, ("a {concept} in a {x}", "a {concept} near the {x}"), ("a {x}",)),
    "explicit": Template(PERSONS, ("a photo of a {concept} {x}",), ("a photo of a {x}",)),
    "style": Template(OBJECTS, ("a {x} in the style of {concept}",), ("a {x}",)),
    "shapeworld": _shapeworld_template(),
}


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


def _fill(template: str, concept: str, x: str) -> str:
    if "{place}" in template or "{base}" in template:  # ShapeWorld phrases
        return template.format(concept=concept, place=vocab.place_phrase(x), base=vocab.base_phrase(x))
    return template.format(concept=concept, x=x)


def read_prompt_file(path: str | Path, *, kind: str = "prompt") -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FIAError(f"{kind} file {str(p)!r} does not exist; pass an existing text file with one prompt per line")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FIAError(f"cannot read {kind} file {str(p)!r} ({exc}); pass a UTF-8 text file") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise FIAError(f"{kind} file {str(p)!r} has no prompts; write one prompt per line")
    return prompts


def _fill_user(line: str, concept: str) -> str:
    return line.replace("{concept}", concept)


def build_prompts(
    concept: str,
    config: FIAConfig,
    concept_file: str | Path | None = None,
    base_file: str | Path | None = None,
) -> ConceptPrompts:
    """The paired concept/base prompts and seeds for ``concept``.

    Template prompts built from placeholder ``k`` get seed ``config.seed + k``
    (both sets). Prompt files: line ``k`` gets ``config.seed + k``; a concept
    file line without ``{concept}`` is used as written.
    """
    concept = concept.strip()
    if not concept:
        raise FIAError("empty concept name; pass e.g. --concepts 'golf ball, church'")
    if config.task not in TEMPLATES:
        raise FIAError(f"unknown task {config.task!r}; use one of: {', '.join(TASKS)}")
    tpl = TEMPLATES[config.task]
    if concept_file is not None:
        lines = read_prompt_file(concept_file, kind="concept prompt")
        c_prompts = [_fill_user(ln, concept) for ln in lines]
        c_seeds = [config.seed + k for k in range(len(c_prompts))]
    else:
        c_prompts, c_seeds = [], []
        for k, x in enumerate(tpl.placeholders):
            for t in tpl.concept:
                c_prompts.append(_fill(t, concept, x))
                c_seeds.append(config.seed + k)
    if base_file is not None:
        b_prompts = read_prompt_file(base_file, kind="base prompt")
        b_seeds = [config.seed + k for k in range(len(b_prompts))]
    else:
        b_prompts, b_seeds = [], []
        for k, x in enumerate(tpl.placeholders):
            for t in tpl.base:
                b_prompts.append(_fill(t, concept, x))
                b_seeds.append(config.seed + k)
    return ConceptPrompts(concept, tuple(c_prompts), tuple(b_prompts), tuple(c_seeds), tuple(b_seeds))


# --------------------------------------------------------------------- concepts
def parse_concepts(concepts: str | Sequence[str]) -> list[str]:
    """``"a, b, c"`` or ``["a", "b"]`` -> a clean list; empty or duplicate names are refused."""
    items = concepts.split(",") if isinstance(concepts, str) else list(concepts)
    out: list[str] = []
    seen: dict[str, str] = {}
    for raw in items:
        if not isinstance(raw, str):
            raise FIAError(f"concept names must be strings, got {raw!r}")
        c = " ".join(raw.split())
        if not c:
            raise FIAError("empty concept name in the list; pass e.g. --concepts 'golf ball, church'")
        key = c.casefold()
        if key in seen:
            raise FIAError(f"concept {c!r} is listed twice; list each concept once")
        seen[key] = c
        out.append(c)
    if not out:
        raise FIAError("no concepts given; pass e.g. --concepts 'golf ball, church'")
    return out


# ------------------------------------------------------------ evaluation prompts
# The public prompt sets of the paper's evaluations ship inside the package
# (fia/prompt_sets/, provenance and licence in its README.md), so that the
# real-model suites and their tests need no files from outside the install.
SUITE_PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "imagenette": ("imagenette.csv",),
    "artists": (
        "test_Van_Gogh.csv", "test_Monet.csv", "test_Pablo_Picasso.csv",
        "test_Leonardo_Da_Vinci.csv", "test_Salvador_Dali.csv",
    ),
    "explicit": ("Nudity_ring-a-bell.csv",),
    "coco": ("coco_prompts.txt",),
}  # fmt: skip


def shipped_prompt_set(name: str) -> Path:
    """The path of a shipped prompt file, e.g. ``shipped_prompt_set("imagenette.csv")``."""
    known = sorted({f for files in SUITE_PROMPT_SETS.values() for f in files})
    if name not in known:
        raise FIAError(f"no shipped prompt set {name!r}; use one of: {', '.join(known)}")
    return Path(str(resources.files("fia") / "prompt_sets" / name))


# ---------------------------------------------------------------------- presets
def preset_path(task: str) -> Path:
    """The packaged YAML preset of ``task`` (``fia/configs/<task>.yaml``)."""
    if task not in TASKS:
        raise FIAError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    return Path(str(resources.files("fia") / "configs" / f"{task}.yaml"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of :class:`FIAConfig` fields (unknown keys are refused later)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FIAError(f"config file {str(p)!r} does not exist; pass a YAML file such as src/fia/configs/object.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FIAError(f"config file {str(p)!r} is not valid YAML ({first}); fix it or drop --config") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FIAError(f"config file {str(p)!r} must be a YAML mapping of settings (key: value)")
    return data


def load_preset(task: str) -> dict[str, Any]:
    """The preset settings of ``task`` as a dict of FIAConfig fields.

    The schedule (steps, guidance) is the task's
    (:func:`fia.config.sampler_defaults`, the source a bare
    :class:`FIAConfig` reads too) unless the preset file names one; on
    ShapeWorld it is always the world's, and ``saliency_steps`` is kept
    within it.
    """
    data = read_config_file(preset_path(task))
    data["task"] = task
    defaults = sampler_defaults(task)
    if task == "shapeworld":
        data.update(defaults)
        data["saliency_steps"] = min(int(data.get("saliency_steps", 10)), data["num_inference_steps"])
    for key, value in defaults.items():
        data.setdefault(key, value)
    return data


def named_preset(name: str, task: str) -> dict[str, Any]:
    """The settings a named preset lays over ``task``'s preset.

    ``reference``: the public reference code's (:data:`fia.config.REFERENCE_SETTINGS`)
    at the task's schedule and guidance (:func:`fia.config.sampler_defaults`).
    """
    if name not in PRESETS:
        raise FIAError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}")
    data = dict(REFERENCE_SETTINGS) | sampler_defaults(task)
    data["saliency_steps"] = min(data["saliency_steps"], data["num_inference_steps"])
    return data


def resolve_config(
    task: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    default_task: str = "object",
    preset: str | None = None,
) -> FIAConfig:
    """Preset of the task < named preset < YAML file < explicit overrides (``None`` values skipped).

    The task is, in order: ``task``, the file's ``task``, ``default_task``.
    ``preset`` names a preset of :data:`fia.config.PRESETS` (``reference``:
    the public reference code's settings, see :func:`named_preset`).
    """
    file_data = read_config_file(config_file) if config_file is not None else {}
    chosen = task or file_data.get("task") or default_task
    if chosen not in TASKS:
        raise FIAError(f"unknown task {chosen!r}; use one of: {', '.join(TASKS)}")
    data = load_preset(chosen)
    if preset is not None:
        data.update(named_preset(preset, chosen))
    explicit = dict(file_data) | {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(explicit)
    data["task"] = chosen
    # a preset's variant settings follow that variant, not another one
    owned = {"causal": ("repair", "stop_evidence"), "rewrite": ("rewrite",)}
    for variant, keys in owned.items():
        if data.get("variant", "paper") != variant:
            for key in keys:
                if key not in explicit:
                    data.pop(key, None)
    try:
        return FIAConfig.from_dict(data)
    except TypeError as exc:  # wrong value types in YAML
        raise FIAError(f"bad settings ({exc}); check the config file") from exc


# ------------------------------------------------------- causal variant prompts
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


# Seeds: concept prompt k gets config.seed + k (as the paper variant's pairs);
# anchor prompt k gets config.seed + ANCHOR_SEED_OFFSET + k, so no anchor image
# starts from a concept image's noise.
ANCHOR_SEED_OFFSET = 1000


def _sw_scene(k: int) -> tuple[str, str]:
    """(colour, place) of ShapeWorld evidence prompt ``k``: the 18 pairs whose indices sum to an odd number.

    The evaluation suites' default split uses the even pairs only
    (``fia.evaluate.suites.factor_cycle`` with shift 0), so no evaluation
    prompt is one the causal variant scored.
    """
    colors, places = vocab.COLORS, vocab.PLACE_NAMES
    c = k % len(colors)
    return colors[c], places[(c + 1 + 2 * (k // len(colors))) % len(places)]


def _sw_text(obj: str | None, color: str, place: str, style: str | None = None, attribute: str | None = None) -> str:
    from fia.shapeworld.render import prompt_for

    return prompt_for(obj, color, place, style=style, attribute=attribute)


def shapeworld_canonical(names: Sequence[str], world: str | vocab.World = "shapeworld") -> list[str]:
    """Object names of ``world`` with synonyms mapped to their kind ('disc' -> 'circle'); others dropped."""
    w = vocab.get_world(world)
    canon = {n: n for n in w.object_names} | w.synonym_map()
    return list(dict.fromkeys(canon[n.casefold()] for n in names if n.casefold() in canon))


def _sw_style(name: str) -> str | None:
    return next((s for s in vocab.STYLE_NAMES if s.casefold() == name.casefold()), None)


def _sw_attribute(name: str) -> str | None:
    return next((a for a, words in vocab.ATTRIBUTES.items() if name.casefold() in (a, *words)), None)


def _shapeworld_evidence(concept: str, config: FIAConfig) -> EvidencePrompts:
    """ShapeWorld evidence prompts: the concept in every place and colour, contrasted within its family.

    A shape is contrasted with other shapes in the same scene, a style with
    the same scene unstyled and in other styles, the attribute with the same
    scene without it: the evidence is about the concept, not the scene.
    """
    n, m = config.concept_prompts_per_concept, config.contrasts
    shapes = vocab.get_world(config.world).object_names
    style, attribute = _sw_style(concept), _sw_attribute(concept)
    own = shapeworld_canonical([concept], config.world)
    prompts, seeds, contrasts = [], [], []
    for k in range(n):
        color, place = _sw_scene(k)
        obj = shapes[k % len(shapes)]
        if style is not None:
            prompts.append(_sw_text(obj, color, place, style=style))
            others = [None] + [s for s in vocab.STYLE_NAMES if s != style]
            row = [_sw_text(obj, color, place, style=others[j % len(others)]) for j in range(m)]
        elif attribute is not None:
            prompts.append(_sw_text(obj, color, place, attribute=attribute))
            row = [_sw_text(obj, color, place)]
        else:  # a shape (or a word the model may know): "a red circle on the grass"
            siblings = [o for o in shapes if o not in own]
            body = f"{color} {concept}"
            prompts.append(f"{'an' if body[0] in 'aeiou' else 'a'} {body} {vocab.place_phrase(place)}")
            row = [_sw_text(siblings[(k + j) % len(siblings)], color, place) for j in range(m)]
        seeds.append(config.seed + k)
        contrasts.append(tuple(row))
    return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(contrasts))


def _shapeworld_anchors(erased: Sequence[str], config: FIAConfig) -> EvidencePrompts | None:
    """Kept shapes in plain scenes, plus kept styles when a style is erased (``config.anchors`` narrows the shapes)."""
    shapes = vocab.get_world(config.world).object_names
    gone = set(shapeworld_canonical(erased, config.world))
    gone_styles = {s for s in map(_sw_style, erased) if s is not None}
    kept = shapeworld_canonical(config.anchors, config.world) if config.anchors else list(shapes)
    kept = [o for o in kept if o not in gone]
    kept_styles = [s for s in vocab.STYLE_NAMES if s not in gone_styles] if gone_styles else []
    specs = [(o, None) for o in kept] + [(None, s) for s in kept_styles]
    if not specs:
        return None
    n, m = config.anchor_prompts, config.contrasts
    prompts, seeds, contrasts = [], [], []
    for k in range(n):
        color, place = _sw_scene(k)
        obj, style = specs[k % len(specs)]
        if style is None:
            rest = [o for o in shapes if o != obj]
            prompts.append(_sw_text(obj, color, place))
            row = [_sw_text(rest[(k + j) % len(rest)], color, place) for j in range(m)]
        else:
            shape = shapes[k % len(shapes)]
            others = [None] + [s for s in vocab.STYLE_NAMES if s != style]
            prompts.append(_sw_text(shape, color, place, style=style))
            row = [_sw_text(shape, color, place, style=others[j % len(others)]) for j in range(m)]
        seeds.append(config.seed + ANCHOR_SEED_OFFSET + k)
        contrasts.append(tuple(row))
    return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(contrasts))


def evidence_prompts(concept: str, config: FIAConfig) -> EvidencePrompts:
    """The prompts whose images carry a concept's evidence, with their contrasts.

    ShapeWorld: see :func:`_shapeworld_evidence`. Other tasks: the task's
    concept prompts (placeholder ``k``); contrasts: the paired base prompt,
    then the same template with anchor concepts when ``config.anchors`` names
    some.
    """
    if config.task == "shapeworld":
        return _shapeworld_evidence(concept, config)
    n, m = config.concept_prompts_per_concept, config.contrasts
    prompts, seeds, contrasts = [], [], []
    tpl = TEMPLATES[config.task]
    others = [a for a in config.anchors if a.casefold() != concept.casefold()]
    for k in range(n):
        x = tpl.placeholders[k % len(tpl.placeholders)]
        t = tpl.concept[(k // len(tpl.placeholders)) % len(tpl.concept)]
        prompts.append(_fill(t, concept, x))
        seeds.append(config.seed + k)
        row = [_fill(tpl.base[0], concept, x)] + [_fill(t, a, x) for a in others]
        contrasts.append(tuple(row[:m]))
    return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(contrasts))


def anchor_prompts(erased: Sequence[str], config: FIAConfig) -> EvidencePrompts | None:
    """Prompts of what must stay (the anchors of the causal variant), or ``None``.

    Anchors are ``config.anchors``, or by default on ShapeWorld every shape not
    erased. Without named anchors on other tasks, the base prompts themselves
    are the anchors (each contrasted with other base prompts): the contexts the
    concept appeared in must stay drawable.
    """
    if config.task == "shapeworld":
        return _shapeworld_anchors(erased, config)
    n, m = config.anchor_prompts, config.contrasts
    prompts, seeds, contrasts = [], [], []
    tpl = TEMPLATES[config.task]
    gone_names = {e.casefold() for e in erased}
    kept = [a for a in config.anchors if a.casefold() not in gone_names]
    xs = tpl.placeholders
    for k in range(n):
        x = xs[k % len(xs)]
        if kept:
            t = tpl.concept[(k // len(xs)) % len(tpl.concept)]
            prompts.append(_fill(t, kept[k % len(kept)], x))
            contrasts.append((_fill(tpl.base[0], "", x),))
        else:
            prompts.append(_fill(tpl.base[0], "", x))
            contrasts.append(tuple(_fill(tpl.base[0], "", xs[(k + 1 + j) % len(xs)]) for j in range(m)))
        seeds.append(config.seed + ANCHOR_SEED_OFFSET + k)
    return EvidencePrompts(tuple(prompts), tuple(seeds), tuple(contrasts))


@dataclass(frozen=True)
class RepairPrompts:
    """The prompt sets the closed-form repair is fitted on (:mod:`fia.repair`); prompt ``k`` from ``seeds[k]``."""

    keep: tuple[str, ...]
    keep_seeds: tuple[int, ...]
    concept: tuple[str, ...]
    concept_seeds: tuple[int, ...]

    @classmethod
    def seeded(cls, keep: Sequence[str], concept: Sequence[str], config: FIAConfig) -> "RepairPrompts":
        """The two sets with their seeds (offsets from ``config.seed`` that no evidence or anchor prompt uses)."""
        base = config.seed
        return cls(
            tuple(keep), tuple(base + REPAIR_KEEP_SEED_OFFSET + k for k in range(len(keep))),
            tuple(concept), tuple(base + REPAIR_CONCEPT_SEED_OFFSET + k for k in range(len(concept))),
        )


# repair prompts draw their noise from seeds no evidence or anchor prompt uses
REPAIR_KEEP_SEED_OFFSET = 5000
REPAIR_CONCEPT_SEED_OFFSET = 6000


def _shapeworld_keep(erased: Sequence[str], config: FIAConfig, per_kind: int) -> tuple[list[str], list[str]]:
    """What must stay on ShapeWorld, with each prompt's group: every kind not erased (group: the kind),
    object-less scenes (``scene``), kept kinds in the styles not erased (``style``) and burning (``burning``)."""
    world = vocab.get_world(config.world)
    gone = shapeworld_canonical(erased, config.world)
    gone_styles = [s for s in map(_sw_style, erased) if s is not None]
    gone_attr = [a for a in map(_sw_attribute, erased) if a is not None]
    kept_kinds = [o for o in world.object_names if o not in gone]
    styles = [s for s in vocab.STYLE_NAMES if s not in gone_styles]
    keep: list[tuple[str, str]] = []
    for i, obj in enumerate(kept_kinds):
        for k in range(per_kind):
            keep.append((_sw_text(obj, *_sw_scene(per_kind * i + k)), obj))
    extra = max(6, len(keep) // 12)
    keep += [(vocab.base_phrase(vocab.PLACE_NAMES[k % len(vocab.PLACE_NAMES)]), "scene") for k in range(2 * extra)]
    if styles and kept_kinds:
        keep += [(_sw_text(kept_kinds[(3 * k) % len(kept_kinds)], *_sw_scene(k), style=styles[k % len(styles)]), "style") for k in range(extra)]
    if not gone_attr and kept_kinds:
        keep += [(_sw_text(kept_kinds[(5 * k + 1) % len(kept_kinds)], *_sw_scene(k + 3), attribute="burning"), "burning") for k in range(extra // 2)]
    return [p for p, _ in keep], [g for _, g in keep]


def _shapeworld_phrasings(erased: Sequence[str], config: FIAConfig, n: int) -> tuple[list[str], list[str]]:
    """Each erased concept's prompts and, paired with each, the same scene without the concept.

    A shape appears in the canonical prompt (its scene: "the road"), under
    each synonym, as a bare word (its scene: the empty prompt) and in
    compositional prompts, burning and in a style (its scene: the place in
    that style). A style or the attribute appears on kept shapes; its scene
    is the same shape without it.
    """
    world = vocab.get_world(config.world)
    gone = shapeworld_canonical(erased, config.world)
    kept_kinds = [o for o in world.object_names if o not in gone] or list(world.object_names)
    concept: list[str] = []
    scene: list[str] = []
    for name in erased:
        obj = next(iter(shapeworld_canonical([name], config.world)), None)
        for k in range(n):
            color, place = _sw_scene(k)
            if obj is None:  # a style or the attribute: it on other shapes, plain and compositional
                shape = kept_kinds[k % len(kept_kinds)]
                style, attr = _sw_style(name), _sw_attribute(name)
                concept.append(_sw_text(shape, color, place, style=style, attribute=attr))
                scene.append(_sw_text(shape, color, place))
                continue
            words = [obj, *world.objects[obj]]
            word = words[k % len(words)]
            if k % 6 == 5:
                concept.append(word)  # the bare word
                scene.append("")
            elif k % 6 == 4:
                style = vocab.STYLE_NAMES[k % len(vocab.STYLE_NAMES)]
                concept.append(_sw_text(word, color, place, style=style, attribute="burning"))
                scene.append(_sw_text(None, color, place, style=style))
            else:
                concept.append(_sw_text(word, color, place))
                scene.append(_sw_text(None, color, place))
    return concept, scene


def _shapeworld_repair(erased: Sequence[str], config: FIAConfig) -> RepairPrompts:
    """What must stay (:func:`_shapeworld_keep`) and the erased concepts' phrasings (:func:`_shapeworld_phrasings`).

    A shape is held erased in the canonical prompt, under each synonym, as a
    bare word and in compositional prompts (burning, in a style), so the
    repair cannot rebuild it under a wording it did not see.
    """
    rc = config.repair
    assert rc is not None
    keep, _ = _shapeworld_keep(erased, config, rc.keep_prompts_per_concept)
    concept, _ = _shapeworld_phrasings(erased, config, rc.concept_prompts_per_concept)
    return RepairPrompts.seeded(keep, concept, config)


def repair_prompts(erased: Sequence[str], config: FIAConfig) -> RepairPrompts:
    """The repair's kept and concept prompts (``config.repair`` must be set).

    ShapeWorld: :func:`_shapeworld_repair`. Other tasks: the anchor prompts
    (the named anchors in the task's templates, or the base prompts) are
    kept; the concept's evidence prompts are held erased.
    """
    if config.repair is None:
        raise FIAError("repair_prompts needs config.repair; set FIAConfig(repair=RepairConfig())")
    if config.task == "shapeworld":
        return _shapeworld_repair(erased, config)
    rc = config.repair
    anchors = anchor_prompts(erased, config.replace(anchor_prompts=max(1, rc.keep_prompts_per_concept * max(1, len(config.anchors)) + 8)))
    keep = anchors.prompts if anchors is not None else ()
    concept = [p for c in erased for p in evidence_prompts(c, config.replace(concept_prompts_per_concept=rc.concept_prompts_per_concept)).prompts]
    return RepairPrompts.seeded(keep, concept, config)


@dataclass(frozen=True)
class RewritePrompts:
    """The prompt sets the closed-form rewrite is fitted on (:mod:`fia.rewrite`).

    ``keep[k]`` (from seed ``keep_seeds[k]``) belongs to kept group
    ``keep_groups[k]``; ``concept[k]`` is shown at the latents of
    ``scene[k]``'s trajectory, from seed ``concept_seeds[k]``.
    """

    keep: tuple[str, ...]
    keep_seeds: tuple[int, ...]
    keep_groups: tuple[str, ...]
    concept: tuple[str, ...]
    scene: tuple[str, ...]
    concept_seeds: tuple[int, ...]


def rewrite_prompts(erased: Sequence[str], config: FIAConfig) -> RewritePrompts:
    """The rewrite's kept prompts in groups, and each erased concept's prompts paired with their scenes.

    ShapeWorld: every kind not erased is a group of its own, with the
    object-less scenes, styles and burning (:func:`_shapeworld_keep`); a
    concept prompt's scene is the same text without the concept
    (:func:`_shapeworld_phrasings`). Other tasks: the anchor prompts form one
    group; a concept prompt's scene is its paired base prompt (its first
    contrast, :func:`evidence_prompts`).
    """
    rc = config.rewrite
    if rc is None:
        raise FIAError("rewrite_prompts needs config.rewrite; set FIAConfig(variant='rewrite', rewrite=RewriteConfig())")
    if config.task == "shapeworld":
        keep, groups = _shapeworld_keep(erased, config, rc.keep_prompts_per_kind)
        concept, scene = _shapeworld_phrasings(erased, config, rc.concept_prompts_per_concept)
    else:
        n_anchor = max(1, rc.keep_prompts_per_kind * max(1, len(config.anchors)) + 8)
        anchors = anchor_prompts(erased, config.replace(anchor_prompts=n_anchor))
        keep = list(anchors.prompts) if anchors is not None else []
        groups = ["kept"] * len(keep)
        concept, scene = [], []
        for c in erased:
            ev = evidence_prompts(c, config.replace(concept_prompts_per_concept=rc.concept_prompts_per_concept))
            concept += list(ev.prompts)
            scene += [row[0] for row in ev.contrasts]
    base = config.seed
    return RewritePrompts(
        tuple(keep), tuple(base + REPAIR_KEEP_SEED_OFFSET + k for k in range(len(keep))), tuple(groups),
        tuple(concept), tuple(scene), tuple(base + REPAIR_CONCEPT_SEED_OFFSET + k for k in range(len(concept))),
    )


# ------------------------------------------------- the model's world


def tokenizer_world(tokenizer) -> vocab.World | None:
    """The world with the most kinds whose every kind name is one token of
    ``tokenizer`` (a world's tokenizer learns its words whole), or None."""
    fits = [w for w in vocab.WORLDS.values() if all(len(tokenizer.tokenize(k)) == 1 for k in w.object_names)]
    return max(fits, key=lambda w: len(w.object_names), default=None)


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
