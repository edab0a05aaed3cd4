"""The report at the end of ``fia erase`` on ShapeWorld: base vs edited images, judged by the oracle.

:func:`report_after_erase` groups the erased concepts by family (objects,
styles, the attribute), runs each family's suite through
:func:`fia.evaluate.evaluate` and writes ``OUT/report.html``. For a variant
other than the paper's, the paper's FIA on the same concepts is measured
beside it, on the same prompts and seeds.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fia.config import FIAConfig, as_variant
from fia.errors import FIAError
from fia.evaluate.build import build_suite
from fia.evaluate.generate import GenerationSettings
from fia.evaluate.runner import OneProcess, evaluate, mask_fingerprint
from fia.io import atomic_write_text
from fia.parallel import Workers
from fia.shapeworld import GENERATION_DEFAULTS
from fia.shapeworld.vocab import (
    ATTRIBUTE_NAMES,
    STYLE_NAMES,
    World,
    get_world,
)

# The report after an erase draws its images from seeds >= this offset, so none
# starts from the noise of a prompt the erase scored (those use seed + k for
# k < a few thousand; see fia.prompts).
REPORT_SEED_OFFSET = 100_000

# Prompts per generation batch of the report (ShapeWorld images are 32x32).
REPORT_BATCH_SIZE = 16


def shapeworld_families(concepts: Sequence[str], world: str | World) -> dict[str, list[str]]:
    """Group concepts by ShapeWorld suite (objects, styles, attribute) of ``world``, in order."""
    w = get_world(world)
    objects = set(w.objects) | set(w.synonym_map())
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


def report_settings() -> GenerationSettings:
    """The sampler settings of the report: ShapeWorld's :data:`~fia.shapeworld.GENERATION_DEFAULTS`."""
    return GenerationSettings(
        num_inference_steps=GENERATION_DEFAULTS["num_inference_steps"],
        guidance_scale=GENERATION_DEFAULTS["guidance_scale"],
        height=GENERATION_DEFAULTS["height"],
        width=GENERATION_DEFAULTS["width"],
        batch_size=REPORT_BATCH_SIZE,
    )


@dataclass(frozen=True)
class _ReportRun:
    """What every family's page of one report shares: the model, the edit, the paper FIA's mask beside it."""

    pipe: Any
    mask: Any
    paper_mask: Any
    concepts: list[str]
    model: str
    variant: str
    cache_dir: Path
    settings: GenerationSettings


def _report_family(run: _ReportRun, suite: Any, folder: Path, prompts: Any) -> Path:
    """Evaluate one family's suite (and the paper FIA beside a variant) into ``folder``; returns its page."""
    compare = []
    if run.paper_mask is not None:
        paper_metrics, _ = evaluate(
            suite, run.pipe, folder / "paper-fia", mask=run.paper_mask, settings=run.settings,
            run_info={"model": run.model, "mask": mask_fingerprint(run.paper_mask), "concepts": run.concepts,
                      "variant": "paper", "pruned_share": run.paper_mask.pruned_share},
            report=False, overwrite=True, state=OneProcess(),
        )  # fmt: skip
        compare.append(("paper FIA", paper_metrics, folder / "paper-fia"))
    _, path = evaluate(
        suite, run.pipe, folder, mask=run.mask, settings=run.settings,
        run_info={"model": run.model, "mask": mask_fingerprint(run.mask), "concepts": run.concepts,
                  "variant": run.variant, "pruned_share": run.mask.pruned_share},
        cache_dir=run.cache_dir, prompts=prompts, overwrite=True, compare=compare,
        edited_label="edited" if run.paper_mask is None else f"{run.variant} FIA", state=OneProcess(),
    )  # fmt: skip
    if compare:
        _add_comparison(folder / "metrics.json", compare)
    if path is None:  # pragma: no cover - evaluate writes a report whenever it is asked to
        raise FIAError(f"no report was written in {folder}")
    return path


def report_after_erase(
    out_dir: str | Path,
    pipe: Any,
    mask: Any,
    concepts: Sequence[str],
    config: Any,
    *,
    mask_applied: bool,
    images_per_prompt: int = 2,
    prompts_per_concept: int = 4,
    prompts: Any = None,
    settings: GenerationSettings | None = None,
    world_dir: str | Path | None = None,
) -> Path:
    """Evaluate a fresh ShapeWorld erase run and write ``OUT/report.html``.

    ``mask_applied`` says whether ``pipe`` comes with ``mask`` applied (as
    after saving the edited pipeline) or with its original weights: base
    images are made with the original weights, edited ones with the mask,
    and ``pipe`` is left as it came. Concepts are judged by their family's
    suite (objects, styles or the attribute), kept concepts being the
    family's others. Images, index, scores, ``metrics.json`` and the PNG
    figures go to ``OUT/report/`` (with several families,
    ``OUT/report/<suite>/`` each, and ``OUT/report.html`` links their pages).
    Per-concept masks for the overlap heatmap come from ``OUT/cache/``: the
    entries this run used (``prompts``, the run's prompt sets per concept,
    when they came from prompt files). ``settings`` default to
    :func:`report_settings`. ``world_dir`` is the folder of the world whose
    model ``pipe`` is (its oracle and CLIP judge; default: the shipped world
    that ``config.world`` names, or, when it names none, the world of
    ``pipe``, as the erase reads it). Returns the path of ``OUT/report.html``.

    It runs in this process alone, also under ``accelerate launch``: the main
    process of a launched ``fia erase`` writes it after the others are done.
    """
    from fia.shapeworld.task import model_world

    world = config.world if config.world is not None else model_world(pipe).name
    families = shapeworld_families(concepts, world)
    world_dir = world_dir if world_dir is not None else world  # a shipped world's name
    device = str(getattr(pipe, "device", "cpu"))
    seed = int(getattr(config, "seed", 0) or 0) + REPORT_SEED_OFFSET
    settings = settings or report_settings()
    out = Path(out_dir)
    root = out / "report"
    if mask_applied:
        mask.restore_(pipe)
    paths: dict[str, Path] = {}
    try:
        paper_mask = None
        if not isinstance(config, FIAConfig):
            # the paper's FIA on the same concepts, task, world, seed and schedule, measured beside the variant
            from fia.engine import erase

            paper_cfg = as_variant(config, FIAConfig, world=world,
                                   saliency_steps=min(FIAConfig.saliency_steps, config.num_inference_steps))
            paper_mask = erase(pipe, list(concepts), paper_cfg, cache_dir=out / "cache", workers=Workers.single())
        for suite_name, forget in families.items():
            folder = root if len(families) == 1 else root / suite_name
            suite = build_suite(
                suite_name, forget=forget, seed=seed, device=device, images_per_prompt=images_per_prompt,
                prompts_per_concept=prompts_per_concept, shapeworld_dir=world_dir,
            )  # fmt: skip
            run = _ReportRun(pipe, mask, paper_mask, list(concepts), str(world_dir), config.VARIANT, out / "cache", settings)
            paths[suite_name] = _report_family(run, suite, folder, prompts)
    finally:
        if mask_applied:
            mask.apply_(pipe)
    page = out / "report.html"
    if len(paths) == 1:
        # the page is self-contained (images inline), so it can sit beside the mask
        os.replace(next(iter(paths.values())), page)
        return page
    return _index_page(page, paths, families)


def _add_comparison(metrics_path: Path, compare: Sequence[tuple[str, dict[str, Any], Path]]) -> None:
    """Record the compared edits' figures in ``metrics.json`` under ``compare``."""
    data = json.loads(metrics_path.read_text(encoding="utf-8"))
    keep = ("run", "summary", "per_class", "per_style", "quality", "intervals")
    data["compare"] = {label: {k: m[k] for k in keep if k in m} for label, m, _ in compare}
    atomic_write_text(metrics_path, json.dumps(data, indent=2) + "\n")


def _index_page(page: Path, paths: dict[str, Path], families: dict[str, list[str]]) -> Path:
    """A page linking each family's report (several families were erased)."""
    rows = "".join(
        f"<li><a href='{html.escape(p.relative_to(page.parent).as_posix())}'>{html.escape(name)}</a>: "
        f"{html.escape(', '.join(families[name]))}</li>"
        for name, p in paths.items()
    )
    atomic_write_text(
        page,
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>FIA evaluation</title></head>"
        f"<body style='font-family:sans-serif'><h1>FIA evaluation</h1><p>One report per concept family:</p><ul>{rows}</ul>"
        "</body></html>",
    )
    return page
