"""Intervals for the figures we report: Wilson for a rate, a paired bootstrap for a difference of rates.

A rate ``k / n`` (forgetting accuracy, attack success rate, ...) gets the
Wilson score interval (Wilson 1927), which stays inside [0, 1] and behaves
at ``k = 0`` and ``k = n``, unlike the normal approximation::

    center = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

A difference between two methods judged on the same prompts and seeds gets
a paired bootstrap: the items (prompt, seed) are resampled with
replacement, the same draw for both methods, and the difference of the means
is recomputed each time; the interval is the 2.5 and 97.5 percentiles. A
difference whose interval excludes 0 is called significant.

:func:`metric_intervals` gives every rate of a suite's metrics its interval,
from the image counts the metrics hold (see its docstring); ``metrics.json``
and the HTML report carry them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % interval."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def wilson(successes: float, trials: int, z: float = Z95) -> Interval:
    """The rate ``successes / trials`` with its Wilson score interval.

    ``successes`` is a count, or the sum of ``trials`` scores in [0, 1] (a
    mean score such as prompt fidelity): a score in [0, 1] with mean p has a
    variance of at most p (1 - p), so the interval is then conservative.
    """
    if trials < 1:
        raise ValueError(f"a rate needs at least one trial, got {trials}")
    if not (0 <= successes <= trials):
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    center = (p + z2 / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # the interval always holds p; at k = 0 or k = n rounding could put an end a hair inside it
    return Interval(p, min(p, max(0.0, center - half)), max(p, min(1.0, center + half)))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    statistic: Callable[..., float] | None = None,
    *,
    strata: Sequence[object] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """``statistic(a, b)`` (default: mean(a) - mean(b)) over paired items, with a bootstrap 95 % interval.

    ``a[i]`` and ``b[i]`` must come from the same item (prompt and seed);
    every resample draws the same items for both. With ``strata`` (a label
    per item, e.g. "forget" / "preserve") items are resampled within their
    stratum, so every resample keeps the strata's sizes, and ``statistic`` is
    called as ``statistic(a, b, strata)`` (e.g. Overall from F and P).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired samples must be two non-empty lists of the same length, got {x.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    if strata is None:
        stat = statistic or (lambda u, v: float(u.mean() - v.mean()))
        idx = rng.integers(0, len(x), size=(resamples, len(x)))
        draws = np.array([stat(x[i], y[i]) for i in idx])
        point = stat(x, y)
    else:
        labels = np.asarray(strata)
        if labels.shape != x.shape:
            raise ValueError(f"strata must give one label per item, got {labels.shape} for {x.shape}")
        if statistic is None:
            raise ValueError("a stratified bootstrap needs statistic(a, b, strata)")
        groups = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
        draws = []
        for _ in range(resamples):
            i = np.concatenate([g[rng.integers(0, len(g), size=len(g))] for g in groups])
            draws.append(statistic(x[i], y[i], labels[i]))
        draws = np.array(draws)
        point = statistic(x, y, labels)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(float(point), float(low), float(high))


# ------------------------------------------------------------ a suite's rates
# rates in a suite's "summary" pooled from its per-concept figures:
# summary key -> (per-concept key, the concepts' role, the per-concept figure)
_POOLED = {
    "forget_accuracy": ("per_class", "forget", "accuracy"),
    "preserve_accuracy": ("per_class", "preserve", "accuracy"),
    "fsr": ("per_class", "forget", "fsr"),
    "fsr_preserve": ("per_class", "preserve", "fsr"),
    "fsr_clip": ("per_class", "forget", "clip_fsr"),
    "fsr_clip_preserve": ("per_class", "preserve", "clip_fsr"),
}
_VARIANTS = ("base", "edited")


def _rate(value: Any, n: Any, count: bool = True) -> dict[str, float] | None:
    """``value`` (a share of ``n`` images) with its Wilson interval and ``n``; None when there is none."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not isinstance(n, int) or n < 1:
        return None
    if not 0.0 <= value <= 1.0:
        return None
    k = round(value * n) if count else value * n
    return {**wilson(k, n).to_dict(), "value": float(value), "n": n}


def _figures(rec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A per-concept record's rates, per variant: accuracy (base/edited), FSR and the CLIP's (edited only)."""
    out: dict[str, dict[str, Any]] = {"accuracy": {v: rec.get(v) for v in _VARIANTS if v in rec}}
    if isinstance(rec.get("clip_accuracy"), Mapping):
        out["clip_accuracy"] = dict(rec["clip_accuracy"])
    for key in ("fsr", "clip_fsr"):
        if rec.get(key) is not None:
            out[key] = {"edited": rec[key]}
    return out


def _pooled(
    per: Mapping[str, Mapping[str, Any]], role: str, figure: str, stated: Mapping[str, Any] | Any
) -> dict[str, dict[str, float]]:
    """The Wilson interval of the rate pooled over the concepts of ``role``, per variant.

    The suites' summary rate is the mean of the concepts' rates; pooled over
    their images it is the same number when every concept has as many
    images (as in every suite here). Where it would differ, no interval is
    given rather than one around another number.
    """
    recs = [r for r in per.values() if r.get("role") == role and isinstance(r.get("n"), int)]
    stated = stated if isinstance(stated, Mapping) else {"edited": stated}
    out: dict[str, dict[str, float]] = {}
    for v, value in stated.items():
        vals = [_figures(r).get(figure, {}).get(v) for r in recs]
        if not recs or value is None or any(x is None for x in vals):
            continue
        n = sum(r["n"] for r in recs)
        k = sum(round(x * r["n"]) for x, r in zip(vals, recs))
        if abs(k / n - float(value)) > 1e-9:
            continue
        iv = _rate(float(value), n)
        if iv is not None:
            out[v] = iv
    return out


def _overall(per: Mapping[str, Mapping[str, Any]], variant: str, resamples: int, seed: int) -> dict[str, float] | None:
    """Overall from the pooled forget and preserve accuracies, with a bootstrap interval (images resampled within each)."""
    from fia.evaluate.metrics import overall

    hits: dict[str, list[float]] = {"forget": [], "preserve": []}
    for rec in per.values():
        value, n = rec.get(variant), rec.get("n")
        if rec.get("role") not in hits or not isinstance(n, int) or not isinstance(value, (int, float)):
            return None
        k = round(value * n)
        hits[rec["role"]] += [1.0] * k + [0.0] * (n - k)
    if not hits["forget"] or not hits["preserve"]:
        return None
    x = np.asarray(hits["forget"] + hits["preserve"])
    strata = np.array(["forget"] * len(hits["forget"]) + ["preserve"] * len(hits["preserve"]))

    def stat(a: np.ndarray, _b: np.ndarray, s: np.ndarray) -> float:
        return float(overall(a[s == "preserve"].mean(), a[s == "forget"].mean()))

    iv = paired_bootstrap(x, x, stat, strata=strata, resamples=resamples, seed=seed)
    return {**iv.to_dict(), "n": len(x)}


def metric_intervals(metrics: Mapping[str, Any], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """A 95 % interval for every rate in a suite's ``metrics``, each with its image count ``n``.

    Returns ``{"summary": {key: {variant: iv}}, "quality": {...}, "per_concept":
    {concept: {figure: {variant: iv}}}}`` where ``iv`` is ``{"value", "low",
    "high", "n"}``. Rates of images (accuracy, FSR, detected and flagged
    shares, accuracy on synonyms) get the Wilson interval of their count;
    summary rates are pooled over their concepts' images; prompt fidelity
    (the mean share of a prompt's factors the judge sees, per image) gets the
    Wilson interval over its images, which is conservative for a mean of
    scores in [0, 1]; Overall, a function of two rates, gets a bootstrap
    interval (:func:`paired_bootstrap`, images resampled within the erased and
    the kept groups). Figures that are no rates (CLIP score, FID, KID) get none.
    """
    per_key = next((k for k in ("per_class", "per_artist") if isinstance(metrics.get(k), Mapping)), None)
    per: Mapping[str, Mapping[str, Any]] = metrics.get(per_key, {}) if per_key else {}
    summary = metrics.get("summary", {}) or {}
    quality = metrics.get("quality", {}) or {}
    out: dict[str, Any] = {"summary": {}, "quality": {}, "per_concept": {}}

    for concept, rec in per.items():
        n = rec.get("n")
        figs = {}
        for figure, values in _figures(rec).items():
            ivs = {v: iv for v, x in values.items() if (iv := _rate(x, n)) is not None}
            if ivs:
                figs[figure] = ivs
        if figs:
            out["per_concept"][concept] = figs

    def put(section: dict[str, Any], key: str, ivs: Mapping[str, Any]) -> None:
        ivs = {v: iv for v, iv in ivs.items() if iv is not None}
        if ivs:
            section[key] = ivs

    for key, (_, role, figure) in _POOLED.items():
        if key in summary and per:
            put(out["summary"], key, _pooled(per, role, figure, summary[key]))
    if "overall" in summary and per:
        put(out["summary"], "overall", {v: _overall(per, v, resamples, seed) for v in _VARIANTS})
    synonyms = metrics.get("synonyms")
    if "synonym_accuracy" in summary and isinstance(synonyms, Mapping):
        recs = {w: {**r, "role": "synonym"} for w, r in synonyms.items()}
        put(out["summary"], "synonym_accuracy", _pooled(recs, "synonym", "accuracy", summary["synonym_accuracy"]))
    # shares of images: each over the image count it was taken on
    for key, n in (("detected_share", summary.get("n_images")), ("detected_share_non_target", quality.get("n_images")),
                   ("flagged_share", metrics.get("n_items"))):  # fmt: skip
        if isinstance(summary.get(key), Mapping):
            put(out["summary"], key, {v: _rate(x, n) for v, x in summary[key].items()})
    if isinstance(quality.get("prompt_fidelity"), Mapping):
        n = quality.get("n_images")
        put(out["quality"], "prompt_fidelity",
            {v: _rate(x, n, count=False) for v, x in quality["prompt_fidelity"].items()})  # fmt: skip
    return out
