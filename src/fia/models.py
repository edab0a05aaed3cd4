"""Loading the diffusion pipeline FIA edits.

``--model`` is a local diffusers folder (one with ``model_index.json``, as
written by ``save_pretrained``) or a Hugging Face Hub id such as
``runwayml/stable-diffusion-v1-5``. With no model, the ShapeWorld pipeline
shipped with the package is used. Stable Diffusion 1.x/2.x and XL load
through :class:`diffusers.DiffusionPipeline`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from fia import sampling
from fia.defaults import SD_SAMPLER
from fia.errors import FIAError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise FIAError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FIAError(f"unknown device {device!r}; use cpu, cuda, cuda:0 or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FIAError(f"device {device!r} is not available (no CUDA GPU found); use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FIAError(f"device {device!r} is not available; use --device cpu")
    return dev


def shapeworld_path() -> Path:
    """The shipped ShapeWorld pipeline folder; :class:`FIAError` if it is not there."""
    try:
        from fia.shapeworld import pipeline_path  # type: ignore[attr-defined]
    except Exception as exc:
        raise FIAError(
            "the ShapeWorld pipeline is not part of this installation yet; "
            "pass --model with a local diffusers folder or a Hub id"
        ) from exc
    try:
        path = Path(pipeline_path())
    except FIAError:
        raise
    except Exception as exc:
        raise FIAError(
            f"the ShapeWorld pipeline is not available ({exc}); train it with `fia shapeworld train` "
            "or pass --model with a local diffusers folder"
        ) from exc
    if not (path / "model_index.json").is_file():
        raise FIAError(
            f"the ShapeWorld pipeline is missing from {path}; train it with `fia shapeworld train` "
            "or pass --model with a local diffusers folder"
        )
    return path


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~"))
        or "\\" in model
        or model.count("/") > 1
        or not _HUB_ID.match(model)
    )


def resolve_model(model: str | None) -> str:
    """Check ``model`` without loading it: a pipeline folder, or a Hub-id-shaped name.

    Returns the folder (as a string) or the Hub id. ``None`` -> ShapeWorld.
    """
    if model is None:
        return str(shapeworld_path())
    model = str(model).strip()
    if not model:
        raise FIAError("empty --model; pass a local diffusers folder or a Hub id")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FIAError(f"model {model!r} is a file, not a diffusers pipeline folder; pass the folder")
        if not (path / "model_index.json").is_file():
            raise FIAError(
                f"{model!r} is not a diffusers pipeline folder (no model_index.json); pass the folder "
                "that save_pretrained wrote, or a Hub id"
            )
        return str(path)
    if _looks_like_path(model):
        raise FIAError(f"model path {model!r} does not exist; pass an existing diffusers folder or a Hub id")
    return model


def check_load_args(model: str | None, device: str, dtype: str | torch.dtype) -> tuple[str, torch.device, torch.dtype]:
    """Check :func:`load_pipeline`'s arguments without loading anything: (model ref, device, dtype)."""
    return resolve_model(model), parse_device(device), parse_dtype(dtype)


def load_pipeline(model: str | None = None, device: str = "cpu", dtype: str | torch.dtype = "float32") -> Any:
    """Load a diffusers text-to-image pipeline (SD 1.x/2.x/XL) from a folder or the Hub.

    Raises :class:`FIAError` for a missing folder, a folder that is not a
    pipeline, or a Hub id that cannot be reached.
    """
    from diffusers import DiffusionPipeline

    ref, dev, torch_dtype = check_load_args(model, device, dtype)
    local = Path(ref).is_dir()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename in newer diffusers
            pipe = DiffusionPipeline.from_pretrained(ref, torch_dtype=torch_dtype)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if local:
            raise FIAError(
                f"could not load the pipeline in {ref!r} ({reason}); pass a folder written by "
                "save_pretrained"
            ) from exc
        if len(reason) > 120:
            reason = "the Hub is not reachable and the model is not in the local cache"
        raise FIAError(
            f"could not load {ref!r} from the Hugging Face Hub ({reason}); download it once "
            "and pass its local folder with --model PATH"
        ) from exc
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is None:
        raise FIAError(f"{ref!r} has no UNet or transformer; pass a text-to-image diffusion pipeline")
    pipe = pipe.to(dev)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ generation
def generation_defaults(model: str | None) -> dict[str, Any]:
    """Sampling defaults: ShapeWorld's own for the shipped model, else SD's (50 steps, guidance 7.5)."""
    if model is None:
        from fia.shapeworld import GENERATION_DEFAULTS

        return dict(GENERATION_DEFAULTS)
    return SD_SAMPLER.as_dict()


def generate_images(
    pipe: Any,
    prompt: str,
    seeds: list[int],
    *,
    num_inference_steps: int = SD_SAMPLER.num_inference_steps,
    guidance_scale: float = SD_SAMPLER.guidance_scale,
    height: int | None = None,
    width: int | None = None,
) -> list[Any]:
    """One PIL image of ``prompt`` per seed (image ``k`` from ``seeds[k]``, see :mod:`fia.sampling`)."""
    images = sampling.generate(
        pipe,
        [prompt] * len(seeds),
        seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        output_type="pil",
    )
    return list(images)


def image_grid(rows: list[list[Any]], pad: int = 2) -> Any:
    """Paste rows of equally sized PIL images into one image (white padding)."""
    from PIL import Image

    w, h = rows[0][0].size
    ncol = max(len(r) for r in rows)
    grid = Image.new("RGB", (ncol * w + (ncol + 1) * pad, len(rows) * h + (len(rows) + 1) * pad), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
