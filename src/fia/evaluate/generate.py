"""Paired generation: base and edited images share prompt and seed.

Images live on disk (``OUT/images/{base,edited}/<key>.png``, the key a hash
of prompt, seed and guidance) next to an index (``OUT/index.json``) that names
every item's prompt, seed, guidance and image key plus a fingerprint of the run
(models, edit, sampler settings). A second call with the same run fingerprint
skips images already on disk (resume; another suite or more prompts reuse the
images they share) and scores everything again from the PNG files, so a
resumed run and a fresh one give the same numbers. Scoring always reads the
PNGs back, never in-memory images. A folder holding another run's images is
refused unless ``overwrite``, which deletes them.

Work is cut into global batches of consecutive items; with several processes
(``accelerate launch``) batch ``b`` goes to process ``b % world``. Each batch
holds the same items whatever the number of processes, so the images, and
the scores computed batch by batch, are identical to a one-process run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fia import sampling
from fia.defaults import SD_SAMPLER
from fia.errors import FIAError

VARIANTS = ("base", "edited")


@dataclass
class EvalItem:
    """One prompt and seed to render with the base and the edited model.

    ``group`` is what the judge is asked about (a class, style, artist...);
    ``role`` says how it counts: ``forget``, ``preserve``, ``synonym``,
    ``quality`` or ``target``.
    """

    id: str
    prompt: str
    seed: int
    group: str = ""
    role: str = "target"
    guidance: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationSettings:
    num_inference_steps: int = SD_SAMPLER.num_inference_steps
    guidance_scale: float = SD_SAMPLER.guidance_scale
    height: int | None = None
    width: int | None = None
    batch_size: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Editor:
    """How the edited model is obtained: a mask on the base pipe, or another pipe."""

    def __init__(self, mask: Any = None, pipe: Any = None, fingerprint: str = ""):
        if (mask is None) == (pipe is None):
            raise ValueError("give exactly one of mask or pipe")
        self.mask, self.pipe, self.fingerprint = mask, pipe, fingerprint


def batches(items: Sequence[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Consecutive batches; a new batch also starts where the guidance changes."""
    out: list[list[EvalItem]] = []
    for item in items:
        if out and len(out[-1]) < batch_size and out[-1][-1].guidance == item.guidance:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def my_batches(all_batches: list[list[EvalItem]], rank: int, world: int) -> list[int]:
    return [b for b in range(len(all_batches)) if b % world == rank]


def image_key(item: EvalItem) -> str:
    """File name of an item's images: a hash of what decides them (prompt, seed, guidance)."""
    import hashlib

    text = json.dumps([item.prompt, int(item.seed), item.guidance])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class ImageStore:
    """The on-disk images and index of one evaluation directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, variant: str, item: EvalItem) -> Path:
        return self.root / "images" / variant / f"{image_key(item)}.png"

    def has(self, variant: str, item: EvalItem) -> bool:
        return self.path(variant, item).is_file()

    def save(self, variant: str, item: EvalItem, image: np.ndarray) -> None:
        path = self.path(variant, item)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.png")
        Image.fromarray(to_uint8(image)).save(tmp)
        os.replace(tmp, path)

    def load(self, variant: str, items: Iterable[EvalItem]) -> torch.Tensor:
        """``(B, 3, H, W)`` float images in [0, 1], read back from the PNGs."""
        arrays = [np.asarray(Image.open(self.path(variant, it)).convert("RGB")) for it in items]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0

    # ------------------------------------------------------------------ index
    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def write_index(self, run: dict[str, Any], items: Sequence[EvalItem], overwrite: bool = False) -> None:
        """Write the index after checking that stored images belong to the same run (resume)."""
        record = {"run": run, "items": [{**asdict(it), "image": image_key(it)} for it in items]}
        if self.index_path.is_file():
            old_run = json.loads(self.index_path.read_text()).get("run", {})
            new_run = json.loads(json.dumps(run))
            if old_run != new_run:
                if not overwrite:
                    raise FIAError(
                        f"{self.root} holds images of a different evaluation run; "
                        "choose a new --out directory or pass --overwrite"
                    )
                # base images stay valid when only the edit changed (another mask, same base)
                same_base = _without_edit(old_run) == _without_edit(new_run)
                for variant in ("edited",) if same_base else VARIANTS:
                    for png in (self.root / "images" / variant).glob("*.png"):
                        png.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.index_path)


EDIT_KEYS = ("edit", "mask", "concepts")


def _without_edit(run: dict[str, Any]) -> dict[str, Any]:
    """The part of a run fingerprint that decides the base images."""
    return {k: v for k, v in run.items() if k not in EDIT_KEYS}


def to_uint8(image: Any) -> np.ndarray:
    """PIL / ``(H, W, 3)`` float in [0, 1] / uint8 -> ``(H, W, 3)`` uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)


def run_pipe(pipe: Any, items: Sequence[EvalItem], settings: GenerationSettings) -> np.ndarray:
    """Generate one batch: ``(B, H, W, 3)`` float images in [0, 1].

    Item ``k`` is drawn from its own CPU generator seeded with its seed (the
    seeding rule of :mod:`fia.sampling`), so an image depends neither on its
    batch neighbours nor on the device.
    """
    images = sampling.generate(
        pipe,
        [it.prompt for it in items],
        [it.seed for it in items],
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=items[0].guidance if items[0].guidance is not None else settings.guidance_scale,
        height=settings.height or None,
        width=settings.width or None,
        output_type="np",
    )
    return np.asarray(images)


def generate_paired(
    base_pipe: Any,
    editor: Editor,
    all_batches: list[list[EvalItem]],
    batch_ids: Sequence[int],
    store: ImageStore,
    settings: GenerationSettings,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Render the missing base and edited images of the given batches; returns how many."""
    made = 0
    for variant in VARIANTS:
        todo = [b for b in batch_ids if not all(store.has(variant, it) for it in all_batches[b])]
        if not todo:
            continue
        pipe = base_pipe
        applied = False
        if variant == "edited":
            if editor.mask is not None:
                editor.mask.apply_(base_pipe)
                applied = True
            else:
                pipe = editor.pipe
        try:
            for n, b in enumerate(todo):
                batch = all_batches[b]
                images = run_pipe(pipe, batch, settings)
                for it, img in zip(batch, images):
                    store.save(variant, it, img)
                made += len(batch)
                if progress:
                    progress(f"{variant}: batch {n + 1}/{len(todo)}")
        finally:
            if applied:
                editor.mask.restore_(base_pipe)
    return made
