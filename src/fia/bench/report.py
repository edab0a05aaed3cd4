"""The benchmark's results as tables (Markdown), the F4 plot, and merging a partial re-run into earlier results."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from fia.errors import FIAError
from fia.io import atomic_write_bytes
from fia.shapeworld.vocab import OBJECT_NAMES


def fmt(v: Any) -> str:
    """A figure with three decimals, or a dash for a missing one."""
    return "  -  " if v is None else f"{v:.3f}"


def edited(v: Any) -> Any:
    """The edited model's value of a {base, edited} figure (or the figure itself)."""
    return v.get("edited") if isinstance(v, dict) else v


def markdown(res: dict[str, Any]) -> str:
    methods = res["methods"]
    r = res["results"]
    lines = [f"Measured {res['date']} at commit `{res['commit']}`" + (" (--quick: harness smoke test, numbers meaningless)" if res["quick"] else "")
             + f"; {res['images_generated']} images, {res['seconds_total'] / 60:.1f} min, {res['torch_threads']} threads.", ""]  # fmt: skip
    for r_ in res.get("remeasured", []):
        lines[-1:-1] = [f"Rows of {', '.join(r_['methods'])} re-measured {r_['date']} at commit `{r_['commit']}` ({r_['seconds'] / 60:.1f} min)."]

    def row(cells):
        lines.append("| " + " | ".join(cells) + " |")

    def table(title, cols, getter, base_getter=None):
        lines.extend([f"**{title}**", ""])
        row(["method"] + cols)
        row(["---"] * (len(cols) + 1))
        if base_getter is not None:
            row(["(original model)"] + [fmt(x) for x in base_getter()])
        for m in methods:
            row([m] + [fmt(x) for x in getter(m)])
        lines.append("")

    def e(task, m, key):
        return edited(r[task][m]["headline"].get(key)) if m in r[task] else None

    def b(task, key):
        first = next(iter(r[task].values()))
        v = first["headline"].get(key)
        return v.get("base") if isinstance(v, dict) else None

    t1 = "T1: erase all 10 objects (forgetting accuracy, lower is better; quality on object-less prompts)"
    table(t1, ["F (mean)", "FID", "fidelity"], lambda m: [e("T1", m, "F"), e("T1", m, "FID"), e("T1", m, "fidelity")],
          lambda: [b("T1", "F"), b("T1", "FID"), b("T1", "fidelity")])  # fmt: skip
    # per-class T1
    classes = list(OBJECT_NAMES)
    lines.extend(["**T1 per class (forgetting accuracy)**", ""])
    row(["method"] + classes)
    row(["---"] * (len(classes) + 1))
    first = next(iter(r["T1"].values()))
    row(["(original model)"] + [fmt(first["headline"]["per_class"][c]["base"]) for c in classes])
    for m in methods:
        pc = r["T1"][m]["headline"]["per_class"]
        row([m] + [fmt(pc[c]["edited"]) for c in classes])
    lines.append("")
    t2 = f"T2: erase {', '.join(res['t2_forget'])}, keep the other 5"
    table(t2, ["F", "P", "Overall", "synonym F", "FID", "fidelity"],
          lambda m: [e("T2", m, k) for k in ("F", "P", "Overall", "synonym", "FID", "fidelity")],
          lambda: [b("T2", k) for k in ("F", "P", "Overall", "synonym", "FID", "fidelity")])  # fmt: skip
    table("T3: erase all 5 styles (style accuracy lower is better; FSR higher is better)", ["style acc.", "FSR", "FID", "fidelity"],
          lambda m: [e("T3", m, k) for k in ("F", "FSR", "FID", "fidelity")],
          lambda: [b("T3", "F"), None, b("T3", "FID"), b("T3", "fidelity")])  # fmt: skip
    table("T4: erase the attribute 'burning' (share of images where it is detected)", ["detected", "FID", "fidelity"],
          lambda m: [e("T4", m, k) for k in ("detected", "FID", "fidelity")],
          lambda: [b("T4", k) for k in ("detected", "FID", "fidelity")])  # fmt: skip
    f4 = [k for k in r if k.startswith("F4-")]
    xs = [k.split("-")[1] for k in f4]
    table("F4: forgetting accuracy F when forgetting the first x objects", [f"x={x}" for x in xs], lambda m: [e(k, m, "F") for k in f4])
    table("F4: Overall (undefined at x=10: nothing is kept)", [f"x={x}" for x in xs], lambda m: [e(k, m, "Overall") for k in f4])
    tasks = [k for k in r]
    lines.extend(["**Cost of the edit: seconds (peak resident memory growth, MB)**", ""])
    row(["method"] + tasks)
    row(["---"] * (len(tasks) + 1))
    for m in methods:
        c = res["costs"][m]
        row([m] + [f"{c[t]['seconds']:.1f} ({c[t]['peak_rss_growth_mb']:.0f})" if t in c else "-" for t in tasks])
    lines.append("")
    lines.extend(["**Tuning (T2 Overall on the tuning split; chosen value in bold)**", ""])
    for m, t in res["tuning"].items():
        parts = [(f"**{x[t['knob']]:g}**" if x[t["knob"]] == t["value"] else f"{x[t['knob']]:g}") + f": {fmt(x['overall'])}" for x in t["trials"]]
        lines.append(f"- {m} ({t['knob']}): " + ", ".join(parts))
    lines.append("")
    return "\n".join(lines)


def plot_f4(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = res["results"]
    keys = [k for k in r if k.startswith("F4-")]
    xs = [int(k.split("-")[1]) for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in res["methods"]:
        f = [edited(r[k][m]["headline"].get("F")) for k in keys]
        o = [edited(r[k][m]["headline"].get("Overall")) for k in keys]
        style = "-o" if m == "fia" else ("--" if m == "random" else "-")
        axes[0].plot(xs, [np.nan if v is None else v for v in f], style, label=m)
        axes[1].plot(xs, [np.nan if v is None else v for v in o], style, label=m)
    base_f = [r[k][res["methods"][0]]["headline"]["F"]["base"] for k in keys]
    axes[0].plot(xs, base_f, ":k", label="original model")
    axes[0].set(xlabel="objects forgotten (x of 10)", ylabel="forgetting accuracy F (lower is better)", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="objects forgotten (x of 10)", ylabel="Overall (higher is better)", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ShapeWorld F4 ({res['date']}, {res['commit']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def merge(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``previous`` with the methods of ``new`` re-measured in it.

    The base images are made again by the new run; with the same model,
    prompts and seeds they must give the same base figures, which is checked.
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
    for task, by_method in new["results"].items():
        out["results"][task].update(by_method)
    for m in new["methods"]:
        out["costs"][m] = new["costs"][m]
        if m in new["tuning"]:
            out["tuning"][m] = new["tuning"][m]
    out.setdefault("remeasured", []).append(
        {"methods": new["methods"], "date": new["date"], "commit": new["commit"], "seconds": new["seconds_total"]}
    )
    return out
