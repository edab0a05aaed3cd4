"""``fia shapeworld``: rebuild the ShapeWorld artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fia.errors import FIAError

app = typer.Typer(help="ShapeWorld, the embedded default text-to-image world.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """ShapeWorld commands."""


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Folder for the rebuilt artifacts (pipeline/, oracle, judge2/, clip/ in shapeworld2, recipe, quality)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every stage."),
    quick: bool = typer.Option(False, "--quick", help="A few steps per stage, to check the recipe end to end."),
    unet_steps: int = typer.Option(None, "--unet-steps", help="Override the UNet steps of the recipe."),
    world: str = typer.Option(
        "shapeworld2",
        "--world",
        help="shapeworld2 (the default world): 32 kinds on a long tail, a CLIP trained first whose frozen text "
        "encoder conditions the UNet; shapeworld: the first world (10 shapes, text encoder trained with the UNet).",
    ),
) -> None:
    """Train the VAE, the oracle, the second judge, then the UNet and text encoder (shapeworld2: the CLIP first); report quality."""
    from rich.console import Console

    from .train import TrainConfig, train_all
    from .vocab import SHAPEWORLD, get_world

    console = Console()
    if get_world(world) is SHAPEWORLD:
        cfg = TrainConfig.quick(seed) if quick else TrainConfig(seed=seed)
    else:
        cfg = TrainConfig.quick_shapeworld2(seed) if quick else TrainConfig.shapeworld2(seed)
    if unet_steps is not None:
        if unet_steps < 1:
            raise FIAError(f"--unet-steps must be at least 1, got {unet_steps}")
        cfg.unet_steps = unet_steps
    res = train_all(out, cfg, log=lambda s: console.print(s, markup=False, highlight=False))
    gate = res["quality"]["gate"]
    console.print("quality report (held-out prompts, oracle agreement):")
    for k in ("object", "color", "place", "style", "attribute", "style_none", "attribute_absent"):
        if k in gate:
            console.print(f"  {k:17s} {gate[k]:.3f}")
    console.print("  object per class: " + json.dumps({k: round(v, 3) for k, v in gate["object_per_class"].items()}))
    for key in ("oracle_reject", "clip_renders", "clip_gate"):
        if key in res["quality"]:
            console.print(f"{key}: " + json.dumps(res["quality"][key], default=str))
    console.print(f"shipped artifacts: {res['size_bytes'] / 1e6:.1f} MB in {out}")


@app.command("train-judge2")
def train_judge2(
    out: Path = typer.Option(..., "--out", help="Folder for the second judge (weights, config, recipe)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the recipe (its renders and the judge's own seed)."),
    quick: bool = typer.Option(False, "--quick", help="A few steps on a few renders, to check the stage."),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: the recipe's)."),
) -> None:
    """Rebuild only the second judge, as the full recipe trains it."""
    from rich.console import Console

    from .train import TrainConfig, train_second_judge_alone

    console = Console()
    cfg = TrainConfig.quick(seed) if quick else TrainConfig(seed=seed)
    if threads is not None:
        cfg.threads = threads
    train_second_judge_alone(out, cfg, log=lambda s: console.print(s, markup=False, highlight=False))


if __name__ == "__main__":
    app()
