"""Per-item outcomes of a judged task, their intervals, and each method's difference from the default FIA.

Every rate (F, P, burning detected) gets a Wilson 95 % interval over its
images; Overall = 2P(1-F) / (P + 1-F) gets a bootstrap interval (images
resampled within the forget and preserve groups). A method's difference from
the default FIA is a paired bootstrap over the same prompts and seeds
(:func:`fia.evaluate.stats.paired_bootstrap`); it is *significant* when its
95 % interval excludes 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fia.evaluate.stats import paired_bootstrap, wilson


def outcomes(suite: Any, records: dict[str, dict]) -> dict[str, np.ndarray]:
    """Per role, one 0/1 per item of ``suite``: does the judge see the item's concept in its image?

    Objects and styles: the judge's object (style) is the item's concept;
    the attribute: the judge sees an erased attribute.
    """
    head = {"shapeworld-objects": "object", "shapeworld-styles": "style", "shapeworld-attribute": "attribute"}[suite.name]
    out: dict[str, list[float]] = {}
    for it in suite.items:
        if it.role == "quality":
            continue
        pred = records[it.id]["pred"][head]
        hit = pred in suite.forget if head == "attribute" else pred == it.group
        out.setdefault(it.role, []).append(float(hit))
    return {role: np.asarray(v) for role, v in out.items()}


def pack_hits(hits: dict[str, np.ndarray]) -> dict[str, str]:
    """Per role, the 0/1 outcomes as a string of digits (kept in the results so a later run can be compared)."""
    return {role: "".join(str(int(v)) for v in x) for role, x in hits.items()}


def unpack_hits(packed: dict[str, str]) -> dict[str, np.ndarray]:
    """The inverse of :func:`pack_hits`."""
    return {role: np.array([float(c) for c in digits]) for role, digits in packed.items()}


def overall(f: float, p: float) -> float:
    """Overall = 2 P (1 - F) / (P + 1 - F), 0 when both P and 1 - F are 0."""
    d = p + 1 - f
    return 2 * p * (1 - f) / d if d > 0 else 0.0


def _overall_of(x: np.ndarray, strata: np.ndarray) -> float:
    return overall(float(x[strata == "forget"].mean()), float(x[strata == "preserve"].mean()))


def intervals(hits: dict[str, np.ndarray], resamples: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Wilson intervals of the rates and a bootstrap interval of Overall (when there are kept concepts)."""
    out: dict[str, dict[str, float]] = {}
    for role, key in (("forget", "F"), ("preserve", "P"), ("synonym", "synonym")):
        if role in hits and len(hits[role]):
            out[key] = wilson(int(hits[role].sum()), len(hits[role])).to_dict()
    if "forget" in hits and "preserve" in hits:
        x, strata = _stack(hits)
        iv = paired_bootstrap(x, x, lambda a, _b, s: _overall_of(a, s), strata=strata, resamples=resamples, seed=seed)
        out["Overall"] = iv.to_dict()
    return out


def _stack(hits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([hits["forget"], hits["preserve"]])
    strata = np.array(["forget"] * len(hits["forget"]) + ["preserve"] * len(hits["preserve"]))
    return x, strata


def versus(hits: dict[str, np.ndarray], ref: dict[str, np.ndarray], resamples: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Method minus reference on the same items: F (forget), and Overall when there are kept concepts."""
    out: dict[str, dict[str, Any]] = {}
    if "forget" in hits:
        iv = paired_bootstrap(hits["forget"], ref["forget"], resamples=resamples, seed=seed)
        out["F"] = {**iv.to_dict(), "significant": iv.excludes_zero}
    if "forget" in hits and "preserve" in hits:
        x, strata = _stack(hits)
        y, _ = _stack(ref)
        iv = paired_bootstrap(x, y, lambda a, b, s: _overall_of(a, s) - _overall_of(b, s), strata=strata,
                              resamples=resamples, seed=seed)  # fmt: skip
        out["Overall"] = {**iv.to_dict(), "significant": iv.excludes_zero}
    return out
