"""The ``fia`` command: erase concepts, apply and inspect edits, draw images.

A thin layer over the Python API: it parses and validates the options
(everything is checked before any heavy work starts and before anything is
written), then calls :func:`fia.erase`, :func:`fia.load_edit` and
:func:`fia.models.load_pipeline`. A problem with the input prints one line
(``error: <problem>; <fix>``) and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import typer

from fia.concepts import parse_concepts
from fia.config import FIACausalConfig, FIARewriteConfig, FIASettings, RepairConfig, config_from_record
from fia.defaults import SD_SAMPLER
from fia.errors import FIAError

app = typer.Typer(
    name="fia",
    help="Forget-It-All: erase concepts from text-to-image diffusion models by pruning FFN2 neurons, no training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Print an FIAError as one line on stderr and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except FIAError as exc:
            message = " ".join(str(exc).split())
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _quiet_libraries() -> None:
    """Hide diffusers/transformers loading bars; fia draws its own progress."""
    try:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
        dlog.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


def _check_out_dir(out: Path, what: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise FIAError(f"{what} {str(out)!r} is a file; pass a folder path")


def _check_image_path(out: Path) -> None:
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise FIAError(f"--out {str(out)!r} must end in .png (or .jpg/.webp)")
    if out.exists() and out.is_dir():
        raise FIAError(f"--out {str(out)!r} is a folder; pass an image file name such as grid.png")


# ------------------------------------------------------------------------ erase
@app.command()
@_user_errors
def erase(
    concepts: str = typer.Option(..., "--concepts", "-c", help='Concepts to erase, comma separated: "golf ball, church".'),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: mask.safetensors, fusion_stats.json, cache/."),
    model: str | None = typer.Option(None, "--model", "-m", help="Diffusers folder or Hub id (default: ShapeWorld 2)."),
    task: str | None = typer.Option(None, "--task", help="Prompt templates and preset: object, style, explicit, shapeworld."),
    shapeworld: str | None = typer.Option(
        None, "--shapeworld",
        help="A ShapeWorld world instead of --model: a shipped world's name (shapeworld2, the default; shapeworld, "
        "the first world) or the --out folder of `fia shapeworld train`; its model is erased and its judges write "
        "the report.",
    ),  # fmt: skip
    config: Path | None = typer.Option(None, "--config", help="YAML file of settings (e.g. src/fia/configs/object.yaml)."),
    preset: str | None = typer.Option(
        None, "--preset",
        help="reference: the public reference code's settings (paper variant, --saliency wanda, --cfg-rows both, "
        "the task's schedule and guidance), which reproduce its masks; --config and flags still override.",
    ),  # fmt: skip
    r1: float | None = typer.Option(None, "--r1", help="Temporal sparsity (Eq. 3), e.g. 0.05."),
    r2: float | None = typer.Option(None, "--r2", help="Spatial sparsity (Eq. 4-6), e.g. 0.01."),
    alpha: float | None = typer.Option(None, "--alpha", help="Concept-agnostic share (Eq. 7), e.g. 0.6."),
    saliency_steps: int | None = typer.Option(None, "--saliency-steps", help="Denoising steps scored (then stop)."),
    steps: int | None = typer.Option(None, "--steps", help="Length of the sampling schedule."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    seed: int | None = typer.Option(None, "--seed", help="Base seed; paired prompts share seed + k."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16, bfloat16."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Prompts per sampler batch: memory and speed only, the mask is the same (the rewrite's to float rounding)."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Memory the erase may take, e.g. 24GB (default: "
        "the device's free memory); a larger estimated peak stops it before any work, naming a --batch-size that fits."),
    saliency: str | None = typer.Option(None, "--saliency", help="energy (Eq. 1) or wanda."),
    cfg_rows: str | None = typer.Option(None, "--cfg-rows", help="Rows of a guided run scored: cond or both."),
    targets: str | None = typer.Option(None, "--targets", help="Layers scored and pruned: ffn2, ffn1, attn_kv."),
    variant: str | None = typer.Option(
        None, "--variant", help="paper (Eq. 1-8), causal (prunes weights by the model's own evidence, then repairs) or "
        "rewrite (no pruning: a closed-form rewrite of FFN2 that answers the concept's prompts as their scenes, "
        "pushed past them). Default: the task preset's (ShapeWorld: rewrite; real models: paper)."
    ),
    budget: float | None = typer.Option(None, "--budget", help="causal: share of all target weights pruned per concept."),
    rounds: int | None = typer.Option(None, "--rounds", help="causal: rounds of scoring and pruning."),
    anchor_weight: float | None = typer.Option(None, "--anchor-weight", help="causal: penalty on weights the anchors need."),
    anchors: str | None = typer.Option(None, "--anchors", help="causal and rewrite: concepts that must stay, comma separated (ShapeWorld's rewrite keeps all other kinds anyway)."),
    score_steps: int | None = typer.Option(None, "--score-steps", help="causal: sampler steps of the scored images."),
    repair: bool | None = typer.Option(
        None, "--repair/--no-repair",
        help="causal: after pruning, rewrite the pruned rows in closed form so kept prompts keep their outputs "
        "(ShapeWorld's default: on).",
    ),
    repair_weight: float | None = typer.Option(
        None, "--repair-weight", help="causal: lambda of the repair, how firmly the concept's prompts stay erased."
    ),
    rewrite_weight: float | None = typer.Option(
        None, "--rewrite-weight",
        help="rewrite: lambda, how strongly the concept's prompts are pulled to their scenes (ShapeWorld: 0.04).",
    ),
    concept_prompts: Path | None = typer.Option(None, "--concept-prompts", help="Concept prompts, one a line ({concept})."),
    base_prompts: Path | None = typer.Option(None, "--base-prompts", help="File of base prompts, one per line."),
    save_pipeline: bool = typer.Option(False, "--save-pipeline", help="Also save the edited pipeline to OUT/pipeline."),
    no_report: bool = typer.Option(False, "--no-report", help="On ShapeWorld, skip the before/after report."),
) -> None:
    """Find the edit that erases CONCEPTS and write it to OUT.

    On ShapeWorld (task shapeworld) it then renders base and edited images with
    the same seeds, judges them with the ShapeWorld oracle and writes
    OUT/report.html, unless --no-report.
    """
    flags = EraseFlags(
        r1=r1, r2=r2, alpha=alpha, saliency_steps=saliency_steps, num_inference_steps=steps, guidance_scale=guidance,
        seed=seed, batch_size=batch_size, saliency=saliency, cfg_rows=cfg_rows, targets=targets, budget=budget,
        rounds=rounds, anchor_weight=anchor_weight, anchors=anchors, score_steps=score_steps, repair=repair,
        repair_weight=repair_weight, rewrite_weight=rewrite_weight,
    )  # fmt: skip
    # everything is checked before heavy work and before anything is written
    model, world_dir, plan, report = _checked_erase(
        flags, concepts, out, model, task, shapeworld, config, preset, variant, device, dtype, concept_prompts,
        base_prompts, no_report, max_memory,
    )  # fmt: skip
    run_erase(
        model=model, plan=plan, out=out, device=device, dtype=dtype, save_pipeline=save_pipeline, report=report,
        world_dir=world_dir, max_memory=max_memory,
    )  # fmt: skip


def _checked_erase(
    flags: EraseFlags, concepts: str, out: Path, model: str | None, task: str | None, shapeworld: str | None,
    config: Path | None, preset: str | None, variant: str | None, device: str, dtype: str,
    concept_prompts: Path | None, base_prompts: Path | None, no_report: bool, max_memory: str | None = None,
) -> tuple[str, Path | None, Any, bool]:
    """``fia erase``'s inputs checked, nothing loaded or written: ``(model, world folder, plan, report?)``."""
    from fia.engine import plan_erase
    from fia.memory import parse_memory
    from fia.models import check_load_args

    if max_memory is not None:
        parse_memory(max_memory)

    model, world_dir = _model_and_world(model, shapeworld)
    world = None
    if world_dir is not None:
        from fia.shapeworld import world_of

        world = world_of(world_dir).name
    cfg = flags.config(task, config, variant=variant, world=world, preset=preset, on_shapeworld=world_dir is not None)
    plan = plan_erase(concepts, cfg, concept_prompts=concept_prompts, base_prompts=base_prompts)
    _check_out_dir(out)
    check_load_args(model, device, dtype)
    report = cfg.task == "shapeworld" and not no_report
    if report:
        from fia.shapeworld import DEFAULT_WORLD
        from fia.evaluate.after_erase import shapeworld_families

        # a concept ShapeWorld cannot judge fails here, before any work; a model of no world folder has
        # its world read once it is loaded, and the default world's kinds include the first world's
        shapeworld_families(plan.concepts, cfg.world or DEFAULT_WORLD)

    return model, world_dir, plan, report


def _model_and_world(model: str | None, shapeworld: str | None):
    """``(model path or id, world folder or None)`` of an erase: ``--shapeworld`` or no ``--model`` means a shipped world."""
    if shapeworld is not None and model is not None:
        raise FIAError("pass either --model or --shapeworld (a ShapeWorld world brings its own model), not both")
    from fia.shapeworld import world_folder_of

    world_dir = world_folder_of(model, shapeworld)
    return (model if world_dir is None else str(world_dir / "pipeline")), world_dir


@dataclass(frozen=True)
class EraseFlags:
    """The settings flags of ``fia erase`` as given (``None``: not given), named by the setting each sets.

    :meth:`config` lays them over the task's preset, ``--preset`` and
    ``--config``, in the config type of the variant chosen. A flag of the
    causal or the rewrite variant given to another variant is refused (it
    would be silently ignored); the paper's knobs (``--r1``, ``--saliency-steps``,
    ...) play no part in the other variants and are left out of them.
    """

    r1: float | None = None
    r2: float | None = None
    alpha: float | None = None
    saliency_steps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    batch_size: int | None = None
    saliency: str | None = None
    cfg_rows: str | None = None
    targets: str | None = None
    budget: float | None = None
    rounds: int | None = None
    anchor_weight: float | None = None
    anchors: str | None = None
    score_steps: int | None = None
    repair: bool | None = None
    repair_weight: float | None = None
    rewrite_weight: float | None = None

    # the flags only one variant reads: flag -> (its config type, field)
    VARIANT_FLAGS: ClassVar[dict[str, tuple[type, str]]] = {
        "--budget": (FIACausalConfig, "budget"), "--rounds": (FIACausalConfig, "rounds"),
        "--anchor-weight": (FIACausalConfig, "anchor_weight"), "--score-steps": (FIACausalConfig, "score_steps"),
        "--repair/--no-repair": (FIACausalConfig, "repair"), "--repair-weight": (FIACausalConfig, "repair_weight"),
        "--rewrite-weight": (FIARewriteConfig, "rewrite_weight"),
    }  # fmt: skip
    # flags that set a nested block rather than a field (with_blocks)
    BLOCK_FLAGS: ClassVar[tuple[str, ...]] = ("repair", "repair_weight", "rewrite_weight")

    def config(
        self, task: str | None, config_file: Path | None, *, variant: str | None, world: str | None,
        preset: str | None, on_shapeworld: bool,
    ) -> Any:
        """The checked config: preset < ``--preset`` < ``--config`` < these flags, of the variant's type."""
        from fia.defaults import default_task
        from fia.presets import resolve_config

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.BLOCK_FLAGS}
        fields["anchors"] = parse_concepts(fields["anchors"]) if fields["anchors"] else None
        # the flags are the last layer; the settings of a variant other than the one chosen are left out
        cfg = resolve_config(task, config_file, fields | {"variant": variant, "world": world},
                             default_task=default_task(on_shapeworld), preset=preset)  # fmt: skip
        self.check_variant(cfg)
        return self.with_blocks(cfg)

    def check_variant(self, cfg: FIASettings) -> None:
        """:class:`FIAError` when a flag of one variant is given to another (it would be silently ignored)."""
        for owner in (FIACausalConfig, FIARewriteConfig):
            given = [flag for flag, (t, name) in self.VARIANT_FLAGS.items() if t is owner and getattr(self, name) is not None]
            if given and not isinstance(cfg, owner):
                raise FIAError(f"{', '.join(given)} set(s) the {owner.VARIANT} variant, but this erase runs --variant "
                               f"{cfg.VARIANT}; add --variant {owner.VARIANT} or drop {'them' if len(given) > 1 else 'it'}")

    def with_blocks(self, cfg: Any) -> Any:
        """``cfg`` with ``--repair/--no-repair``, ``--repair-weight`` (a weight turns the repair on) and ``--rewrite-weight``."""
        if self.rewrite_weight is not None:
            cfg = cfg.replace(rewrite=dataclasses.replace(cfg.rewrite, concept_weight=self.rewrite_weight))
        if self.repair is False:
            if self.repair_weight is not None:
                raise FIAError("--repair-weight sets the repair that --no-repair turns off; drop one of them")
            return cfg.replace(repair=None)
        if self.repair or self.repair_weight is not None:
            rc = getattr(cfg, "repair", None) or RepairConfig()  # cfg.replace refuses it on another variant
            if self.repair_weight is not None:
                rc = dataclasses.replace(rc, concept_weight=self.repair_weight)
            return cfg.replace(repair=rc)
        return cfg


def run_erase(
    *, model, plan, out: Path, device: str, dtype: str, save_pipeline: bool, report: bool = False, world_dir=None,
    max_memory: str | None = None,
) -> None:
    """Run a checked erase plan: load the model, erase, write OUT (mask, stats, report).

    Under ``accelerate launch`` (or ``torchrun``) every process loads the
    model and scores its share of the concepts (:mod:`fia.parallel`,
    docs/parallel.md); only the main process shows progress and writes OUT,
    the others print nothing but errors.
    """
    from fia.models import parse_device
    from fia.parallel import Workers

    workers = Workers.from_environment(cpu=parse_device(device).type == "cpu")
    try:
        if isinstance(plan.config, FIARewriteConfig) and not workers.is_main:  # one closed-form fit: not split
            typer.echo(f"{workers.name()} has nothing to do: the rewrite variant is one fit, run by the main process",
                       err=True)  # fmt: skip
            return
        note = workers.idle_note(len(plan.concepts))
        if note is not None:
            typer.echo(note, err=True)
        pipe, mask = _erase_in_process(workers, model, plan, out, workers.device_for(device), dtype, max_memory)
    finally:
        # the processes are done together; what follows is the main process's alone (the report's metrics
        # would otherwise try to sync with processes that have left)
        workers.close()
    if workers.is_main:
        _write_erase(pipe, mask, plan, out, save_pipeline, report, world_dir)


def _erase_in_process(workers, model: str, plan, out: Path, device: str, dtype: str, max_memory: str | None):
    """This process's part of the erase: load the model, run the plan over the processes; ``(pipe, mask)``."""
    import contextlib

    from fia.engine import erase
    from fia.memory import check_memory
    from fia.models import load_pipeline
    from fia.progress import rich_bar
    from fia.targets import denoiser, find_targets

    console = _err_console()
    with console.status("loading the model...") if workers.is_main else contextlib.nullcontext():
        pipe = load_pipeline(model, device=device, dtype=dtype)
    find_targets(denoiser(pipe), plan.config.targets)  # fails early, before OUT exists
    check_memory(pipe, plan, max_memory)  # before any work (erase checks again, from the traces it keeps)

    unit = {FIACausalConfig: "rounds", FIARewriteConfig: "steps"}.get(type(plan.config), "concepts")
    processes = f" on {workers.size} processes" if workers.launched else ""
    bar = rich_bar(f"erasing {len(plan.concepts)} concept(s){processes}, {unit}", console)
    with bar if workers.is_main else contextlib.nullcontext() as progress:
        try:
            mask = erase(pipe, plan, cache_dir=out / "cache", progress=progress, workers=workers, max_memory=max_memory)
        except KeyboardInterrupt:
            if workers.is_main:
                typer.echo(
                    f"interrupted; the concepts already done are cached in {out / 'cache'}: "
                    "run the same command again to resume",
                    err=True,
                )
            raise typer.Exit(code=130) from None
    return pipe, mask


def _write_erase(pipe, mask, plan, out: Path, save_pipeline: bool, report: bool, world_dir) -> None:
    """Write OUT: the mask, its statistics, the edited pipeline (if asked), the summary and the ShapeWorld report."""
    from fia.engine import write_stats
    from fia.mask import save_edited_pipeline

    console = _err_console()
    out.mkdir(parents=True, exist_ok=True)
    mask.save(out / "mask.safetensors")
    write_stats(mask, out / "fusion_stats.json")
    if save_pipeline:
        with console.status("saving the edited pipeline..."):
            save_edited_pipeline(pipe, mask, out / "pipeline")
    _print_erase_summary(mask, out, save_pipeline)
    if report:
        from fia.evaluate.after_erase import report_after_erase

        with console.status("evaluating base vs edited images for the report..."):
            page = report_after_erase(
                out, pipe, mask, plan.concepts, plan.config, mask_applied=save_pipeline, prompts=plan.prompts or None,
                world_dir=world_dir,
            )  # fmt: skip
        typer.echo(f"wrote {page}: base vs edited images and metrics (open it in a browser)")


def _print_rewrite_summary(mask, stats: dict, out: Path) -> None:
    """The rewrite variant's summary: what it was fitted on, how far each layer moved, the kept kinds it moved most."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"FIA (rewrite variant): {len(mask.concepts)} concept(s) erased, no weight pruned")
    table.add_column("layer")
    table.add_column("relative change", justify="right")
    for name, layer in stats.get("per_layer", {}).items():
        table.add_row(name, f"{layer['relative_change']:.3f}")
    console.print(table)
    prompts, secs = stats.get("prompts", {}), stats.get("seconds", {})
    console.print(
        f"fitted on {prompts.get('keep', 0)} kept prompts in {prompts.get('groups', 0)} groups and "
        f"{prompts.get('concept', 0)} concept prompts paired with their scenes"
        f"{' along both trajectories' if mask.config.get('rewrite', {}).get('concept_trajectory') else ''}; "
        f"{secs.get('total', 0):.1f} s in all"
    )
    most = stats.get("balance", {}).get("most_changed_groups", {})
    if most:
        console.print("kept groups moved most (relative output change): " + ", ".join(f"{g} {v:.2f}" for g, v in most.items()))
    console.print(f"wrote {out / 'mask.safetensors'} and {out / 'fusion_stats.json'}")


def _print_erase_summary(mask, out: Path, save_pipeline: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    stats = mask.stats or {}
    config = config_from_record(mask.config)
    if isinstance(config, FIARewriteConfig):
        _print_rewrite_summary(mask, stats, out)
        if save_pipeline:
            print(f"wrote the edited pipeline to {out / 'pipeline'}")
        return
    causal = isinstance(config, FIACausalConfig)
    table = Table(title=f"FIA ({config.VARIANT} variant): {len(mask.concepts)} concept(s) erased")
    table.add_column("concept")
    if causal:  # one budget over all layers, spent in rounds shared by all concepts
        table.add_column("budget", justify="right")
        table.add_column("selected weights", justify="right")
        table.add_column("seconds (own gradients)", justify="right")
    else:
        table.add_column("r1", justify="right")
        table.add_column("r2", justify="right")
        table.add_column("selected neurons", justify="right")
        table.add_column("seconds", justify="right")
        table.add_column("source")
    for c in mask.concepts:
        pc = stats.get("per_concept", {}).get(c, {})
        if causal:
            chosen = sum(layer["selected"].get(c, 0) for layer in stats.get("per_layer", {}).values())
            table.add_row(c, f"{mask.config.get('budget')}", f"{chosen}", f"{pc.get('seconds', 0):.1f}")
            continue
        table.add_row(
            c,
            f"{pc.get('r1', '')}",
            f"{pc.get('r2', '')}",
            f"{pc.get('selected', '')}",
            f"{pc.get('seconds', 0):.1f}",
            "cache" if pc.get("cached") else "computed",
        )
    console = Console()
    console.print(table)
    console.print(
        f"pruned {mask.pruned} of {mask.total_weights} {mask.target_kind} weights "
        f"({100 * mask.pruned_share:.3f} %), {mask.agnostic} concept-agnostic kept "
        f"(tau_ca = {stats.get('tau_ca')})"
    )
    if causal:
        rounds = stats.get("rounds", [])
        console.print(
            f"{len(rounds)} rounds, {stats.get('anchors', {}).get('prompts', 0)} anchor prompts, "
            f"{stats.get('seconds', {}).get('total', 0):.1f} s in all"
        )
    if stats.get("stopped"):
        rounds_of = {c: sum(c in e for e in stats.get("evidence_per_round", [])) for c in stats["stopped"]}
        console.print(
            "adaptive budget: "
            + ", ".join(f"{c} took weights in {n - 1} of {len(stats.get('rounds', []))} rounds" for c, n in rounds_of.items())
            + f" (evidence down to {mask.config.get('stop_evidence')} of its first round's)"
        )
    rep = stats.get("repair")
    if rep:
        console.print(
            f"closed-form repair: {sum(rep['rows'].values())} rows rewritten, fitted on {rep['keep_prompts']} kept "
            f"and {rep['concept_prompts']} concept prompts in {rep['seconds']:.1f} s"
        )
    console.print(f"wrote {out / 'mask.safetensors'} and {out / 'fusion_stats.json'}")
    if save_pipeline:
        console.print(f"wrote the edited pipeline to {out / 'pipeline'}")


# ------------------------------------------------------------------------ apply
EDIT_HELP = "An edit: mask.safetensors of fia erase or edit.safetensors of fia unlearn (--mask is the same option)."


def _what_it_changes(edit: Any) -> str:
    """One phrase on how much ``edit`` changes: pruned weights and repaired rows of a mask, values of a weight delta."""
    from fia.mask import ConceptMask

    if isinstance(edit, ConceptMask):
        repaired = f", {edit.repaired_rows} rows rewritten by the repair" if edit.repaired else ""
        return f"{edit.pruned} weights zeroed, {100 * edit.pruned_share:.3f} %{repaired}"
    return f"{edit.changed_values} of {edit.total_values} values changed in {len(edit.deltas)} parameters"


@app.command()
@_user_errors
def apply(
    edit: Path = typer.Option(..., "--edit", "--mask", help=EDIT_HELP),
    model: str | None = typer.Option(
        None, "--model", "-m", help="The model the edit was made from (default: the shipped world its provenance names)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the edited diffusers pipeline."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
) -> None:
    """Apply an edit (mask or weight delta) to a model and save the edited pipeline (an ordinary diffusers folder)."""
    from fia.edit import load_edit, save_edited_pipeline
    from fia.models import load_pipeline, parse_device, parse_dtype, resolve_model
    from fia.shapeworld import model_of_edit

    loaded = load_edit(edit)
    _check_out_dir(out)
    parse_device(device)
    parse_dtype(dtype)
    model, _ = model_of_edit(loaded, model)
    resolve_model(model)
    pipe = load_pipeline(model, device=device, dtype=dtype)
    loaded.check(pipe)  # refuses a different model before anything is written
    save_edited_pipeline(pipe, loaded, out)
    typer.echo(f"applied {edit} ({', '.join(loaded.concepts)}; {_what_it_changes(loaded)}) and saved the pipeline to {out}")


# ---------------------------------------------------------------------- inspect
@app.command()
@_user_errors
def inspect(
    mask: Path = typer.Argument(..., help="An edit file: mask.safetensors of fia erase or edit.safetensors of fia unlearn."),
) -> None:
    """Print an edit's method, concepts, settings and per-layer counts."""
    from fia.edit import load_edit

    typer.echo(load_edit(mask).summary())


# ---------------------------------------------------------------------- unlearn
def _method_config(method: Any, path: Path | None, *, world: str | None = None) -> Any:
    """``method``'s default config with the fields set in the YAML file ``path`` (validated later, by the plan).

    On a ShapeWorld ``world`` an FIA-family config starts from the
    ShapeWorld preset in that world's vocabulary, keeping what makes the
    method what it is (variant, saliency, selection, fusion), and a config
    with a prompt ``task`` uses ShapeWorld's templates, as ``fia erase`` does.
    """
    from fia.config import check_known_fields
    from fia.presets import read_config_file, resolve_config

    config = method.default_config()
    if world is not None and isinstance(config, FIASettings):
        what = {f: getattr(config, f) for f in ("saliency", "selection", "fusion") if hasattr(config, f)}
        config = resolve_config("shapeworld", overrides=what | {"variant": config.VARIANT, "world": world})
    elif world is not None and dataclasses.is_dataclass(config) and hasattr(config, "task"):
        config = dataclasses.replace(config, task="shapeworld")
    if path is None:
        return config
    data = read_config_file(path)
    check_known_fields(type(config), data)
    try:
        return dataclasses.replace(config, **data)
    except (TypeError, ValueError) as exc:  # e.g. a field the dataclass does not take in __init__
        raise FIAError(f"config file {str(path)!r} has a bad value for {method.name} ({exc}); fix it") from None


@app.command()
@_user_errors
def unlearn(
    method: str = typer.Option(..., "--method", help="Registered method: uce, esd-x, conceptprune, fia, ..."),
    concepts: str = typer.Option(..., "--concepts", "-c", help='Concepts to erase, comma separated: "golf ball, church".'),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: edit.safetensors."),
    preserve: str | None = typer.Option(
        None, "--preserve", help="Concepts to keep, comma separated (methods without a preservation term ignore it)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Diffusers folder or Hub id (default: the shipped ShapeWorld 2 model)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file of the method's settings (its config fields)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16, bfloat16."),
) -> None:
    """Erase CONCEPTS with any registered METHOD and write the edit to OUT/edit.safetensors.

    The edit (a pruning mask or a weight delta) is reversible: fia inspect
    prints it and fia.load_edit reads it back.
    """
    from fia.methods import get_method, plan
    from fia.models import load_pipeline, parse_device, parse_dtype, resolve_model
    from fia.progress import rich_bar
    from fia.shapeworld import DEFAULT_WORLD, pipeline_path

    # ---- check everything before loading the model and before writing anything
    world = DEFAULT_WORLD if model is None else None
    checked = plan(concepts, method, _method_config(get_method(method), config, world=world),
                   preserve=preserve or ())  # fmt: skip
    if world is not None:
        model = str(pipeline_path(world))
    _check_out_dir(out)
    parse_device(device)
    parse_dtype(dtype)
    resolve_model(model)

    console = _err_console()
    with console.status("loading the model..."):
        pipe = load_pipeline(model, device=device, dtype=dtype)
    with rich_bar(checked.method.name, console=console) as progress:
        edit = checked.run(pipe, progress=progress)
    path = edit.save(out / "edit.safetensors")
    typer.echo(edit.summary())
    typer.echo(f"wrote {path}")


# --------------------------------------------------------------------- generate
@app.command()
@_user_errors
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text prompt."),
    out: Path = typer.Option(..., "--out", "-o", help="Grid image to write (PNG)."),
    model: str | None = typer.Option(
        None, "--model", "-m",
        help="Diffusers folder or Hub id (default: the shipped world an --edit was made on, else ShapeWorld 2).",
    ),
    edit: Path | None = typer.Option(None, "--edit", "--mask", help=f"Apply this edit before drawing. {EDIT_HELP}"),
    n: int = typer.Option(8, "-n", "--num-images", help="Images to draw (seeds seed .. seed+n-1)."),
    seed: int = typer.Option(0, "--seed"),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps (default: the model's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Guidance scale (default: the model's)."),
    height: int | None = typer.Option(None, "--height"),
    width: int | None = typer.Option(None, "--width"),
    compare: bool = typer.Option(False, "--compare", help="With --edit: base row above edited row, same seeds."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
) -> None:
    """Draw N images of PROMPT into one grid image."""
    from fia.edit import load_edit
    from fia.io import atomic_write_bytes
    from fia.models import (
        generate_images,
        generation_defaults,
        image_grid,
        load_pipeline,
        parse_device,
        parse_dtype,
        resolve_model,
    )

    if not prompt.strip():
        raise FIAError("empty --prompt; pass the text to draw")
    if n < 1:
        raise FIAError(f"-n must be at least 1, got {n}")
    if compare and edit is None:
        raise FIAError("--compare needs --edit (it draws the base model above the edited one)")
    if steps is not None and steps < 1:
        raise FIAError(f"--steps must be a positive integer, got {steps}")
    if guidance is not None and guidance < 0:
        raise FIAError(f"--guidance must be >= 0, got {guidance}")
    _check_image_path(out)
    parse_device(device)
    parse_dtype(dtype)
    loaded = load_edit(edit) if edit is not None else None
    defaults = generation_defaults(model)  # the user's --model: none is a ShapeWorld world's
    if loaded is not None:
        from fia.shapeworld import model_of_edit

        model, _ = model_of_edit(loaded, model)
    resolve_model(model)
    kwargs = {
        "num_inference_steps": steps or defaults.get("num_inference_steps", SD_SAMPLER.num_inference_steps),
        "guidance_scale": guidance if guidance is not None else defaults.get("guidance_scale", SD_SAMPLER.guidance_scale),
        "height": height or defaults.get("height"),
        "width": width or defaults.get("width"),
    }
    pipe = load_pipeline(model, device=device, dtype=dtype)
    if loaded is not None:
        loaded.check(pipe)
    seeds = list(range(seed, seed + n))
    rows = []
    if loaded is None or compare:
        rows.append(generate_images(pipe, prompt, seeds, **kwargs))
    if loaded is not None:
        loaded.apply_(pipe)
        rows.append(generate_images(pipe, prompt, seeds, **kwargs))
    grid = image_grid(rows)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(out.suffix.lower(), "PNG")
    grid.save(buf, format=fmt)
    atomic_write_bytes(out, buf.getvalue())
    what = "base (top) and edited (bottom)" if compare else ("edited" if loaded is not None else "base")
    typer.echo(f"wrote {out}: {n} {what} image(s) of {prompt!r}, seeds {seeds[0]}..{seeds[-1]}")


# ----------------------------------------------------------------------- attack
@app.command()
@_user_errors
def attack(
    edit: Path = typer.Option(..., "--edit", help="The edit to attack: mask.safetensors of fia erase or edit.safetensors of fia unlearn."),
    concepts: str = typer.Option(..., "--concepts", "-c", help='Erased concepts to bring back, comma separated: "circle, star".'),
    probe: str = typer.Option(
        ..., "--probe",
        help="Probes, comma separated: paraphrase, prompt-attack, concept-vector, textual-inversion, completion, revival.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: attack.json, report.md, images/."),
    model: str | None = typer.Option(
        None, "--model", "-m",
        help="The model the edit was made from (default: the shipped ShapeWorld world its provenance names).",
    ),
    refill: str | None = typer.Option(
        None, "--refill", help="revival: how the pruned zeros are refilled, lowrank (default) or rowcol."
    ),
    quick: bool = typer.Option(False, "--quick", help="Each probe at its smallest budget (checks, not figures)."),
    ceiling: bool = typer.Option(False, "--ceiling", help="Also run every probe against the unedited model."),
    task: str | None = typer.Option(
        None, "--task", help="Real models: object, style or explicit (default: the edit's task); picks prompts and judge."
    ),
    paraphrases: Path | None = typer.Option(
        None, "--paraphrases", help="Real models: file of paraphrases, one prompt a line ({concept} is filled in)."
    ),
    classifier: Path | None = typer.Option(None, "--classifier", help="Task object: ImageNet ResNet-50 folder (the judge)."),
    clip: Path | None = typer.Option(None, "--clip", help="Task style: CLIP folder (the judge)."),
    images: int | None = typer.Option(None, "--images", help="Images per probe, concept and setting (the attempts)."),
    steps: int | None = typer.Option(None, "--steps", help="Sampler steps (default: the model's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Guidance scale (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Base of every seed the attack draws."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:0, mps."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16, bfloat16."),
) -> None:
    """Try to bring the concepts an edit erased back with PROBE(s); write each probe's attack success rate to OUT.

    ASR is the share of a probe's attempts that the judge reads as the
    concept (Wilson 95 % interval). --ceiling adds the same probes on the
    unedited model. Finished probes are written as they finish: re-run the
    same command to resume an interrupted attack.
    """
    from fia.attack import plan_attack, run_attack
    from fia.attack.runner import check_concepts, check_edit, parse_probes
    from fia.edit import load_edit
    from fia.models import check_load_args, generation_defaults, load_pipeline
    from fia.progress import rich_bar
    from fia.shapeworld import model_of_edit

    # ---- check everything before loading the model and before writing anything
    probes = parse_probes(probe)
    loaded = load_edit(edit)
    _check_out_dir(out)
    defaults = generation_defaults(model)  # the user's --model: none is a ShapeWorld world's
    model, world_dir = model_of_edit(loaded, model)  # without --model, the shipped world the edit was made on
    check_load_args(model, device, dtype)
    config = _attack_config(quick, defaults, steps=steps, guidance=guidance, seed=seed, refill=refill, images=images)
    # a ShapeWorld world's model is judged by that world's judges whatever task the edit names
    world = task or ("shapeworld" if world_dir is not None else loaded.config.get("task") or "object")
    judge, texts = _attack_judge(world, world_dir, check_concepts(concepts, loaded), paraphrases,
                                 classifier=classifier, clip=clip, device=device)  # fmt: skip
    plan = plan_attack(concepts, probes, config, edit=loaded, judge=judge, texts=texts)

    console = _err_console()
    with console.status("loading the model..."):
        pipe = load_pipeline(model, device=device, dtype=dtype)
    check_edit(pipe, loaded)  # an edit made for another model stops here, before anything is drawn or written
    with rich_bar(f"attacking {len(plan.concepts)} concept(s), probes", console) as progress:
        try:
            result = run_attack(pipe, loaded, plan.concepts, plan.probes, config, judge=judge, texts=texts,
                                ceiling=ceiling, out_dir=out, progress=progress)  # fmt: skip
        except KeyboardInterrupt:
            typer.echo(f"interrupted; the finished probes are in {out / 'attack.json'}: run the same command again "
                       "to resume", err=True)  # fmt: skip
            raise typer.Exit(code=130) from None
    typer.echo(result.markdown())
    typer.echo(f"wrote {out / 'attack.json'} and {out / 'report.md'} (attempts' images in {out / 'images'})")


def _attack_config(quick: bool, defaults: dict[str, Any], *, steps: int | None, guidance: float | None, seed: int,
                   refill: str | None, images: int | None) -> Any:
    """The attack's budgets: the flags, else the model's sampler (``--quick``: each probe's smallest budget)."""
    from fia.attack import AttackConfig

    changes = {
        "num_inference_steps": steps if steps is not None else (None if quick else defaults["num_inference_steps"]),
        "guidance_scale": guidance if guidance is not None else defaults["guidance_scale"],
        "seed": seed,
        "refill": refill,
        "images": images,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    return AttackConfig.quick(**changes) if quick else AttackConfig(**changes).validate()


def _attack_judge(world: str, world_dir: Path | None, concepts: list[str], paraphrases: Path | None, **judge_args: Any):
    """``(judge, texts)`` of the attack: a ShapeWorld world's two judges and prompts, or a real-model task's.

    ShapeWorld's prompts on a model that is no world (a test pipeline) are
    read by the default world's judges.
    """
    from fia.attack import ShapeWorldConceptJudge, judge_for_task, model_texts
    from fia.attack.texts import MODEL_TASKS
    from fia.shapeworld import world_folder_of

    if world == "shapeworld":
        return ShapeWorldConceptJudge.of_world(world_dir or world_folder_of(None)), None
    if world not in MODEL_TASKS:
        raise FIAError(f"unknown --task {world!r}; use one of: {', '.join(MODEL_TASKS)}")
    if paraphrases is not None and not paraphrases.is_file():
        raise FIAError(f"--paraphrases {str(paraphrases)!r} does not exist; pass a text file with one prompt a line")
    judge = judge_for_task(world, concepts, **judge_args)

    def texts(concept: str):
        return model_texts(concept, world, paraphrases)

    return judge, texts


# -------------------------------------------------------------------- evaluate
from fia.evaluate.cli import evaluate as _evaluate_command  # noqa: E402

app.command("evaluate")(_evaluate_command)


# ------------------------------------------------------------------------ bench
@app.command()
@_user_errors
def bench(
    out: Path = typer.Option(Path("benchmarks/results"), "--out", "-o", help="Folder for unlearning.{json,md} and f4_forgetting.png."),
    quick: bool = typer.Option(False, "--quick", help="A few images per stage: checks the harness, not the figures."),
    methods: str = typer.Option("", "--methods", help="Comma-separated subset of the methods (default: all)."),
    work: Path | None = typer.Option(None, "--work", help="Folder for the edits' caches, one per task and method (default: a temporary folder)."),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    merge: Path | None = typer.Option(None, "--merge", help="An earlier unlearning.json: re-measure --methods and replace their rows in it."),
) -> None:
    """Run the side-by-side benchmark on the default world's 32 kinds: every method, every task, base vs edited."""
    import time

    from fia.bench import METHOD_ORDER, markdown, run_and_write

    def log(msg: str) -> None:
        typer.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)

    chosen = methods.split(",") if methods.strip() else list(METHOD_ORDER)
    res = run_and_write(out, quick=quick, methods=chosen, work=work, threads=threads, merge_with=merge, log=log)
    typer.echo(markdown(res))


# ------------------------------------------------------------------- shapeworld
def _mount_shapeworld() -> None:
    try:
        from fia.shapeworld.cli import app as shapeworld_app
    except Exception:  # ShapeWorld's command is optional; the rest works without it
        return
    # its commands report a user's mistake like every other command
    for command in shapeworld_app.registered_commands:
        command.callback = _user_errors(command.callback)
    app.add_typer(shapeworld_app, name="shapeworld", help="The ShapeWorld toy world: train, render, judge.")


_mount_shapeworld()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fia`` console script and ``python -m fia``."""
    try:
        app(args=argv, prog_name="fia")
    except FIAError as exc:  # pragma: no cover - commands already handle these
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["app", "main"]
