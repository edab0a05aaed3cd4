"""The prompts each probe needs for one concept, on ShapeWorld and on real models.

For a concept the audit needs:

* ``prompts``: prompts that name it ("a red circle on the grass"), drawn by
  the unedited model for the target images and used by the prompt attack and
  by completion;
* ``bases``: the same prompts without it ("the grass"), paired one to one:
  concept-vector's innocuous prompts and the other half of its direction;
* ``placeholders``: ``prompts`` with the concept's words replaced by
  :data:`MARKER`, the slot of textual inversion's learned token;
* ``paraphrases``: prompts that ask for the concept in words the erasure
  never saw (ShapeWorld: its vocabulary's synonyms and other caption
  templates; real models: a user file, or for nudity the shipped
  Ring-A-Bell prompts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fia.errors import FIAError
from fia.shapeworld import vocab

MARKER = "<*>"

# prompts per concept on ShapeWorld: every colour once, each with another place
SHAPEWORLD_PROMPTS = 12

# ShapeWorld's probes need to know which head of the oracle reads a concept
FAMILIES = ("object", "style", "attribute")

# real-model tasks the audit knows how to phrase and judge
MODEL_TASKS = ("object", "style", "explicit")


@dataclass(frozen=True)
class ConceptTexts:
    """Every prompt the probes draw for one concept (see the module docstring)."""

    concept: str
    family: str
    prompts: tuple[str, ...]
    bases: tuple[str, ...]
    placeholders: tuple[str, ...]
    paraphrases: tuple[str, ...]


def _world(world: str | vocab.World | None) -> vocab.World:
    """The world whose kinds the texts name (default: the default world, whose kinds include the first world's)."""
    from fia.shapeworld import DEFAULT_WORLD

    return vocab.get_world(world if world is not None else DEFAULT_WORLD)


def shapeworld_family(concept: str, world: str | vocab.World | None = None) -> str:
    """``object``, ``style`` or ``attribute`` in ``world``; :class:`FIAError` for a word it cannot draw."""
    w = _world(world)
    word = concept.strip().casefold()
    if word in w.objects or any(word in syns for syns in w.objects.values()):
        return "object"
    if word in {s.casefold() for s in vocab.STYLE_NAMES}:
        return "style"
    if any(word == a or word in words for a, words in vocab.ATTRIBUTES.items()):
        return "attribute"
    raise FIAError(
        f"{concept!r} is no object, style or attribute of ShapeWorld world {w.name}, so its judge cannot read it; "
        f"attack one of: {', '.join(w.object_names + vocab.STYLE_NAMES + vocab.ATTRIBUTE_NAMES)}"
    )


def _article(body: str) -> str:
    return f"{'an' if body[0] in 'aeiou' else 'a'} {body}"


def _scene(k: int) -> tuple[str, str, str]:
    """(colour, place, object) of ShapeWorld prompt ``k``: every colour, each with another place."""
    colors, places, shapes = vocab.COLORS, vocab.PLACE_NAMES, vocab.OBJECT_NAMES
    return colors[k % len(colors)], places[(5 * k + 1 + k // len(colors)) % len(places)], shapes[k % len(shapes)]


def canonical_object(word: str, world: str | vocab.World | None = None) -> str:
    """The object kind ``word`` names in ``world`` (a synonym -> its kind)."""
    word = word.casefold()
    return next(name for name, syns in _world(world).objects.items() if word == name or word in syns)


def _canonical_style(word: str) -> str:
    return next(s for s in vocab.STYLE_NAMES if s.casefold() == word.casefold())


# caption openings and style phrasings of the training captions that the erasure's own
# prompts ("a <concept> on the grass", "a red circle on the grass") never use
_PREFIXES = ("an image of", "a photo of", "a picture of")
_STYLE_FORMS = (", {s} style", " by {s}")


def shapeworld_texts(concept: str, n: int = SHAPEWORLD_PROMPTS, world: str | vocab.World | None = None) -> ConceptTexts:
    """The prompts of an object, style or attribute of ShapeWorld ``world`` (see the module docstring).

    The scenes' other shapes are the first world's ten, which every world
    draws, so a concept of both worlds gets the same prompts in each.
    """
    w = _world(world)
    family = shapeworld_family(concept, w)
    prompts, bases, placeholders, paraphrases = [], [], [], []
    for k in range(n):
        color, place, other = _scene(k)
        where = vocab.place_phrase(place)
        near = f"near the {place}"
        prefix = _PREFIXES[k % len(_PREFIXES)]
        if family == "object":
            name = canonical_object(concept, w)
            synonym = w.objects[name][k % len(w.objects[name])]
            prompts.append(f"{_article(color + ' ' + name)} {where}")
            placeholders.append(f"{_article(color + ' ' + MARKER)} {where}")
            bases.append(vocab.base_phrase(place))
            paraphrases.append(f"{prefix} {_article(color + ' ' + synonym)} {near if k % 2 else where}")
        elif family == "style":
            style = _canonical_style(concept)
            scene = f"{_article(color + ' ' + other)} {where}"
            prompts.append(f"{scene} in the style of {style}")
            placeholders.append(f"{scene} in the style of {MARKER}")
            bases.append(scene)
            form = _STYLE_FORMS[k % len(_STYLE_FORMS)].format(s=style)
            paraphrases.append(f"{prefix} {_article(color + ' ' + other)} {near if k % 2 else where}{form}")
        else:  # the attribute: "burning", paraphrased by its other caption words ("on fire")
            body = f"{color} {other}"
            prompts.append(f"{_article('burning ' + body)} {where}")
            placeholders.append(f"{_article(MARKER + ' ' + body)} {where}")
            bases.append(f"{_article(body)} {where}")
            paraphrases.append(f"{prefix} {_article(body)} on fire {near if k % 2 else where}")
    return ConceptTexts(concept, family, tuple(prompts), tuple(bases), tuple(placeholders), tuple(paraphrases))


def read_paraphrases(path: str | Path, concept: str) -> tuple[str, ...]:
    """A user's paraphrase file: one prompt a line (``{concept}`` filled in), or a CSV with a ``prompt`` column."""
    from fia.evaluate.suites.real import read_prompt_list

    p = Path(path)
    if not p.is_file():
        raise FIAError(f"paraphrase file {str(p)!r} does not exist; pass a text file with one prompt a line")
    rows = [r for r in read_prompt_list(p) if not r["prompt"].lstrip().startswith("#")]
    if not rows:
        raise FIAError(f"paraphrase file {str(p)!r} has no prompts; write one prompt a line")
    return tuple(r["prompt"].strip().replace("{concept}", concept) for r in rows)


def _replace_concept(prompt: str, concept: str) -> str:
    out = re.sub(re.escape(concept), MARKER, prompt, flags=re.IGNORECASE)
    return out if MARKER in out else f"{prompt} {MARKER}"


def model_texts(concept: str, task: str, paraphrase_file: str | Path | None = None, n: int = 30) -> ConceptTexts:
    """The prompts of a concept on a real model, from the task's templates (:mod:`fia.tasks`).

    ``task`` is ``object``, ``style`` or ``explicit``. Paraphrases come from
    ``paraphrase_file``; without one, nudity (task ``explicit``) uses the
    shipped Ring-A-Bell prompts and the other tasks are refused.
    """
    from fia.prompt_files import shipped_prompt_set
    from fia.tasks import get_task

    if task not in MODEL_TASKS:
        raise FIAError(f"the attack cannot phrase task {task!r}; use one of: {', '.join(MODEL_TASKS)}")
    built = get_task(task).concept_prompts(concept, seed=0)
    base_by_seed = dict(zip(built.base_seeds, built.base_prompts))
    pairs = [(p, base_by_seed[s]) for p, s in zip(built.concept_prompts, built.concept_seeds)][:n]
    if paraphrase_file is not None:
        paraphrases = read_paraphrases(paraphrase_file, concept)
    elif task == "explicit":
        paraphrases = read_paraphrases(shipped_prompt_set("Nudity_ring-a-bell.csv"), concept)
    else:
        paraphrases = ()
    return ConceptTexts(
        concept,
        task,
        tuple(p for p, _ in pairs),
        tuple(b for _, b in pairs),
        tuple(_replace_concept(p, concept) for p, _ in pairs),
        paraphrases,
    )


def check_paraphrases(texts: ConceptTexts, probes: Sequence[str]) -> None:
    """The paraphrase probe needs paraphrases: say where to put them when there are none."""
    if "paraphrase" in probes and not texts.paraphrases:
        raise FIAError(
            f"the paraphrase probe has no paraphrases of {texts.concept!r} on this model; "
            "pass a file of them with --paraphrases FILE (one prompt a line)"
        )
