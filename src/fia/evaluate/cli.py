"""``fia evaluate``: compare a base model with its edited version on a suite.

Mount it in the main CLI with ``app.command("evaluate")(evaluate)``; it also
runs alone as ``python -m fia.evaluate.cli`` (and so under
``accelerate launch -m fia.evaluate.cli``).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fia.defaults import SD_SAMPLER
from fia.errors import FIAError

app = typer.Typer(add_completion=False, help="Evaluate erasure: base vs edited images on a suite.")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _dir_fingerprint(path: Path) -> str:
    parts = sorted(
        f"{p.relative_to(path)}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in path.rglob("*") if p.is_file()
    )
    return "dir:" + str(path.resolve()) + ":" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@app.command("evaluate")
def evaluate(
    suite: str = typer.Option(..., "--suite", help="shapeworld-objects | shapeworld-styles | shapeworld-attribute | imagenette | artists | explicit | coco"),
    out: Path = typer.Option(..., "--out", help="Output folder: images, index, scores, metrics.json, report.html."),
    edit: Optional[Path] = typer.Option(None, "--edit", "--mask", help="An edit file (edited = base + edit): mask.safetensors of fia erase or edit.safetensors of fia unlearn (--mask is the same option)."),
    edited: Optional[Path] = typer.Option(None, "--edited", help="A saved edited pipeline folder (instead of --edit)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model folder or Hub id; when omitted, the shipped ShapeWorld world an --edit was made on, else ShapeWorld 2."),
    forget: Optional[str] = typer.Option(None, "--forget", help="Erased concepts, comma-separated."),
    preserve: Optional[str] = typer.Option(None, "--preserve", help="Kept concepts, comma-separated (default: all others)."),
    images_per_prompt: Optional[int] = typer.Option(None, "--images-per-prompt", min=1, help="Seeds per prompt (ShapeWorld 2, real suites 1)."),
    seed: int = typer.Option(0, "--seed", help="Base seed (prompt files with their own seeds keep them)."),
    prompts: Optional[list[Path]] = typer.Option(None, "--prompts", help="Prompt file(s) of a real-model suite (repeat for several artists; default: the public set shipped with fia)."),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", min=1, help="Use only the first N prompts (per class for imagenette)."),
    prompts_per_concept: int = typer.Option(4, "--prompts-per-concept", min=1, help="ShapeWorld prompts per concept."),
    quality_images: Optional[int] = typer.Option(None, "--quality-images", min=1, help="ShapeWorld suites: at least this many images of the held-out quality prompts in all (default: --images-per-prompt each); KID and FID are reported from 500 on."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="ImageNet ResNet-50: transformers folder or torchvision .pth (imagenette)."),
    clip: Optional[Path] = typer.Option(None, "--clip", help="CLIP model folder (artists, coco)."),
    shapeworld_dir: Optional[str] = typer.Option(None, "--shapeworld", help="ShapeWorld suites: a shipped world's name (shapeworld, shapeworld2) or the --out folder of `fia shapeworld train`; its model is the base (unless --model) and its oracle (and CLIP, if it has one) judge (default: the default world, shapeworld2, or the world around a --model that is a world's pipeline/)."),
    fid_features: Optional[Path] = typer.Option(None, "--fid-features", help="TorchScript feature extractor for FID (coco; default CLIP image embeddings)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Folder of real images for FID (coco)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Denoising steps (ShapeWorld default from the model, else 50)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (a prompt file's own guidance wins)."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height (default: the model's)."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width (default: the model's)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per generation batch."),
    device: Optional[str] = typer.Option(None, "--device", help="Device (default: this process's accelerator, else cpu)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16, bfloat16 (the models'; judges run in float32)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace images of a different earlier run in --out."),
    no_report: bool = typer.Option(False, "--no-report", help="Write metrics only, no report.html."),
) -> None:
    """Render paired base/edited images, judge them and write metrics.json and report.html."""
    try:
        _evaluate(**locals())
    except FIAError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _check_request(suite: str, edit: Path | None, edited: Path | None, model: str | None, quality_images: int | None,
                   shapeworld_dir: Path | None) -> None:
    """Refuse a request that cannot run, before anything is loaded or written."""
    from fia.evaluate import SUITES
    from fia.evaluate.suites import REAL_SUITES, SHAPEWORLD_SUITES

    if suite not in SUITES:
        raise FIAError(f"unknown suite {suite!r}; use one of: {', '.join(SUITES)}")
    if (edit is None) == (edited is None):
        raise FIAError("say what to evaluate: pass exactly one of --edit FILE (or --mask FILE) or --edited DIR")
    if edit is not None and not edit.is_file():
        raise FIAError(f"--edit {edit} does not exist; pass the mask file of fia erase or the edit file of fia unlearn")
    if edited is not None and not edited.is_dir():
        raise FIAError(f"--edited {edited} is not a folder; pass a pipeline saved with save_pretrained")
    if suite in REAL_SUITES and model is None:
        raise FIAError(f"the {suite} suite runs on a real model; pass the base model with --model")

    if quality_images is not None and suite not in SHAPEWORLD_SUITES:
        raise FIAError(f"--quality-images sizes the ShapeWorld suites' quality prompts; drop it for the {suite} suite")
    if shapeworld_dir is not None and suite not in SHAPEWORLD_SUITES:
        raise FIAError(f"--shapeworld judges the ShapeWorld suites only; drop it for the {suite} suite")


def _generation_settings(suite: str, steps: int | None, guidance: float | None, height: int | None, width: int | None,
                         batch_size: int | None) -> Any:
    """The sampler settings of ``suite``'s images, flags first."""
    from fia.evaluate import GenerationSettings
    from fia.evaluate.suites import SHAPEWORLD_SUITES
    from fia.shapeworld import GENERATION_DEFAULTS

    # ShapeWorld suites sample as the ShapeWorld model was tuned to; others as Stable Diffusion
    gen = GENERATION_DEFAULTS if suite in SHAPEWORLD_SUITES else {}
    return GenerationSettings(
        num_inference_steps=steps or int(gen.get("num_inference_steps", SD_SAMPLER.num_inference_steps)),
        guidance_scale=guidance if guidance is not None else float(gen.get("guidance_scale", SD_SAMPLER.guidance_scale)),
        height=height or gen.get("height"),
        width=width or gen.get("width"),
        batch_size=batch_size,
    )


def _evaluate(
    suite, out, edit, edited, model, forget, preserve, images_per_prompt, seed, prompts, max_prompts,
    prompts_per_concept, quality_images, classifier, clip, shapeworld_dir, fid_features, reference, steps, guidance, height, width,
    batch_size, device, dtype, overwrite, no_report,
) -> None:  # fmt: skip
    from accelerate import PartialState

    from fia.evaluate import build_suite
    from fia.evaluate import evaluate as run_eval
    from fia.evaluate.suites import SHAPEWORLD_SUITES
    from fia.mask import ConceptMask
    from fia.models import load_pipeline

    _check_request(suite, edit, edited, model, quality_images, shapeworld_dir)
    edit_obj = _load_edit(edit) if edit is not None else None
    if suite in SHAPEWORLD_SUITES:
        from fia.shapeworld import model_of_edit, world_folder_of

        if edit_obj is not None and model is None and shapeworld_dir is None:
            model, shapeworld_dir = model_of_edit(edit_obj)  # the shipped world the edit was made on
        # --shapeworld's world, the world around a --model that is a world's
        # pipeline/, or the default world when neither is given
        world_dir = world_folder_of(model, shapeworld_dir)
        if world_dir is not None:
            shapeworld_dir = world_dir
            if model is None:
                model = str(world_dir / "pipeline")  # the world's own model, unless --model says otherwise

    state = PartialState(cpu=_use_cpu(device))
    dev = device or str(state.device)
    say = (lambda msg: typer.echo(msg, err=True)) if state.is_main_process else (lambda msg: None)

    settings = _generation_settings(suite, steps, guidance, height, width, batch_size)
    the_suite = build_suite(
        suite, forget=forget, preserve=preserve, images_per_prompt=images_per_prompt, seed=seed,
        prompts=prompts, max_prompts=max_prompts, prompts_per_concept=prompts_per_concept,
        classifier=classifier, clip=clip, fid_features=fid_features, reference=reference, device=dev,
        shapeworld_dir=shapeworld_dir, quality_images=quality_images,
    )  # fmt: skip
    base_pipe = load_pipeline(model, dev, dtype)
    if edit_obj is not None:
        edit_obj.check(base_pipe)  # an edit made for another model stops here, before anything is written
    edited_pipe = None
    if edit is not None:
        edit_id = _hash_file(edit)
    else:
        edited_pipe = load_pipeline(str(edited), dev, dtype)
        edit_id = _dir_fingerprint(edited)
    run_info = {
        "model": model or "shapeworld",
        "edit": edit_id,
        "seed": seed,
    }
    say(f"{suite}: {len(the_suite.items)} prompts x 2 models on {state.num_processes} process(es)")
    # the concept-overlap figure reads the per-concept cache that fia erase writes beside its mask
    cache_dir = edit.parent / "cache" if isinstance(edit_obj, ConceptMask) else None
    metrics, report = run_eval(
        the_suite, base_pipe, out, mask=edit_obj, edited_pipe=edited_pipe, settings=settings,
        run_info=run_info, report=not no_report, cache_dir=cache_dir,
        overwrite=overwrite, state=state, progress=say,
    )  # fmt: skip
    if metrics is not None:
        _print_summary(metrics)
        say(f"metrics: {Path(out) / 'metrics.json'}")
        if report is not None:
            say(f"report:  {report}")


def _load_edit(edit: Path):
    """The mask or weight delta of ``--edit``; :class:`FIAError` for a file that is no FIA edit."""
    from fia.edit import load_edit

    try:
        return load_edit(edit)
    except FIAError:
        raise
    except Exception as exc:
        raise FIAError(f"--edit {edit} is not a readable FIA edit ({exc}); pass a file written by fia erase or fia unlearn") from exc


def _use_cpu(device: str | None) -> bool:
    """CPU processes (gloo) when asked for, or when the machine has no accelerator."""
    if device is not None:
        return device.startswith("cpu")
    import torch

    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return not acc.is_available()
    return not torch.cuda.is_available()


def _print_summary(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from fia.evaluate.report import _fmt, summary_rows

    table = Table(title=f"{metrics.get('suite')}")
    for col in ("metric", "base", "edited"):
        table.add_column(col)
    for name, b, e in summary_rows(metrics):
        table.add_row(name, _fmt(b), _fmt(e))
    Console(file=sys.stderr).print(table)


def main() -> None:  # pragma: no cover - thin wrapper
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
