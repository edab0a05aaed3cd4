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
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "unlearning.py"


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


@pytest.mark.slow
def test_the_script_is_a_thin_entry_point_of_fia_bench(tmp_path):
    """benchmarks/unlearning.py runs ``fia bench``: its bad input gets fia's one-line error and exit 2."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "fia,nope", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unknown methods ['nope']" in done.stderr and "fia-union" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _assets_present(), reason="ShapeWorld assets not installed")
def test_quick_run_writes_every_table(bench_module, tmp_path):
    out = tmp_path / "results"
    bench_module.run_and_write(out, quick=True, threads=2, log=lambda msg: None)
    res = json.loads((out / "unlearning.json").read_text())
    methods = list(bench_module.METHOD_ORDER)
    assert res["methods"] == methods and res["quick"] is True
    assert res["judges"] == ["oracle", "judge2"] and len(res["model"]) == 16
    tasks = ["T1", "T2", "T3", "T4"] + [f"F4-{x}" for x in bench_module.QUICK.f4_sizes]
    assert list(res["results"]) == tasks
    upper, default = bench_module.UPPER_BOUND, bench_module.DEFAULT_FIA

    def fraction(v):
        return v is None or 0.0 <= v <= 1.0

    for task in tasks:
        # the upper bound only where the judge can guide it, the control on the object tables, F4's own points on its methods
        measured = [m for m in methods if (m != upper or task == "T2") and (m != "random" or task in ("T1", "T2"))]
        if task.startswith("F4-"):
            measured = [m for m in measured if m in bench_module.F4_METHODS]
        assert list(res["results"][task]) == measured
        first = None
        for m in measured:
            entry = res["results"][task][m]
            h = entry["headline"]
            assert entry["edit"]["seconds"] > 0
            for key, v in h.items():
                if key in ("FID", "KID", "per_class"):
                    continue
                values = v.values() if isinstance(v, dict) else [v]
                assert all(fraction(x) for x in values), (task, m, key, v)
            # the base images are shared: every method sees the same base figures
            base = {k: v.get("base") for k, v in h.items() if isinstance(v, dict) and "base" in v}
            first = first or base
            assert base == first, (task, m)
            # both judges read every image; every rate has its interval around it
            for judge in res["judges"]:
                ivs = entry["intervals"][judge]
                assert "F" in ivs and all(iv["low"] <= iv["value"] <= iv["high"] for iv in ivs.values()), (task, m, judge)
                judged = entry["judges"][judge]["headline"]
                rate = judged.get("F", judged.get("detected"))  # T4's forgetting figure is the detected share
                assert ivs["F"]["value"] == pytest.approx(rate["edited"]), (task, m, judge)
                if m != default:
                    for d in entry["vs_default"][judge].values():
                        assert d["low"] <= d["value"] <= d["high"] and d["significant"] == (d["low"] > 0 or d["high"] < 0)
            assert "KID" in h and "FID" in h, (task, m)
            cost = res["costs"][m][task]
            assert cost["seconds_per_concept"] == pytest.approx(cost["seconds"] / len(entry["metrics"]["forget"]), abs=0.01)
        assert default not in {m for m in measured if "vs_default" in res["results"][task][m]}
        if "random" in measured:
            # the control prunes exactly as many weights per layer as the causal variant: same share
            ref, rnd = res["results"][task][bench_module.CAUSAL_FIA]["edit"], res["results"][task]["random"]["edit"]
            assert rnd["pruned_share"] == pytest.approx(ref["pruned_share"], abs=0) and ref["pruned_share"] > 0
    # T5: every probe against the unedited model (the ceiling) and every attacked method's edit
    rob = res["robustness"]
    from fia.attack import probe_names

    assert rob["probes"] == probe_names() and "revival" in rob["probes"]
    attacked = [m for m in bench_module.T5_METHODS if m in methods]
    assert list(rob["rows"])[1:] == attacked and len(rob["rows"]) == len(attacked) + 1
    for entry in rob["rows"].values():
        for probe in rob["probes"]:
            asr = entry["asr"][probe]
            assert asr["attempts"] > 0 and asr["value"] == asr["successes"] / asr["attempts"]
            assert asr["low"] <= asr["value"] <= asr["high"] and set(asr["per_concept"]) == set(rob["concepts"])
    assert "T5:" in (out / "unlearning.md").read_text()
    t1 = res["results"]["T1"]["fia"]["headline"]
    t1_metrics = res["results"]["T1"]["fia"]["metrics"]
    assert set(t1["per_class"]) == set(t1_metrics["forget"]) | set(t1_metrics["preserve"]) == set(res["kinds"])
    for method, t in res["tuning"].items():
        knob, candidates = bench_module.TUNING[method]
        assert t["knob"] == knob and t["value"] in candidates[: bench_module.QUICK.candidates]
        assert len(t["trials"]) == bench_module.QUICK.candidates
    md = (out / "unlearning.md").read_text()
    for title in ("Headline:", "T1:", "T2:", "T3:", "T4:", "F4:", "Cost of the edit", "Tuning"):
        assert title in md
    for m in methods:
        assert f"| {m}" in md or "upper bound (uses the judge)" in md
    # the benchmark runs on the default world, every kind judged; paths are the repository's
    assert res["world"] == "shapeworld2" and len(res["kinds"]) == 32 and not Path(res["model_path"]).is_absolute()
    with Image.open(out / "f4_forgetting.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    _check_merge(bench_module, res)
    _check_wiring(bench_module, res, tmp_path)


def new_tasks(res):
    """The tasks ESD-x is measured on (not F4's own points)."""
    return [t for t, by_method in res["results"].items() if "esd-x" in by_method]


def _check_merge(bench_module, res):
    """Re-measuring one method into a run recomputes its difference from the default from the stored outcomes."""
    import copy

    previous = copy.deepcopy(res)
    for task in new_tasks(res):
        del previous["results"][task]["esd-x"]["vs_default"]
    new = copy.deepcopy(res)
    new["methods"] = ["esd-x"]
    new["results"] = {t: {"esd-x": copy.deepcopy(by_method["esd-x"])} for t, by_method in res["results"].items() if "esd-x" in by_method}
    new["costs"] = {"esd-x": res["costs"]["esd-x"]}
    new["tuning"] = {"esd-x": res["tuning"]["esd-x"]}
    new["robustness"]["rows"] = {k: v for k, v in res["robustness"]["rows"].items() if k == "esd-x"}
    merged = bench_module.merge(previous, new)
    for task in new_tasks(res):
        assert merged["results"][task]["esd-x"]["vs_default"] == res["results"][task]["esd-x"]["vs_default"], task
    assert merged["robustness"]["rows"] == res["robustness"]["rows"]
    assert merged["remeasured"][-1]["methods"] == ["esd-x"]
    _check_merge_of_a_new_default(bench_module, res)
    _check_merge_of_the_default_measured_again(bench_module, res)


def _default_rows_only(bench_module, res):
    """``res`` as a run that measured the default alone."""
    import copy

    default = bench_module.DEFAULT_FIA
    new = copy.deepcopy(res)
    new["methods"], new["f4_methods"] = [default], [default]
    new["results"] = {t: {default: copy.deepcopy(by_method[default])} for t, by_method in res["results"].items()}
    new["costs"] = {default: res["costs"][default]}
    new["robustness"]["rows"] = {k: v for k, v in res["robustness"]["rows"].items() if k == default}
    return new


def _assert_differences_as_in(merged, res):
    """Every row's paired difference from the default is the one of the run that measured everything."""
    for task, by_method in res["results"].items():
        for m, entry in by_method.items():
            assert merged["results"][task][m].get("vs_default") == entry.get("vs_default"), (task, m)


def _check_merge_of_the_default_measured_again(bench_module, res):
    """Re-measuring the default itself (same name) takes every other row's difference again, against its new outcomes."""
    import copy

    default = bench_module.DEFAULT_FIA
    previous = copy.deepcopy(res)
    for by_method in previous["results"].values():
        for entry in by_method.values():
            if "vs_default" in entry:
                entry["vs_default"] = {"oracle": "taken against the default's earlier outcomes"}
    merged = bench_module.merge(previous, _default_rows_only(bench_module, res))
    _assert_differences_as_in(merged, res)


def _check_merge_of_a_new_default(bench_module, res):
    """A run measured before the default existed, merged with the default's rows: every row's difference
    is taken again against the new default, and the merged run reads as the run that measured everything."""
    import copy

    default, causal = bench_module.DEFAULT_FIA, bench_module.CAUSAL_FIA
    previous = copy.deepcopy(res)
    previous["default_fia"], previous["methods"] = causal, [m for m in res["methods"] if m != default]
    previous["f4_methods"] = [m for m in res["f4_methods"] if m != default]
    for by_method in previous["results"].values():
        del by_method[default]
        for entry in by_method.values():
            entry.pop("vs_default", None)
        if causal in by_method:  # the old run's differences were taken against the causal variant
            by_method[causal]["vs_default"] = {"oracle": "stale"}
    del previous["costs"][default], previous["robustness"]["rows"][default]
    merged = bench_module.merge(previous, _default_rows_only(bench_module, res))
    assert merged["default_fia"] == default and merged["methods"] == res["methods"] and merged["f4_methods"] == res["f4_methods"]
    assert list(merged["robustness"]["rows"]) == list(res["robustness"]["rows"])
    for task, by_method in res["results"].items():
        assert list(merged["results"][task]) == list(by_method), task
    _assert_differences_as_in(merged, res)
    # the same tables as the run that measured everything, with one line saying which rows came later
    lines = bench_module.markdown(merged).split("\n")
    later = [line for line in lines if line.startswith(f"Rows of {default} re-measured")]
    assert len(later) == 1
    assert [line for line in lines if line not in later][1:] == bench_module.markdown(res).split("\n")[1:]


def _check_wiring(bench_module, res, tmp_path):
    """Assertions that fail when a method or a task is wired wrongly, whatever the figures."""
    r = res["results"]
    causal = bench_module.CAUSAL_FIA
    pruning = [m for m in res["methods"] if r["T2"][m]["edit"].get("pruned_share")]
    assert {"fia", causal, "random", "conceptprune", bench_module.UPPER_BOUND} <= set(pruning)
    assert r["T2"][bench_module.DEFAULT_FIA]["edit"]["pruned_share"] == 0  # the rewrite prunes nothing
    for task, by_method in r.items():
        ref = by_method[causal]["headline"]
        # every method edits the judged model: an edit that never reached it would leave
        # the FID (a continuous function of every pixel) exactly at the base figure
        for m, entry in by_method.items():
            fid = entry["headline"]["FID"]
            assert fid["edited"] != fid["base"], (task, m, fid)
        # the control prunes other weights than the causal variant's mask (same counts, so only the figures tell)
        if "random" in by_method:
            assert by_method["random"]["headline"]["FID"]["edited"] != ref["FID"]["edited"], task
    # tasks get their own concepts: one concept in T4 and F4-1, ten in T1, five in T2
    assert len(r["T4"]["fia"]["metrics"]["forget"]) == 1 and len(r["F4-1"]["fia"]["metrics"]["forget"]) == 1
    assert len(r["T1"]["fia"]["metrics"]["forget"]) == 10 and len(r["T2"]["fia"]["metrics"]["forget"]) == 5
    assert r["T2"][causal]["edit"]["pruned_share"] != r["T1"][causal]["edit"]["pruned_share"]
    # the base figures are the unedited model's: measure the unedited model itself as a "method"
    # that edits nothing, on T1's prompts and seeds (whose unedited images T1 drew itself, as the
    # first object task); every figure equals the base. F4-1 drew none of its own: its kinds'
    # unedited images are T1's, and the null edit on its items gives its base figures too.
    sizes = bench_module.QUICK
    bench = bench_module.Bench(sizes, tmp_path / "work", lambda msg: None)
    for key in ("T1", "F4-1"):
        task = next(t for t in bench_module.tasks_for(sizes) if t.key == key)
        suites = bench.suites(task, bench_module.HELDOUT_SEED, bench_module.HELDOUT_SHIFT)
        bench.base_records((task.key,), suites["oracle"].items)
        # the null edit: nothing is applied
        metrics, _ = bench.measure(suites, (task.key,))
        unedited = bench_module.headline(task, metrics["oracle"])
        reported = r[key]["fia"]["headline"]
        assert unedited["F"]["edited"] == unedited["F"]["base"] == reported["F"]["base"]
        for k, v in unedited.items():
            if k != "per_class":
                assert v["edited"] == v["base"] == reported[k]["base"], (key, k)
    assert bench.images_generated == 3 * 32  # T1's base (F4-1 draws none: they are T1's) and both null edits
