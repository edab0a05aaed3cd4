"""What each cost lever of the causal default does to forgetting, keeping and seconds, on the tuning split.

The causal variant's cost on ShapeWorld 2 is its backward passes through the
sampler: per round one per concept and one for the anchors, then the
repair's statistics pass. The levers measured here, each from the previous
default (8 rounds of 10 scored sampler steps, the anchors re-scored every
round, the statistics read over the 25-step schedule) towards the present
one:

* ``anchors once``: ``rescore_anchors: false``, the anchors scored once on
  the unedited model (48 anchor prompts cost two concepts' worth per round);
* ``4 rounds``: the same budget in 4 rounds instead of 8;
* ``6 steps``: ``score_steps: 6``, the scored images sampled in 6 steps;
* ``stats 10 steps``: ``repair.steps: 10``, the repair's statistics read in
  a 10-step pass.

Each row erases with ``fia.erase`` (two threads, nothing else running: its
seconds are the erase's wall time) and is judged on the tuning split of
``selective_forgetting.py`` (colour/place shift 1, seeds from 300,000) by the
oracle and the second judge, ``--images`` per kind: F on the erased kinds,
P the mean over the other kinds, each kind's change against the unedited
model on the same images. KID and the held-out figures of the chosen
settings are ``selective_forgetting.py``'s.

    python benchmarks/causal_cost_levers.py [--images 16] [--tasks star+arrow,circle+star,ten]

Writes benchmarks/results/causal_cost_levers.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selective_forgetting as sf  # noqa: E402

import fia  # noqa: E402
from fia.io import atomic_write_text  # noqa: E402
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge  # noqa: E402

# (label, changes from the previous default); the last row is the present default
LEVERS = [
    ("previous default", {}),
    ("anchors once", {"rescore_anchors": False}),
    ("4 rounds", {"rounds": 4}),
    ("4 rounds, anchors once", {"rounds": 4, "rescore_anchors": False}),
    ("4 rounds, anchors once, 6 steps", {"rounds": 4, "rescore_anchors": False, "score_steps": 6}),
    ("4 rounds, anchors once, 6 steps, stats 10 steps (default)",
     {"rounds": 4, "rescore_anchors": False, "score_steps": 6, "repair_steps": 10}),
]  # fmt: skip
# the levers each task runs: every one on the README's task, the ends and the step count's effect elsewhere
TASK_LEVERS = {
    "star+arrow": [label for label, _ in LEVERS],
    "circle+star": ["previous default", "4 rounds, anchors once", LEVERS[-1][0]],
    "ten": ["previous default", LEVERS[-1][0]],
}
OUT = sf.RESULTS / "causal_cost_levers.json"


def config_of(changes: dict):
    """The previous default's settings (``selective_forgetting.config_for("previous")``) with ``changes``
    (``repair_steps``: the repair's ``steps``)."""
    cfg = sf.config_for("previous")
    changes = dict(changes)
    if "repair_steps" in changes:
        cfg = cfg.replace(repair=dataclasses.replace(cfg.repair, steps=changes.pop("repair_steps")))
    return cfg.replace(**changes)


def run(pipe, judges, split: sf.Split, erased: list[str], label: str, unedited: dict) -> dict:
    cfg = config_of(dict(LEVERS)[label])
    t = time.perf_counter()
    mask = fia.erase(pipe, erased, cfg)
    seconds = time.perf_counter() - t
    with mask.applied(pipe):
        hits = sf.measure_kinds(pipe, judges, split)
    nums, before = sf.task_numbers(hits, split, erased), sf.task_numbers(unedited, split, erased)
    row = {"lever": label, "erase_s": round(seconds, 1), "s_per_concept": round(seconds / len(erased), 1),
           "pruned": mask.stats["totals"]["pruned_share"], "stopped": mask.stats.get("stopped", [])}  # fmt: skip
    for j in judges:
        drops = {o: round(nums["per_kind"][j][o] - before["per_kind"][j][o], 4) for o in sf.KINDS if o not in erased}
        row[j] = {"forget": nums["forget"][j], "kept": nums["kept"][j], "unedited_kept": before["kept"][j]["rate"],
                  "erased": {o: nums["per_kind"][j][o] for o in erased},
                  "largest_drops": sorted(drops.items(), key=lambda kv: kv[1])[:3]}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def markdown(results: dict) -> str:
    lines = [
        f"Tuning split, {results['images']} images per kind, oracle / second judge; erase seconds on 2 threads.",
        "",
        "| erased | lever | pruned | F | P (unedited) | largest kept drop (oracle / judge2) | erase s | s / concept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, rows in results["tasks"].items():
        for r in rows:
            o, j = r["oracle"], r["judge2"]
            drop = " / ".join(f"{d[0][0]} {d[0][1]:+.2f}" for d in (o["largest_drops"], j["largest_drops"]))
            lines.append(
                f"| {task} | {r['lever']} | {100 * r['pruned']:.2f} % | {o['forget']['rate']:.2f} / {j['forget']['rate']:.2f} "
                f"| {o['kept']['rate']:.3f} / {j['kept']['rate']:.3f} ({o['unedited_kept']:.3f} / {j['unedited_kept']:.3f}) "
                f"| {drop} | {r['erase_s']:.0f} | {r['s_per_concept']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--tasks", default=",".join(TASK_LEVERS))
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline(world=sf.WORLD.name)
    judges = {"oracle": load_oracle(world=sf.WORLD.name), "judge2": load_second_judge(world=sf.WORLD.name)}
    split = sf.Split("tune", a.images, 0)
    unedited = sf.measure_kinds(pipe, judges, split)
    results = {"images": a.images, "split": "tune", "commit": sf.commit(), "tasks": {}}
    for task in a.tasks.split(","):
        results["tasks"][task] = [run(pipe, judges, split, sf.TASKS[task], label, unedited) for label in TASK_LEVERS[task]]
        atomic_write_text(a.out, json.dumps(results, indent=1) + "\n")  # each finished task is kept
    atomic_write_text(a.out.with_suffix(".md"), markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
