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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """The rate ``successes / trials`` with its Wilson score interval."""
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
