"""Real-model suites end to end through ``fia evaluate``.

Base and edited models are a tiny random SD pipeline saved to disk and a copy
with perturbed FFN2 weights. Judges have the real architectures with random
weights at reduced sizes (ResNet: bottleneck blocks, widths 16/32, ImageNet's
1000 labels; CLIP: 2 layers, width 32, 32-px images); NudeNet runs for real.
Prompts are the first rows of the public prompt sets shipped with the package.
"""

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fia
from fia.evaluate.cli import app
from fia.prompt_files import shipped_prompt_set
from tests.standins import clip_folder, feature_net, resnet_folder

torch.set_num_threads(1)
runner = CliRunner()
FAST = ["--steps", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from fia.targets import denoiser, find_targets
    from fia.testing import tiny_sd_pipeline

    root = tmp_path_factory.mktemp("models")
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in find_targets(denoiser(pipe), "ffn2"):
            t.module.weight.mul_(torch.rand(t.module.weight.shape, generator=g) > 0.5)
    pipe.save_pretrained(root / "edited")
    return {
        "base": str(root / "base"),
        "edited": str(root / "edited"),
        "resnet": str(resnet_folder(root / "resnet")),
        "clip": str(clip_folder(root / "clip")),
        "features": str(feature_net(root / "features.pt")),
    }


def _run(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _scores(out: Path) -> list[dict]:
    """The per-image records of a run (``scores.jsonl``)."""
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def _common(models, suite, out):
    return ["--suite", suite, "--model", models["base"], "--edited", models["edited"], "--out", str(out), *FAST]


def test_imagenette(models, tmp_path):
    args = _common(models, "imagenette", tmp_path) + [
        "--prompts", str(shipped_prompt_set("imagenette.csv")), "--classifier", models["resnet"],
        "--forget", "church, golf ball", "--preserve", "tench, English springer", "--max-prompts", "2",
    ]  # fmt: skip
    _run(args)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["per_class"]["English springer"]["class_id"] == 217
    assert m["per_class"]["golf ball"]["class_id"] == 574 and m["per_class"]["golf ball"]["n"] == 2
    scores = _scores(tmp_path)
    assert len(scores) == 16 and all(isinstance(s["pred_id"], int) for s in scores)
    # the summary, recomputed from the per-image predictions: a class's accuracy is the
    # share of its images named as that class; Overall = 2 P (1 - F) / (P + 1 - F)
    def accuracy(classes, variant):
        shares = []
        for c in classes:
            rows = [s for s in scores if s["group"] == c and s["variant"] == variant]
            shares.append(sum(s["pred_id"] == m["per_class"][c]["class_id"] for s in rows) / len(rows))
        return sum(shares) / len(shares)

    for v in ("base", "edited"):
        f, p = accuracy(["church", "golf ball"], v), accuracy(["tench", "English springer"], v)
        assert m["summary"]["forget_accuracy"][v] == pytest.approx(f)
        assert m["summary"]["preserve_accuracy"][v] == pytest.approx(p)
        assert m["summary"]["overall"][v] == pytest.approx(2 * p * (1 - f) / (p + 1 - f) if p + 1 - f > 0 else 0.0)
    assert (tmp_path / "report.html").is_file()


def test_imagenette_with_a_mask_file(models, tmp_path):
    from fia.models import load_pipeline
    from tests.standins import random_mask

    mask_file = tmp_path / "erase" / "mask.safetensors"
    mask_file.parent.mkdir()
    random_mask(load_pipeline(models["base"])).save(mask_file)
    out = tmp_path / "eval"
    args = [
        "--suite", "imagenette", "--model", models["base"], "--mask", str(mask_file), "--out", str(out), *FAST,
        "--classifier", models["resnet"], "--forget", "parachute", "--preserve", "gas pump", "--max-prompts", "1",
    ]  # fmt: skip
    _run(args)  # no --prompts: the imagenette.csv shipped with the package
    index = json.loads((out / "index.json").read_text())
    with open(shipped_prompt_set("imagenette.csv"), newline="") as f:
        first = {}
        for row in csv.DictReader(f):
            first.setdefault(row["class"], row)
    assert [(it["prompt"], it["seed"]) for it in index["items"]] == [
        (first[c]["prompt"], int(first[c]["evaluation_seed"])) for c in ("parachute", "gas pump")
    ]
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["edit"].startswith("sha256:")
    assert set(m["per_class"]) == {"parachute", "gas pump"}
    html = (out / "report.html").read_text()
    assert "pruned share per layer" in html and "Concept-overlap heatmap skipped" in html
    # a mask and an edited folder at once is a user error
    result = runner.invoke(app, args + ["--edited", models["edited"]])
    assert result.exit_code == 2 and "exactly one of --edit FILE (or --mask FILE) or --edited DIR" in result.output


@pytest.mark.parametrize(
    "suite,extra,option",
    [
        ("imagenette", ["--prompts", str(shipped_prompt_set("imagenette.csv")), "--forget", "church"], "--classifier"),
        ("artists", ["--prompts", str(shipped_prompt_set("test_Monet.csv")), "--forget", "Monet"], "--clip"),
        ("coco", [], "--clip"),
        ("explicit", ["--prompts", "MISSING"], "--prompts"),
    ],
)
def test_a_missing_judge_or_prompt_file_names_its_option(models, tmp_path, suite, extra, option):
    extra = [str(tmp_path / "missing.csv") if a == "MISSING" else a for a in extra]
    result = runner.invoke(app, _common(models, suite, tmp_path) + extra)
    assert result.exit_code == 2
    assert option in result.output
    assert "Traceback" not in result.output


def test_artists(models, tmp_path):
    args = _common(models, "artists", tmp_path) + [
        "--prompts", str(shipped_prompt_set("test_Van_Gogh.csv")), "--prompts", str(shipped_prompt_set("test_Pablo_Picasso.csv")),
        "--clip", models["clip"], "--forget", "Van Gogh", "--max-prompts", "2",
    ]  # fmt: skip
    _run(args)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["per_artist"]["Vincent van Gogh"]["role"] == "forget"
    assert m["per_artist"]["Pablo Picasso"]["role"] == "preserve"
    # Van Gogh is the one erased artist: his CLIP score and FSR, recomputed from the per-image scores
    rows = {v: [s["clip"] for s in _scores(tmp_path) if s["group"] == "Vincent van Gogh" and s["variant"] == v] for v in ("base", "edited")}
    lower = sum(e < b for b, e in zip(rows["base"], rows["edited"]))
    assert m["summary"]["fsr"] == pytest.approx(lower / len(rows["base"]))
    assert m["summary"]["clip_a"]["edited"] == pytest.approx(sum(rows["edited"]) / len(rows["edited"]))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["items"][0]["seed"] == 2219 and index["items"][0]["guidance"] == 7.5


def test_explicit_with_nudenet(models, tmp_path):
    pytest.importorskip("nudenet")
    args = _common(models, "explicit", tmp_path) + ["--prompts", str(shipped_prompt_set("Nudity_ring-a-bell.csv")), "--max-prompts", "2"]
    _run(args)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["n_images"] == 2 and m["threshold"] == 0.6
    assert len(m["per_class"]) == 8 and "ANUS_EXPOSED" not in m["per_class"]
    assert set(m["summary"]["detections"]) == {"base", "edited"}


def test_coco_clip_score_and_fid(models, tmp_path):
    import numpy as np
    from PIL import Image

    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(ref / f"{k}.png")
    out = tmp_path / "out"
    args = _common(models, "coco", out) + [
        "--prompts", str(shipped_prompt_set("coco_prompts.txt")), "--clip", models["clip"], "--max-prompts", "3",
        "--fid-features", models["features"], "--reference", str(ref), "--no-report",
    ]  # fmt: skip
    _run(args)
    m = json.loads((out / "metrics.json").read_text())
    s = m["summary"]
    base_clip = [r["clip"] for r in _scores(out) if r["variant"] == "base"]
    assert len(base_clip) == 3 and s["clip_score"]["base"] == pytest.approx(sum(base_clip) / 3)
    assert s["fid_edited_vs_base"] > 0  # the edited model (half its FFN2 weights zeroed) draws other images
    assert set(s["fid"]) == {"base", "edited"}
    assert "TorchScript" in m["fid_features"]
    assert not (out / "report.html").exists()


def test_real_suites_default_to_the_shipped_prompt_sets(tmp_path):
    from fia.evaluate.suites import prompt_files_for
    from fia.prompt_files import SUITE_PROMPT_SETS

    assert prompt_files_for("imagenette", None) == [shipped_prompt_set("imagenette.csv")]
    assert prompt_files_for("explicit", []) == [shipped_prompt_set("Nudity_ring-a-bell.csv")]
    assert prompt_files_for("coco", None) == [shipped_prompt_set("coco_prompts.txt")]
    artists = prompt_files_for("artists", None)
    assert len(artists) == 5 and all(p.name.startswith("test_") for p in artists)
    for files in SUITE_PROMPT_SETS.values():
        for name in files:
            path = shipped_prompt_set(name)
            # inside the installed package, never beside the clone
            assert path.is_file() and path.parent.parent == Path(fia.__file__).parent
    # a file the user names wins
    mine = tmp_path / "mine.csv"
    assert prompt_files_for("imagenette", mine) == [mine]
    assert prompt_files_for("artists", [mine, str(mine)]) == [mine, mine]


def test_prompt_lists_i2p_csv_and_plain_lines(tmp_path):
    from fia.evaluate.suites.real import _list_items, read_prompt_list

    i2p = tmp_path / "i2p.csv"
    i2p.write_text(',prompt,categories,evaluation_seed,evaluation_guidance\n0,"a nude, on\ntwo lines",sexual,42,7\n1,second,violence,7,\n')
    rows = read_prompt_list(i2p)
    assert [r["prompt"] for r in rows] == ["a nude, on\ntwo lines", "second"]
    items = _list_items(i2p, seed=100, images_per_prompt=2, max_prompts=None, group="explicit")
    assert [(it.seed, it.guidance) for it in items] == [(42, 7.0), (43, 7.0), (7, None), (8, None)]
    ring = shipped_prompt_set("Nudity_ring-a-bell.csv")  # no header, odd bytes
    lines = read_prompt_list(ring)
    assert len(lines) == sum(1 for line in ring.read_bytes().splitlines() if line.strip())
    items = _list_items(ring, seed=5, images_per_prompt=1, max_prompts=3, group="explicit")
    assert [it.seed for it in items] == [5, 6, 7]
