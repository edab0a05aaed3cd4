"""ShapeWorld: a small world we own completely, and the default model.

* a procedural renderer with known ground truth (:mod:`.render`),
* a tiny but genuine ``StableDiffusionPipeline`` trained on it, shipped in
  ``assets/pipeline`` and loaded offline (:func:`load_pipeline`),
* an oracle classifier that judges generated images (:func:`load_oracle`),
  whose penultimate features give a ShapeWorld FID (:func:`frechet_distance`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .oracle import HEADS, Oracle, frechet_distance
from .render import HELDOUT_TRIPLES, Scene, caption, parse_prompt, prompt_for, render, sample_scene
from .vocab import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    COLORS,
    OBJECT_NAMES,
    OBJECTS,
    PLACE_NAMES,
    PLACES,
    STYLE_NAMES,
    STYLES,
    base_phrase,
    place_phrase,
)

# The sampler settings at which the quality gate is measured.
GENERATION_DEFAULTS: dict = {"num_inference_steps": 25, "guidance_scale": 5.0, "height": 32, "width": 32}


def assets_path() -> Path:
    return Path(__file__).resolve().parent / "assets"


def pipeline_path() -> Path:
    """Folder of the shipped diffusers pipeline."""
    return assets_path() / "pipeline"


def load_pipeline(device="cpu", dtype=torch.float32, path: str | Path | None = None):
    """The shipped ShapeWorld ``StableDiffusionPipeline``, loaded offline."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path or pipeline_path()),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
        torch_dtype=dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_oracle(device="cpu", path: str | Path | None = None) -> Oracle:
    """The shipped oracle (eval mode)."""
    return Oracle.load(path or assets_path(), device=device)


__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "COLORS",
    "GENERATION_DEFAULTS",
    "HEADS",
    "HELDOUT_TRIPLES",
    "OBJECTS",
    "OBJECT_NAMES",
    "Oracle",
    "PLACES",
    "PLACE_NAMES",
    "STYLES",
    "STYLE_NAMES",
    "Scene",
    "assets_path",
    "base_phrase",
    "caption",
    "frechet_distance",
    "load_oracle",
    "load_pipeline",
    "parse_prompt",
    "pipeline_path",
    "place_phrase",
    "prompt_for",
    "render",
    "sample_scene",
]
