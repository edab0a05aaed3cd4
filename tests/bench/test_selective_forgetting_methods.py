"""benchmarks/selective_forgetting.py: each lever method is the default with that one lever changed, and a misspelt method stops first."""

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import selective_forgetting  # noqa: E402  (a script beside its siblings, not a package)


def _differences(a, b) -> dict:
    """Field -> (a's, b's) wherever two configs differ, the rewrite block's fields named ``rewrite.<field>``."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    out = {k: (da[k], db[k]) for k in da if k != "rewrite" and da[k] != db[k]}
    for k in da.get("rewrite") or {}:
        if da["rewrite"][k] != db["rewrite"][k]:
            out[f"rewrite.{k}"] = (da["rewrite"][k], db["rewrite"][k])
    return out


@pytest.mark.parametrize(("method", "changed"), [
    ("rewrite-unanchored", {"rewrite.anchored_guidance": 0.0, "rewrite.anchored_below": None}),
    ("rewrite-anchored-all", {"rewrite.anchored_below": None}),
    ("rewrite-unbalanced", {"rewrite.balance_rounds": 0}),
    ("rewrite-12-steps", {"rewrite.steps": 12}),
    ("rewrite-push-off", {"rewrite.concept_weight": 0.05, "rewrite.push_off_rank": 8}),
])
def test_a_rewrite_lever_changes_only_its_own_settings(method, changed):
    default = selective_forgetting.config_for("default")
    assert default.rewrite.anchored_guidance == 1.0 and default.rewrite.anchored_below == 0.95  # what the levers undo
    diff = _differences(default, selective_forgetting.config_for(method))
    assert {k: new for k, (_, new) in diff.items()} == changed


def test_the_fixed_budget_is_the_causal_variant_without_its_stop():
    causal = selective_forgetting.config_for("causal")
    assert causal.stop_evidence is not None
    assert _differences(causal, selective_forgetting.config_for("causal-fixed-budget")) == {"stop_evidence": (causal.stop_evidence, None)}


def test_the_first_preset_has_no_anchoring():
    first = selective_forgetting.config_for("rewrite-scene").rewrite
    assert (first.concept_weight, first.concept_trajectory, first.negative_guidance, first.anchored_guidance) == (0.3, False, 0.0, 0.0)


def test_a_misspelt_method_stops_before_any_model_is_loaded(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["selective_forgetting.py", "--methods", "default,rewrite-unanchord"])
    monkeypatch.setattr(selective_forgetting, "load_pipeline", lambda **_: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match="unknown method 'rewrite-unanchord'"):
        selective_forgetting.main()


def test_the_kept_change_is_counted_image_by_image_over_the_kept_kinds_only():
    split = selective_forgetting.Split("tune", images=4, quality=5)
    _, _, truth = split.kinds()
    erased = ["star", "arrow"]
    base = {"oracle": [True] * len(truth), "judge2": [t != "bell" for t in truth]}  # judge2 never reads bell
    right = {name: list(v) for name, v in base.items()}
    lost = [i for i, t in enumerate(truth) if t == "cross"][:3]
    for i in lost:
        right["oracle"][i] = right["judge2"][i] = False
    for i, t in enumerate(truth):
        if t in erased:  # the erased kinds' images do not count
            right["oracle"][i] = right["judge2"][i] = False
        if t == "bell":
            right["judge2"][i] = True  # gained on judge2
    out = selective_forgetting.kept_change(right, base, split, erased)
    n = 4 * 30
    assert out["oracle"]["n"] == out["judge2"]["n"] == n
    assert (out["oracle"]["lost"], out["oracle"]["gained"]) == (3, 0)
    assert out["oracle"]["change"] == pytest.approx(-3 / n, abs=1e-6)
    assert (out["judge2"]["lost"], out["judge2"]["gained"]) == (3, 4)
    assert out["judge2"]["change"] == pytest.approx(1 / n, abs=1e-6)
    for figures in out.values():
        assert figures["low"] <= figures["change"] <= figures["high"]
    assert out["oracle"]["high"] < 0  # resampled within the kind, nearly every draw keeps some of cross's 3 losses
