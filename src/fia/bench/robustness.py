"""T5: the robustness audit inside the benchmark: attack every method's edit with every probe.

Each method erases ``T5_FORGET`` (two kinds and a style; ``--quick``: a kind and the style) with its tuned
setting; :func:`fia.attack.run_attack` then tries to bring each concept back
with every probe of ``fia attack``, judged by the oracle. The unedited model is attacked
too: its attack success rate is the ceiling. A probe's ASR is pooled over
the concepts (successes / attempts, with a Wilson interval).
"""

from __future__ import annotations

import time
from typing import Any

from fia.bench.tasks import T5_METHODS, Task
from fia.evaluate.stats import wilson

UNEDITED_ROW = "(unedited model: the ceiling)"


def _pooled(result: Any, probes: list[str], concepts: list[str], target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for probe in probes:
        rows = [result.get(probe, c, target) for c in concepts]
        k, n = sum(r.successes for r in rows), sum(r.attempts for r in rows)
        out[probe] = {
            **wilson(k, n).to_dict(),
            "successes": k,
            "attempts": n,
            "per_concept": {c: r.asr.to_dict() for c, r in zip(concepts, rows)},
        }
    return out


def run_t5(bench: Any, order: list[str], chosen: dict[str, Any], log) -> dict[str, Any]:
    """ASR of every probe against the unedited model and every T5 method's edit."""
    from fia.attack import EDITED, UNEDITED, AttackConfig, ShapeWorldConceptJudge, probe_names, run_attack

    t0 = time.time()
    sizes = bench.sizes
    concepts = list(sizes.t5_forget)
    sampler = {"num_inference_steps": bench.settings.num_inference_steps, "guidance_scale": bench.settings.guidance_scale}
    if sizes.attack_quick:
        config = AttackConfig.quick(**{**sampler, **(sizes.attack or {})})
    else:
        config = AttackConfig(**{**sampler, **(sizes.attack or {})}).validate()
    judge = ShapeWorldConceptJudge(bench.oracle)
    probes = probe_names()
    task = Task("T5", "mixed", "mixed", concepts, 1, keep_roles=())
    log(f"T5: attack {', '.join(concepts)} with {', '.join(probes)}")
    rows: dict[str, Any] = {}
    ceiling = run_attack(bench.pipe, None, concepts, probes, config, judge=judge)
    rows[UNEDITED_ROW] = {"asr": _pooled(ceiling, probes, concepts, UNEDITED)}
    for method in [m for m in T5_METHODS if m in order]:
        edit, info = bench.make_edit(method, chosen.get(method, {}).get("value"), task, {})
        t_attack = time.time()
        result = run_attack(bench.pipe, edit, concepts, probes, config, judge=judge)
        info["attack_seconds"] = round(time.time() - t_attack, 1)
        rows[method] = {"asr": _pooled(result, probes, concepts, EDITED), "edit": {k: v for k, v in info.items() if k != "losses"}}
        log(f"  {method:13s} " + "  ".join(f"{p} {rows[method]['asr'][p]['value']:.2f}" for p in probes)
            + f"  ({info['seconds']:.0f}s edit, {info['attack_seconds']:.0f}s attack)")  # fmt: skip
    return {"concepts": concepts, "probes": probes, "config": config.to_dict(), "rows": rows,
            "seconds": round(time.time() - t0, 1)}  # fmt: skip
