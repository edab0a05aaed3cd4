"""The fia command: erase/apply/inspect/generate end to end, and every bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fia.cli import app
from tests.helpers import cli_refuses as _bad

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

runner = CliRunner()

FAST = ["--task", "shapeworld", "--variant", "paper", "--saliency-steps", "2", "--steps", "4", "--r2", "0.05"]


def _erase_args(tiny_dir, prompt_files, out, concepts="circle, star"):
    c, b = prompt_files
    return ["erase", "--concepts", concepts, "--model", str(tiny_dir), "--out", str(out), *FAST,
            "--concept-prompts", str(c), "--base-prompts", str(b), "--no-report"]  # fmt: skip


@pytest.fixture(scope="module")
def erased(tiny_dir, prompt_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("erase") / "run"
    res = runner.invoke(app, _erase_args(tiny_dir, prompt_files, out) + ["--save-pipeline"])
    assert res.exit_code == 0, res.output
    return out, res


def test_erase_writes_mask_stats_cache_and_pipeline(erased):
    out, res = erased
    assert (out / "mask.safetensors").is_file()
    assert (out / "fusion_stats.json").is_file()
    assert len(list((out / "cache").glob("*.safetensors"))) == 2
    assert (out / "pipeline" / "model_index.json").is_file()
    assert "circle" in res.stdout and "star" in res.stdout and "pruned" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cache", "fusion_stats.json", "mask.safetensors", "pipeline"]


def test_report_refuses_a_concept_shapeworld_cannot_judge(tiny_dir, prompt_files, tmp_path):
    # With the report on (the default on task shapeworld), a concept that is no
    # ShapeWorld object, style or attribute stops the run before any work.
    args = _erase_args(tiny_dir, prompt_files, tmp_path / "out", concepts="golf ball")
    args.remove("--no-report")
    res = runner.invoke(app, [*args, "--task", "shapeworld"])
    assert res.exit_code == 2, res.output
    assert "golf ball" in res.output and "--no-report" in res.output
    assert not (tmp_path / "out").exists()


def test_erase_twice_gives_identical_bytes(erased, tiny_dir, prompt_files, tmp_path):
    out, _ = erased
    res = runner.invoke(app, _erase_args(tiny_dir, prompt_files, tmp_path / "again"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "mask.safetensors").read_bytes() == (out / "mask.safetensors").read_bytes()


def test_inspect_prints_concepts_and_counts(erased):
    from fia.mask import ConceptMask

    out, _ = erased
    mask = ConceptMask.load(out / "mask.safetensors")
    res = runner.invoke(app, ["inspect", str(out / "mask.safetensors")])
    assert res.exit_code == 0, res.output
    assert "circle, star" in res.stdout
    assert f"{mask.pruned} of {mask.total_weights}" in res.stdout
    for lm in mask.layers:
        assert lm.name in res.stdout and str(lm.pruned) in res.stdout


def test_apply_saves_a_loadable_edited_pipeline(erased, tiny_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    from fia.mask import ConceptMask

    out, _ = erased
    edited = tmp_path / "edited"
    res = runner.invoke(app, ["apply", "--mask", str(out / "mask.safetensors"), "--model", str(tiny_dir),
                              "--out", str(edited)])  # fmt: skip
    assert res.exit_code == 0, res.output
    pipe = StableDiffusionPipeline.from_pretrained(str(edited))
    base = StableDiffusionPipeline.from_pretrained(str(tiny_dir))
    mask = ConceptMask.load(out / "mask.safetensors")
    modules = dict(pipe.unet.named_modules())
    base_modules = dict(base.unet.named_modules())
    for lm in mask.layers:
        w, w0 = modules[lm.name].weight, base_modules[lm.name].weight
        dense = mask.to_dense(lm.name)
        assert torch.all(w[dense] == 0) and torch.equal(w[~dense], w0[~dense])
    # the pipeline erase saved is the same edit
    saved = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"))
    for (n, p), (_, q) in zip(saved.unet.named_parameters(), pipe.unet.named_parameters()):
        assert torch.equal(p, q), n


def test_generate_compare_grid(erased, tiny_dir, tmp_path):
    from PIL import Image

    out, _ = erased
    png = tmp_path / "grid.png"
    res = runner.invoke(app, ["generate", "--prompt", "a circle on the grass", "--model", str(tiny_dir),
                              "--mask", str(out / "mask.safetensors"), "-n", "2", "--steps", "2", "--compare",
                              "--out", str(png)])  # fmt: skip
    assert res.exit_code == 0, res.output
    img = Image.open(png)
    # 2 rows x 2 images of 16 px with 2 px padding
    assert img.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_bad_erase_inputs(tiny_dir, prompt_files, tmp_path):
    out = tmp_path / "out"
    ok = lambda **kw: _erase_args(tiny_dir, prompt_files, out, **kw)
    _bad(ok(concepts=""), out, "empty concept")
    _bad(ok(concepts="circle, , star"), out, "empty concept")
    _bad(ok(concepts="circle, Circle"), out, "listed twice")
    _bad(ok() + ["--task", "painting"], out, "unknown task")
    _bad(ok() + ["--r1", "0"], out, "r1 must lie in (0, 1]")
    _bad(ok() + ["--r2", "1.5"], out, "r2 must lie in (0, 1]")
    _bad(ok() + ["--alpha", "-0.2"], out, "alpha must lie in (0, 1]")
    _bad(ok() + ["--saliency-steps", "9"], out, "exceed")
    _bad(ok() + ["--saliency", "magic"], out, "unknown saliency")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    _bad(ok() + ["--concept-prompts", str(empty)], out, "has no prompts")
    _bad(ok() + ["--base-prompts", str(empty)], out, "has no prompts")
    _bad(ok() + ["--base-prompts", str(tmp_path / "nope.txt")], out, "does not exist")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("r3: 0.1\n")
    _bad(ok() + ["--config", str(bad_yaml)], out, "unknown setting")
    _bad(ok() + ["--model", str(tmp_path / "no-such-model")], out, "does not exist")
    not_pipe = tmp_path / "not-a-pipeline"
    not_pipe.mkdir()
    _bad(ok() + ["--model", str(not_pipe)], out, "not a diffusers pipeline")
    _bad(ok() + ["--model", "fia-test-nobody/no-such-model"], out, "pass its local folder")
    _bad(ok() + ["--dtype", "float8"], out, "unknown dtype")
    _bad(ok() + ["--targets", "everything"], out, "unknown targets")
    _bad(ok() + ["--variant", "magic"], out, "unknown variant")
    _bad(ok() + ["--variant", "causal", "--budget", "0"], out, "budget must lie in (0, 1]")
    _bad(ok() + ["--variant", "causal", "--rounds", "0"], out, "rounds must be a positive integer")
    _bad(ok() + ["--variant", "causal", "--anchor-weight", "-1"], out, "anchor_weight must be")
    _bad(ok() + ["--variant", "causal"], out, "apply to --variant paper")  # ok() passes prompt files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "empty.txt", "not-a-pipeline"]


def test_bad_mask_inputs(erased, tiny_dir, other_dir, tmp_path):
    out, _ = erased
    good = (out / "mask.safetensors").read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good[: len(good) - 40])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    dest = tmp_path / "edited"
    for bad in (trunc, junk):
        _bad(["inspect", str(bad)], dest, "truncated or not a FIA mask")
        _bad(["apply", "--mask", str(bad), "--model", str(tiny_dir), "--out", str(dest)], dest, "re-run fia erase")
    _bad(["apply", "--mask", str(out / "mask.safetensors"), "--model", str(other_dir), "--out", str(dest)],
         dest, "made for a different model")  # fmt: skip
    _bad(["generate", "--prompt", "x", "--model", str(other_dir), "--mask", str(out / "mask.safetensors"),
          "-n", "1", "--out", str(tmp_path / "g.png")], tmp_path / "g.png", "different model")  # fmt: skip
    _bad(["inspect", str(tmp_path / "missing.safetensors")], dest, "does not exist")


@pytest.mark.slow
def test_shapeworld_is_the_default_model(tmp_path):
    """Without --model, erase works on the default world's shipped pipeline (the second world's)."""
    from fia.mask import ConceptMask, fingerprint_weights
    from fia.shapeworld import load_pipeline as load_shapeworld
    from fia.targets import find_targets

    out = tmp_path / "o"
    res = runner.invoke(app, ["erase", "--concepts", "circle", "--out", str(out), "--saliency-steps", "1", "--steps", "2",
                              "--rewrite-weight", "0.5", "--no-report"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "rewrite variant" in res.output and "no weight pruned" in res.output
    assert "paired with their scenes along both trajectories" in " ".join(res.output.split())
    mask = ConceptMask.load(out / "mask.safetensors")
    assert mask.config["task"] == "shapeworld"  # the default task follows the default model
    assert mask.config["world"] == "shapeworld2"  # and the default world's kinds are what it keeps
    shipped = find_targets(load_shapeworld().unet, "ffn2")
    assert mask.fingerprint == fingerprint_weights({t.name: t.module.weight for t in shipped})
    # ShapeWorld's default: the rewrite with its preset (every FFN2 row carried, nothing pruned), the weight from the flag
    assert mask.config["variant"] == "rewrite" and mask.pruned == 0 and mask.repaired
    assert mask.config["rewrite"]["concept_weight"] == 0.5 and mask.config["rewrite"]["negative_guidance"] == 1.0
    assert mask.config["rewrite"]["concept_trajectory"] is True
    # the causal variant on the same world: pruning, then the repair
    causal = tmp_path / "causal"
    res = runner.invoke(app, ["erase", "--concepts", "circle", "--out", str(causal), "--steps", "2", "--saliency-steps", "1",
                              "--variant", "causal", "--rounds", "1", "--score-steps", "2", "--no-report"])  # fmt: skip
    assert res.exit_code == 0, res.output
    pruned = ConceptMask.load(causal / "mask.safetensors")
    assert pruned.config["variant"] == "causal" and pruned.pruned > 0 and pruned.repaired
    assert "repair" not in mask.config and "rewrite" not in pruned.config  # each variant's settings stay its own
    # a flag of another variant is refused before any work, not silently ignored
    bad = tmp_path / "bad"
    _bad(["erase", "--concepts", "circle", "--out", str(bad), "--rounds", "2"], bad,
         "--rounds set(s) the causal variant")  # the default is the rewrite
    _bad(["erase", "--concepts", "circle", "--out", str(bad), "--variant", "causal", "--rewrite-weight", "1"], bad,
         "--rewrite-weight set(s) the rewrite variant")
    _bad(["erase", "--concepts", "star, arrow", "--anchors", "Star, circle", "--out", str(bad)], bad,
         "star is both erased and an anchor; the rewrite cannot keep and erase")


def test_a_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    import fia.shapeworld

    empty = tmp_path / "no-assets"
    empty.mkdir()
    monkeypatch.setattr(fia.shapeworld, "assets_path", lambda: empty)
    out = tmp_path / "o"
    _bad(["erase", "--concepts", "circle", "--out", str(out)], out, "the shapeworld2 world is not part of this installation")
    _bad(["erase", "--concepts", "circle", "--out", str(out)], out, "pass --model")
    _bad(["generate", "--prompt", "a circle", "--out", str(tmp_path / "g.png")], tmp_path / "g.png", "fia shapeworld train --world shapeworld2")


def test_python_dash_m_fia():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "fia", "--help"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    for cmd in ("erase", "apply", "inspect", "generate"):
        assert cmd in res.stdout
