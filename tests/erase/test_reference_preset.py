"""The reference preset, and the Python API and the CLI agreeing on a task's settings.

* ``fia.reference_config(task)`` and ``fia erase --preset reference`` set what
  the public reference code does (docs/fia-method.md, section 10).
* ``fia.erase(pipe, concepts, FIAConfig(task=..., world=...))`` and
  ``fia erase --concepts ...`` on the same world write the same mask file,
  byte for byte (also with the reference preset on both sides).
* The reference preset's masks on the first ShapeWorld world for 2 and 4
  concepts are pinned in ``fixtures/reference_masks_shapeworld.json``: the
  masks the public code computes on the same model, prompts and seeds, bit
  for bit (how that was checked: docs/fia-method.md, section 11). Any drift
  fails here.

Regenerate the fixture (only after checking the new masks against the
reference code again) with ``python -m tests.erase.test_reference_preset --write``
(from the repository's root).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

import fia
from fia.config import REFERENCE_SETTINGS, TASKS, FIAConfig, sampler_defaults
from fia.presets import resolve_config
from tests.helpers import cli_refuses

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

FIXTURE = Path(__file__).parent / "fixtures" / "reference_masks_shapeworld.json"
WORLD = "shapeworld"  # the first world, whose ten shapes the sets name
SETS = (("circle", "star"), ("circle", "star", "heart", "arrow"))


def indices_sha256(indices) -> str:
    """SHA-256 of a layer's pruned flat row-major indices (sorted), as little-endian int64."""
    return hashlib.sha256(indices.numpy().astype("<i8").tobytes()).hexdigest()


def mask_record(mask) -> dict:
    return {
        "pruned": mask.pruned,
        "layers": {
            lm.name: {"pruned": lm.pruned, "sha256": indices_sha256(lm.indices), "tau_ca": lm.tau_ca, "selected": lm.selected}
            for lm in mask.layers
        },
    }


def reference_masks(pipe, cache_dir) -> dict[str, object]:
    """The reference preset's masks for :data:`SETS` (the larger set first; the smaller one reuses its cache)."""
    cfg = fia.reference_config(task="shapeworld", world=WORLD)
    return {", ".join(s): fia.erase(pipe, list(s), cfg, cache_dir=cache_dir) for s in sorted(SETS, key=len, reverse=True)}


@pytest.fixture(scope="module")
def pipe():
    from fia.shapeworld import load_pipeline

    return load_pipeline(world=WORLD)


@pytest.fixture(scope="module")
def masks(pipe, tmp_path_factory):
    return reference_masks(pipe, tmp_path_factory.mktemp("reference-cache"))


# ----------------------------------------------------------------- settings
@pytest.mark.parametrize("task", TASKS)
def test_reference_preset_sets_what_the_reference_code_does(task):
    cfg = fia.reference_config(task=task)
    assert type(cfg) is FIAConfig and (cfg.saliency, cfg.cfg_rows) == ("wanda", "both")
    assert (cfg.targets, cfg.selection, cfg.fusion) == ("ffn2", "both", "fia")
    assert cfg.saliency_steps == 10 and cfg.r1_overrides == {}
    want = sampler_defaults(task)
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (want["num_inference_steps"], want["guidance_scale"])
    # the rest is the task's preset, as fia erase --preset reference --task TASK resolves it
    preset = resolve_config(task, overrides={"variant": "paper"})
    assert (cfg.r1, cfg.r2, cfg.alpha, cfg.r2_overrides) == (preset.r1, preset.r2, preset.alpha, preset.r2_overrides)
    assert cfg.to_dict() == resolve_config(task, preset="reference").to_dict()
    assert all(cfg.to_dict()[k] == v for k, v in REFERENCE_SETTINGS.items())


def test_reference_preset_layers_under_files_and_flags(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("task: object\nr2: 0.05\n")
    cfg = resolve_config(None, f, {"alpha": 0.7}, preset="reference")
    assert (cfg.saliency, cfg.cfg_rows, cfg.r2, cfg.alpha) == ("wanda", "both", 0.05, 0.7)
    assert fia.reference_config("shapeworld", world="shapeworld2").world == "shapeworld2"
    with pytest.raises(fia.FIAError, match="unknown preset 'fast'"):
        resolve_config("object", preset="fast")
    out = tmp_path / "out"
    cli_refuses(["erase", "--concepts", "circle", "--preset", "fast", "--out", str(out)], out, "unknown preset")


# ------------------------------------------------------- API and CLI agree
@pytest.mark.parametrize(
    ("config", "flags"),
    [
        (lambda: FIAConfig(task="shapeworld", world=WORLD), ["--variant", "paper"]),
        (lambda: fia.reference_config(task="shapeworld", world=WORLD), ["--preset", "reference"]),
    ],
    ids=["paper", "reference"],
)
def test_api_and_cli_write_byte_identical_masks(pipe, masks, config, flags, tmp_path):
    from typer.testing import CliRunner

    from fia.cli import app

    concepts = ["circle", "star"]
    cfg = config()
    if cfg.saliency == "wanda":  # the reference preset's mask was made above
        api = masks["circle, star"]
    else:
        api = fia.erase(pipe, concepts, cfg)
    api_file = api.save(tmp_path / "api" / "mask.safetensors")
    out = tmp_path / "cli"
    args = ["erase", "--concepts", ", ".join(concepts), "--shapeworld", WORLD, "--no-report", "--out", str(out), *flags]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cli_file = out / "mask.safetensors"
    assert cli_file.read_bytes() == Path(api_file).read_bytes()
    assert fia.ConceptMask.load(cli_file).config == cfg.to_dict()


# ------------------------------------------------------ the pinned masks
def test_reference_masks_match_the_verified_fixture(masks):
    pinned = json.loads(FIXTURE.read_text())
    for key, mask in masks.items():
        assert mask.fingerprint == pinned["model_fingerprint"], "the first world's model changed; re-verify the fixture"
        assert mask.config == pinned["config"], "the reference preset's settings changed"
        got, want = mask_record(mask), pinned["sets"][key]
        drifted = [n for n in want["layers"] if got["layers"].get(n) != want["layers"][n]]
        assert not drifted and got == want, f"{key}: the pruned sets of {drifted} drifted from the verified masks"


def write_fixture() -> None:  # pragma: no cover - run by hand, see the module docstring
    import tempfile

    import torch

    from fia.shapeworld import load_pipeline

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        made = reference_masks(load_pipeline(world=WORLD), cache)
    first = next(iter(made.values()))
    data = {
        "what": "fia erase --preset reference on the first ShapeWorld world (fia.reference_config(task='shapeworld', "
        "world='shapeworld')): per layer, the SHA-256 of the pruned flat row-major indices as little-endian int64",
        "verified": "bit for bit the masks of github.com/kaiyuan02415/Forget-It-All at commit "
        "4904518b6b5d56b7d6c6baf7ba61e044e67d51b2 on the same model, prompts and seeds (docs/fia-method.md, section 11)",
        "model_fingerprint": first.fingerprint,
        "config": first.config,
        "sets": {key: mask_record(made[key]) for key in (", ".join(s) for s in SETS)},
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.erase.test_reference_preset --write")
    write_fixture()
