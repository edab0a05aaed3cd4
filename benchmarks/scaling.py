"""F4 on the default world: forgetting, keeping, quality and seconds as the number of erased kinds grows.

The paper's multi-concept figure, on ShapeWorld 2 with the causal variant
(``--method causal``, ShapeWorld's default when the committed figures were
measured; ``--method default`` runs the preset as ``fia erase`` does). The erased sets are
nested: the first ``x`` kinds of one fixed order (the 32 kinds shuffled by
``random.Random(0)``, so common and rare kinds mix), for ``x`` = 1, 2, 5,
10, 20, 25. The last 7 kinds of the order are kept at every ``x``.

Per ``x``, on the held-out split of ``selective_forgetting.py`` (colour/place
pairs the erasers never see, seeds from 200,000), read by the oracle and the
second judge: F on the erased kinds, P the mean over the kept ones, with
Wilson 95 % intervals (``--images`` per kind). Quality on ``--quality``
images, one set for every ``x``: a fifth object-less scenes, the rest the 7
kinds no ``x`` erases; KID (torchmetrics) and FID in the oracle's feature
space against renders of the same scenes, prompt fidelity. Seconds: the
erase's wall time in this process (2 threads), per concept.

    python benchmarks/scaling.py [--sizes 1,2,5,10,20,25] [--images 32] [--quality 500] [--render-only]

Writes benchmarks/results/scaling.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selective_forgetting as sf  # noqa: E402

import fia  # noqa: E402
from fia.evaluate.suites.shapeworld import shapeworld_reference_features  # noqa: E402
from fia.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge  # noqa: E402

ORDER = list(sf.KINDS)
random.Random(0).shuffle(ORDER)
SIZES = (1, 2, 5, 10, 20, 25)
NEVER_ERASED = ORDER[max(SIZES):]
OUT = sf.RESULTS / "scaling.json"


def quality_set(split: sf.Split) -> tuple[list[str], list[int], list[dict]]:
    """``split.quality`` prompts: a fifth object-less scenes, the rest the kinds no size erases, in turn."""
    return split.quality_set(NEVER_ERASED, seed_offset=90_000)


def quality(pipe, judges, split: sf.Split, reference: torch.Tensor) -> dict:
    return sf.measure_quality(pipe, judges, None, split, reference, quality_set(split))[0]


def point(pipe, judges, split, reference, x: int, unedited_hits: dict, method: str = "causal") -> dict:
    erased = ORDER[:x]
    t = time.perf_counter()
    mask = fia.erase(pipe, erased, sf.config_for(method))
    seconds = time.perf_counter() - t
    with mask.applied(pipe):
        hits = sf.measure_kinds(pipe, judges, split)
        q = quality(pipe, judges, split, reference)
    nums, before = sf.task_numbers(hits, split, erased), sf.task_numbers(unedited_hits, split, erased)
    row = {"x": x, "erased": erased, "seconds": round(seconds, 1), "seconds_per_concept": round(seconds / x, 1),
           "pruned_share": mask.pruned_share, "quality": q,
           "forget": nums["forget"], "kept": nums["kept"], "unedited_forget": before["forget"], "unedited_kept": before["kept"]}  # fmt: skip
    print(json.dumps({k: v for k, v in row.items() if k != "erased"}), flush=True)
    return row


def markdown(results: dict) -> str:
    u = results["unedited_quality"]
    lines = [
        f"Held-out split, {results['images']} images per kind, {results['quality_images']} quality images; "
        f"oracle / second judge; unedited KID {u['kid_x1000'] / 1000:.2f}, FID {u['fid']:.1f}, fidelity {u['prompt_fidelity']:.3f}.",
        "",
        "| x | F oracle | F judge2 | kept oracle (unedited) | kept judge2 (unedited) | pruned | KID | FID | fidelity | s / concept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["points"]:
        f, k, uk, q = r["forget"], r["kept"], r["unedited_kept"], r["quality"]
        lines.append(
            f"| {r['x']} | {sf.fmt(f['oracle'])} | {sf.fmt(f['judge2'])} | {sf.fmt(k['oracle'])} ({uk['oracle']['rate']:.2f}) "
            f"| {sf.fmt(k['judge2'])} ({uk['judge2']['rate']:.2f}) | {100 * r['pruned_share']:.2f} % "
            f"| {q['kid_x1000'] / 1000:.2f} | {q['fid']:.1f} | {q['prompt_fidelity']:.3f} | {r['seconds_per_concept']:.1f} |"
        )
    lines += ["", "Order: " + ", ".join(ORDER) + f" (the last {len(NEVER_ERASED)} are never erased)."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import io

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = results["points"]
    xs = [r["x"] for r in pts]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for judge, style in (("oracle", "-"), ("judge2", "--")):
        ax.plot(xs, [r["forget"][judge]["rate"] for r in pts], "o" + style, color="tab:red", label=f"forget, {judge}")
        ax.plot(xs, [r["kept"][judge]["rate"] for r in pts], "o" + style, color="tab:blue", label=f"kept, {judge}")
    ax.set(xlabel="kinds erased at once", ylabel="share of images read as the kind", ylim=(0, 1.02), xscale="log", xticks=xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    bx.plot(xs, [r["quality"]["kid_x1000"] / 1000 for r in pts], "o-", color="tab:purple", label="KID")
    bx.axhline(results["unedited_quality"]["kid_x1000"] / 1000, color="tab:purple", lw=0.8, ls=":", label="KID, unedited")
    bx.set(xlabel="kinds erased at once", ylabel="KID (oracle features)", xscale="log", xticks=xs)
    bx.set_xticklabels([str(x) for x in xs])
    bx.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    cx = bx.twinx()
    cx.plot(xs, [r["seconds_per_concept"] for r in pts], "s--", color="tab:gray", label="s / concept")
    cx.set_ylabel("erase seconds per concept (2 threads)")
    bx.legend(loc="upper left", fontsize=8)
    cx.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"F4 on ShapeWorld 2: the {results.get('method', 'causal')} eraser as more kinds are erased at once")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--quality", type=int, default=500)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--method", default="causal", help="a method of selective_forgetting.config_for (default: causal)")
    ap.add_argument("--render-only", action="store_true", help="write the .md and .png of an existing result file again")
    a = ap.parse_args()
    if a.render_only:
        results = json.loads(a.out.read_text())
        atomic_write_text(a.out.with_suffix(".md"), markdown(results))
        plot(results, a.out.with_suffix(".png"))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(not 1 <= x <= max(SIZES) for x in sizes):
        raise SystemExit(f"--sizes must lie in 1..{max(SIZES)}: the last {len(NEVER_ERASED)} kinds are kept for the quality set")
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    pipe = load_pipeline(world=sf.WORLD.name)
    judges = {"oracle": load_oracle(world=sf.WORLD.name), "judge2": load_second_judge(world=sf.WORLD.name)}
    split = sf.Split("heldout", a.images, a.quality)
    reference = shapeworld_reference_features(judges["oracle"], quality_set(split)[2], 1, seed=7)
    unedited_hits = sf.measure_kinds(pipe, judges, split)
    results = {"split": "heldout", "images": a.images, "quality_images": a.quality, "order": ORDER, "method": a.method,
               "commit": sf.commit(),
               "unedited_quality": quality(pipe, judges, split, reference), "points": []}  # fmt: skip
    for x in sizes:
        results["points"].append(point(pipe, judges, split, reference, x, unedited_hits, a.method))
        results["minutes"] = round((time.perf_counter() - t0) / 60, 1)
        atomic_write_text(a.out, json.dumps(results, indent=1) + "\n")  # each finished point is kept
    atomic_write_text(a.out.with_suffix(".md"), markdown(results))
    plot(results, a.out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
