"""The causal variant with the closed-form repair on a tiny random SD pipeline: one edit, deterministic, reversible."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fia
from fia.config import RepairConfig, config_for_variant
from fia.errors import FIAError
from fia.repair import collect_grams
from fia.targets import find_targets
from fia.tasks import task_of
from tests.helpers import load_tiny, tiny_causal_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

REPAIR = RepairConfig(keep_prompts_per_concept=2, concept_prompts_per_concept=2)


def _ffn2(pipe):
    return {t.name: t.module.weight.detach().clone() for t in find_targets(pipe.unet, "ffn2")}


def test_repaired_erase_is_one_reversible_deterministic_edit(tiny_dir, tmp_path):
    pipe = load_tiny(tiny_dir)
    before = _ffn2(pipe)
    cfg = tiny_causal_config(repair=REPAIR)
    mask = fia.erase(pipe, ["golf ball"], cfg)
    assert all(torch.equal(w, before[n]) for n, w in _ffn2(pipe).items())  # erase leaves the model as it was
    assert mask.repaired and mask.pruned > 0
    assert mask.config["repair"]["concept_weight"] == REPAIR.concept_weight
    # every rewritten row is a row with a pruned entry, and its pruned entries stay exactly zero
    for lm in mask.layers:
        dense = mask.to_dense(lm.name)
        if lm.rows is not None:
            assert dense[lm.rows].any(1).all()
            assert (lm.row_values[dense[lm.rows]] == 0).all()
            assert set(torch.nonzero(dense.any(1)).reshape(-1).tolist()) == set(lm.rows.tolist())
    # the same inputs give the same bytes
    assert fia.erase(pipe, ["golf ball"], cfg).to_bytes() == mask.to_bytes()
    path = mask.save(tmp_path / "mask.safetensors")
    mask.apply_(pipe)
    edited = _ffn2(pipe)
    assert any(not torch.equal(edited[n], before[n]) for n in before)
    fia.load_edit(path).restore_(pipe)  # a copy read from the file restores bit for bit
    assert all(torch.equal(w, before[n]) for n, w in _ffn2(pipe).items())


def test_repair_restores_kept_outputs_on_the_prompts_it_was_fitted_on(tiny_dir):
    """With lambda = 0 the repair is least squares on the kept inputs: their layer outputs move back towards the unedited ones."""
    pipe = load_tiny(tiny_dir)
    cfg = tiny_causal_config(repair=RepairConfig(concept_weight=0.0, damping=1e-6, keep_prompts_per_concept=2, concept_prompts_per_concept=2))
    mask = fia.erase(pipe, ["golf ball"], cfg)
    targets = find_targets(pipe.unet, "ffn2")
    rp = task_of(cfg).repair_prompts(["golf ball"], cfg.repair, anchors=cfg.anchors, seed=cfg.seed)
    gram = collect_grams(pipe, targets, rp.keep, rp.keep_seeds, rows="all", num_inference_steps=cfg.num_inference_steps,
                         guidance_scale=cfg.guidance_scale)
    before = _ffn2(pipe)
    for lm in mask.layers:
        if lm.rows is None:
            continue
        w = before[lm.name].double()
        masked = w.clone()
        masked[mask.to_dense(lm.name)] = 0
        repaired = masked.clone()
        repaired[lm.rows] = lm.row_values.double()
        g = gram[lm.name]
        err = lambda m: float(torch.einsum("ij,jk,ik->", m - w, g, m - w))  # noqa: E731 - mean squared output error
        assert err(repaired) <= err(masked) + 1e-12


def test_bad_repair_inputs_stop_before_any_work(tiny_dir):
    with pytest.raises(FIAError, match="both erased and an anchor"):
        fia.plan_erase(["golf ball"], tiny_causal_config(repair=REPAIR, anchors=["Golf Ball", "church"]))
    with pytest.raises(FIAError, match="repair follows the causal variant"):
        config_for_variant("paper", {"repair": REPAIR})
    with pytest.raises(FIAError, match="damping must be > 0"):
        tiny_causal_config(repair={"damping": 0.0})
    with pytest.raises(FIAError, match="unknown|not a field|repair"):
        tiny_causal_config(repair={"lambda": 1.0})


def test_adaptive_budget_stops_a_concept_whose_evidence_is_gone(tiny_dir):
    """A concept stops taking weights in the first round whose evidence is at most stop_evidence of its first round's."""
    pipe = load_tiny(tiny_dir)
    base = tiny_causal_config(rounds=4, budget=0.04)
    full = fia.erase(pipe, ["golf ball"], base)
    first = full.stats["evidence_per_round"][0]["golf ball"]
    later = [e["golf ball"] for e in full.stats["evidence_per_round"][1:]]
    assert full.stats["stopped"] == [] and len(later) == 3
    # a threshold just above the second round's evidence share stops it there: no weights from that round on
    share = min(1.0, later[0] / first + 1e-6) if first > 0 else 1.0
    if first <= 0 or later[0] > first:
        pytest.skip("this random model's evidence did not fall after one round")
    stopped = fia.erase(pipe, ["golf ball"], base.replace(stop_evidence=share))
    assert stopped.stats["stopped"] == ["golf ball"]
    assert [list(e) for e in stopped.stats["evidence_per_round"]] == [["golf ball"], ["golf ball"], [], []]
    assert stopped.pruned == full.stats["rounds"][0]["pruned"] < full.pruned
    assert stopped.config["stop_evidence"] == share and "stop_evidence" not in full.config


def test_shapeworld_preset_gives_each_variant_its_own_settings():
    from fia.cli import EraseFlags
    from fia.config import FIACausalConfig, FIAConfig, FIARewriteConfig, RewriteConfig
    from fia.presets import resolve_config

    def with_repair_options(cfg, repair, repair_weight):
        return EraseFlags(repair=repair, repair_weight=repair_weight).with_blocks(cfg)

    assert type(resolve_config("shapeworld", overrides={"world": "shapeworld2"})) is FIARewriteConfig  # the default
    causal = resolve_config("shapeworld", overrides={"world": "shapeworld2", "variant": "causal"})
    assert type(causal) is FIACausalConfig and causal.repair is not None and causal.stop_evidence == 0.2
    assert not hasattr(causal, "rewrite") and "rewrite" not in causal.to_dict()
    rewrite = resolve_config("shapeworld", overrides={"world": "shapeworld2", "variant": "rewrite"})
    assert type(rewrite) is FIARewriteConfig
    assert rewrite.rewrite == RewriteConfig(concept_weight=0.04, damping=0.03, balance_rounds=5, concept_trajectory=True, negative_guidance=1.0,
                                            anchored_guidance=1.0, anchored_below=0.95)
    assert "repair" not in rewrite.to_dict() and "stop_evidence" not in rewrite.to_dict()
    paper = resolve_config("shapeworld", overrides={"variant": "paper"})
    assert type(paper) is FIAConfig
    # a variant's settings do not follow another variant into its mask header
    for key in ("repair", "stop_evidence", "rewrite"):
        assert not hasattr(paper, key) and key not in paper.to_dict()
    assert with_repair_options(causal, False, None).repair is None
    assert with_repair_options(causal, None, 3.0).repair.concept_weight == 3.0
    assert with_repair_options(causal.replace(repair=None), True, None).repair == RepairConfig()
    with pytest.raises(FIAError, match="--no-repair"):
        with_repair_options(causal, False, 2.0)
    with pytest.raises(FIAError, match="repair follows the causal variant"):
        with_repair_options(paper, True, None)


def test_group_grams_in_shared_batches_equal_one_pass_per_group(tiny_dir):
    """Routing each sample's rows to its group gives each group's own Gram matrices."""
    from fia.repair import collect_group_grams

    pipe = load_tiny(tiny_dir)
    targets = find_targets(pipe.unet, "ffn2")
    prompts = ["a dog in a park", "a cat on a beach", "a dog on a beach", "a park", "a cat in a park"]
    groups = ["dog", "cat", "dog", "scene", "cat"]
    seeds = [11, 12, 13, 14, 15]
    shared = collect_group_grams(pipe, targets, prompts, seeds, groups, num_inference_steps=2, guidance_scale=3.0, batch_size=3)
    assert set(shared) == {"dog", "cat", "scene"}
    for g in shared:
        idx = [i for i, gi in enumerate(groups) if gi == g]
        alone = collect_grams(pipe, targets, [prompts[i] for i in idx], [seeds[i] for i in idx], rows="all",
                              num_inference_steps=2, guidance_scale=3.0)  # fmt: skip
        for name, gram in alone.items():
            torch.testing.assert_close(shared[g][name], gram, rtol=1e-5, atol=1e-7)


def test_balanced_repair_is_one_reversible_edit_that_records_its_rounds(tiny_dir, tmp_path):
    pipe = load_tiny(tiny_dir)
    cfg = tiny_causal_config(repair=RepairConfig(keep_prompts_per_concept=2, concept_prompts_per_concept=2, balance_rounds=2))
    mask = fia.erase(pipe, ["golf ball"], cfg, cache_dir=tmp_path)
    assert mask.repaired and mask.config["repair"]["balance_rounds"] == 2
    # a repair fitted after the last round is not part of the rounds: another repair reuses them
    plain = fia.erase(pipe, ["golf ball"], tiny_causal_config(repair=REPAIR), cache_dir=tmp_path)
    assert [r["cached"] for r in plain.stats["rounds"]] == [True, True]
    assert plain.to_bytes() == fia.erase(pipe, ["golf ball"], tiny_causal_config(repair=REPAIR)).to_bytes()
    assert "balance_rounds" not in plain.config["repair"]
    # the same pruning (the repair runs after the last round); only the repaired rows' values differ
    assert [lm.indices.tolist() for lm in mask.layers] == [lm.indices.tolist() for lm in plain.layers]
    before = _ffn2(pipe)
    with mask.applied(pipe):
        assert any(not torch.equal(w, before[n]) for n, w in _ffn2(pipe).items())
    assert all(torch.equal(w, before[n]) for n, w in _ffn2(pipe).items())
    assert fia.erase(pipe, ["golf ball"], cfg).to_bytes() == mask.to_bytes()


def test_the_statistics_pass_runs_at_repair_steps(tiny_dir):
    """repair.steps=k reads the same Gram matrices as a schedule of k steps does; an unset one, the schedule's."""
    from fia.repair import repair_grams

    pipe = load_tiny(tiny_dir)
    targets = find_targets(pipe.unet, "ffn2")
    cfg = tiny_causal_config(repair=REPAIR, num_inference_steps=4)
    at_steps = repair_grams(pipe, targets, ["golf ball"], cfg.replace(repair=dataclasses.replace(REPAIR, steps=2)))
    schedule = repair_grams(pipe, targets, ["golf ball"], cfg.replace(num_inference_steps=2))
    full = repair_grams(pipe, targets, ["golf ball"], cfg)
    for name in at_steps.keep:
        assert torch.equal(at_steps.keep[name], schedule.keep[name]) and torch.equal(at_steps.concept[name], schedule.concept[name])
        assert not torch.equal(at_steps.keep[name], full.keep[name])
    with pytest.raises(FIAError, match="repair.steps must be a positive integer"):
        dataclasses.replace(REPAIR, steps=0).validate()
