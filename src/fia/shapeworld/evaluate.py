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

from .oracle import HEADS
from .render import HELDOUT_TRIPLES, parse_prompt, prompt_for
from .vocab import OBJECT_NAMES, STYLE_NAMES


def gate_prompts(plain_seeds: int = 3, style_seeds: int = 2, attribute_seeds: int = 2) -> list[tuple[str, int]]:
    """(prompt, seed) pairs of the quality gate; 280 with the defaults."""
    out: list[tuple[str, int]] = []
    for i, (color, obj, place) in enumerate(HELDOUT_TRIPLES):
        p = prompt_for(obj, color, place)
        out += [(p, 1000 + 10 * i + s) for s in range(plain_seeds)]
    for i, (color, obj, place) in enumerate(HELDOUT_TRIPLES):
        p = prompt_for(obj, color, place, style=STYLE_NAMES[i % len(STYLE_NAMES)])
        out += [(p, 2000 + 10 * i + s) for s in range(style_seeds)]
    for i, (color, obj, place) in enumerate(HELDOUT_TRIPLES):
        p = prompt_for(obj, color, place, attribute="burning")
        out += [(p, 3000 + 10 * i + s) for s in range(attribute_seeds)]
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
    """How often the oracle's verdict matches what each prompt names."""
    probs = oracle.predict(images)
    pred = {k: [HEADS[k][j] for j in v.argmax(-1).tolist()] for k, v in probs.items()}
    hits: dict[str, list[bool]] = defaultdict(list)
    per_obj: dict[str, list[bool]] = defaultdict(list)
    for n, p in enumerate(prompts):
        f = parse_prompt(p)
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
    per_class = {o: sum(per_obj[o]) / len(per_obj[o]) for o in OBJECT_NAMES if per_obj[o]}
    if per_class:
        # the object figure is averaged over classes
        res["object"] = sum(per_class.values()) / len(per_class)
    res["object_per_class"] = per_class
    res["n_images"] = len(prompts)
    return res


def gate_images(pipe, batch_size: int = 40, limit: int | None = None, **kwargs) -> tuple[torch.Tensor, list[str]]:
    """The quality gate's generated images and their prompts (``limit``: an
    evenly spaced subset of that many pairs)."""
    pairs = gate_prompts()
    if limit:
        pairs = pairs[:: max(1, len(pairs) // limit)][:limit]
    prompts = [p for p, _ in pairs]
    seeds = [s for _, s in pairs]
    return generate(pipe, prompts, seeds, batch_size=batch_size, **kwargs), prompts


def run_gate(pipe, oracle, batch_size: int = 40, limit: int | None = None, **kwargs) -> dict:
    images, prompts = gate_images(pipe, batch_size, limit, **kwargs)
    return agreement(oracle, images, prompts)


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
    return {k: float((pa[k].argmax(-1) == pb[k].argmax(-1)).float().mean()) for k in HEADS}


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
