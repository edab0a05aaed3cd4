"""ShapeWorld: a small world we own completely, and the default model.

* a procedural renderer with known ground truth (:mod:`.render`),
* a tiny but genuine ``StableDiffusionPipeline`` trained on it, shipped in
  ``assets/pipeline`` and loaded offline (:func:`load_pipeline`),
* an oracle classifier that judges generated images (:func:`load_oracle`),
  whose penultimate features give a ShapeWorld FID
  (:func:`fia.evaluate.metrics.frechet_distance`),
* a second, independently trained judge of another architecture, with the
  oracle's heads and interface (:func:`load_second_judge`),
* a second world, ``shapeworld2`` (:data:`WORLDS`, :func:`get_world`): 32
  kinds on a long tail, and a ShapeWorld CLIP (:func:`load_clip`) whose
  frozen text encoder conditions its UNet (docs/shapeworld2.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip import load_clip
from .oracle import HEADS, Judge, Oracle
from .render import (
    HELDOUT_TRIPLES,
    Scene,
    caption,
    parse_prompt,
    prompt_for,
    render,
    sample_scene,
)
from .second_judge import SecondJudge
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
    WORLDS,
    World,
    base_phrase,
    get_world,
    place_phrase,
)

# The sampler settings of the ShapeWorld model: the quality gate is measured at
# them, and every ShapeWorld default (presets, fia generate, fia evaluate, the
# report after fia erase) reads them from here.
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


def second_judge_path() -> Path:
    """Folder of the shipped second judge (weights, config, quality report)."""
    return assets_path() / SecondJudge.name


def load_second_judge(device="cpu", path: str | Path | None = None) -> SecondJudge:
    """The shipped second judge (eval mode): another architecture and seed
    than the oracle, trained on renders alone; same heads and interface."""
    return SecondJudge.load(path or second_judge_path(), device=device)


__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "COLORS",
    "GENERATION_DEFAULTS",
    "HEADS",
    "HELDOUT_TRIPLES",
    "OBJECTS",
    "OBJECT_NAMES",
    "PLACES",
    "PLACE_NAMES",
    "STYLES",
    "STYLE_NAMES",
    "WORLDS",
    "Judge",
    "Oracle",
    "Scene",
    "SecondJudge",
    "World",
    "assets_path",
    "base_phrase",
    "caption",
    "get_world",
    "load_clip",
    "load_oracle",
    "load_pipeline",
    "load_second_judge",
    "parse_prompt",
    "pipeline_path",
    "place_phrase",
    "prompt_for",
    "render",
    "sample_scene",
    "second_judge_path",
]
