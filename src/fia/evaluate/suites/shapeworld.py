"""ShapeWorld suites, judged by the ShapeWorld oracle.

* ``shapeworld-objects`` -- per-class accuracy on erased (forget) and kept
  (preserve) objects, Overall; accuracy on synonyms of erased objects.
* ``shapeworld-styles`` -- style accuracy on erased and kept styles, FSR.
* ``shapeworld-attribute`` -- share of images where the attribute is seen.
* all three add quality on held-out non-target prompts: the Frechet distance
  of oracle features to renders of the scenes those prompts name (ShapeWorld
  FID) and prompt fidelity (oracle agreement with every factor the prompt
  names).
* with a ShapeWorld CLIP beside the judge (the second world ships one), the
  CLIP score of every image against its prompt (per concept and on the
  quality prompts), and in the styles suite a second style verdict, the
  CLIP's zero-shot one, with its own accuracy and FSR.

A suite is built in the world of its judge (``judge.world``): the first
world's ten shapes, or the second world's 32 kinds.

The three suites differ only in what :data:`FAMILIES` says about them; one
builder, :func:`shapeworld_suite`, makes all three. Prompts follow the
training captions' grammar (:func:`fia.shapeworld.render.prompt_for`); seeds
follow :func:`fia.evaluate.suites.seeds.split_seed`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fia.concepts import parse_concepts
from fia.errors import FIAError
from fia.evaluate.generate import VARIANTS, EvalItem
from fia.evaluate.metrics import frechet_distance, fsr, kernel_distance, kid_change, mean
from fia.evaluate.suites.base import (
    Records,
    Suite,
    accuracy_summary,
    mean_per_variant,
    number_items,
)
from fia.evaluate.suites.seeds import (
    MAX_IMAGES_PER_PROMPT,
    MAX_PROMPTS_PER_BLOCK,
    PLACE_QUALITY_OFFSET,
    QUALITY_BLOCKS,
    check_count,
    offsets_for,
    quality_block,
    split_seed,
)
from fia.shapeworld.render import parse_prompt, prompt_for, render, sample_scene
from fia.shapeworld.vocab import (
    ATTRIBUTE_NAMES,
    COLORS,
    PLACE_NAMES,
    SHAPEWORLD,
    STYLE_NAMES,
    World,
    base_phrase,
)

SHAPEWORLD_SUITES = ("shapeworld-objects", "shapeworld-styles", "shapeworld-attribute")

# A family's metrics: (items, records, erased, kept, judge) -> its part of metrics.json
Numbers = Callable[[list[EvalItem], Records, list[str], list[str], Any], dict[str, Any]]


# ------------------------------------------------------------------- prompts
def factor_cycle(k: int, offset: int, shift: int = 0) -> tuple[str, str]:
    """(colour, place) of prompt ``k``: colour ``k + offset``, place ``5k + offset + shift``.

    With 6 colours and 6 places, place - 5 * colour = shift - 4 * offset
    (mod 6), which is even for every offset when ``shift`` is even and odd when
    it is odd: shifts 0 and 1 use disjoint colour/place pairs.
    """
    return COLORS[(k + offset) % len(COLORS)], PLACE_NAMES[(5 * k + offset + shift) % len(PLACE_NAMES)]


def _prompt(factors: Mapping[str, str], word: str | None = None) -> str:
    """ShapeWorld's canonical prompt for ``factors`` ('an orange star on the sand'), the object named ``word``."""
    return prompt_for(
        word or factors["object"],
        factors["color"],
        factors["place"],
        style=factors.get("style"),
        attribute=factors.get("attribute"),
    )


def _prompt_block(
    role: str,
    group: str,
    objects: Sequence[str],
    prompts: int,
    images: int,
    offset: int,
    seed_base: int,
    extra: Mapping[str, str],
    shift: int,
    word: str | None = None,
    world: World = SHAPEWORLD,
) -> list[EvalItem]:
    """``prompts`` prompts x ``images`` seeds of one block; factors cycle by :func:`factor_cycle`.

    Prompt ``k`` draws ``objects[k % len(objects)]`` with the ``extra``
    factors (style, attribute); ``word`` names the object by a synonym.
    """
    out = []
    for k in range(prompts):
        color, place = factor_cycle(k, offset, shift)
        factors = {"object": objects[k % len(objects)], "color": color, "place": place, **extra}
        text = _prompt(factors, word)
        if word is None and parse_prompt(text, world) != factors:
            raise AssertionError(f"prompt {text!r} does not name {factors}")
        for j in range(images):
            seed = split_seed(seed_base, offset, k, j)
            out.append(EvalItem(id="", prompt=text, seed=seed, group=group, role=role, meta={"factors": factors}))
    return out


def _quality_seed(seed_base: int, first_offset: int, k: int, m: int) -> int:
    # image m of quality prompt k: ten images per block, then the next block;
    # prompts from 100 on take the next run of blocks (seeds.quality_block)
    return split_seed(seed_base, *quality_block(first_offset, k, m))


def _heldout_items(
    objects: Sequence[str], n_prompts: int, images: int, seed_base: int, world: World = SHAPEWORLD
) -> list[EvalItem]:
    """Quality prompts from the world's held-out (colour, object, place) triples that draw ``objects``."""
    per_object = max(1, -(-n_prompts // max(1, len(objects))))
    out, taken = [], {o: 0 for o in objects}
    for i, (color, obj, place) in enumerate(world.heldout_triples()):
        if obj not in taken or taken[obj] >= per_object:
            continue
        taken[obj] += 1
        factors = {"object": obj, "color": color, "place": place}
        text = _prompt(factors)
        for j in range(images):
            seed = _quality_seed(seed_base, offsets_for(len(world.objects)).quality, i, j)
            out.append(EvalItem("", text, seed, "quality", "quality", meta={"factors": factors}))
    return out


def _place_items(n_prompts: int, images: int, seed_base: int, first_offset: int = PLACE_QUALITY_OFFSET) -> list[EvalItem]:
    """Quality prompts without an object ('the grass'), cycling over the places."""
    out = []
    for i in range(n_prompts):
        place = PLACE_NAMES[i % len(PLACE_NAMES)]
        factors = {"object": "none", "place": place}
        for j in range(images):
            seed = _quality_seed(seed_base, first_offset, i, j)
            out.append(EvalItem("", base_phrase(place), seed, "quality", "quality", meta={"factors": factors}))
    return out


# ------------------------------------------------------------------- numbers
def _concept_items(items: list[EvalItem], concept: str) -> list[EvalItem]:
    return [it for it in items if it.group == concept and it.role in ("forget", "preserve")]


def _has_clip(records: Records) -> bool:
    """Whether the records carry the CLIP's figures (a judge with a CLIP made them)."""
    return any("clip_score" in rec for rec in records["base"].values())


def _clip_score(records: Records, sel: list[EvalItem]) -> dict[str, float | None]:
    return mean_per_variant(records, sel, lambda r: r["clip_score"])


def _per_class_accuracy(items: list[EvalItem], records: Records, head: str, concepts: list[str]) -> dict[str, dict]:
    """For each concept: its role, image count and the share of images the oracle's ``head`` names it
    (and, with a CLIP, the mean CLIP score of its images against their prompts)."""
    per_class = {}
    for concept in concepts:
        sel = _concept_items(items, concept)
        per_class[concept] = {
            "role": sel[0].role,
            "n": len(sel),
            **mean_per_variant(records, sel, lambda r, c=concept: float(r["pred"][head] == c)),
        }
        if _has_clip(records):
            per_class[concept]["clip_score"] = _clip_score(records, sel)
    return per_class


def _object_numbers(items: list[EvalItem], records: Records, forget: list[str], preserve: list[str], judge: Any) -> dict:
    """Accuracy per object, forget/preserve accuracy and Overall, accuracy on the erased objects' synonyms."""
    per_class = _per_class_accuracy(items, records, "object", forget + preserve)
    summary = accuracy_summary(per_class, forget, preserve)
    synonyms = {}
    for obj in forget:
        sel = [it for it in items if it.role == "synonym" and it.group == obj]
        accuracy = mean_per_variant(records, sel, lambda r, c=obj: float(r["pred"]["object"] == c))
        synonyms[obj] = {"words": list(getattr(judge, "world", SHAPEWORLD).objects[obj]), "n": len(sel), **accuracy}
    summary["synonym_accuracy"] = {v: mean(s[v] for s in synonyms.values() if s[v] is not None) for v in VARIANTS}
    return {"per_class": per_class, "summary": summary, "synonyms": synonyms}


def _style_numbers(items: list[EvalItem], records: Records, forget: list[str], preserve: list[str], judge: Any) -> dict:
    """Accuracy per style, forget/preserve accuracy and Overall, and FSR on the style's probability."""
    per_class = _per_class_accuracy(items, records, "style", forget + preserve)
    summary = accuracy_summary(per_class, forget, preserve)
    names = list(judge.heads["style"])
    for style in forget + preserve:
        sel = _concept_items(items, style)
        k = names.index(style)
        base = [records["base"][it.id]["prob"]["style"][k] for it in sel]
        edited = [records["edited"][it.id]["prob"]["style"][k] for it in sel]
        per_class[style]["fsr"] = fsr(base, edited)
        per_class[style]["mean_prob"] = {"base": mean(base), "edited": mean(edited)}
    summary["fsr"] = mean(per_class[s]["fsr"] for s in forget)
    summary["fsr_preserve"] = mean(per_class[s]["fsr"] for s in preserve)
    if _has_clip(records):  # the CLIP's zero-shot style verdicts, a second judge of the same images
        from fia.shapeworld.clip import STYLE_LABELS

        for style in forget + preserve:
            sel, k = _concept_items(items, style), STYLE_LABELS.index(style)
            base = [records["base"][it.id]["clip_style"]["prob"][k] for it in sel]
            edited = [records["edited"][it.id]["clip_style"]["prob"][k] for it in sel]
            per_class[style]["clip_accuracy"] = mean_per_variant(
                records, sel, lambda r, c=style: float(r["clip_style"]["pred"] == c)
            )
            per_class[style]["clip_fsr"] = fsr(base, edited)
        summary["fsr_clip"] = mean(per_class[s]["clip_fsr"] for s in forget)
        summary["fsr_clip_preserve"] = mean(per_class[s]["clip_fsr"] for s in preserve)
    return {"per_class": per_class, "summary": summary}


def _attribute_numbers(items: list[EvalItem], records: Records, forget: list[str], preserve: list[str], judge: Any) -> dict:
    """How often the oracle sees an erased attribute: on its own prompts and on the quality prompts."""

    def seen(record: dict) -> float:
        return float(record["pred"]["attribute"] in forget)

    sel = [it for it in items if it.role == "forget"]
    detected = mean_per_variant(records, sel, seen)
    quality = [it for it in items if it.role == "quality"]
    return {
        "summary": {
            "detected_share": detected,
            "detected_count": {v: int(round(detected[v] * len(sel))) for v in detected},
            "n_images": len(sel),
            "detected_share_non_target": mean_per_variant(records, quality, seen),
        }
    }


def _fidelity(rec: dict, factors: dict[str, str]) -> float:
    hits = [rec["pred"][head] == value for head, value in factors.items() if head in rec["pred"]]
    return float(np.mean(hits)) if hits else 0.0


def _quality(items: list[EvalItem], records: Records, reference: torch.Tensor | None, roles: tuple[str, ...] = ("quality",)) -> dict:
    """Prompt fidelity on the quality images (the items of ``roles``) and, with ``reference``, their KID and FID.

    KID (unbiased; :func:`fia.evaluate.metrics.kernel_distance`) is the
    headline: with a few hundred images the Frechet distance is dominated by
    its bias, which grows as the sample shrinks. The base and edited images
    share their prompts and seeds, so ``kid_change`` (edited minus base) comes
    with its paired jackknife error ``kid_change_se``
    (:func:`fia.evaluate.metrics.kid_change`), smaller than either KID's own
    spread (by how much depends on how far the edit moves the images).
    """
    q = [it for it in items if it.role in roles]
    out: dict[str, Any] = {"n_prompts": len({it.prompt for it in q}), "n_images": len(q)}
    out["prompt_fidelity"] = {v: mean(_fidelity(records[v][it.id], it.meta["factors"]) for it in q) for v in VARIANTS}
    if _has_clip(records):
        out["clip_score"] = _clip_score(records, q)
    if reference is not None and len(q) >= 2:
        out["fid"], out["kid"], out["kid_std"] = {}, {}, {}
        feats = {v: torch.tensor([records[v][it.id]["_features"] for it in q], dtype=torch.float64) for v in VARIANTS}
        for v in VARIANTS:
            out["fid"][v] = frechet_distance(feats[v], reference)
            out["kid"][v], out["kid_std"][v] = kernel_distance(feats[v], reference)
        if len(q) >= 3 and reference.shape[0] >= 3:
            out["kid_change"], out["kid_change_se"] = kid_change(feats["edited"], feats["base"], reference)
        out["fid_reference"] = f"oracle features of {reference.shape[0]} renders of the scenes these prompts name"
    return out


def shapeworld_reference_features(
    oracle: Any, factors: Sequence[dict[str, str]], per_prompt: int, seed: int, device: str = "cpu"
) -> torch.Tensor:
    """Oracle features of renders of the scenes the quality prompts name.

    Each factor set (object, colour, place; no style, no attribute) is rendered
    ``per_prompt`` times with random position, size and texture, so the
    reference shows what the prompts ask for and the distance measures image
    quality, not a difference in content.
    """
    rng = np.random.default_rng(seed)
    imgs = []
    for f in factors:
        for _ in range(per_prompt):
            obj = None if f["object"] == "none" else f["object"]
            scene = sample_scene(
                rng, object=obj, color=f.get("color"), place=f["place"], style=None, attribute=None,
                world=getattr(oracle, "world", SHAPEWORLD),
            )  # fmt: skip
            imgs.append(render(scene))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return oracle.features(x.to(device)).detach().double().cpu()


# ------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Family:
    """What sets one ShapeWorld suite apart from the others.

    ``concept_factor`` is the prompt factor that names the concept: ``None``
    when the concept is the object itself, so its prompts draw that object;
    otherwise concept ``i``'s prompts draw every object in turn, starting
    at object ``i``.
    """

    kind: str  # the oracle head that judges the concept; also the word in messages
    names: tuple[str, ...]  # the canonical concept names
    spellings: Mapping[str, str]  # lower-case word a user may write -> canonical name
    forget_example: str | None  # shown when --forget is missing; None: every concept is erased by default
    has_kept_concepts: bool  # kept concepts (default: the family's others) are measured too
    concept_factor: str | None
    covers_every_object: bool  # at least one prompt per object (an attribute applies to any object)
    tests_synonyms: bool  # erased objects are also prompted by their synonyms
    numbers: Numbers  # the family's metrics from the judged records


def _lower(names: Sequence[str]) -> dict[str, str]:
    return {n.lower(): n for n in names}


def families(world: World) -> dict[str, Family]:
    """The three suites' table in ``world`` (only the objects family depends on it)."""
    objects = world.object_names
    return {
        "shapeworld-objects": Family(
            kind="object",
            names=objects,
            spellings=_lower(objects) | world.synonym_map(),
            forget_example="circle, star",
            has_kept_concepts=True,
            concept_factor=None,
            covers_every_object=False,
            tests_synonyms=True,
            numbers=_object_numbers,
        ),
        "shapeworld-styles": Family(
            kind="style",
            names=STYLE_NAMES,
            spellings=_lower(STYLE_NAMES),
            forget_example="Ovalli",
            has_kept_concepts=True,
            concept_factor="style",
            covers_every_object=False,
            tests_synonyms=False,
            numbers=_style_numbers,
        ),
        "shapeworld-attribute": Family(
            kind="attribute",
            names=ATTRIBUTE_NAMES,
            spellings=_lower(ATTRIBUTE_NAMES),
            forget_example=None,
            has_kept_concepts=False,
            concept_factor="attribute",
            covers_every_object=True,
            tests_synonyms=False,
            numbers=_attribute_numbers,
        ),
    }


FAMILIES: dict[str, Family] = families(SHAPEWORLD)


def _canonical(family: Family, names: list[str]) -> list[str]:
    """Canonical names of ``names`` in ``family`` (synonyms mapped, duplicates dropped)."""
    out = []
    for n in names:
        if n.lower() not in family.spellings:
            raise FIAError(f"unknown ShapeWorld {family.kind} {n!r}; use one of: {', '.join(family.names)}")
        out.append(family.spellings[n.lower()])
    return list(dict.fromkeys(out))


def _concepts(name: str, family: Family, forget: Any, preserve: Any) -> tuple[list[str], list[str]]:
    """The erased and the kept concepts of a suite, canonical, with the family's defaults."""
    forget_l, preserve_l = parse_concepts(forget, required=False), parse_concepts(preserve, required=False)
    if not forget_l:
        if family.forget_example is not None:
            raise FIAError(f"{name} needs the erased {family.kind}s; pass --forget {family.forget_example!r}")
        forget_l = list(family.names)
    forget_l = _canonical(family, forget_l)
    if not family.has_kept_concepts:
        return forget_l, []
    if preserve_l:
        return forget_l, _canonical(family, preserve_l)
    return forget_l, [c for c in family.names if c not in forget_l]


def _concept_blocks(
    family: Any, world: Any, forget_l: list[str], preserve_l: list[str], prompts_per_concept: int, ipp: int, seed: int,
    prompt_shift: int,
) -> tuple[list[EvalItem], list[tuple[str, str]]]:
    """The erased and kept concepts' prompt blocks (and the synonyms' where the family tests them), with their grids."""
    object_names = world.object_names
    offsets = offsets_for(len(object_names))
    items: list[EvalItem] = []
    for i, concept in enumerate(forget_l + preserve_l):
        role = "forget" if concept in forget_l else "preserve"
        if family.concept_factor is None:
            objects, extra = [concept], {}
        else:
            objects, extra = object_names[i:] + object_names[:i], {family.concept_factor: concept}
        prompts = max(prompts_per_concept, len(object_names)) if family.covers_every_object else prompts_per_concept
        items += _prompt_block(role, concept, objects, prompts, ipp, i, seed, extra, prompt_shift, world=world)
    grids = [(f"erased: {c}", f"forget:{c}") for c in forget_l]
    if family.tests_synonyms:
        for i, obj in enumerate(forget_l):
            for syn in world.objects[obj]:
                items += _prompt_block(
                    "synonym", obj, [obj], prompts_per_concept, ipp, offsets.synonym + i, seed, {}, prompt_shift,
                    word=syn, world=world,
                )  # fmt: skip
        grids += [(f"synonym of {o}: {world.objects[o][0]}", f"synonym:{o}") for o in forget_l]
    return items, grids


def _quality_block(
    family: Family, world: World, preserve_l: list[str], quality_prompts: int, qipp: int, quality_images: int | None,
    quality_images_per_prompt: int | None, seed: int,
) -> list[EvalItem]:
    """The held-out quality prompts: ``qipp`` images each, or enough for ``quality_images`` in all."""
    offsets = offsets_for(len(world.object_names))
    # quality prompts never draw an erased object
    quality_objects = preserve_l if family.concept_factor is None else list(world.object_names)

    def quality_items(per_prompt: int) -> list[EvalItem]:
        if quality_objects:
            return _heldout_items(quality_objects, quality_prompts, per_prompt, seed, world)
        # every object is erased: quality is judged on what is left to draw, the places alone
        return _place_items(quality_prompts, per_prompt, seed, offsets.place_quality)

    if quality_images is not None:
        if quality_images_per_prompt is not None:
            raise FIAError("give the quality images in all or per prompt, not both")
        check_count("quality_images", quality_images, QUALITY_BLOCKS * MAX_IMAGES_PER_PROMPT * MAX_PROMPTS_PER_BLOCK)
        qipp = -(-quality_images // len(quality_items(1)))
        check_count("quality images per prompt", qipp, QUALITY_BLOCKS * MAX_IMAGES_PER_PROMPT)
    return quality_items(qipp)


def _kept_quality_top_up(family: Family, items: list[EvalItem], quality_images: int | None, seed: int, offset: int) -> list[EvalItem]:
    """Object-less quality prompts that bring the kept kinds' images up to ``quality_images`` (none when they reach it)."""
    if family.concept_factor is not None or quality_images is None:
        raise FIAError("quality on the kept kinds' images needs an object suite and quality_images (the total wanted)")
    missing = quality_images - sum(it.role == "preserve" for it in items)
    if missing <= 0:
        return []
    per_prompt = -(-missing // MAX_PROMPTS_PER_BLOCK)
    check_count("object-less quality images per prompt", per_prompt, QUALITY_BLOCKS * MAX_IMAGES_PER_PROMPT)
    return _place_items(-(-missing // per_prompt), per_prompt, seed, offset)


def shapeworld_suite(
    name: str,
    judge: Any,
    forget: Sequence[str] | str | None,
    preserve: Sequence[str] | str | None = None,
    images_per_prompt: int = 2,
    prompts_per_concept: int = 4,
    quality_prompts: int = 16,
    seed: int = 0,
    reference: Callable[[list[dict[str, str]]], torch.Tensor] | torch.Tensor | None = None,
    prompt_shift: int = 0,
    quality_images_per_prompt: int | None = None,
    quality_images: int | None = None,
    quality_from_kept: bool = False,
) -> Suite:
    """Build a ShapeWorld suite.

    ``reference`` gives the FID's reference features: a tensor, or a function
    of the quality prompts' factor sets (one per image). ``prompt_shift`` 1
    puts the concept prompts on colour/place pairs that shift 0 never uses;
    with a ``seed`` at least 1,000,000 away it gives a split of prompts and
    seeds disjoint from the default one (the benchmark tunes on one and
    measures on the other; see :mod:`fia.evaluate.suites.seeds`).
    ``quality_images_per_prompt`` (default ``images_per_prompt``, at most
    100: ten seed blocks) sets how many images each quality prompt gets, so
    quality can rest on hundreds of images while there are few held-out
    prompts. ``quality_images`` (instead of ``quality_images_per_prompt``)
    asks for at least that many quality images in all: each quality prompt
    gets the share it takes (KID and FID need about 500, see
    :data:`fia.evaluate.report.MIN_QUALITY_IMAGES`). ``quality_from_kept``
    measures quality on the kept kinds' own images instead, topped up with
    object-less prompts ('the grass') to ``quality_images``: no image is
    drawn for quality alone while the kept kinds give enough (the benchmark's
    object tasks, where every kind but the erased is kept).
    """
    if name not in FAMILIES:
        raise FIAError(f"unknown ShapeWorld suite {name!r}; use one of: {', '.join(FAMILIES)}")
    world = getattr(judge, "world", SHAPEWORLD)
    family = FAMILIES[name] if world is SHAPEWORLD else families(world)[name]
    object_names = world.object_names
    offsets = offsets_for(len(object_names))
    check_count("images_per_prompt", images_per_prompt, MAX_IMAGES_PER_PROMPT)
    check_count("prompts_per_concept", prompts_per_concept, MAX_PROMPTS_PER_BLOCK)
    check_count("quality_prompts", quality_prompts, MAX_PROMPTS_PER_BLOCK)
    qipp = images_per_prompt if quality_images_per_prompt is None else quality_images_per_prompt
    check_count("quality_images_per_prompt", qipp, QUALITY_BLOCKS * MAX_IMAGES_PER_PROMPT)
    forget_l, preserve_l = _concepts(name, family, forget, preserve)
    ipp = images_per_prompt

    items, grids = _concept_blocks(family, world, forget_l, preserve_l, prompts_per_concept, ipp, seed, prompt_shift)

    if quality_from_kept:
        items += _kept_quality_top_up(family, items, quality_images, seed, offsets.place_quality)
        quality_roles: tuple[str, ...] = ("preserve", "quality")
    else:
        items += _quality_block(family, world, preserve_l, quality_prompts, qipp, quality_images, quality_images_per_prompt, seed)
        quality_roles = ("quality",)
    grids.append(("held-out non-target prompts", "quality:quality"))
    items = number_items(items)

    def summarize(items: list[EvalItem], records: Records) -> dict[str, Any]:
        quality_factors = [it.meta["factors"] for it in items if it.role in quality_roles]
        ref = reference
        if callable(reference):
            ref = reference(quality_factors) if len(quality_factors) >= 2 else None
        out: dict[str, Any] = {"suite": name, "forget": forget_l, "preserve": preserve_l, "judge": judge.name}
        out.update(family.numbers(items, records, forget_l, preserve_l, judge))
        out["quality"] = _quality(items, records, ref, quality_roles)
        return out

    return Suite(name, items, judge, summarize, forget_l, preserve_l, grids)
