"""Helpers of the erase, mask, attack and CLI tests: fast settings, a saved tiny pipeline, a refused command.

Their fixtures (``tiny_dir``, ``other_dir``, ``prompt_files``, ``one_thread``)
are in ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fia.config import FIACausalConfig, FIAConfig

CONCEPT_LINES = "# two contexts\n\na {concept} on the grass\n\na {concept} in the sky\n"
BASE_LINES = "the grass\nthe sky\n"


def small_config(**changes) -> FIAConfig:
    """Fast settings: 2 of 4 steps scored, a wide r2 so tiny layers select something."""
    base = {"task": "shapeworld", "saliency_steps": 2, "num_inference_steps": 4, "guidance_scale": 5.0, "r2": 0.05}
    base.update(changes)
    return FIAConfig(**base).validate()


def tiny_causal_config(**changes) -> FIACausalConfig:
    """Fast settings of the causal variant: 2 rounds of 2 scored steps on 2 prompts per concept."""
    base = {
        "task": "object", "num_inference_steps": 4,
        "score_steps": 2, "concept_prompts_per_concept": 2, "anchor_prompts": 2, "contrasts": 1,
        "evidence_timesteps": (0.5,), "budget": 0.02, "rounds": 2, "guidance_scale": 3.0,
    }  # fmt: skip
    base.update(changes)
    return FIACausalConfig(**base).validate()


def save_tiny(folder: Path, seed: int) -> None:
    """Save a tiny random SD pipeline (``fia.testing.tiny_sd_pipeline(seed)``) to ``folder``, built on one thread."""
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
    """The pipeline saved at ``path``, with its progress bar off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_weights(pipe) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``pipe.unet``'s state dict, to compare against after an edit."""
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


def ffn2_weight_names(pipe) -> set[str]:
    """State-dict names of the FFN2 weights (each FeedForward's last Linear), found independently of fia.targets."""
    from diffusers.models.attention import FeedForward

    names = set()
    for name, m in pipe.unet.named_modules():
        if isinstance(m, FeedForward):
            last = [n for n, sub in m.net.named_children() if isinstance(sub, torch.nn.Linear)][-1]
            names.add(f"{name}.net.{last}.weight")
    return names
