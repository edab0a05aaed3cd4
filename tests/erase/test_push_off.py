"""``rewrite.push_off_rank``: the rewrite solved again with negative guidance's push projected off what the kept
kinds it moved most add over object-less scenes, on the shipped default world (a short schedule, few prompts)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import fia
import fia.rewrite
from fia.config import FIARewriteConfig, RewriteConfig
from fia.core.rewrite import balanced_rewrite, kept_feature_projector
from fia.errors import FIAError
from fia.targets import find_targets
from fia.tasks import task_of
from tests.helpers import load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = RewriteConfig(concept_weight=0.05, damping=0.03, balance_rounds=2, keep_prompts_per_kind=1, concept_prompts_per_concept=3,
                      concept_trajectory=True, negative_guidance=1.0, push_off_rank=8, push_off_kinds=3)


@pytest.fixture(scope="module")
def world():
    from fia.shapeworld import load_pipeline

    return load_pipeline()


def _config(rc: RewriteConfig) -> FIARewriteConfig:
    return FIARewriteConfig(task="shapeworld", world="shapeworld2", num_inference_steps=3, rewrite=rc).validate()


def test_the_push_is_projected_off_the_kinds_the_whole_push_moved_most(world):
    """The edit is the balanced rewrite of the run's own statistics, solved with the whole push, then again with
    each layer's push projected off what the three kept kinds that solve moved most add over the scenes."""
    cfg = _config(SMALL)
    edit = fia.erase(world, ["star"], cfg)
    targets = find_targets(world.unet, cfg.targets)
    prompts = task_of(cfg).rewrite_prompts(["star"], cfg.rewrite, anchors=cfg.anchors, seed=cfg.seed)
    grams, sizes = fia.rewrite.group_grams(world, targets, prompts, cfg)
    gram_c, cross, reference, _ = fia.rewrite.paired_moments(world, targets, prompts, cfg)
    unedited = {t.name: t.module.weight.detach() for t in targets}
    solve = dict(concept_weight=0.05, damping=0.03, rounds=2, negative_guidance=1.0, reference=reference)
    whole = balanced_rewrite(unedited, grams, sizes, gram_c, cross, **solve)
    kinds = [g for g in whole.group_change if g not in ("scene", "style", "burning")]
    assert len(kinds) == 31 and "star" not in kinds  # every kept kind, and only kinds
    stake = sorted(kinds, key=lambda g: -whole.group_change[g])[:3]
    assert edit.stats["push_off"] == {"kinds": stake, "rank": 8}
    projectors = {n: kept_feature_projector(w, sum(grams[g][n] for g in stake) / 3, grams["scene"][n], 8) for n, w in unedited.items()}
    want = balanced_rewrite(unedited, grams, sizes, gram_c, cross, **solve, push_projectors=projectors)
    plain = fia.erase(world, ["star"], cfg.replace(rewrite=dataclasses.replace(SMALL, push_off_rank=0)))
    for layer in edit.layers:
        assert torch.allclose(layer.row_values, want.weights[layer.name], atol=1e-6, rtol=1e-5), layer.name
        assert torch.allclose(plain.layer(layer.name).row_values, whole.weights[layer.name], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(layer.row_values, whole.weights[layer.name], atol=1e-4)
    # recorded only when set: an edit with the whole push reads back as one made before the setting existed
    assert edit.config["rewrite"]["push_off_rank"] == 8 and edit.config["rewrite"]["push_off_kinds"] == 3
    assert "push_off_rank" not in plain.config["rewrite"] and "push_off" not in plain.stats
    assert "push_off_kinds" not in _config(dataclasses.replace(SMALL, push_off_kinds=4)).to_dict()["rewrite"]


def test_push_off_settings_that_cannot_be_met_stop_before_any_sampler_pass(world, tiny_dir, monkeypatch):
    def no_pass(*_a, **_k):
        raise AssertionError("a sampler pass ran")

    monkeypatch.setattr(fia.rewrite, "group_grams", no_pass)
    with pytest.raises(FIAError, match="down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2 has only 64 outputs"):
        fia.erase(world, ["star"], _config(dataclasses.replace(SMALL, push_off_rank=65)))
    tiny = load_tiny(tiny_dir)
    object_task = FIARewriteConfig(task="object", num_inference_steps=3, rewrite=SMALL).validate()
    with pytest.raises(FIAError, match="needs kept prompts grouped by kind beside object-less scenes"):
        fia.erase(tiny, ["golf ball"], object_task)
    for bad in (-1, True, 2.0):
        message = f"rewrite.push_off_rank must be an integer >= 0, got {bad!r}; 0 for the whole push"
        with pytest.raises(FIAError, match=re.escape(message)):
            RewriteConfig(push_off_rank=bad).validate()
    with pytest.raises(FIAError, match="push_off_kinds must be a positive integer"):
        RewriteConfig(push_off_kinds=0).validate()
