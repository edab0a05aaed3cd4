"""ShapeWorld: small worlds we own completely, and the default model.

* a procedural renderer with known ground truth (:mod:`.render`),
* two worlds (:data:`WORLDS`, :func:`get_world`), each shipped as a world
  folder: ``shapeworld`` (10 shapes at equal shares, text encoder trained
  with the UNet; ``assets/``) and ``shapeworld2`` (32 kinds on a long tail,
  the frozen text encoder of a ShapeWorld CLIP, :func:`load_clip`;
  ``assets/shapeworld2/``, the default, :data:`DEFAULT_WORLD`;
  docs/shapeworld2.md),
* in each, a tiny but genuine ``StableDiffusionPipeline`` loaded offline
  (:func:`load_pipeline`),
* an oracle classifier that judges generated images (:func:`load_oracle`),
  whose penultimate features give a ShapeWorld FID
  (:func:`fia.evaluate.metrics.frechet_distance`),
* a second, independently trained judge of another architecture, with the
  oracle's heads and interface (:func:`load_second_judge`).
"""

from __future__ import annotations

import functools
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
    """The package's asset folder: the first world's folder (pipeline/,
    oracle, judge2/), with the second world's in ``shapeworld2/`` inside it."""
    return Path(__file__).resolve().parent / "assets"


# The world every command uses when no model is named: the second world, which
# was trained the way Stable Diffusion was (frozen contrastive text encoder,
# long tail of kinds) and meets the quality gate (docs/shapeworld2.md). The
# first world stays shipped and reachable by name (--shapeworld shapeworld, or
# an edit made on it, which finds its world by itself:
# :func:`shipped_world_of_edit`).
DEFAULT_WORLD = "shapeworld2"
FIRST_WORLD = "shapeworld"


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
        raise FIAError(
            f"the {world} world is not part of this installation; train it with "
            f"`fia shapeworld train --world {world} --out DIR` and pass --shapeworld DIR, "
            "or pass --model with a local diffusers folder"
        )
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


def world_folder_of(model: str | Path | None, shapeworld: str | Path | None = None) -> Path | None:
    """The ShapeWorld world folder a command works in, or None for another
    model: ``shapeworld``'s (a world's name or folder), the default world's
    when no model is named, or the world folder around a ``model`` that is a
    world's ``pipeline/`` (so that its own kinds, oracle and CLIP are used)."""
    if shapeworld is not None:
        return world_path(shapeworld)
    if model is None:
        return world_path(DEFAULT_WORLD)
    folder = Path(model).expanduser()
    if (folder / "model_index.json").is_file() and (folder.parent / "oracle_config.json").is_file():
        return world_path(folder.parent)
    return None


def shipped_world_of_edit(edit) -> str | None:
    """The shipped world whose model ``edit`` was made from, read from its provenance; None if no shipped world's.

    An edit records a fingerprint of the weights it changes (:meth:`check`
    of a mask or a weight delta compares it), not a path: the same edit must
    be recognised on any machine. So each installed world's denoiser is
    checked in turn, the world the edit's settings name first, and the first
    that the edit accepts is its world. An edit without a fingerprint, or
    made from any other model, matches none.
    """
    from fia.errors import FIAError

    check = getattr(edit, "check", None)
    if not callable(check):
        return None
    named = (getattr(edit, "config", None) or {}).get("world")
    for world in sorted(SHIPPED_WORLD_FOLDERS, key=lambda w: (w != named, w != DEFAULT_WORLD)):
        try:
            check(_shipped_denoiser(world))
        except FIAError:
            continue
        return world
    return None


def model_of_edit(edit, model: str | None = None) -> tuple[str, Path | None]:
    """``(model, world folder)`` that ``edit`` is used with: ``model`` when given, else its shipped world's.

    The world folder (its oracle, second judge, CLIP) is None for a model
    that is no ShapeWorld world. Without ``model``, an edit whose provenance
    names no shipped world cannot be placed: :class:`FIAError` asking for
    ``--model``, before anything is loaded or written.
    """
    from fia.errors import FIAError

    if model is not None:
        return model, world_folder_of(model)
    world = shipped_world_of_edit(edit)
    if world is None:
        raise FIAError(
            "this edit's provenance names no shipped ShapeWorld world (its model fingerprint matches none of "
            f"{', '.join(SHIPPED_WORLD_FOLDERS)}); pass --model with the model it was made from"
        )
    return str(pipeline_path(world)), shipped_world_path(world)


@functools.lru_cache(maxsize=None)
def _shipped_denoiser(world: str):
    """A shipped world's UNet alone (read-only use: provenance checks); FIAError if the world is not installed."""
    from diffusers import UNet2DConditionModel

    folder = pipeline_path(world) / "unet"
    return UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)


def world_of(folder: str | Path) -> World:
    """The world of a world folder, read from its oracle's config (no config key: the first world)."""
    import json

    cfg = json.loads((Path(folder) / "oracle_config.json").read_text())
    return get_world(cfg.get("world", "shapeworld"))


def pipeline_path(world: str = DEFAULT_WORLD) -> Path:
    """Folder of a shipped world's diffusers pipeline (default: :data:`DEFAULT_WORLD`)."""
    return shipped_world_path(world) / "pipeline"


def load_pipeline(device="cpu", dtype=torch.float32, path: str | Path | None = None, world: str = DEFAULT_WORLD):
    """A ShapeWorld ``StableDiffusionPipeline``, loaded offline: the one in
    ``path``, else the shipped ``world``'s."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path or pipeline_path(world)),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
        torch_dtype=dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_oracle(device="cpu", path: str | Path | None = None, world: str = DEFAULT_WORLD) -> Oracle:
    """The oracle (eval mode) in the world folder ``path``, else the shipped ``world``'s."""
    return Oracle.load(path or shipped_world_path(world), device=device)


def second_judge_path(world: str = DEFAULT_WORLD) -> Path:
    """Folder of a shipped world's second judge (weights, config, quality report)."""
    return shipped_world_path(world) / SecondJudge.name


def load_second_judge(device="cpu", path: str | Path | None = None, world: str = DEFAULT_WORLD) -> SecondJudge:
    """The second judge (eval mode) in the folder ``path``, else the shipped
    ``world``'s: another architecture and seed than the oracle, trained on
    renders alone; same heads and interface."""
    return SecondJudge.load(path or second_judge_path(world), device=device)


__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "COLORS",
    "DEFAULT_WORLD",
    "FIRST_WORLD",
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
    "model_of_edit",
    "parse_prompt",
    "pipeline_path",
    "place_phrase",
    "prompt_for",
    "render",
    "sample_scene",
    "second_judge_path",
    "shipped_world_of_edit",
    "shipped_world_path",
    "world_folder_of",
    "world_of",
    "world_path",
]
