"""fia apply, generate, evaluate and attack read any edit: a weight delta as well as a mask; bad input writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers import cli_refuses, load_tiny
from PIL import Image
from typer.testing import CliRunner

from fia.cli import app
from fia.delta import WeightDelta
from fia.edit import load_edit
from fia.methods import unlearn

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread


def _unet_state(pipe) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pipe.unet.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_delta(tiny_dir, tmp_path_factory):
    """A UCE weight delta of the tiny pipeline, saved as fia unlearn saves it."""
    delta = unlearn(load_tiny(tiny_dir), ["star"], "uce", preserve=["square"])
    return delta.save(tmp_path_factory.mktemp("uce") / "edit.safetensors")


@pytest.fixture(scope="module")
def world_delta(tmp_path_factory):
    """A UCE weight delta of the default ShapeWorld world (commands find the world from its fingerprint)."""
    from fia.shapeworld import load_pipeline

    delta = unlearn(load_pipeline(), ["star"], "uce", preserve=["square"])
    return delta.save(tmp_path_factory.mktemp("uce-world") / "edit.safetensors")


@pytest.mark.parametrize("option", ["--edit", "--mask"])
def test_apply_saves_the_pipeline_a_delta_edits(option, tiny_delta, tiny_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "edited"
    res = runner.invoke(app, ["apply", option, str(tiny_delta), "--model", str(tiny_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    delta = load_edit(tiny_delta)
    assert isinstance(delta, WeightDelta)
    assert f"{delta.changed_values} of {delta.total_values} values changed in {len(delta.deltas)} parameters" in res.stdout
    saved = StableDiffusionPipeline.from_pretrained(str(out))
    expected = load_tiny(tiny_dir)
    base = _unet_state(expected)
    delta.apply_(expected)
    got, want = _unet_state(saved), _unet_state(expected)
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert {n for n in base if not torch.equal(base[n], got[n])} == set(delta.parameter_names)
    # the saved pipeline carries the edit: the file alone puts the base weights back
    load_edit(tiny_delta).restore_(saved)
    assert all(torch.equal(v, base[n]) for n, v in _unet_state(saved).items())


def test_generate_draws_base_and_delta_edited_rows(tiny_delta, tiny_dir, tmp_path):
    png = tmp_path / "grid.png"
    res = runner.invoke(app, ["generate", "--prompt", "a star on the grass", "--model", str(tiny_dir),
                              "--edit", str(tiny_delta), "-n", "2", "--steps", "2", "--compare", "--out", str(png)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "base (top) and edited (bottom)" in res.stdout
    assert Image.open(png).size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 rows x 2 images of 16 px, 2 px padding


def test_commands_refuse_a_delta_of_another_model_and_write_nothing(tiny_delta, other_dir, tmp_path):
    out = tmp_path / "never"
    cli_refuses(["apply", "--edit", str(tiny_delta), "--model", str(other_dir), "--out", str(out)], out,
                "made for a different model")  # fmt: skip
    cli_refuses(["generate", "--prompt", "a star", "--model", str(other_dir), "--edit", str(tiny_delta), "-n", "1",
                 "--steps", "1", "--out", str(out / "g.png")], out, "made for a different model")  # fmt: skip
    cli_refuses(["evaluate", "--suite", "shapeworld-objects", "--model", str(other_dir), "--edit", str(tiny_delta),
                 "--forget", "star", "--preserve", "square", "--images-per-prompt", "1", "--prompts-per-concept", "1",
                 "--steps", "1", "--out", str(out)], out, "made for a different model")  # fmt: skip
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(tiny_delta.read_bytes()[:-16])
    for args in (["apply", "--edit", str(damaged), "--model", str(other_dir), "--out", str(out)],
                 ["generate", "--prompt", "a star", "--edit", str(damaged), "--out", str(out / "g.png")],
                 ["evaluate", "--suite", "shapeworld-objects", "--edit", str(damaged), "--out", str(out)]):  # fmt: skip
        cli_refuses(args, out, "truncated or not a FIA mask or weight delta")


def test_evaluate_measures_a_delta_and_says_why_no_layer_figure(world_delta, tmp_path):
    out = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", "--suite", "shapeworld-objects", "--edit", str(world_delta),
                              "--forget", "star", "--preserve", "square", "--images-per-prompt", "1",
                              "--prompts-per-concept", "1", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forget"] == ["star"] and metrics["run"]["edit"].startswith("sha256:")
    html = (out / "report.html").read_text()
    assert "uce weight delta: it prunes nothing" in html
    assert not (out / "layers.png").exists()


def test_attack_runs_revival_on_a_delta_with_nothing_to_refill(world_delta, tmp_path):
    from fia.attack.runner import RESULT_FILE

    out = tmp_path / "audit"
    res = runner.invoke(app, ["attack", "--edit", str(world_delta), "--concepts", "star", "--probe", "revival",
                              "--quick", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    (result,) = json.loads((out / RESULT_FILE).read_text())["results"]
    assert result["probe"] == "revival" and result["attempts"] > 0
    assert "0 weights in 0 layers" in " ".join(s["setting"] for s in result["settings"])
