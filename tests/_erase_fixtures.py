"""Shared helpers for the prompts/mask/erase/CLI tests: a tiny saved pipeline, small prompt files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fia.config import FIAConfig

CONCEPT_LINES = "# two contexts\n\na {concept} on the grass\n\na {concept} in the sky\n"
BASE_LINES = "the grass\nthe sky\n"


def small_config(**changes) -> FIAConfig:
    """Fast settings: 2 of 4 steps scored, a wide r2 so tiny layers select something."""
    base = {"task": "shapeworld", "saliency_steps": 2, "num_inference_steps": 4, "guidance_scale": 5.0, "r2": 0.05}
    base.update(changes)
    return FIAConfig(**base).validate()


@pytest.fixture(scope="session")
def prompt_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("prompts")
    c, b = d / "concept.txt", d / "base.txt"
    c.write_text(CONCEPT_LINES)
    b.write_text(BASE_LINES)
    return c, b


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random SD pipeline saved with save_pretrained (never modified)."""
    d = tmp_path_factory.mktemp("tiny-sd") / "pipe"
    _save_tiny(d, seed=0)
    return d


@pytest.fixture(scope="session")
def other_dir(tmp_path_factory) -> Path:
    """Same architecture, other random weights: a different model."""
    d = tmp_path_factory.mktemp("tiny-sd-other") / "pipe"
    _save_tiny(d, seed=1)
    return d


def _save_tiny(folder: Path, seed: int) -> None:
    import torch

    from fia.testing import tiny_sd_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny_sd_pipeline(seed=seed).save_pretrained(str(folder))
    finally:
        torch.set_num_threads(before)


def cli_refuses(args: list[str], out: Path, needle: str) -> None:
    """``fia ARGS`` exits with status 2, one ``error:`` line containing ``needle``, and creates nothing at ``out``."""
    from typer.testing import CliRunner

    from fia.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (args, res.output)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle.lower() in err.lower(), err
    assert not out.exists(), f"{out} was created"


def load_tiny(path: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
