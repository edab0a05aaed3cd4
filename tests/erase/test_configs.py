"""Typed configs: one frozen type per FIA variant, dispatch on the type, the recorded settings, the layering."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

import fia
from fia.baselines import UCEConfig
from fia.concepts import parse_concepts
from fia.config import (
    FIACausalConfig,
    FIAConfig,
    FIARewriteConfig,
    RepairConfig,
    RewriteConfig,
    config_for_variant,
    config_from_record,
    recorded_settings,
)
from fia.errors import FIAError

# the settings dict a mask of the single config type of format v1 recorded, written out by hand:
# every variant's fields, the ones a variant does not read at their defaults
V1_PAPER_OBJECT = {
    "task": "object", "r1": 0.05, "r2": 0.01, "alpha": 0.6, "r1_overrides": {}, "r2_overrides": {},
    "saliency_steps": 10, "num_inference_steps": 50, "guidance_scale": 7.5, "seed": 0, "batch_size": None,
    "saliency": "energy", "cfg_rows": "cond", "targets": "ffn2", "eps": 1e-8, "selection": "both", "fusion": "fia",
    "world": "shapeworld", "variant": "paper", "budget": 0.0075, "rounds": 8, "anchor_weight": 2.0,
    "score_steps": 10, "contrasts": 3, "concept_prompts_per_concept": 24, "anchor_prompts": 48,
    "evidence_timesteps": [0.3, 0.5, 0.7], "anchors": [],
}  # fmt: skip


def test_every_variant_records_the_settings_layout_of_format_v1():
    assert recorded_settings(FIAConfig()) == V1_PAPER_OBJECT
    causal = FIACausalConfig(task="shapeworld", world="shapeworld2", budget=0.02, repair=True, stop_evidence=0.2)
    want = V1_PAPER_OBJECT | {
        "task": "shapeworld", "world": "shapeworld2", "variant": "causal", "budget": 0.02, "stop_evidence": 0.2,
        "num_inference_steps": 25, "guidance_scale": 5.0,
        # the v1 repair block: balance_rounds joined later and is recorded only when it is not 0
        "repair": {"concept_weight": 1.0, "damping": 0.01, "keep_prompts_per_concept": 4,
                   "concept_prompts_per_concept": 12, "every_round": False},
    }  # fmt: skip
    assert causal.to_dict() == want
    balanced = causal.replace(repair=RepairConfig(balance_rounds=6))
    assert balanced.to_dict()["repair"] == want["repair"] | {"balance_rounds": 6}
    # rescore_anchors and repair.steps joined later too: recorded only off their old behaviour
    quick = causal.replace(rescore_anchors=False, repair=RepairConfig(steps=10))
    assert quick.to_dict() == want | {"rescore_anchors": False, "repair": want["repair"] | {"steps": 10}}
    rewrite = FIARewriteConfig(anchors=["dog"])
    # rewrite.steps and the push's projection joined later: recorded only when set
    later = ("steps", "push_off_rank", "push_off_kinds")
    block = {k: v for k, v in RewriteConfig().to_dict().items() if k not in later}
    assert rewrite.to_dict() == V1_PAPER_OBJECT | {"variant": "rewrite", "anchors": ["dog"], "rewrite": block}
    assert rewrite.replace(rewrite=RewriteConfig(steps=12)).to_dict()["rewrite"] == block | {"steps": 12}
    assert rewrite.replace(rewrite=RewriteConfig(push_off_rank=8)).to_dict()["rewrite"] == block | {"push_off_rank": 8}
    json.dumps(causal.to_dict())  # JSON-ready, as a mask header stores it


@pytest.mark.parametrize("config", [
    FIAConfig(task="style", r2=0.02, r2_overrides={"Van Gogh": 0.03}, alpha=0.8),
    FIACausalConfig(task="object", anchors=["dog"], evidence_timesteps=[0.5], repair={"concept_weight": 2.0}),
    FIACausalConfig(task="shapeworld", repair={"balance_rounds": 6}),
    FIARewriteConfig(task="shapeworld", world="shapeworld", rewrite={"balance_rounds": 1}),
], ids=["paper", "causal", "causal-balanced", "rewrite"])  # fmt: skip
def test_a_record_reads_back_as_the_config_that_made_it(config):
    back = config_from_record(json.loads(json.dumps(config.to_dict())))
    assert type(back) is type(config) and back == config


def test_an_old_record_and_a_record_without_variant_read_back():
    assert config_from_record(V1_PAPER_OBJECT) == FIAConfig()
    assert config_from_record({"task": "style", "r2": 0.02}) == FIAConfig(task="style", r2=0.02)
    causal = config_from_record(V1_PAPER_OBJECT | {"variant": "causal", "rounds": 2})
    assert type(causal) is FIACausalConfig and causal.rounds == 2
    # the paper's knobs of any record, as the cache and the report read them
    assert FIAConfig.from_run(V1_PAPER_OBJECT | {"variant": "causal", "r2": 0.5}).r2 == 0.5
    with pytest.raises(FIAError, match="unknown variant 'magic'"):
        config_from_record({"variant": "magic"})


def test_configs_are_frozen_and_refuse_another_variants_settings():
    cfg = FIAConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.r2 = 0.5  # type: ignore[misc]
    assert cfg.replace(r2=0.5).r2 == 0.5 and cfg.r2 == 0.01
    with pytest.raises(FIAError, match="budget is no setting of the paper variant"):
        cfg.replace(budget=0.1)
    with pytest.raises(FIAError, match="repair follows the causal variant"):
        FIARewriteConfig().replace(repair=RepairConfig())
    with pytest.raises(FIAError, match="rewrite settings belong to --variant rewrite"):
        config_for_variant("paper", {"rewrite": {"damping": 0.1}})
    # a preset names every variant's settings: another variant's plain settings are left out
    paper = config_for_variant("paper", {"budget": 0.1, "r2": 0.02})
    assert type(paper) is FIAConfig and paper.r2 == 0.02
    with pytest.raises(FIAError, match="unknown setting"):
        config_for_variant("causal", {"r3": 1})


def test_erase_picks_the_implementation_from_the_configs_type(monkeypatch):
    import fia.registry as registry

    seen = []

    def fake(kind):
        def run(pipe, plan, found, *, target_kind, cache, progress, workers):
            seen.append((kind, type(plan.config)))
            return kind

        return run

    monkeypatch.setattr(registry, "ERASERS", {cls: fake(cls.VARIANT) for cls in (FIAConfig, FIACausalConfig, FIARewriteConfig)})
    monkeypatch.setattr(registry, "find_targets", lambda *a, **k: [])
    monkeypatch.setattr(registry, "denoiser", lambda pipe: None)
    for cls in (FIAConfig, FIACausalConfig, FIARewriteConfig):
        assert fia.erase(object(), ["dog"], cls()) == cls.VARIANT

    class Tuned(FIACausalConfig):  # a subclass runs its parent's implementation
        pass

    assert fia.erase(object(), ["dog"], Tuned()) == "causal"
    with pytest.raises(FIAError, match="fia.erase takes the settings of an FIA variant"):
        fia.erase(object(), ["dog"], UCEConfig())


def test_the_registry_is_imported_only_by_the_entry_points_and_settings_never_import_the_toy_world():
    code = (
        "import sys\n"
        "import fia.config, fia.prompts, fia.tasks, fia.presets, fia.concepts, fia.defaults\n"
        "assert not [m for m in sys.modules if m.startswith('fia.shapeworld')], 'the settings import the toy world'\n"
        "import fia.paper, fia.causal, fia.rewrite, fia.plan, fia.baselines\n"
        "assert 'fia.registry' not in sys.modules and 'fia.engine' not in sys.modules and 'fia.methods' not in sys.modules\n"
        "import fia.methods\n"
        "assert 'fia.registry' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_one_concept_parser_refuses_blanks_everywhere():
    assert parse_concepts("a, b") == ["a", "b"]
    assert parse_concepts(None, required=False) == parse_concepts("", required=False) == parse_concepts([], required=False) == []
    for bad in ("a,,b", "a, ", ["a", " "]):
        with pytest.raises(FIAError, match="empty concept name"):
            parse_concepts(bad, required=False)
    with pytest.raises(FIAError, match="no concepts given"):
        parse_concepts([])
    from fia.evaluate.suites.real import artists_suite

    with pytest.raises(FIAError, match="empty concept name"):
        artists_suite(None, None, forget="Van Gogh,, Monet")
