"""Does FIA make the shipped ShapeWorld model forget? The paper's FIA and the causal variant, side by side.

Three erasures, each made by both variants in one run (same machine, same
load, so their seconds compare):

* ``pair``: circle and star;
* ``T2``: erase five shapes (circle, square, triangle, star, heart), keep five;
* ``T1``: erase all ten shapes.

Each edited model is judged on held-out prompts and seeds: the colour/place
pairs of the evaluation split (never scored by either variant, never used to
choose the causal variant's settings) and seeds from 200,000, ``--images``
images per shape, by the oracle and by the second, independently trained
judge. Figures: forgetting accuracy F (mean over erased shapes), preserving
accuracy P (mean over kept shapes), each with a Wilson 95 % interval on the
pooled images; for T1, prompt fidelity on object-less prompts ("the grass":
the judge must read the place and no object); pruned share; seconds per
concept.

    python benchmarks/forgetting_targets.py [--images 32] [--tasks pair,T2,T1]

Prints one table; writes benchmarks/results/forgetting_targets.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import fia
from fia.evaluate.suites import factor_cycle
from fia.io import atomic_write_text
from fia.presets import resolve_config
from fia.shapeworld import FIRST_WORLD, load_oracle, load_pipeline
from fia.shapeworld.evaluate import generate
from fia.shapeworld.render import prompt_for
from fia.shapeworld.vocab import OBJECT_NAMES, PLACE_NAMES

TASKS = {
    "pair": ["circle", "star"],
    "T2": ["circle", "square", "triangle", "star", "heart"],
    "T1": list(OBJECT_NAMES),
}
SEED_BASE = 200_000
RESULTS = Path(__file__).resolve().parent / "results"


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial rate."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))


def load_judges() -> dict:
    judges = {"oracle": load_oracle(world=FIRST_WORLD)}
    try:
        from fia.shapeworld import load_second_judge
    except ImportError:
        return judges
    judges["judge2"] = load_second_judge(world=FIRST_WORLD)
    return judges


class HeldOut:
    """The held-out images: ``images`` per shape, and object-less place prompts."""

    def __init__(self, images: int):
        self.prompts, self.seeds, self.truth = [], [], []
        for i, o in enumerate(OBJECT_NAMES):
            for k in range(images):
                self.prompts.append(prompt_for(o, *factor_cycle(k, i, 0)))
                self.seeds.append(SEED_BASE + 1000 * i + k)
                self.truth.append(o)
        self.places = [PLACE_NAMES[k % len(PLACE_NAMES)] for k in range(images)]
        self.place_prompts = [f"the {p}" for p in self.places]
        self.place_seeds = [SEED_BASE + 50_000 + k for k in range(images)]

    def judge(self, pipe, judges: dict) -> dict:
        x = generate(pipe, self.prompts, self.seeds)
        xp = generate(pipe, self.place_prompts, self.place_seeds)
        out = {}
        for name, judge in judges.items():
            heads = judge.HEADS
            pred = [heads["object"][j] for j in judge.predict(x)["object"].argmax(-1).tolist()]
            hits = {o: sum(p == t for p, t in zip(pred, self.truth) if t == o) for o in OBJECT_NAMES}
            probs = judge.predict(xp)
            objs = [heads["object"][j] for j in probs["object"].argmax(-1).tolist()]
            places = [heads["place"][j] for j in probs["place"].argmax(-1).tolist()]
            fidelity = sum((o == "none") + (p == q) for o, p, q in zip(objs, places, self.places)) / (2 * len(objs))
            out[name] = {"hits": hits, "n": self.truth.count(OBJECT_NAMES[0]), "fidelity_objectless": round(fidelity, 3)}
        return out


def rates(judged: dict, forget: list[str]) -> dict:
    out = {}
    for name, r in judged.items():
        n = r["n"]
        kept = [o for o in OBJECT_NAMES if o not in forget]
        f_hits = sum(r["hits"][o] for o in forget)
        p_hits = sum(r["hits"][o] for o in kept)
        out[name] = {
            "F": round(f_hits / (n * len(forget)), 3),
            "F_ci": wilson(f_hits, n * len(forget)),
            "P": round(p_hits / (n * len(kept)), 3) if kept else None,
            "P_ci": wilson(p_hits, n * len(kept)) if kept else None,
            "per_class": {o: round(r["hits"][o] / n, 3) for o in OBJECT_NAMES},
            "fidelity_objectless": r["fidelity_objectless"],
        }
    return out


def _fmt(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "-"
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32, help="held-out images per shape")
    ap.add_argument("--tasks", default="pair,T2,T1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_run = time.time()
    pipe, judges = load_pipeline(world=FIRST_WORLD), load_judges()
    held = HeldOut(args.images)
    rows = []
    base = held.judge(pipe, judges)
    for task in args.tasks.split(","):
        forget = TASKS[task]
        rows.append({"task": task, "variant": "unedited", "pruned_share": 0.0, "seconds_per_concept": None,
                     "judges": rates(base, forget)})  # fmt: skip
        for variant in ("paper", "causal"):
            cfg = resolve_config("shapeworld", overrides={"variant": variant})
            t0 = time.perf_counter()
            mask = fia.erase(pipe, forget, cfg)
            seconds = time.perf_counter() - t0
            mask.apply_(pipe)
            judged = held.judge(pipe, judges)
            mask.restore_(pipe)
            rows.append({"task": task, "variant": variant, "pruned_share": round(mask.pruned_share, 4),
                         "seconds_per_concept": round(seconds / len(forget), 2), "judges": rates(judged, forget)})  # fmt: skip
            r = rows[-1]
            print(f"{task:5s} {variant:7s} pruned {100 * r['pruned_share']:.2f} %  {r['seconds_per_concept']:6.2f} s/concept  "
                  + "  ".join(f"{j}: F {v['F']:.2f} P {v['P'] if v['P'] is not None else '-'} fid0 {v['fidelity_objectless']:.2f}"
                              for j, v in r["judges"].items()), flush=True)  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    result = {
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "images_per_shape": args.images,
        "seconds": round(time.time() - t_run, 1),
        "rows": rows,
    }
    lines = [
        f"Measured {result['measured']} at commit `{commit}`, {result['seconds'] / 60:.1f} min; "
        f"{args.images} held-out images per shape; F and P with Wilson 95 % intervals.",
        "",
        "| task | variant | pruned FFN2 | s / concept | judge | F (erased) | P (kept) | object-less fidelity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for j, v in r["judges"].items():
            spc = "-" if r["seconds_per_concept"] is None else f"{r['seconds_per_concept']:.2f}"
            lines.append(f"| {r['task']} | {r['variant']} | {100 * r['pruned_share']:.2f} % | {spc} | {j} | "
                         f"{_fmt(v, 'F')} | {_fmt(v, 'P')} | {v['fidelity_objectless']:.2f} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(RESULTS / "forgetting_targets.json", json.dumps(result, indent=1) + "\n")
        atomic_write_text(RESULTS / "forgetting_targets.md", table)


if __name__ == "__main__":
    main()
