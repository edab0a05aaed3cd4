"""Why UCE's edit hurts ShapeWorld's quality: how close its text embeddings lie, and how far the edit reaches.

UCE rewrites each cross-attention key/value projection so that the erased
concepts' text embeddings ``c`` map to an anchor's, while the kept concepts'
map to what they did (fia.baselines.uce). On Stable Diffusion the CLIP text
encoder spreads concepts over a 768-d space. ShapeWorld's text encoder is
small (128-d) and was trained jointly with the UNet on ten shapes; if its
embeddings of different prompts lie close together, an edit that moves the
erased ones moves everything. This script measures:

1. the mean pairwise cosine similarity of the shape words' embeddings (the
   rows UCE edits), of their end-of-text rows, and of the end-of-text rows of
   full scene prompts such as "a red circle on the grass";
2. for the benchmark's T2 edit (erase 5 shapes, keep 5, the paper's
   settings), the relative change ``||dW c|| / ||W c||`` of the key
   projections' output on every token of held-out prompts: those of the
   erased shapes, of the kept shapes, and object-less prompts ("the grass").

    python benchmarks/uce_diagnosis.py [--world shapeworld2]

Results: ``results/uce_diagnosis.json`` (the first world, ten shapes, and its
T2); with ``--world shapeworld2`` (32 kinds, a frozen ShapeWorld CLIP text
encoder, the benchmark's T2 on it) ``results/uce_diagnosis_shapeworld2.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from fia.baselines._common import text_embeddings
from fia.baselines.uce import UCEConfig, concept_embeddings, token_positions
from fia.bench.tasks import T2_FORGET as BENCH_T2_FORGET
from fia.io import atomic_write_text
from fia.methods import unlearn
from fia.shapeworld import FIRST_WORLD, load_pipeline
from fia.shapeworld.vocab import COLORS, OBJECT_NAMES, PLACE_NAMES, WORLDS, get_world, place_phrase

# the first world's T2 (its first five shapes), which this study was first made for
T2_FORGET = OBJECT_NAMES[:5]

RESULTS = Path(__file__).resolve().parent / "results"


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    x = torch.nn.functional.normalize(rows.double(), dim=-1)
    sims = [float(x[i] @ x[j]) for i, j in itertools.combinations(range(len(x)), 2)]
    return sum(sims) / len(sims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=FIRST_WORLD, choices=list(WORLDS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline(world=args.world)
    kinds = get_world(args.world).object_names
    erased = T2_FORGET if args.world == FIRST_WORLD else BENCH_T2_FORGET
    words, eos = [], []
    for obj in kinds:
        pos = token_positions(pipe, obj, "concept_eos")
        rows = concept_embeddings(pipe, obj, pos)
        words.append(rows[:-1].mean(0))
        eos.append(rows[-1])
    color = next(iter(COLORS))
    scenes = [f"a {color} {obj} {place_phrase(PLACE_NAMES[0])}" for obj in kinds]
    length = [len(pipe.tokenizer(s).input_ids) for s in scenes]
    scene_emb = text_embeddings(pipe, scenes)
    scene_eos = torch.stack([scene_emb[i, length[i] - 1] for i in range(len(scenes))])
    out = {
        "world": args.world,
        "t2_forget": list(erased),
        "embedding_dim": int(scene_emb.shape[-1]),
        "cosine": {
            "shape words (the rows UCE edits)": mean_pairwise_cosine(torch.stack(words)),
            "end-of-text after a shape word": mean_pairwise_cosine(torch.stack(eos)),
            "end-of-text of scene prompts": mean_pairwise_cosine(scene_eos),
        },
    }
    kept = [o for o in kinds if o not in erased]
    places = PLACE_NAMES
    probes = {
        "erased shapes' scene prompts": [f"a {color} {o} {place_phrase(p)}" for o in erased for p in places],
        "kept shapes' scene prompts": [f"a {color} {o} {place_phrase(p)}" for o in kept for p in places],
        "object-less prompts": [f"the {p}" for p in places],
    }
    out["relative_key_change_after_T2_edit"] = {}
    for tokens in ("concept_eos", "concept"):
        delta = unlearn(pipe, list(erased), "uce", UCEConfig(tokens=tokens), preserve=kept)
        keys = lambda: {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if n.endswith("attn2.to_k.weight")}  # noqa: E731
        before = keys()
        delta.apply_(pipe)
        after = keys()
        delta.restore_(pipe)

        def reach(prompts: list[str]) -> float:
            emb = text_embeddings(pipe, prompts).double()
            ratios = []
            for n, w in before.items():
                old = emb @ w.double().T
                new = emb @ after[n].double().T
                ratios.append(float(((new - old).norm(dim=-1) / old.norm(dim=-1).clamp_min(1e-12)).mean()))
            return sum(ratios) / len(ratios)

        out["relative_key_change_after_T2_edit"][f"tokens={tokens}"] = {k: reach(v) for k, v in probes.items()}
    name = "uce_diagnosis.json" if args.world == FIRST_WORLD else f"uce_diagnosis_{args.world}.json"
    atomic_write_text(RESULTS / name, json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
