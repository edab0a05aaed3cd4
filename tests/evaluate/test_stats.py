"""Wilson intervals and the paired bootstrap, against hand-computed values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fia.evaluate.stats import paired_bootstrap, wilson


def test_wilson_matches_hand_computed_values():
    # 8 of 10, z = 1.96: center (0.8 + 0.19208) / 1.38416 = 0.716752..., half-width 0.2235...
    iv = wilson(8, 10, z=1.96)
    z2 = 1.96**2
    center = (0.8 + z2 / 20) / (1 + z2 / 10)
    half = 1.96 / (1 + z2 / 10) * math.sqrt(0.8 * 0.2 / 10 + z2 / 400)
    assert iv.value == 0.8
    assert iv.low == pytest.approx(center - half) and iv.high == pytest.approx(center + half)
    assert iv.low == pytest.approx(0.4902, abs=1e-4) and iv.high == pytest.approx(0.9433, abs=1e-4)
    # the edges stay inside [0, 1] and are not degenerate
    zero, full = wilson(0, 32), wilson(32, 32)
    assert zero.low == 0 and 0 < zero.high < 0.15 and full.high == 1 and 0.85 < full.low < 1
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_wilson_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, n = 0.3, 40
    hits = sum(wilson(int(k), n).low <= p <= wilson(int(k), n).high for k in rng.binomial(n, p, size=4000))
    assert 0.93 < hits / 4000 < 0.975


def test_paired_bootstrap_sees_a_paired_difference_an_unpaired_test_would_miss():
    rng = np.random.default_rng(1)
    item = rng.normal(size=60)  # large per-item variation, shared by both methods
    a = item + 0.3
    b = item
    iv = paired_bootstrap(a, b)
    assert iv.value == pytest.approx(0.3) and iv.low == pytest.approx(0.3) and iv.high == pytest.approx(0.3)
    assert iv.excludes_zero
    same = paired_bootstrap(item, item + rng.normal(scale=0.01, size=60) - 0.0)
    assert not same.excludes_zero or abs(same.value) < 0.01
    # binary outcomes: the interval brackets the observed difference
    x = rng.random(64) < 0.7
    y = rng.random(64) < 0.2
    d = paired_bootstrap(x, y, seed=3)
    assert d.low <= d.value <= d.high and d.excludes_zero
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])



def test_metric_intervals_of_a_suite():
    """Every rate of a suite's metrics gets its interval, pooled over its concepts' images."""
    from fia.evaluate.stats import metric_intervals

    metrics = {
        "per_class": {
            "circle": {"role": "forget", "n": 8, "base": 1.0, "edited": 0.125},
            "square": {"role": "forget", "n": 8, "base": 1.0, "edited": 0.0},
            "star": {"role": "preserve", "n": 8, "base": 1.0, "edited": 0.75, "clip_score": {"base": 80.0, "edited": 70.0}},
        },
        "summary": {
            "forget_accuracy": {"base": 1.0, "edited": 0.0625},
            "preserve_accuracy": {"base": 1.0, "edited": 0.75},
            "overall": {"base": 0.0, "edited": 0.8276},
            "synonym_accuracy": {"base": 1.0, "edited": 0.5},
        },
        "synonyms": {"circle": {"n": 4, "base": 1.0, "edited": 0.5}, "square": {"n": 4, "base": 1.0, "edited": 0.5}},
        "quality": {"n_images": 10, "prompt_fidelity": {"base": 1.0, "edited": 0.9}, "clip_score": {"base": 80.0, "edited": 79.0}},
    }
    iv = metric_intervals(metrics, resamples=500)
    f = iv["summary"]["forget_accuracy"]["edited"]
    assert (f["n"], f["low"], f["high"]) == (16, wilson(1, 16).low, wilson(1, 16).high)
    assert iv["summary"]["synonym_accuracy"]["edited"]["n"] == 8
    assert iv["per_concept"]["star"]["accuracy"]["edited"]["low"] == wilson(6, 8).low
    o = iv["summary"]["overall"]["edited"]
    assert o["low"] <= o["value"] <= o["high"] and o["high"] - o["low"] > 0.05
    fid = iv["quality"]["prompt_fidelity"]["edited"]
    assert fid["n"] == 10 and fid["low"] == pytest.approx(wilson(9, 10).low)  # a mean score: its sum as successes
    assert "clip_score" not in iv["quality"] and set(iv["per_concept"]["star"]) == {"accuracy"}  # no rates, no intervals
    # a summary that is no pooled rate of its concepts gets no interval rather than a wrong one
    metrics["summary"]["forget_accuracy"]["edited"] = 0.5
    assert "edited" not in _summary_interval(metrics, "forget_accuracy")


def _summary_interval(metrics, key):
    from fia.evaluate.stats import metric_intervals

    return metric_intervals(metrics, resamples=10)["summary"].get(key, {})
