"""The ShapeWorld training recipe: its object-weighted loss, the second
judge's augmentations and a quick end-to-end run."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fia.shapeworld import HEADS, SecondJudge, load_oracle, load_pipeline, load_second_judge, sample_scene
from fia.shapeworld.render import SIZE, Scene, object_coverage
from fia.shapeworld.train import TrainConfig, _to_tensor, judge_augment, make_data, object_weight_maps


def _brute_force_weights(scene: Scene, factor: int, extra: float) -> np.ndarray:
    """The same map computed pixel by pixel: a pixel belongs to the shape when
    any pixel of its 3x3 neighbourhood is covered by the object."""
    cov = object_coverage(scene)
    body = np.zeros_like(cov)
    for y in range(SIZE):
        for x in range(SIZE):
            body[y, x] = cov[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].max()
    n = SIZE // factor
    out = np.ones((n, n), np.float32)
    for i in range(n):
        for j in range(n):
            out[i, j] += extra * body[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor].mean()
    return out


def test_object_weight_maps_match_a_brute_force_computation():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng) for _ in range(6)] + [sample_scene(rng, object=None)]
    w = object_weight_maps(scenes, 4, 3.0)
    assert w.shape == (7, 1, SIZE // 4, SIZE // 4)
    for k, s in enumerate(scenes):
        np.testing.assert_allclose(w[k, 0].numpy(), _brute_force_weights(s, 4, 3.0), rtol=0, atol=1e-6)
    # no object: the plain loss
    assert torch.equal(w[-1], torch.ones_like(w[-1]))
    # a latent pixel wholly inside the shape gets the full extra weight, and no more
    assert float(w[:-1].max()) == pytest.approx(4.0)
    assert float(w.min()) == pytest.approx(1.0)


def test_object_weight_maps_put_the_weight_on_the_object():
    # centre (10, 22): inside latent pixel (row 5, column 2), pixels 8-11 x 20-23
    scene = Scene("square", "red", "grass", None, None, x=10.0, y=22.0, size=7.0, rotation=0.0, seed=1)
    w = object_weight_maps([scene], 4, 2.0)[0, 0]
    assert float(w[5, 2]) == pytest.approx(3.0)
    # rows 0-1 (pixels 0-7) lie more than size + outline away from the centre
    assert torch.equal(w[:2], torch.ones_like(w[:2]))


def test_judge_augment_makes_seeded_views_of_the_renders():
    _, images = make_data(16, 1)
    x = _to_tensor(images)
    cfg = TrainConfig()
    a = judge_augment(x, cfg, np.random.default_rng(0))
    b = judge_augment(x, cfg, np.random.default_rng(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    diff = (a - x).abs().mean(dim=(1, 2, 3))
    # every view differs (colour jitter always applies), none beyond recognition
    assert bool((diff > 0).all()) and float(diff.max()) < 0.2
    # with every magnitude at zero the views are the renders themselves
    off = TrainConfig(judge2_blur=0.0, judge2_soft=0.0, judge2_noise=0.0, judge2_jitter=0.0, judge2_crop=0)
    assert torch.allclose(judge_augment(x, off, np.random.default_rng(0)), x, atol=1e-5)


def test_second_judge_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    judge = SecondJudge(widths=(8, 16), feature_dim=12).eval()
    x = torch.rand(3, 3, 32, 32)
    judge.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"judge2.safetensors", "judge2_config.json"}
    back = load_second_judge(path=tmp_path)
    assert back.config == {"widths": [8, 16], "feature_dim": 12}
    for k, v in judge.predict(x).items():
        assert torch.equal(v, back.predict(x)[k])
    assert back.features(x).shape == (3, 12)
    # a judge saved with other heads is refused
    cfg = json.loads((tmp_path / "judge2_config.json").read_text())
    cfg["heads"]["object"] = cfg["heads"]["object"][:-1]
    (tmp_path / "judge2_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="other heads"):
        load_second_judge(path=tmp_path)


@pytest.mark.slow
def test_quick_recipe_writes_loadable_artifacts(tmp_path, monkeypatch):
    """``fia shapeworld train --quick`` runs every stage of the recipe (a few
    steps each) and writes what ships: a pipeline that loads offline and
    draws, the oracle, the second judge, the recipe and the quality reports."""
    from fia.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "sw"
    res = CliRunner().invoke(app, ["shapeworld", "train", "--world", "shapeworld", "--quick", "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "quality report" in res.output
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["seed"] == 3
    assert recipe["config"] == json.loads(json.dumps(asdict(TrainConfig.quick(3))))
    assert recipe["steps"]["unet"] == TrainConfig.quick().unet_steps
    assert len(recipe["probe_history"]) == 2  # steps 3 and 6
    quality = json.loads((out / "quality.json").read_text())
    gate = quality["gate"]
    assert gate["n_images"] == 8
    per_class = gate["object_per_class"]  # the object figure is the mean over the kinds the gate's prompts name
    assert per_class and gate["object"] == pytest.approx(sum(per_class.values()) / len(per_class))
    pipe = load_pipeline(path=out / "pipeline")
    img = pipe(prompt=["a red star on the grass"], num_inference_steps=2, height=32, width=32, output_type="pt").images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    assert set(load_oracle(path=out).predict(img)) == set(HEADS)
    # the second judge ships beside the oracle, with its own report
    assert recipe["steps"]["judge2"] == TrainConfig.quick().judge2_steps and "judge2" in recipe["seconds"]
    assert set(load_second_judge(path=out / "judge2").predict(img)) == set(HEADS)
    report = json.loads((out / "judge2" / "quality.json").read_text())
    assert report["judge"] == "judge2" and report["gate"]["n_images"] == 8
    assert set(report["inter_judge_agreement"]) == set(HEADS)
    assert set(report["accuracy_renders"]) == set(HEADS)
    assert json.loads((out / "judge2" / "recipe.json").read_text())["steps"] == TrainConfig.quick().judge2_steps


def test_train_judge2_rebuilds_only_the_second_judge(tmp_path):
    """``fia shapeworld train-judge2`` runs the recipe's data and judge2
    stages alone; the same seed gives the same weights."""
    from safetensors.torch import load_file

    from fia.cli import app

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        res = CliRunner().invoke(app, ["shapeworld", "train-judge2", "--quick", "--out", str(out), "--threads", "1"])
        assert res.exit_code == 0, res.output
    assert {p.name for p in outs[0].iterdir()} == {"judge2.safetensors", "judge2_config.json", "recipe.json"}
    recipe = json.loads((outs[0] / "recipe.json").read_text())
    assert recipe["seed"] == 0 and recipe["steps"] == TrainConfig.quick().judge2_steps
    assert recipe["config"]["threads"] == 1 and set(recipe["seconds"]) == {"data", "judge2"}
    a, b = (load_file(str(out / "judge2.safetensors")) for out in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("_name_or_path" in p.read_text() for p in (out / "pipeline").rglob("config.json"))
