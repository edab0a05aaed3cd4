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
    """The shipped first world's folder (pipeline/, oracle, judge2/)."""
    return Path(__file__).resolve().parent / "assets"


# A world folder holds pipeline/ (a StableDiffusionPipeline), the oracle
# (oracle.safetensors, oracle_config.json), judge2/ and, in the second world,
# clip/: the layout `fia shapeworld train --out DIR` writes. The package ships
# one per world it carries; the first world's is assets/ itself.
SHIPPED_WORLD_FOLDERS: dict[str, str] = {"shapeworld": ".", "shapeworld2": "shapeworld2"}


def shipped_world_path(world: str) -> Path:
    """The folder of a world shipped with the package; :class:`FIAError` if it is not shipped."""
    from fia.errors import FIAError

    if world not in SHIPPED_WORLD_FOLDERS:
        raise FIAError(f"unknown ShapeWorld world {world!r}; use one of: {', '.join(SHIPPED_WORLD_FOLDERS)}")
    folder = (assets_path() / SHIPPED_WORLD_FOLDERS[world]).resolve()
    if not (folder / "oracle_config.json").is_file():
        raise FIAError(f"the {world} world is not part of this installation; train it with `fia shapeworld train --world {world} --out DIR` and pass DIR")
    return folder


def world_path(world_or_dir: str | Path) -> Path:
    """A world folder from a shipped world's name (``shapeworld``,
    ``shapeworld2``) or a folder written by ``fia shapeworld train``;
    :class:`FIAError` naming the fix otherwise."""
    from fia.errors import FIAError

    folder = Path(world_or_dir).expanduser()
    if str(world_or_dir) in SHIPPED_WORLD_FOLDERS and not folder.is_dir():
        return shipped_world_path(str(world_or_dir))
    if not folder.is_dir():
        raise FIAError(
            f"ShapeWorld {str(world_or_dir)!r} is neither a shipped world ({', '.join(SHIPPED_WORLD_FOLDERS)}) "
            "nor a folder; pass a world's name or the --out folder of `fia shapeworld train`"
        )
    missing = [name for name in ("pipeline/model_index.json", "oracle_config.json") if not (folder / name).is_file()]
    if missing:
        raise FIAError(
            f"{folder} is not a ShapeWorld folder (no {', '.join(missing)}); pass the --out folder of "
            "`fia shapeworld train` or a shipped world's name"
        )
    return folder


def world_of(folder: str | Path) -> World:
    """The world of a world folder, read from its oracle's config (no config key: the first world)."""
    import json

    cfg = json.loads((Path(folder) / "oracle_config.json").read_text())
    return get_world(cfg.get("world", "shapeworld"))


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
    "shipped_world_path",
    "world_of",
    "world_path",
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
