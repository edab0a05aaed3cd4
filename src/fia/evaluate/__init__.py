"""Evaluation: paired generation, judges, suites, metrics and the HTML report.

``fia evaluate`` (see :mod:`fia.evaluate.cli`) and :func:`report_after_erase`
(called at the end of ``fia erase``) both go through :func:`evaluate`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fia.errors import FIAError
from fia.evaluate.generate import EvalItem, Editor, GenerationSettings, ImageStore
from fia.evaluate.metrics import frechet_distance, fsr, overall
from fia.evaluate.suites import SUITES, Suite

__all__ = [
    "SUITES",
    "EvalItem",
    "Editor",
    "GenerationSettings",
    "ImageStore",
    "Suite",
    "build_suite",
    "evaluate",
    "frechet_distance",
    "fsr",
    "overall",
    "report_after_erase",
    "shapeworld_generation_defaults",
]

SHAPEWORLD_SUITES = ("shapeworld-objects", "shapeworld-styles", "shapeworld-attribute")

# The report after an erase draws its images from seeds >= this offset, so none
# starts from the noise of a prompt the erase scored (those use seed + k for
# k < a few thousand; see fia.prompts).
REPORT_SEED_OFFSET = 100_000


def shapeworld_generation_defaults() -> dict[str, Any]:
    try:
        from fia.shapeworld import GENERATION_DEFAULTS  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return dict(GENERATION_DEFAULTS)


def _image_features_of_folder(folder: str | Path, judge: Any, option: str = "--reference") -> Any:
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
) -> Suite:
    """The suite ``name`` with its judge loaded from local paths (or the given ``oracle``).

    Real-model suites read ``prompts``, or the public prompt set shipped with
    the package when it is not given (see :func:`fia.evaluate.suites.prompt_files_for`).
    """
    from fia.evaluate import judges, suites

    if name not in SUITES:
        raise FIAError(f"unknown suite {name!r}; use one of: {', '.join(SUITES)}")
    prompt_files = suites.prompt_files_for(name, prompts) if name not in SHAPEWORLD_SUITES else []
    first = prompt_files[0] if prompt_files else None
    if name in SHAPEWORLD_SUITES:
        if oracle is None:
            try:
                from fia.shapeworld import load_oracle  # type: ignore[attr-defined]

                oracle = load_oracle(device)
            except (ImportError, OSError) as exc:
                raise FIAError(
                    f"the ShapeWorld oracle could not be loaded ({type(exc).__name__}: {exc}); "
                    "reinstall forget-it-all with its ShapeWorld assets"
                ) from exc
        judge = judges.ShapeWorldJudge(oracle, device)
        ipp = images_per_prompt or 2

        def reference_features(factors):
            # 4 renders per quality image: a reference 4x larger than each generated set
            return suites.shapeworld_reference_features(oracle, factors, 4, seed + 12345, device)

        return suites.shapeworld_suite(
            name, judge, forget, preserve, ipp, prompts_per_concept, seed=seed, reference=reference_features
        )
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


def evaluate(
    suite: Suite,
    base_pipe: Any,
    out_dir: str | Path,
    *,
    mask: Any = None,
    edited_pipe: Any = None,
    settings: GenerationSettings | None = None,
    run_info: dict[str, Any] | None = None,
    report: bool = True,
    concept_masks: Any = None,
    cache_dir: str | Path | None = None,
    prompts: Any = None,
    overwrite: bool = False,
    state: Any = None,
    progress: Any = None,
    compare: Sequence[tuple[str, dict[str, Any], Path]] = (),
    edited_label: str = "edited",
) -> tuple[dict[str, Any] | None, Path | None]:
    """Run ``suite`` on base vs edited (``mask`` on ``base_pipe`` or ``edited_pipe``).

    Writes ``OUT/metrics.json``, ``OUT/scores.jsonl``, the images and index
    and, unless ``report=False``, ``OUT/report.html`` with its PNGs. Returns
    ``(metrics, report_path)`` on the main process, ``(None, None)`` elsewhere.

    The overlap heatmap reads, from ``cache_dir``, the per-concept entries
    the erase run that made ``mask`` used; ``prompts`` (concept ->
    :class:`~fia.prompts.ConceptPrompts`) are that run's prompt sets when
    they came from prompt files rather than the task's templates.
    """
    from fia.evaluate.report import concept_masks_from_cache, write_report
    from fia.evaluate.runner import run_suite

    editor = Editor(mask=mask) if mask is not None else Editor(pipe=edited_pipe)
    settings = settings or GenerationSettings()
    metrics = run_suite(suite, base_pipe, editor, out_dir, settings, run_info, state, overwrite, progress)
    if metrics is None or not report:
        return metrics, None
    notes = []
    causal = mask is not None and (getattr(mask, "config", None) or {}).get("variant") == "causal"
    if causal:
        notes.append(
            "The causal variant selects weights in rounds over all concepts together, "
            "so there are no per-concept masks to overlap."
        )
    elif concept_masks is None and cache_dir is not None and Path(cache_dir).is_dir() and mask is not None:
        try:
            concept_masks = concept_masks_from_cache(cache_dir, mask, base_pipe, prompts)
        except Exception as exc:  # the heatmap is optional: say why it is missing
            notes.append(f"Could not read the per-concept cache in {cache_dir}: {exc}")
        else:
            missing = [c for c in getattr(mask, "concepts", []) if c not in concept_masks]
            if missing:
                notes.append(
                    f"The per-concept cache in {cache_dir} holds no entry made with this run's settings for: "
                    f"{', '.join(missing)}."
                )
    path = write_report(
        out_dir, metrics, suite, mask=mask, concept_masks=concept_masks, notes=notes,
        compare=compare, edited_label=edited_label,
    )
    return metrics, path


def mask_fingerprint(mask: Any) -> str:
    """A content hash of a mask (what makes stored edited images reusable)."""
    import hashlib

    to_bytes = getattr(mask, "to_bytes", None)
    if callable(to_bytes):
        return "sha256:" + hashlib.sha256(to_bytes()).hexdigest()
    return f"object:{id(mask)}"


def shapeworld_families(concepts: Sequence[str]) -> dict[str, list[str]]:
    """Group concepts by ShapeWorld suite (objects, styles, attribute), in order."""
    from fia.shapeworld.vocab import ATTRIBUTE_NAMES, OBJECTS, STYLE_NAMES

    objects = set(OBJECTS) | {s for syns in OBJECTS.values() for s in syns}
    styles = {s.lower() for s in STYLE_NAMES}
    out: dict[str, list[str]] = {}
    for c in concepts:
        word = c.strip().lower()
        if word in objects:
            suite = "shapeworld-objects"
        elif word in styles:
            suite = "shapeworld-styles"
        elif word in ATTRIBUTE_NAMES:
            suite = "shapeworld-attribute"
        else:
            raise FIAError(
                f"{c!r} is no ShapeWorld object, style or attribute, so the after-erase report cannot judge it; "
                "pass --no-report"
            )
        out.setdefault(suite, []).append(c)
    return out


def report_after_erase(
    out_dir: str | Path,
    pipe: Any,
    mask: Any,
    concepts: Sequence[str],
    config: Any,
    *,
    images_per_prompt: int = 2,
    prompts_per_concept: int = 4,
    prompts: Any = None,
) -> Path:
    """Evaluate a fresh ShapeWorld erase run and write ``OUT/report.html``.

    ``pipe`` may come with the mask applied or not: base images are made with
    the original weights, edited ones with the mask, and ``pipe`` is left as
    it came. Concepts are judged by their family's suite (objects, styles or
    the attribute), kept concepts being the family's others. Images, index,
    scores, ``metrics.json`` and the PNG figures go to ``OUT/report/`` (with
    several families, ``OUT/report/<suite>/`` each, and ``OUT/report.html``
    links their pages). Per-concept masks for the overlap heatmap come from
    ``OUT/cache/``: the entries this run used (``prompts``, the run's prompt
    sets per concept, when they came from prompt files). Returns the path of
    ``OUT/report.html``.
    """
    families = shapeworld_families(concepts)
    device = str(getattr(pipe, "device", "cpu"))
    seed = int(getattr(config, "seed", 0) or 0) + REPORT_SEED_OFFSET
    gen = shapeworld_generation_defaults()
    settings = GenerationSettings(
        num_inference_steps=int(gen.get("num_inference_steps", getattr(config, "num_inference_steps", 50))),
        guidance_scale=float(gen.get("guidance_scale", getattr(config, "guidance_scale", 7.5))),
        height=gen.get("height"),
        width=gen.get("width"),
        batch_size=16,
    )
    out = Path(out_dir)
    root = out / "report"
    was_applied = _mask_is_applied(mask, pipe)
    if was_applied:
        mask.restore_(pipe)
    paths: dict[str, Path] = {}
    variant = (getattr(mask, "config", None) or {}).get("variant", "paper")
    try:
        paper_mask = None
        if variant != "paper":
            # the paper's FIA on the same concepts, measured beside the variant
            import fia

            paper_cfg = config.replace(variant="paper")
            paper_mask = fia.erase(pipe, list(concepts), paper_cfg, cache_dir=out / "cache")
        for suite_name, forget in families.items():
            suite = build_suite(
                suite_name,
                forget=forget,
                seed=seed,
                device=device,
                images_per_prompt=images_per_prompt,
                prompts_per_concept=prompts_per_concept,
            )
            folder = root if len(families) == 1 else root / suite_name
            compare = []
            if paper_mask is not None:
                paper_metrics, _ = evaluate(
                    suite, pipe, folder / "paper-fia", mask=paper_mask, settings=settings,
                    run_info={"model": "shapeworld", "mask": mask_fingerprint(paper_mask), "concepts": list(concepts),
                              "variant": "paper", "pruned_share": paper_mask.pruned_share},
                    report=False, overwrite=True,
                )
                compare.append(("paper FIA", paper_metrics, folder / "paper-fia"))
            _, path = evaluate(
                suite,
                pipe,
                folder,
                mask=mask,
                settings=settings,
                run_info={"model": "shapeworld", "mask": mask_fingerprint(mask), "concepts": list(concepts),
                          "variant": variant, "pruned_share": mask.pruned_share},
                cache_dir=out / "cache",
                prompts=prompts,
                overwrite=True,
                compare=compare,
                edited_label=f"{variant} FIA" if variant != "paper" else "edited",
            )
            if compare:
                _add_comparison(folder / "metrics.json", compare)
            assert path is not None
            paths[suite_name] = path
    finally:
        if was_applied:
            mask.apply_(pipe)
    page = out / "report.html"
    if len(paths) == 1:
        # the page is self-contained (images inline), so it can sit beside the mask
        os.replace(next(iter(paths.values())), page)
        return page
    return _index_page(page, paths, families)


def _add_comparison(metrics_path: Path, compare: Sequence[tuple[str, dict[str, Any], Path]]) -> None:
    """Record the compared edits' figures in ``metrics.json`` under ``compare``."""
    import json

    from fia.io import atomic_write_text

    data = json.loads(metrics_path.read_text(encoding="utf-8"))
    keep = ("run", "summary", "per_class", "per_style", "quality")
    data["compare"] = {label: {k: m[k] for k in keep if k in m} for label, m, _ in compare}
    atomic_write_text(metrics_path, json.dumps(data, indent=2) + "\n")


def _index_page(page: Path, paths: dict[str, Path], families: dict[str, list[str]]) -> Path:
    import html

    rows = "".join(
        f"<li><a href='{html.escape(p.relative_to(page.parent).as_posix())}'>{html.escape(name)}</a>: "
        f"{html.escape(', '.join(families[name]))}</li>"
        for name, p in paths.items()
    )
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>FIA evaluation</title></head>"
        f"<body style='font-family:sans-serif'><h1>FIA evaluation</h1><p>One report per concept family:</p><ul>{rows}</ul>"
        "</body></html>",
        encoding="utf-8",
    )
    return page


def _mask_is_applied(mask: Any, pipe: Any) -> bool:
    """True when every pruned entry of ``pipe`` is zero while the stored originals are not."""
    import torch

    layers = getattr(mask, "layers", None)
    if not layers:
        return False
    weights = mask.check(pipe)
    zero_now = nonzero_orig = True
    with torch.no_grad():
        for lm in layers:
            if not lm.pruned:
                continue
            w = weights[lm.name].reshape(-1)
            zero_now &= bool((w[lm.indices.to(w.device).long()] == 0).all())
            nonzero_orig &= bool((lm.values != 0).any())
    return zero_now and nonzero_orig
