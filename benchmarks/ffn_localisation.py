"""Where does a ShapeWorld model keep an object, and which masks find it? A diagnostic.

FIA assumes that a concept lives in a few FFN2 weights. This script measures,
for one object (circle by default) of a shipped world (``--assets NAME``, the
first world by default) or of a world trained by ``fia shapeworld train``
(``--assets DIR``), masks of the same sparsities
(shares of all FFN2 weights) made five ways:

1. ``paper``: the paper's FIA (Eq. 1-8, the ShapeWorld preset with
   ``--variant paper``), at the r2 whose pruned share comes closest;
2. ``random``: random weights with the paper mask's per-layer counts;
3. ``causal``: the project's causal variant (``--variant causal``), which
   scores weights by the model's own evidence for the concept, no classifier;
4. ``judge-guided (one-shot)`` and 5. ``judge-guided (8 rounds)``: the same
   selection with the model's evidence replaced by the *oracle*'s log-odds of
   the prompt's shape against the contrast shapes, read on decoded images of
   the whole sampler. This uses the judge, so it is an upper bound on what a
   first-order FFN2 mask can do, not a method.

Plus two references: every FFN2 layer zeroed, every cross-attention output
zeroed. Each mask is judged by the oracle and by the second judge on held-out
prompts (the colour/place pairs of the evaluation split, never used to tune
the variant) and seeds from 7,000; the table gives the concept's accuracy,
the mean over the world's other object kinds, and the mask's per-layer
share. A judge with a reject option (the second world's) counts an image it
answers "none" for as not showing the concept.

    python benchmarks/ffn_localisation.py [--concept circle] [--images 32] [--others 8]
    python benchmarks/ffn_localisation.py --assets shapeworld2 --concept arrow --others 4 --out results/x.json

Prints one table and ends with one JSON line of every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fia
from fia.bench.harness import oracle_evidence
from fia.causal import causal_erase
from fia.evaluate.suites import factor_cycle
from fia.io import atomic_write_text
from fia.presets import resolve_config
from fia.shapeworld import (
    FIRST_WORLD,
    load_oracle,
    load_pipeline,
    load_second_judge,
    world_path,
)
from fia.shapeworld.evaluate import generate
from fia.shapeworld.render import parse_prompt, prompt_for
from fia.targets import find_targets

SPARSITIES = (0.005, 0.01, 0.015)
PAPER_R2 = (0.0025, 0.005, 0.01, 0.02, 0.03)


def load_judges(assets: Path) -> dict:
    """The oracle and the second judge of a world folder."""
    return {"oracle": load_oracle(path=assets), "judge2": load_second_judge(path=assets / "judge2")}


def accuracy(pipe, judges: dict, concept: str, images: int, others: int) -> dict:
    """Per judge: accuracy on the concept and the mean over the other kinds."""
    world = judges["oracle"].world
    kinds = world.object_names
    prompts, seeds = [], []
    for i, o in enumerate(kinds):
        n = images if o == concept else others
        prompts += [prompt_for(o, *factor_cycle(k, i, 0)) for k in range(n)]
        seeds += [7000 + 100 * i + k for k in range(n)]
    x = generate(pipe, prompts, seeds)
    truth = [parse_prompt(p, world)["object"] for p in prompts]
    out = {}
    for name, judge in judges.items():
        pred = judge.labels(judge.predict(x))["object"]
        per = {o: sum(p == t for p, t in zip(pred, truth) if t == o) / truth.count(o) for o in kinds}
        kept = [per[o] for o in kinds if o != concept]
        out[name] = {"concept": round(per[concept], 3), "others": round(sum(kept) / len(kept), 3)}
    return out


def layer_shares(mask) -> dict[str, float]:
    total = max(1, mask.pruned)
    return {lm.name.replace(".transformer_blocks.0.ff.net.2", ""): round(lm.pruned / total, 2) for lm in mask.layers}


def random_like(mask, weights: dict, seed: int):
    """A mask with the same per-layer counts, weights drawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    prune = {}
    for lm in mask.layers:
        w = weights[lm.name]
        p = torch.zeros(w.numel(), dtype=torch.bool)
        p[torch.randperm(w.numel(), generator=g)[: lm.pruned]] = True
        prune[lm.name] = p.reshape(w.shape)
    return fia.ConceptMask.from_prune_masks(weights, prune, concepts=mask.concepts, config={"random": True}, target_kind="ffn2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--images", type=int, default=32, help="images of the concept per mask")
    ap.add_argument("--others", type=int, default=8, help="images of each other shape per mask")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--assets", default=FIRST_WORLD,
                    help="a shipped world's name (shapeworld, shapeworld2) or a folder written by `fia shapeworld train` "
                    "(pipeline/, oracle, judge2/); default: the first world")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    assets = world_path(args.assets)
    pipe = load_pipeline(path=assets / "pipeline")
    judges = load_judges(assets)
    oracle = judges["oracle"]
    world = oracle.world
    if args.concept not in world.object_names:
        raise SystemExit(f"--concept {args.concept!r} is not an object kind of {world.name}: {', '.join(world.object_names)}")
    for p in oracle.parameters():
        p.requires_grad_(False)
    found = find_targets(pipe.unet, "ffn2")
    weights = {t.name: t.module.weight for t in found}
    paper_cfg = resolve_config("shapeworld", overrides={"variant": "paper", "world": world.name})
    # pruning alone, as when these figures were measured: no adaptive stop, no repair
    causal_cfg = resolve_config("shapeworld", overrides={"variant": "causal", "world": world.name}).replace(
        repair=None, stop_evidence=None
    )
    rows: list[dict] = []

    def measure(label: str, mask=None, zero: str | None = None) -> None:
        pristine = {n: w.detach().clone() for n, w in pipe.unet.state_dict().items()}
        if mask is not None:
            mask.apply_(pipe)
        if zero is not None:
            with torch.no_grad():
                for name, p in pipe.unet.named_parameters():
                    if name.rsplit(".", 1)[0].endswith(zero):
                        p.zero_()
        acc = accuracy(pipe, judges, args.concept, args.images, args.others)
        pipe.unet.load_state_dict(pristine)
        row = {"mask": label, "pruned_share": round(mask.pruned_share, 4) if mask is not None else None, **acc}
        if mask is not None:
            row["layers"] = layer_shares(mask)
        rows.append(row)
        figs = "  ".join(f"{j}: {a['concept']:.2f} / {a['others']:.2f}" for j, a in acc.items())
        share = f"{100 * mask.pruned_share:5.2f} %" if mask is not None else "      "
        print(f"{label:34s} {share}  {figs}", flush=True)

    print(f"{world.name}: {'mask':34s} {'pruned':7s}  judge: {args.concept} / other kinds")
    measure("unedited")
    paper = {r2: fia.erase(pipe, [args.concept], paper_cfg.replace(r2=r2)) for r2 in PAPER_R2}
    for s in SPARSITIES:
        r2, pm = min(paper.items(), key=lambda kv: abs(kv[1].pruned_share - s))
        measure(f"paper FIA (r2 {r2})", pm)
        measure("random, paper's layer counts", random_like(pm, weights, seed=int(1e4 * s)))
        measure(f"causal (budget {s})", fia.erase(pipe, [args.concept], causal_cfg.replace(budget=s)))
        judge = oracle_evidence(pipe, oracle)
        for rounds in (1, 8):
            cfg = causal_cfg.replace(budget=s, rounds=rounds)
            m = causal_erase(pipe, [args.concept], cfg, found, target_kind="ffn2", judge=judge)
            measure(f"judge-guided, {rounds} round(s) (upper bound)", m)
    measure("every FFN2 layer zeroed", zero="ff.net.2")
    measure("every cross-attention out zeroed", zero="attn2.to_out.0")
    record = {"world": world.name, "concept": args.concept, "images": args.images, "others_per_shape": args.others,
              "rows": rows, "seconds": round(time.time() - t0, 1)}
    if world.object_per_mille is not None:
        record["concept_share_of_scenes"] = world.object_per_mille[args.concept] / 1000
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
