"""Quality gate of the ShapeWorld pipeline, judged by the ShapeWorld oracle.

Generates one image per (held-out prompt, fixed seed) pair -- 280 images: 40
(colour, object, place) triples never captioned in training, plain (3 seeds),
with a style (2 seeds) and burning (2 seeds) -- at the default sampler
settings (``fia.shapeworld.GENERATION_DEFAULTS``), and reports how often the
oracle agrees with what the prompt names.

    python benchmarks/shapeworld_quality.py [--model DIR] [--oracle DIR]

The last line printed is one JSON object with keys ``object`` (averaged over
classes), ``style``, ``attribute``, ``place`` (fractions in [0, 1]) and
``object_per_class``; ``color``, ``style_none`` and ``attribute_absent`` are
reported too.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fia.shapeworld import GENERATION_DEFAULTS, load_oracle, load_pipeline
from fia.shapeworld.evaluate import run_gate

TARGETS = {"object": 0.90, "style": 0.85, "attribute": 0.85, "place": 0.90}
FLOORS = {"object": 0.80, "style": 0.75, "attribute": 0.75, "place": 0.85}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pipeline folder (default: the shipped one)")
    ap.add_argument("--oracle", default=None, help="folder with oracle.safetensors (default: the shipped one)")
    ap.add_argument("--batch-size", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    pipe = load_pipeline(path=args.model)
    oracle = load_oracle(path=args.oracle)
    res = run_gate(pipe, oracle, batch_size=args.batch_size)
    print(f"ShapeWorld quality gate: {res['n_images']} images, settings {GENERATION_DEFAULTS}, {time.time() - t0:.0f}s")
    print(f"{'factor':18s} {'agreement':>9s} {'floor':>6s} {'target':>6s}")
    for k in ("object", "color", "place", "style", "attribute", "style_none", "attribute_absent"):
        if k in res:
            fl = f"{FLOORS[k]:.2f}" if k in FLOORS else ""
            tg = f"{TARGETS[k]:.2f}" if k in TARGETS else ""
            print(f"{k:18s} {res[k]:9.3f} {fl:>6s} {tg:>6s}")
    print("object per class: " + ", ".join(f"{k} {v:.2f}" for k, v in res["object_per_class"].items()))
    line = {k: round(res[k], 4) for k in ("object", "style", "attribute", "place")}
    line["object_per_class"] = {k: round(v, 4) for k, v in res["object_per_class"].items()}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
