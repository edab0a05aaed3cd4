"""The side-by-side benchmark harness, end to end in its --quick mode.

This checks the harness (every method on every task, tuning, tables, plot,
the random control's per-layer counts) and its wiring (base figures are the
unedited model's, every method's edit reaches the judged model, the control
is not FIA's own mask, tasks get their own concepts), not the figures:
--quick judges a handful of images.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "unlearning.py"


def _assets_present() -> bool:
    try:
        from fia.shapeworld import assets_path

        return (assets_path() / "pipeline" / "model_index.json").is_file()
    except Exception:
        return False


@pytest.fixture(scope="module")
def bench_module():
    import fia.bench

    return fia.bench


def test_the_script_is_a_thin_entry_point_of_fia_bench(tmp_path):
    """benchmarks/unlearning.py runs ``fia bench``: its bad input gets fia's one-line error and exit 2."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "fia,nope", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unknown methods ['nope']" in done.stderr and "fia-union" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not _assets_present(), reason="ShapeWorld assets not installed")
def test_quick_run_writes_every_table(bench_module, tmp_path):
    out = tmp_path / "results"
    bench_module.run_and_write(out, quick=True, threads=1, log=lambda msg: None)
    res = json.loads((out / "unlearning.json").read_text())
    methods = list(bench_module.METHOD_ORDER)
    assert res["methods"] == methods and res["quick"] is True
    tasks = ["T1", "T2", "T3", "T4"] + [f"F4-{x}" for x in bench_module.QUICK.f4_sizes]
    assert list(res["results"]) == tasks

    def fraction(v):
        return v is None or 0.0 <= v <= 1.0

    for task in tasks:
        first = None
        for m in methods:
            entry = res["results"][task][m]
            h = entry["headline"]
            assert entry["edit"]["seconds"] > 0
            for key, v in h.items():
                if key in ("FID", "per_class"):
                    continue
                values = v.values() if isinstance(v, dict) else [v]
                assert all(fraction(x) for x in values), (task, m, key, v)
            # the base images are shared: every method sees the same base figures
            base = {k: v.get("base") for k, v in h.items() if isinstance(v, dict) and "base" in v}
            first = first or base
            assert base == first, (task, m)
        # the control prunes exactly as many weights per layer as FIA: same share
        fia, rnd = res["results"][task]["fia"]["edit"], res["results"][task]["random"]["edit"]
        assert rnd["pruned_share"] == pytest.approx(fia["pruned_share"], abs=0) and fia["pruned_share"] > 0
    t1 = res["results"]["T1"]["fia"]["headline"]
    assert set(t1["per_class"]) == set(res["results"]["T1"]["fia"]["metrics"]["forget"])
    for method, t in res["tuning"].items():
        knob, candidates = bench_module.TUNING[method]
        assert t["knob"] == knob and t["value"] in candidates[: bench_module.QUICK.candidates]
        assert len(t["trials"]) == bench_module.QUICK.candidates
    md = (out / "unlearning.md").read_text()
    for title in ("T1:", "T2:", "T3:", "T4:", "F4:", "Cost of the edit", "Tuning"):
        assert title in md
    for m in methods:
        assert f"| {m} |" in md
    with Image.open(out / "f4_forgetting.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    _check_wiring(bench_module, res, tmp_path)


def _check_wiring(bench_module, res, tmp_path):
    """Assertions that fail when a method or a task is wired wrongly, whatever the figures."""
    r = res["results"]
    pruning = [m for m in res["methods"] if "pruned_share" in r["T1"][m]["edit"]]
    assert {"fia", "random", "conceptprune"} <= set(pruning)
    for task, by_method in r.items():
        fia = by_method["fia"]["headline"]
        if "FID" not in fia:  # F4 judges forgetting and keeping only
            continue
        # every method edits the judged model: an edit that never reached it would leave
        # the FID (a continuous function of every pixel) exactly at the base figure
        for m, entry in by_method.items():
            fid = entry["headline"]["FID"]
            assert fid["edited"] != fid["base"], (task, m, fid)
        # the control prunes other weights than FIA's mask (same counts, so only the figures tell)
        assert by_method["random"]["headline"]["FID"]["edited"] != fia["FID"]["edited"], task
    # a single concept: FIA's tau_ca >= 2 prunes its whole mask, which is what union fusion prunes
    for task in ("T4", "F4-1"):
        assert len(r[task]["fia"]["metrics"]["forget"]) == 1
        assert r[task]["fia-union"]["edit"]["pruned_share"] == r[task]["fia"]["edit"]["pruned_share"] > 0, task
    # T1 and F4-10 erase the same ten objects with the same settings: every pruning method makes the
    # same edit for both; a task handed another task's concepts would not
    assert r["T1"]["fia"]["metrics"]["forget"] == r["F4-10"]["fia"]["metrics"]["forget"]
    for m in pruning:
        assert r["T1"][m]["edit"]["pruned_share"] == r["F4-10"][m]["edit"]["pruned_share"], m
    assert r["T2"]["fia"]["edit"]["pruned_share"] != r["T1"]["fia"]["edit"]["pruned_share"]
    # the base figures are the unedited model's: measure the unedited model itself as a "method"
    # that edits nothing, on F4-1's prompts and seeds; every figure equals the base
    sizes = bench_module.QUICK
    bench = bench_module.Bench(sizes, tmp_path / "work", lambda msg: None)
    task = next(t for t in bench_module.tasks_for(sizes) if t.key == "F4-1")
    suite = bench_module.build_task_suite(
        task, bench.judge, bench.oracle, sizes.images_per_prompt, bench_module.HELDOUT_SEED, bench_module.HELDOUT_SHIFT
    )
    bench.base_records((task.key,), suite)
    # the null edit: nothing is applied
    unedited = bench_module.headline(task, bench.measure(suite, (task.key,)))
    reported = r["F4-1"]["fia"]["headline"]
    assert unedited["F"]["edited"] == unedited["F"]["base"] == reported["F"]["base"]
    for key, v in unedited.items():
        assert v["edited"] == v["base"] == reported[key]["base"], key
