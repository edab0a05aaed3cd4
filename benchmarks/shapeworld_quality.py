"""Quality gate of the ShapeWorld pipeline, judged by the ShapeWorld oracle
(or by the second judge, beside the oracle).

Generates one image per (held-out prompt, fixed seed) pair -- 280 images: 40
(colour, object, place) triples never captioned in training, plain (3 seeds),
with a style (2 seeds) and burning (2 seeds) -- at the default sampler
settings (``fia.shapeworld.GENERATION_DEFAULTS``), and reports how often the
oracle agrees with what the prompt names.

    python benchmarks/shapeworld_quality.py [--world shapeworld|shapeworld2] [--limit N]
    python benchmarks/shapeworld_quality.py [--model DIR] [--oracle DIR] [--clip DIR] [--limit N]
    python benchmarks/shapeworld_quality.py --judge judge2 [--judge2 DIR] [--write]

``--world`` names a shipped world (default: the default world,
``shapeworld2``); ``--model``, ``--oracle`` and ``--judge2`` replace its
parts. The world is the oracle's (its ``oracle_config.json``). The first
world's gate is the 280 images above. In the second world the gate has 896 images (128
held-out triples), the oracle answers with its reject option, and the
CLIP beside the oracle (``--clip``, default ``ORACLE/clip``) adds the CLIP
score of the generated images against the renders' own (renders of the same
prompts) and its zero-shot style verdicts; the targets are the second
world's (object >= 0.85 averaged over kinds with no kind below 0.60, place
>= 0.90, style and attribute >= 0.85, colour >= 0.90, CLIP score within 10 %
of the renders').

The last line printed is one JSON object with keys ``object`` (averaged over
classes), ``style``, ``attribute``, ``place`` (fractions in [0, 1]) and
``object_per_class``; ``color``, ``style_none`` and ``attribute_absent`` are
reported too.

With ``--judge judge2`` the same images are read by the second judge and by
the oracle; the script also measures both judges' accuracy per head on
``--renders`` fresh renders (and on their reconstructions by the pipeline's
VAE) and how often the two judges give the same label on the gate's images.
The JSON line is then the second judge's report
(:func:`fia.shapeworld.evaluate.second_judge_quality`); ``--write`` saves it
as ``quality.json`` beside the second judge's weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fia.shapeworld import (
    DEFAULT_WORLD,
    GENERATION_DEFAULTS,
    load_oracle,
    load_pipeline,
    load_second_judge,
    second_judge_path,
    shipped_world_path,
)
from fia.shapeworld.evaluate import (
    agreement,
    clip_quality,
    gate_images,
    renders_of_prompts,
    second_judge_quality,
)
from fia.shapeworld.oracle import heads_for
from fia.shapeworld.vocab import SHAPEWORLD

TARGETS = {"object": 0.90, "style": 0.85, "attribute": 0.85, "place": 0.90}
FLOORS = {"object": 0.80, "style": 0.75, "attribute": 0.75, "place": 0.85}
# the second world's gate: every figure a target, plus the weakest kind and the CLIP score ratio
WORLD2_TARGETS = {"object": 0.85, "object_min": 0.60, "place": 0.90, "style": 0.85, "attribute": 0.85, "color": 0.90,
                  "clip_score_ratio": 0.90}  # fmt: skip
GATE_ROWS = ("object", "color", "place", "style", "attribute", "style_none", "attribute_absent")
# renders of the gate's prompts, for the CLIP score they reach themselves (no seed of the recipe)
RENDER_SEED = 40_260


def print_gate(columns: dict[str, dict], floors: dict = FLOORS, targets: dict = TARGETS) -> None:
    names = list(columns)
    print(f"{'factor':18s} " + " ".join(f"{n:>9s}" for n in names) + f" {'floor':>6s} {'target':>6s}")
    for k in GATE_ROWS:
        if k in columns[names[0]]:
            fl = f"{floors[k]:.2f}" if k in floors else ""
            tg = f"{targets[k]:.2f}" if k in targets else ""
            print(f"{k:18s} " + " ".join(f"{columns[n][k]:9.3f}" for n in names) + f" {fl:>6s} {tg:>6s}")
    for n in names:
        print(f"object per class ({n}): " + ", ".join(f"{k} {v:.2f}" for k, v in columns[n]["object_per_class"].items()))


def world2_report(pipe, oracle, gate, clip_dir: Path | None) -> dict:
    """The second world's gate: oracle agreement (reject option included),
    the weakest kind, and the CLIP's figures when a CLIP is found."""
    res = agreement(oracle, *gate)
    res["object_min"] = min(res["object_per_class"].values()) if res["object_per_class"] else 0.0
    res["world"] = oracle.world.name
    if clip_dir is not None:
        from fia.shapeworld.clip import load_clip

        clip = load_clip(clip_dir)
        renders = renders_of_prompts(gate[1], RENDER_SEED, oracle.world)
        res.update({f"clip_{k}" if k.startswith("style") else k: v for k, v in clip_quality(clip, *gate, renders).items() if k != "n_images"})
    checks = {k: res[k] >= t for k, t in WORLD2_TARGETS.items() if k in res}
    res["passed"] = checks
    return res


def judge2_report(pipe, oracle, judge2, gate, n_renders: int, render_seed: int) -> dict:
    from fia.shapeworld.train import decode, encode_means, labels, make_data

    scenes, renders = make_data(n_renders, render_seed, oracle.world)
    with torch.no_grad():
        recons = decode(pipe.vae, encode_means(pipe.vae, renders))
    res = second_judge_quality(judge2, oracle, renders, labels(scenes, heads_for(oracle.world)), recons, gate)
    res["render_seed"] = render_seed
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=DEFAULT_WORLD, help="the shipped world measured (shapeworld, shapeworld2)")
    ap.add_argument("--model", default=None, help="pipeline folder (default: the world's)")
    ap.add_argument("--oracle", default=None, help="folder with oracle.safetensors (default: the world's)")
    ap.add_argument("--judge", choices=("oracle", "judge2"), default="oracle", help="the judge whose report is printed")
    ap.add_argument("--judge2", default=None, help="folder with judge2.safetensors (default: the world's)")
    ap.add_argument("--renders", type=int, default=1000, help="fresh renders for the judges' accuracy (--judge judge2)")
    ap.add_argument("--render-seed", type=int, default=20_260, help="seed of those renders (none of the recipe's)")
    ap.add_argument("--write", action="store_true", help="save the second judge's report as quality.json beside it")
    ap.add_argument("--clip", default=None, help="folder of the ShapeWorld CLIP (second world; default: ORACLE/clip when present)")
    ap.add_argument("--limit", type=int, default=0, help="an evenly spaced subset of N gate images (quick checks only)")
    ap.add_argument("--batch-size", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    pipe = load_pipeline(path=args.model, world=args.world)
    oracle = load_oracle(path=args.oracle, world=args.world)
    gate = gate_images(pipe, batch_size=args.batch_size, limit=args.limit or None, world=oracle.world)
    if oracle.world is not SHAPEWORLD and args.judge == "oracle":
        clip_dir = Path(args.clip) if args.clip else Path(args.oracle or shipped_world_path(args.world)) / "clip"
        res = world2_report(pipe, oracle, gate, clip_dir if args.clip or clip_dir.is_dir() else None)
        print(f"{res['world']} quality gate: {res['n_images']} images, settings {GENERATION_DEFAULTS}, {time.time() - t0:.0f}s")
        print_gate({"agreement": res}, floors={}, targets=WORLD2_TARGETS)
        for k, target in WORLD2_TARGETS.items():
            if k in res:
                print(f"  {k:18s} {res[k]:.3f} (target {target:.2f}: {'met' if res[k] >= target else 'NOT met'})")
        print(json.dumps(res))
        return
    if args.judge == "oracle":
        res = agreement(oracle, *gate)
        print(f"ShapeWorld quality gate: {res['n_images']} images, settings {GENERATION_DEFAULTS}, {time.time() - t0:.0f}s")
        print_gate({"agreement": res})
        line = {k: round(res[k], 4) for k in ("object", "style", "attribute", "place")}
        line["object_per_class"] = {k: round(v, 4) for k, v in res["object_per_class"].items()}
        print(json.dumps(line))
        return

    judge2 = load_second_judge(path=args.judge2, world=args.world)
    res = judge2_report(pipe, oracle, judge2, gate, args.renders, args.render_seed)
    print(f"ShapeWorld quality gate: {res['gate']['n_images']} images, settings {GENERATION_DEFAULTS}, {time.time() - t0:.0f}s")
    print(f"second judge: {res['judge']}, {res['parameters']:,} parameters")
    print_gate({"judge2": res["gate"], "oracle": res["gate_oracle"]})
    print("same label from both judges on the gate's images: " + ", ".join(f"{k} {v:.3f}" for k, v in res["inter_judge_agreement"].items()))
    for what in ("renders", "reconstructions"):
        print(f"accuracy on {res['n_renders']} fresh {what} (seed {res['render_seed']}):")
        for name, key in (("judge2", f"accuracy_{what}"), ("oracle", f"oracle_accuracy_{what}")):
            print(f"  {name:7s} " + ", ".join(f"{k} {v:.3f}" for k, v in res[key].items()))
    if args.write:
        path = Path(args.judge2 or second_judge_path(args.world)) / "quality.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {path}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
