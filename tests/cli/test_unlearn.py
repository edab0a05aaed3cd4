"""fia unlearn: any registered method from the command line, its edit file, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fia.baselines.conceptprune import ConceptPruneConfig
from fia.baselines.uce import UCEConfig
from fia.cli import app
from fia.delta import WeightDelta
from fia.edit import load_edit
from fia.mask import ConceptMask
from fia.methods import methods, unlearn
from tests.helpers import cli_refuses as _bad
from tests.helpers import load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

runner = CliRunner()


def _args(tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["unlearn", "--model", str(tiny_dir), "--out", str(out), *extra]


def test_uce_writes_the_edit_and_prints_its_summary(tiny_dir, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, _args(tiny_dir, out, "--method", "uce", "--concepts", "circle, star", "--preserve", "square"))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["edit.safetensors"]  # atomic: no temporary file left
    edit = load_edit(out / "edit.safetensors")
    assert isinstance(edit, WeightDelta) and edit.method == "uce"
    assert edit.concepts == ["circle", "star"] and edit.stats["preserve"] == ["square"]
    # the same edit as the library makes from the same model and inputs
    assert edit == unlearn(load_tiny(tiny_dir), ["circle", "star"], "uce", UCEConfig(), preserve=["square"])
    assert edit.summary() in res.stdout
    assert f"wrote {out / 'edit.safetensors'}" in res.stdout
    shown = runner.invoke(app, ["inspect", str(out / "edit.safetensors")])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.strip() == edit.summary()


def test_config_file_sets_the_method_fields(tiny_dir, tmp_path):
    cfg = tmp_path / "cp.yaml"
    cfg.write_text(
        "saliency_steps: 2\nnum_inference_steps: 3\ntask: shapeworld\nprompt_limit: 2\nsparsity: 0.05\ngroup: row\n"
    )
    out = tmp_path / "run"
    res = runner.invoke(app, _args(tiny_dir, out, "--method", "conceptprune", "--concepts", "star", "--config", str(cfg)))
    assert res.exit_code == 0, res.output
    mask = load_edit(out / "edit.safetensors")
    assert isinstance(mask, ConceptMask) and mask.method == "conceptprune"
    expected = ConceptPruneConfig(
        saliency_steps=2, num_inference_steps=3, task="shapeworld", prompt_limit=2, sparsity=0.05, group="row"
    )
    assert mask.config == expected.to_dict()
    assert mask == unlearn(load_tiny(tiny_dir), ["star"], "conceptprune", expected)
    assert "conceptprune concept mask" in res.stdout and "group=row" in res.stdout


def test_unknown_method_lists_the_methods(tiny_dir, tmp_path):
    out = tmp_path / "run"
    known = ", ".join(sorted(methods()))
    _bad(_args(tiny_dir, out, "--method", "ucee", "--concepts", "star"), out, f"unknown method 'ucee'; use one of: {known}")


@pytest.mark.parametrize(
    "yaml_text,needle",
    [
        ("lamb: 0.5\nrank: 3\n", "unknown setting(s) rank; use only: anchor, anchors, erase_scale"),
        ("lamb: -1\n", "lamb must be a finite number >= 0, got -1"),
        ("lamb: lots\n", "lamb must be a finite number >= 0, got 'lots'"),
        ("tokens: words\n", "unknown tokens 'words'"),
        ("- lamb\n", "must be a YAML mapping"),
        ("lamb: [0.1\n", "is not valid YAML"),
    ],
)
def test_bad_config_files(tiny_dir, tmp_path, yaml_text, needle):
    cfg = tmp_path / "uce.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "run"
    _bad(_args(tiny_dir, out, "--method", "uce", "--concepts", "star", "--config", str(cfg)), out, needle)


def test_other_bad_inputs(tiny_dir, tmp_path):
    out = tmp_path / "run"
    uce = ["--method", "uce"]
    _bad(_args(tiny_dir, out, *uce, "--concepts", " , "), out, "empty concept name")
    _bad(_args(tiny_dir, out, *uce, "--concepts", "star, Star"), out, "listed twice")
    _bad(_args(tiny_dir, out, *uce, "--concepts", "star", "--config", str(tmp_path / "no.yaml")), out, "does not exist")
    _bad(_args(tiny_dir, out, *uce, "--concepts", "star", "--device", "tpu"), out, "device")
    _bad(_args(tiny_dir, out, *uce, "--concepts", "star", "--dtype", "int8"), out, "dtype")
    _bad(_args(tiny_dir, out, *uce, "--concepts", "star", "--preserve", "star"), out, "both erased and preserved")
    _bad(["unlearn", *uce, "--concepts", "star", "--model", str(tmp_path / "nowhere"), "--out", str(out)], out, "nowhere")
    a_file = tmp_path / "file"
    a_file.write_text("")
    _bad(_args(tiny_dir, a_file, *uce, "--concepts", "star"), tmp_path / "not-created", "is a file")


def test_inspect_refuses_damaged_edit_files(tiny_dir, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, _args(tiny_dir, out, "--method", "uce", "--concepts", "star"))
    assert res.exit_code == 0, res.output
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((out / "edit.safetensors").read_bytes()[:-7])
    _bad(["inspect", str(trunc)], tmp_path / "none", "truncated or not a FIA")
    _bad(["inspect", str(tmp_path / "missing.safetensors")], tmp_path / "none", "does not exist")


def test_fia_family_on_shapeworld_starts_from_the_shapeworld_preset(tmp_path):
    """Without --model the method runs on the default world with ShapeWorld's prompts and settings, as fia erase does."""
    from fia.edit import load_edit
    from fia.presets import resolve_config
    from fia.shapeworld import shipped_world_of_edit

    out = tmp_path / "out"
    res = runner.invoke(app, ["unlearn", "--method", "fia", "--concepts", "circle", "--out", str(out)])
    assert res.exit_code == 0, res.output
    mask = load_edit(out / "edit.safetensors")
    preset = resolve_config("shapeworld", overrides={"variant": "paper"})
    assert mask.method == "fia" and mask.config["task"] == "shapeworld"
    assert shipped_world_of_edit(mask) == "shapeworld2"  # the default world, as every command's
    assert {k: mask.config[k] for k in ("variant", "r2", "alpha", "saliency_steps")} == {
        "variant": "paper", "r2": preset.r2, "alpha": preset.alpha, "saliency_steps": preset.saliency_steps
    }
