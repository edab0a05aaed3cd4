"""Measuring a ShapeWorld pipeline with a judge: the quality gate.

The gate's prompts are held out from training: each names a (colour, object,
place) triple that no training caption names in full, some with a style,
some with the burning attribute. Seeds are fixed, so a run is reproducible.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from fia import sampling

from .render import parse_prompt, prompt_for, render, sample_scene
from .vocab import SHAPEWORLD, STYLE_NAMES, World


def gate_prompts(
    plain_seeds: int = 3, style_seeds: int = 2, attribute_seeds: int = 2, world: World = SHAPEWORLD
) -> list[tuple[str, int]]:
    """(prompt, seed) pairs of the quality gate: 7 per held-out triple of
    ``world`` (280 in the first world, 896 in the second). The seed blocks
    are 1000 wide, so the second world's 128 triples start theirs at 10,000."""
    triples = world.heldout_triples()
    base = 1000 if len(triples) <= 100 else 10_000
    out: list[tuple[str, int]] = []
    for i, (color, obj, place) in enumerate(triples):
        p = prompt_for(obj, color, place)
        out += [(p, base + 10 * i + s) for s in range(plain_seeds)]
    for i, (color, obj, place) in enumerate(triples):
        p = prompt_for(obj, color, place, style=STYLE_NAMES[i % len(STYLE_NAMES)])
        out += [(p, 2 * base + 10 * i + s) for s in range(style_seeds)]
    for i, (color, obj, place) in enumerate(triples):
        p = prompt_for(obj, color, place, attribute="burning")
        out += [(p, 3 * base + 10 * i + s) for s in range(attribute_seeds)]
    return out


def generate(pipe, prompts: list[str], seeds: list[int], batch_size: int = 40, **kwargs) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] on the CPU, one per (prompt, seed), at ShapeWorld's
    generation defaults unless ``kwargs`` override them (image ``k`` from ``seeds[k]``,
    see :mod:`fia.sampling`)."""
    from . import GENERATION_DEFAULTS

    settings = {**GENERATION_DEFAULTS, **kwargs}
    out = []
    for i in range(0, len(prompts), batch_size):
        images = sampling.generate(
            pipe, prompts[i : i + batch_size], seeds[i : i + batch_size], output_type="pt", **settings
        )
        out.append(images.float().cpu())
    return torch.cat(out)


def agreement(oracle, images: torch.Tensor, prompts: list[str]) -> dict:
    """How often the oracle's verdict (:meth:`Judge.labels`, its reject option
    included) matches what each prompt names, in the oracle's world."""
    world = getattr(oracle, "world", SHAPEWORLD)
    pred = oracle.labels(oracle.predict(images))
    hits: dict[str, list[bool]] = defaultdict(list)
    per_obj: dict[str, list[bool]] = defaultdict(list)
    for n, p in enumerate(prompts):
        f = parse_prompt(p, world)
        obj = f.get("object")
        if obj is not None:
            ok = pred["object"][n] == obj
            hits["object"].append(ok)
            per_obj[obj].append(ok)
        if "color" in f and obj is not None:
            hits["color"].append(pred["color"][n] == f["color"])
        if "place" in f:
            hits["place"].append(pred["place"][n] == f["place"])
        if "style" in f:
            hits["style"].append(pred["style"][n] == f["style"])
        else:
            hits["style_none"].append(pred["style"][n] == "none")
        if "attribute" in f:
            hits["attribute"].append(pred["attribute"][n] == f["attribute"])
        elif obj is not None:
            hits["attribute_absent"].append(pred["attribute"][n] == "absent")
    res: dict = {k: sum(v) / len(v) for k, v in hits.items() if v}
    per_class = {o: sum(per_obj[o]) / len(per_obj[o]) for o in world.object_names if per_obj[o]}
    if per_class:
        # the object figure is averaged over classes
        res["object"] = sum(per_class.values()) / len(per_class)
    res["object_per_class"] = per_class
    res["n_images"] = len(prompts)
    return res


def gate_images(
    pipe, batch_size: int = 40, limit: int | None = None, world: World = SHAPEWORLD, **kwargs
) -> tuple[torch.Tensor, list[str]]:
    """The quality gate's generated images and their prompts in ``world``
    (``limit``: an evenly spaced subset of that many pairs)."""
    pairs = gate_prompts(world=world)
    if limit:
        pairs = pairs[:: max(1, len(pairs) // limit)][:limit]
    prompts = [p for p, _ in pairs]
    seeds = [s for _, s in pairs]
    return generate(pipe, prompts, seeds, batch_size=batch_size, **kwargs), prompts


def render_accuracy(judge, images: np.ndarray, lab: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-head accuracy of a judge on uint8 renders (N, H, W, 3) with their
    labels (``fia.shapeworld.train.labels``; -100: no label, e.g. the colour
    of an empty scene)."""
    probs = judge.predict(torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255))
    res = {}
    for k, p in probs.items():
        y = lab[k]
        keep = y != -100
        res[k] = float((p.argmax(-1)[keep] == y[keep]).float().mean())
    return res


def judges_agreement(judge_a, judge_b, images: torch.Tensor) -> dict[str, float]:
    """Per head, the share of images on which two judges give the same label."""
    pa, pb = judge_a.predict(images), judge_b.predict(images)
    return {k: float((pa[k].argmax(-1) == pb[k].argmax(-1)).float().mean()) for k in judge_a.HEADS}


def second_judge_quality(
    judge,
    oracle,
    renders: np.ndarray,
    render_labels: dict[str, torch.Tensor],
    reconstructions: np.ndarray,
    gate: tuple[torch.Tensor, list[str]],
) -> dict:
    """The second judge's report card, beside the oracle's figures on the same
    images: accuracy on fresh renders and on their VAE reconstructions,
    agreement with the prompts of the quality gate's generated images, and
    how often the two judges give the same label on those images."""
    images, prompts = gate
    return {
        "judge": judge.name,
        "parameters": sum(p.numel() for p in judge.parameters()),
        "n_renders": len(renders),
        "accuracy_renders": render_accuracy(judge, renders, render_labels),
        "accuracy_reconstructions": render_accuracy(judge, reconstructions, render_labels),
        "oracle_accuracy_renders": render_accuracy(oracle, renders, render_labels),
        "oracle_accuracy_reconstructions": render_accuracy(oracle, reconstructions, render_labels),
        "gate": agreement(judge, images, prompts),
        "gate_oracle": agreement(oracle, images, prompts),
        "inter_judge_agreement": judges_agreement(judge, oracle, images),
    }


def renders_of_prompts(prompts: list[str], seed: int, world: World = SHAPEWORLD) -> torch.Tensor:
    """One render (N, 3, 32, 32) in [0, 1] per prompt, of a random scene with
    the factors the prompt names (position, size and texture drawn from
    ``seed``; a colour it leaves out is drawn too, any other factor it leaves
    out is absent)."""
    rng = np.random.default_rng(seed)
    images = []
    for p in prompts:
        f = parse_prompt(p, world)
        scene = sample_scene(
            rng,
            object=f.get("object"),
            color=f.get("color"),
            place=f.get("place"),
            style=f.get("style"),
            attribute=f.get("attribute"),
            world=world,
        )
        images.append(render(scene))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)


def clip_quality(clip, images: torch.Tensor, prompts: list[str], renders: torch.Tensor) -> dict:
    """The CLIP's reading of generated images: their mean CLIP score with
    their prompts beside the renders' own (same prompts), the ratio of the
    two, and how often the zero-shot CLIP style judge names the style a
    prompt asks for (``style``) or none when it asks for none (``style_none``)."""
    from .clip import clip_score, clip_styles

    generated = float(clip_score(clip, images, prompts).mean())
    rendered = float(clip_score(clip, renders, prompts).mean())
    styles = clip_styles(clip, images, prompts)
    hits: dict[str, list[bool]] = defaultdict(list)
    for label, p in zip(styles, prompts):
        asked = parse_prompt(p, clip.world).get("style")
        hits["style" if asked else "style_none"].append(label == (asked or "none"))
    return {
        "clip_score_generated": generated,
        "clip_score_renders": rendered,
        "clip_score_ratio": generated / rendered if rendered > 0 else 0.0,
        **{k: sum(v) / len(v) for k, v in hits.items()},
        "n_images": len(prompts),
    }


@torch.no_grad()
def clip_render_quality(clip, scenes: list, images: np.ndarray) -> dict:
    """The CLIP on renders it was not trained on: mean CLIP score with each
    scene's canonical prompt, and zero-shot object accuracy (the best of the
    captions naming each kind, and none, with the scene's colour and place)."""
    from .clip import clip_score

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    prompts = [prompt_for(s.object, s.color, s.place, s.style, s.attribute) for s in scenes]
    kinds = clip.world.object_names
    img = torch.cat([clip.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])
    cache: dict[tuple, torch.Tensor] = {}
    hits = []
    for k, s in enumerate(scenes):
        if s.object is None:
            continue
        key = (s.color, s.place)
        if key not in cache:
            captions = [prompt_for(o, s.color, s.place) for o in kinds] + [prompt_for(None, place=s.place)]
            cache[key] = clip.encode_text(clip.token_ids(captions))
        best = int((cache[key] @ img[k]).argmax())
        hits.append(best < len(kinds) and kinds[best] == s.object)
    return {
        "clip_score_renders": float(clip_score(clip, x, prompts).mean()),
        "zero_shot_object_accuracy": sum(hits) / max(1, len(hits)),
        "n_images": len(scenes),
    }
