"""The side-by-side benchmark on the default world, ShapeWorld 2's 32 kinds: FIA against ConceptPrune, UCE, SPEED, ESD-x, its ablations and a random control.

Every method edits the same shipped ShapeWorld 2 pipeline, is judged by
both judges (the oracle and the independently trained second judge) on the
same prompts and seeds, and starts from the pristine weights (each edit is
undone with ``Edit.restore_``). Tasks (the paper's section 9 tables, rebuilt
on the 32 kinds; :mod:`fia.bench.tasks`):

- T1  erase 10 kinds, 5 common and 5 rare: per-kind forgetting, kept kinds,
      quality (KID, FID, prompt fidelity) on the 22 kept kinds' images;
- T2  erase 5, keep 27: F, P, Overall = 2P(1-F)/(P+1-F), synonyms;
- T3  erase all 5 styles (FIA alpha 0.8): style accuracy, FSR, quality;
- T4  erase the attribute ("burning"): detection share, quality;
- F4  erase the first x kinds of one fixed order, x = 1, 2, 5 (T2), 10 (T1),
      20, 25: forgetting, kept kinds, KID and seconds per concept for the
      training-free multi-concept editors (PNG plot);
- T5  erase star, arrow and a style, then attack each method's edit with
      every probe of ``fia attack``: attack success rate per probe, against
      the unedited model's (the ceiling);
- seconds (also per concept) and peak memory (resident set growth) of each edit.

Fair comparison: each method starts from its paper's settings scaled to
ShapeWorld and gets the same tuning budget (``TUNING``: the same number of
candidate settings of its main knob), scored by T2's Overall on a tuning
split of prompts and seeds; every table is then measured on the held-out
split, at least 32 images per kind, style and attribute, with Wilson
intervals and paired bootstraps against the default. The random control
prunes, per layer, as many weights as FIA's mask for the same task, chosen
uniformly at random.

Run it with ``fia bench [--quick] [--out DIR]`` (or
``python benchmarks/unlearning.py``). ``--quick`` runs every stage on a few
images (a smoke test of the harness, not of the numbers). Results:
``OUT/unlearning.json``, ``OUT/unlearning.md`` and ``OUT/f4_forgetting.png``.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fia.bench.harness import JUDGES, Bench, headline, tune
from fia.bench.intervals import intervals, outcomes, pack_hits, versus
from fia.bench.report import edited as edited_value
from fia.bench.report import fmt, markdown, merge, plot_f4
from fia.bench.robustness import run_t5
from fia.bench.tasks import (
    CAUSAL_FIA,
    DEFAULT_FIA,
    F4_METHODS,
    F4_ORDER,
    HELDOUT_SEED,
    HELDOUT_SHIFT,
    KINDS,
    KNOWN_METHODS,
    METHOD_ORDER,
    QUICK,
    T1_FORGET,
    T2_FORGET,
    T5_FORGET,
    T5_METHODS,
    TUNING,
    UPPER_BOUND,
    WORLD,
    Sizes,
    Task,
    build_task_suite,
    tasks_for,
)
from fia.errors import FIAError
from fia.io import atomic_write_text

__all__ = [
    "CAUSAL_FIA",
    "DEFAULT_FIA",
    "HELDOUT_SEED",
    "HELDOUT_SHIFT",
    "METHOD_ORDER",
    "QUICK",
    "T5_FORGET",
    "T5_METHODS",
    "TUNING",
    "UPPER_BOUND",
    "Bench",
    "Sizes",
    "Task",
    "build_task_suite",
    "headline",
    "run",
    "run_and_write",
    "tasks_for",
]


def git_commit() -> str:
    """The checkout's short commit, or ``unknown`` outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"



def _relative_to_repository(path) -> str:
    """``path`` relative to the repository root when it lies inside it (results hold no machine paths)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def _measure_method(bench: Bench, method: str, setting: Any, task: Any, suites: dict, masks: dict, log) -> tuple[dict, dict]:
    """One method on one task, both judges: its result entry and its per-image outcomes by judge."""
    metrics, edited, info = bench.judge_method(method, setting, task, suites, (task.key,), masks)
    hits = {judge: outcomes(suites[judge], edited[judge]) for judge in JUDGES}
    entry = {
        "headline": headline(task, metrics["oracle"]),
        "judges": {judge: {"headline": headline(task, metrics[judge])} for judge in JUDGES},
        "intervals": {judge: intervals(hits[judge], bench.sizes.bootstrap) for judge in JUDGES},
        "hits": {judge: pack_hits(hits[judge]) for judge in JUDGES},
        "metrics": _jsonable(metrics["oracle"]),
        "edit": info,
    }
    log(f"  {method:13s} " + "  ".join(f"{k} {fmt(edited_value(v))}" for k, v in entry["headline"].items() if k != "per_class")
        + f"  ({info['seconds']:.1f}s)")  # fmt: skip
    return entry, hits


def methods_for(task: Task, order: Sequence[str]) -> list[str]:
    """The methods measured on ``task``: the upper bound where the judge can guide it, the random control on
    the object tables (T1, T2), F4's own points on its curve's methods."""
    out = [m for m in order if (m != UPPER_BOUND or task.upper_bound) and (m != "random" or task.random_control)]
    return [m for m in out if m in F4_METHODS] if task.curve_point else out


def _measure_task(bench: Bench, task: Task, order: Sequence[str], chosen: dict, masks: dict, log) -> tuple[dict, dict, dict]:
    """Every method of ``task`` on the held-out split: (results by method, base intervals, costs by method)."""
    sizes = bench.sizes
    suites = bench.suites(task, HELDOUT_SEED, HELDOUT_SHIFT)
    items = suites["oracle"].items
    log(f"{task.key}: forget {', '.join(task.forget)} ({len(items)} images per model)")
    base_records = bench.base_records((task.key,), items)
    base = {judge: {"intervals": intervals(outcomes(suites[judge], base_records[judge]), sizes.bootstrap)} for judge in JUDGES}
    results: dict[str, Any] = {}
    hits: dict[str, dict[str, Any]] = {}
    costs: dict[str, Any] = {}
    for method in methods_for(task, order):
        setting = chosen.get(method, {}).get("value")
        results[method], hits[method] = _measure_method(bench, method, setting, task, suites, masks, log)
        info = results[method]["edit"]
        costs[method] = {"seconds": round(info["seconds"], 2), "seconds_per_concept": round(info["seconds"] / len(task.forget), 2),
                         "peak_rss_growth_mb": round(info["peak_rss_growth_mb"], 1)}  # fmt: skip
    if DEFAULT_FIA in hits:
        for method, by_judge in hits.items():
            if method != DEFAULT_FIA:
                results[method]["vs_default"] = {
                    judge: versus(by_judge[judge], hits[DEFAULT_FIA][judge], sizes.bootstrap) for judge in JUDGES
                }
    return results, base, costs


def run(sizes: Sizes, methods: Sequence[str], work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Tune, then measure every task for every method with both judges; returns the results as a JSON-ready dict."""
    t_start = time.time()
    order = [m for m in KNOWN_METHODS if m in methods]
    if "random" in order and CAUSAL_FIA not in order:
        raise FIAError(f"the random control copies the per-layer counts of {CAUSAL_FIA}: keep it in --methods")
    bench = Bench(sizes, work, log)
    log(f"tuning ({sizes.candidates} candidates per method, T2 Overall on the tuning split)")
    chosen = tune(bench, order, log)
    t_tuned = time.time()
    results: dict[str, dict[str, Any]] = {}
    costs: dict[str, dict[str, Any]] = {m: {} for m in order}
    base: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    task_seconds: dict[str, float] = {}
    for task in tasks_for(sizes):
        t_task = time.time()
        results[task.key], base[task.key], task_costs = _measure_task(bench, task, order, chosen, masks, log)
        for method, cost in task_costs.items():
            costs[method][task.key] = cost
        task_seconds[task.key] = round(time.time() - t_task, 1)
    robustness = run_t5(bench, order, chosen, log)
    task_seconds["T5"] = robustness["seconds"]
    import torch

    from fia.shapeworld import pipeline_path
    from fia.targets import denoiser

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "world": WORLD.name,
        "model": model_hash(bench.pipe),
        "model_path": _relative_to_repository(pipeline_path(WORLD.name)),
        "quick": sizes == QUICK,
        "sizes": sizes.__dict__ | {"f4_sizes": list(sizes.f4_sizes)},
        "torch_threads": torch.get_num_threads(),
        "seconds_total": round(time.time() - t_start, 1),
        "seconds_tuning": round(t_tuned - t_start, 1),
        "seconds_per_task": task_seconds,
        "images_generated": bench.images_generated,
        "tuning": chosen,
        "default_fia": DEFAULT_FIA,
        "judges": list(JUDGES),
        "base": base,
        "results": results,
        "robustness": robustness,
        "costs": costs,
        "kinds": list(KINDS),
        "t1_forget": list(T1_FORGET),
        "t2_forget": list(T2_FORGET),
        "f4_order": list(F4_ORDER),
        "f4_methods": [m for m in F4_METHODS if m in order],
        "methods": order,
        "denoiser_parameters": sum(p.numel() for p in denoiser(bench.pipe).parameters()),
    }


def model_hash(pipe: Any) -> str:
    """sha256 (first 16 hex digits) over the denoiser's exact weights: which model the figures are of.

    Not :func:`fia.mask.fingerprint_weights`, which rounds to float16 so that
    a mask fits both precisions of a model; here every bit counts.
    """
    import hashlib

    from fia.targets import denoiser

    h = hashlib.sha256()
    for name, t in sorted(denoiser(pipe).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _jsonable(m: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in m.items() if not k.startswith("_")}, default=float))


def check_methods(methods: Sequence[str]) -> list[str]:
    """The benchmark's methods among ``methods``, or a clear error naming the unknown ones."""
    out = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in out if m not in KNOWN_METHODS]
    if unknown:
        raise FIAError(f"unknown methods {unknown}; use some of: {', '.join(KNOWN_METHODS)}")
    if not out:
        raise FIAError(f"no methods given; use some of: {', '.join(KNOWN_METHODS)}")
    return out


def run_and_write(
    out: Path,
    *,
    quick: bool = False,
    methods: Sequence[str] = METHOD_ORDER,
    work: Path | None = None,
    threads: int = 2,
    merge_with: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Check the inputs, run the benchmark, write ``OUT/unlearning.{json,md}`` and ``OUT/f4_forgetting.png``."""
    import torch

    methods = check_methods(methods)
    if out.exists() and not out.is_dir():
        raise FIAError(f"--out {str(out)!r} is a file; pass a folder")
    previous = None
    if merge_with is not None:
        if not Path(merge_with).is_file():
            raise FIAError(f"--merge {str(merge_with)!r} does not exist; pass an earlier unlearning.json")
        previous = json.loads(Path(merge_with).read_text())
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="fia-bench-") as tmp:
        res = run(QUICK if quick else Sizes(), methods, Path(work) if work else Path(tmp), log)
    if previous is not None:
        res = merge(previous, res)
    # the figures first: a failure while formatting must not lose the run
    atomic_write_text(out / "unlearning.json", json.dumps(res, indent=1, default=float))
    atomic_write_text(out / "unlearning.md", markdown(res))
    plot_f4(res, out / "f4_forgetting.png")
    log(f"done in {res['seconds_total'] / 60:.1f} min; wrote {out / 'unlearning.md'}, unlearning.json, f4_forgetting.png")
    return res
