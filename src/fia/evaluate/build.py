"""A suite by name, with its judge loaded from local files (what ``fia evaluate --suite`` builds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fia import shapeworld
from fia.errors import FIAError
from fia.evaluate import judges, suites
from fia.evaluate.generate import EvalItem


def _image_features_of_folder(folder: str | Path, judge: Any, option: str = "--reference") -> Any:
    """The judge's features of every image in ``folder`` (the FID reference of the coco suite)."""
    import numpy as np
    import torch
    from PIL import Image

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if len(files) < 2:
        raise FIAError(f"{option} {folder} holds fewer than 2 images; pass a folder of reference images")
    feats = []
    for f in files:
        x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        feats.append(judge.score(x, [EvalItem(f.stem, "", 0)], [f])[0]["_features"])
    return torch.tensor(feats, dtype=torch.float64)


def _load_oracle(device: str, folder: Path) -> Any:
    try:
        return shapeworld.load_oracle(device, path=folder)
    except OSError as exc:
        raise FIAError(
            f"the ShapeWorld oracle could not be loaded ({type(exc).__name__}: {exc}); "
            "reinstall forget-it-all with its ShapeWorld assets"
        ) from exc


def _load_shapeworld_clip(device: str, folder: Path) -> Any:
    """The ShapeWorld CLIP beside the oracle (``clip/``), or None when the world has none (the first world)."""
    clip_dir = folder / "clip"
    if not (clip_dir / "clip_config.json").is_file():
        return None
    from fia.shapeworld.clip import load_clip

    return load_clip(clip_dir, device=device)


def build_suite(
    name: str,
    *,
    forget: str | Sequence[str] | None = None,
    preserve: str | Sequence[str] | None = None,
    images_per_prompt: int | None = None,
    seed: int = 0,
    prompts: str | Path | Sequence[str | Path] | None = None,
    max_prompts: int | None = None,
    prompts_per_concept: int = 4,
    classifier: str | Path | None = None,
    clip: str | Path | None = None,
    fid_features: str | Path | None = None,
    reference: str | Path | None = None,
    device: str = "cpu",
    oracle: Any = None,
    shapeworld_dir: str | Path | None = None,
    quality_images: int | None = None,
) -> suites.Suite:
    """The suite ``name`` with its judge loaded from local paths (or the given ``oracle``).

    ShapeWorld suites are judged by the oracle of ``shapeworld_dir`` (a
    shipped world's name or a folder written by ``fia shapeworld train``), by
    the given ``oracle``, or by the default world's, in that oracle's world.
    When the judge comes from a world folder with a CLIP (``clip/`` beside
    the oracle), its CLIP score and style verdicts join the records.
    ``quality_images`` asks a ShapeWorld suite for at least that many
    images of its quality prompts in all (default: ``images_per_prompt``
    each).

    Real-model suites read ``prompts``, or the public prompt set shipped with
    the package when it is not given (see :func:`fia.evaluate.suites.prompt_files_for`).
    """
    if name not in suites.SUITES:
        raise FIAError(f"unknown suite {name!r}; use one of: {', '.join(suites.SUITES)}")
    if name in suites.SHAPEWORLD_SUITES:
        if shapeworld_dir is None and oracle is None:
            shapeworld_dir = shapeworld.DEFAULT_WORLD
        # a given oracle without a folder is judged alone (no CLIP of another world beside it)
        folder = shapeworld.world_path(shapeworld_dir) if shapeworld_dir is not None else None
        oracle = oracle if oracle is not None else _load_oracle(device, folder)
        clip = _load_shapeworld_clip(device, folder) if folder is not None else None
        judge = judges.ShapeWorldJudge(oracle, device, clip=clip)

        def reference_features(factors):
            # 4 renders per quality image: a reference 4x larger than each generated set
            return suites.shapeworld_reference_features(oracle, factors, 4, seed + 12345, device)

        return suites.shapeworld_suite(
            name, judge, forget, preserve, images_per_prompt or 2, prompts_per_concept, seed=seed,
            reference=reference_features, quality_images=quality_images,
        )  # fmt: skip
    prompt_files = suites.prompt_files_for(name, prompts)
    first = prompt_files[0] if prompt_files else None
    ipp = images_per_prompt or 1
    if name == "imagenette":
        return suites.imagenette_suite(judges.ResNetJudge(classifier, device), first, forget, preserve, ipp, max_prompts)
    if name == "artists":
        return suites.artists_suite(judges.CLIPJudge(clip, device), prompt_files or None, forget, ipp, max_prompts)
    if name == "explicit":
        return suites.explicit_suite(judges.NudeNetJudge(), first, seed, ipp, max_prompts)
    # coco
    clip_judge = judges.CLIPJudge(clip, device)
    feat_judge = judges.FeatureJudge(fid_features, device) if fid_features else None
    judge = judges.MultiJudge(feat_judge, clip_judge) if feat_judge else clip_judge
    fid_judge = feat_judge or clip_judge
    ref = (lambda: _image_features_of_folder(reference, fid_judge)) if reference else None
    return suites.coco_suite(
        judge,
        first,
        seed,
        ipp,
        max_prompts,
        reference=ref,
        feature_name="TorchScript features of --fid-features" if feat_judge else "CLIP image embeddings",
    )
