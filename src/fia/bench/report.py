"""The benchmark's results as tables (Markdown), the F4 plot, and merging a partial re-run into earlier results."""

from __future__ import annotations

import io
import json
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fia.bench.intervals import unpack_hits, versus
from fia.bench.robustness import UNEDITED_ROW
from fia.bench.tasks import DEFAULT_FIA, KNOWN_METHODS, UPPER_BOUND
from fia.errors import FIAError
from fia.io import atomic_write_bytes


def fmt(v: Any) -> str:
    """A figure with three decimals, or a dash for a missing one."""
    return "  -  " if v is None else f"{v:.3f}"


def edited(v: Any) -> Any:
    """The edited model's value of a {base, edited} figure (or the figure itself)."""
    return v.get("edited") if isinstance(v, dict) else v


def ci(iv: dict[str, float] | None) -> str:
    """``0.123 [0.100, 0.150]`` from an interval dict, or a dash."""
    if not iv:
        return "  -  "
    return f"{iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def diff(d: dict[str, Any] | None) -> str:
    """A difference with its interval; bold when the interval excludes 0 (significant)."""
    if not d:
        return "  -  "
    text = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    return f"**{text}**" if d.get("significant") else text


def f4_points(r: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The tasks on F4's curve and their x: the F4-x tasks, T2 (x = 5: F4's first five kinds) and T1 (x = 10)."""
    points = {int(k.split("-")[1]): k for k in r if k.startswith("F4-")}
    if "T2" in r:
        points.setdefault(5, "T2")
    if "T1" in r:
        points.setdefault(10, "T1")
    xs = sorted(points)
    return [points[x] for x in xs], xs


def _label(m: str) -> str:
    if m == UPPER_BOUND:
        return "upper bound (uses the judge)"
    if m == DEFAULT_FIA:
        return f"{m} (default)"
    return m


class _Tables:
    """Builds the benchmark's Markdown, one method per table; :func:`markdown` calls them in order."""

    def __init__(self, res: dict[str, Any]):
        self.res = res
        self.methods = res["methods"]
        self.r = res["results"]
        self.judges = res.get("judges", ["oracle"])
        self.default = res.get("default_fia")
        self.rows = [None] + list(self.methods)  # None: the original model
        self.lines: list[str] = []

    # ------------------------------------------------------------- cells
    def row(self, cells: list[str]) -> None:
        self.lines.append("| " + " | ".join(cells) + " |")

    def header(self, title: str, cols: list[str]) -> None:
        self.lines.extend([f"**{title}**", ""])
        self.row(["method"] + cols)
        self.row(["---"] * (len(cols) + 1))

    def iv(self, task: str, m: str | None, key: str, judge: str = "oracle") -> dict | None:
        """The interval of ``key`` on ``task`` for method ``m`` (None: the original model)."""
        if m is None:
            return (self.res.get("base", {}).get(task, {}).get(judge, {}).get("intervals", {}) or {}).get(key)
        return (self.r[task].get(m, {}).get("intervals", {}).get(judge, {}) or {}).get(key)

    def vs(self, task: str, m: str | None, key: str, judge: str = "oracle") -> dict | None:
        """The paired difference of ``m`` from the default FIA."""
        return (self.r[task].get(m, {}).get("vs_default", {}).get(judge, {}) or {}).get(key)

    def vs_cells(self, task: str, m: str | None) -> list[str]:
        """One paired-difference cell per judge (blank for the original model and the default itself)."""
        return [diff(self.vs(task, m, "F", j)) if m not in (None, self.default) else "" for j in self.judges]

    def edited_value(self, task: str, m: str, key: str) -> Any:
        return edited(self.r[task][m]["headline"].get(key)) if m in self.r[task] else None

    def base_value(self, task: str, key: str) -> Any:
        first = next(iter(self.r[task].values()))
        v = first["headline"].get(key)
        return v.get("base") if isinstance(v, dict) else None

    def value(self, task: str, m: str | None, key: str) -> str:
        return fmt(self.base_value(task, key) if m is None else self.edited_value(task, m, key))

    def both(self, task: str, key: str, m: str | None) -> list[str]:
        return [ci(self.iv(task, m, key, j)) for j in self.judges]

    def quality(self, task: str, m: str | None) -> list[str]:
        return [self.value(task, m, k) for k in ("KID", "FID", "fidelity")]

    def jcols(self, name: str) -> list[str]:
        return [f"{name} ({j})" for j in self.judges]

    def table(self, title: str, cols: list[str], getter: Callable[[str | None], list[str]]) -> None:
        self.header(title, cols)
        for m in self.rows:
            if m is not None and m not in self.r[title.split(":")[0]]:
                continue
            self.row([_label(m) if m else "(original model)"] + getter(m))
        self.lines.append("")

    # ------------------------------------------------------------ tables
    def preamble(self) -> None:
        res = self.res
        self.lines = [f"Measured {res['date']} at commit `{res['commit']}`, model `{res.get('model', '?')}`"
                      + (" (--quick: harness smoke test, numbers meaningless)" if res["quick"] else "")
                      + f"; {res['images_generated']} images, {res['seconds_total'] / 60:.1f} min, {res['torch_threads']} threads.", ""]  # fmt: skip
        for r_ in res.get("remeasured", []):
            self.lines[-1:-1] = [f"Rows of {', '.join(r_['methods'])} re-measured {r_['date']} at commit `{r_['commit']}` ({r_['seconds'] / 60:.1f} min)."]

    def headline(self) -> None:
        """T1 mean forgetting and T2 Overall, both judges, differences from the default."""
        cols = []
        for judge in self.judges:
            cols += [f"T1 F ({judge})", f"vs default ({judge})"]
        for judge in self.judges:
            cols += [f"T2 Overall ({judge})", f"vs default ({judge})"]
        cols += ["T1 KID", "T2 KID"]
        self.header("Headline: held-out T1 forgetting accuracy (lower is better) and T2 Overall (higher is better), "
                    f"95 % intervals; differences from {self.default} are paired bootstraps, bold where the interval excludes 0", cols)  # fmt: skip
        for m in self.rows:
            cells = []
            for task, key in (("T1", "F"), ("T2", "Overall")):
                for judge in self.judges:
                    shown = m not in (None, self.default)
                    cells += [ci(self.iv(task, m, key, judge)), diff(self.vs(task, m, key, judge)) if shown else ""]
            cells += [self.value("T1", m, "KID"), self.value("T2", m, "KID")]
            self.row([_label(m) if m else "(original model)"] + cells)
        self.lines.append("")

    def t1(self) -> None:
        kept = len(self.res["kinds"]) - len(self.res["t1_forget"])
        self.table(f"T1: erase 10 kinds, 5 common and 5 rare ({', '.join(self.res['t1_forget'])}); forgetting accuracy F "
                   f"(lower is better), the {kept} kept kinds' accuracy P; quality on the kept kinds' images",
                   self.jcols("F") + self.jcols("P") + ["KID", "FID", "fidelity"],
                   lambda m: self.both("T1", "F", m) + self.both("T1", "P", m) + self.quality("T1", m))  # fmt: skip
        classes = list(self.res["t1_forget"])
        self.lines.extend(["**T1 per erased kind (forgetting accuracy, oracle)**", ""])
        self.row(["method"] + classes)
        self.row(["---"] * (len(classes) + 1))
        first = next(iter(self.r["T1"].values()))
        self.row(["(original model)"] + [fmt(first["headline"]["per_class"][c]["base"]) for c in classes])
        for m in self.methods:
            if m in self.r["T1"]:
                pc = self.r["T1"][m]["headline"]["per_class"]
                self.row([_label(m)] + [fmt(pc[c]["edited"]) for c in classes])
        self.lines.append("")

    def t2_to_t4(self) -> None:
        jcols, both, quality = self.jcols, self.both, self.quality
        kept = len(self.res["kinds"]) - len(self.res["t2_forget"])
        self.table(f"T2: erase {', '.join(self.res['t2_forget'])}, keep the other {kept}",
                   jcols("F") + jcols("P") + jcols("Overall") + jcols("synonym F") + ["KID", "FID", "fidelity"],
                   lambda m: both("T2", "F", m) + both("T2", "P", m) + both("T2", "Overall", m) + both("T2", "synonym", m)
                   + quality("T2", m))  # fmt: skip
        self.table("T3: erase all 5 styles (style accuracy lower is better; FSR higher is better)",
                   jcols("style acc.") + jcols("vs default") + ["FSR", "KID", "FID", "fidelity"],
                   lambda m: both("T3", "F", m) + self.vs_cells("T3", m)
                   + [fmt(None if m is None else self.edited_value("T3", m, "FSR"))] + quality("T3", m))  # fmt: skip
        self.table("T4: erase the attribute 'burning' (share of images where it is detected)",
                   jcols("detected") + jcols("vs default") + ["KID", "FID", "fidelity"],
                   lambda m: both("T4", "F", m) + self.vs_cells("T4", m) + quality("T4", m))  # fmt: skip

    def f4_and_t5(self) -> None:
        f4, xs = f4_points(self.r)
        rows = [None] + [m for m in self.methods if all(m in self.r[k] for k in f4)]
        order = ", ".join(self.res.get("f4_order", [])[: max(xs)])
        cost = self.res["costs"]

        def table(title: str, cell: Callable[[str, str | None], str]) -> None:
            self.header(title, [f"x={x}" for x in xs])
            for m in rows:
                self.row([_label(m) if m else "(original model)"] + [cell(k, m) for k in f4])
            self.lines.append("")

        for key, what in (("F", "forgetting accuracy F of the erased kinds"), ("P", "accuracy P on the kinds kept")):
            for j in self.judges:
                table(f"F4: {what} when erasing the first x kinds of {order} ({j}; x = 5 is T2, x = 10 is T1)",
                      lambda k, m, key=key, j=j: ci(self.iv(k, m, key, j)))  # fmt: skip
        table("F4: KID on the kept kinds' images (topped up with object-less ones to the quality count)",
              lambda k, m: self.value(k, m, "KID"))  # fmt: skip
        table("F4: seconds of the edit per erased concept",
              lambda k, m: "" if m is None else f"{cost[m][k]['seconds_per_concept']:.2f}")  # fmt: skip
        rob = self.res.get("robustness")
        if rob:
            self.header(f"T5: attack success rate of each probe after erasing {', '.join(rob['concepts'])} "
                        "(pooled over the concepts, 95 % Wilson intervals; lower is better)", rob["probes"])  # fmt: skip
            for m, entry in rob["rows"].items():
                self.row([_label(m)] + [ci(entry["asr"][p]) for p in rob["probes"]])
            self.lines.append("")

    def costs_and_tuning(self) -> None:
        res, r, lines = self.res, self.r, self.lines
        tasks = list(r)
        lines.extend(["**Cost of the edit: seconds (peak resident memory growth, MB)**", ""])
        self.row(["method"] + tasks)
        self.row(["---"] * (len(tasks) + 1))
        for m in self.methods:
            c = res["costs"][m]
            self.row([_label(m)] + [f"{c[t]['seconds']:.1f} ({c[t]['peak_rss_growth_mb']:.0f})" if t in c else "-" for t in tasks])
        lines.append("")
        if res.get("seconds_per_task"):
            lines.append("Seconds per task (all methods, generation and judging included): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds_per_task"].items())
                         + f"; tuning {res.get('seconds_tuning', 0):.0f}.")  # fmt: skip
            lines.append("")
        esd = [(k, r[k]["esd-x"]["edit"]["losses"]) for k in r if "esd-x" in r[k] and r[k]["esd-x"]["edit"].get("losses")]
        if esd:
            lines.append("ESD-x training loss, mean of the first and the last fifth of its steps: "
                         + ", ".join(f"{k} {np.mean(v[: max(1, len(v) // 5)]):.4f} -> {np.mean(v[-max(1, len(v) // 5):]):.4f}" for k, v in esd)
                         + " (every step's loss is in unlearning.json).")  # fmt: skip
            lines.append("")
        lines.extend(["**Tuning (T2 Overall on the tuning split; chosen value in bold)**", ""])
        for m, t in res["tuning"].items():
            parts = [(f"**{x[t['knob']]:g}**" if x[t["knob"]] == t["value"] else f"{x[t['knob']]:g}") + f": {fmt(x['overall'])}" for x in t["trials"]]
            lines.append(f"- {m} ({t['knob']}): " + ", ".join(parts))
        lines.append("")


def markdown(res: dict[str, Any]) -> str:
    """Every table of a benchmark run (headline with intervals first)."""
    tables = _Tables(res)
    tables.preamble()
    tables.headline()
    tables.t1()
    tables.t2_to_t4()
    tables.f4_and_t5()
    tables.costs_and_tuning()
    return "\n".join(tables.lines)


def plot_f4(res: dict[str, Any], path: Path) -> None:
    """F4's curves: forgetting, kept kinds, KID and seconds per concept against the number of kinds erased."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = res["results"]
    keys, xs = f4_points(r)
    panels = (("F", "forgetting accuracy F (lower is better)"), ("P", "kept kinds' accuracy P (higher is better)"),
              ("KID", "KID (lower is better)"), ("seconds", "seconds per concept"))  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))

    def series(m: str, key: str) -> list[float]:
        if key == "seconds":
            return [res["costs"][m][k]["seconds_per_concept"] for k in keys]
        return [np.nan if (v := edited(r[k][m]["headline"].get(key))) is None else v for k in keys]

    for m in res["methods"]:
        if not all(m in r[k] for k in keys):
            continue
        style = "-o" if m == res.get("default_fia") else ("--" if m == "random" else "-")
        for ax, (key, _) in zip(axes, panels):
            ax.plot(xs, series(m, key), style, label=_label(m))
    first = res["methods"][0]
    for ax, key in zip(axes[:3], ("F", "P", "KID")):
        ax.plot(xs, [r[k][first]["headline"][key]["base"] for k in keys], ":k", label="original model")
    n = len(res.get("kinds", [])) or "?"
    for ax, (key, label) in zip(axes, panels):
        ax.set(xlabel=f"kinds erased (x of {n})", ylabel=label)
        if key in ("F", "P"):
            ax.set_ylim(-0.02, 1.02)
    axes[-1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ShapeWorld 2 F4 ({res['date']}, {res['commit']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _versus_default(by_method: dict[str, Any], default: str, retake: Iterable[str], resamples: int) -> None:
    """Each method of ``retake``: its paired difference from ``default``, against the default's stored outcomes."""
    ref = by_method.get(default, {}).get("hits")
    for m in retake:
        entry = by_method[m]
        if m == default:
            entry.pop("vs_default", None)
        elif ref and entry.get("hits"):
            entry["vs_default"] = {
                judge: versus(unpack_hits(entry["hits"][judge]), unpack_hits(ref[judge]), resamples) for judge in ref
            }


def merge(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``previous`` with the methods of ``new`` re-measured in it.

    The base images are made again by the new run; with the same model,
    prompts and seeds they must give the same base figures, which is checked.
    When ``new`` names another default FIA than ``previous`` did, or
    re-measures the default itself, every row's paired difference is taken
    again against the default's new stored outcomes; otherwise only the
    re-measured rows'.
    """
    for task, by_method in new["results"].items():
        old_first = next(iter(previous["results"][task].values()))["headline"]
        new_first = next(iter(by_method.values()))["headline"]
        for key, v in new_first.items():
            if isinstance(v, dict) and "base" in v and v["base"] != old_first[key]["base"]:
                raise FIAError(
                    f"--merge: base figure {task}/{key} differs ({v['base']} vs {old_first[key]['base']}); "
                    "the model, prompts or seeds changed since that run: rerun every method"
                )
    out = json.loads(json.dumps(previous))
    default, resamples = new.get("default_fia", previous.get("default_fia")), previous.get("sizes", {}).get("bootstrap", 2000)
    # a new default (the run that measured it names another), or the default measured again, changes every
    # row's paired difference
    every_row = default != previous.get("default_fia") or default in new["methods"]
    out["default_fia"] = default
    for task, by_method in new["results"].items():
        out["results"][task].update(by_method)
    for task, by_method in out["results"].items():
        retake = by_method if every_row else new["results"].get(task, {})
        _versus_default(by_method, default, retake, resamples)
    # a method new to the run joins it in the benchmark's order
    out["methods"] = [m for m in KNOWN_METHODS if m in previous["methods"] or m in new["methods"]]
    out["results"] = {task: {m: by_method[m] for m in out["methods"] if m in by_method} for task, by_method in out["results"].items()}
    if "f4_methods" in previous:
        out["f4_methods"] = [m for m in out["methods"] if m in previous["f4_methods"] or m in new.get("f4_methods", ())]
    if new.get("robustness") and previous.get("robustness"):
        # the unedited model's row is the same in both runs (same model, prompts and seeds)
        rows = out["robustness"]["rows"]
        rows.update({m: v for m, v in new["robustness"]["rows"].items() if m in new["methods"]})
        out["robustness"]["rows"] = {UNEDITED_ROW: rows[UNEDITED_ROW], **{m: rows[m] for m in out["methods"] if m in rows}}
    for m in new["methods"]:
        out["costs"][m] = new["costs"][m]
        if m in new["tuning"]:
            out["tuning"][m] = new["tuning"][m]
    out.setdefault("remeasured", []).append(
        {"methods": new["methods"], "date": new["date"], "commit": new["commit"], "seconds": new["seconds_total"]}
    )
    return out
