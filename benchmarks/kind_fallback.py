"""What the default world draws when a prompt's kind word carries nothing, and what an erased common kind becomes.

A diagnosis for the open part of selective forgetting (a common kind, circle,
resists erasure). Pruning makes a kind word carry less; if a scene prompt
whose kind word carries nothing still draws the commonest kinds, then
taking the word's meaning away cannot, by itself, take a common kind away.

1. On the unedited model, the judges' object verdicts for scene prompts
   without a kind word ("a red on the grass"), with a word no world names
   ("a red zed on the grass", "a red cup on the grass"), with the word
   "thing", and for object-less prompts ("the grass").
2. After the causal variant's erase of circle + star (``--variant causal``
   with ShapeWorld's preset: pruning and its repair, the default when this
   was measured), the verdicts for circle's, star's and house's own prompts,
   beside the unedited model's.

Every image is on the tuning split of ``selective_forgetting.py`` (the
colour/place pairs and seeds where settings are chosen), read by the oracle
and the second judge; ``--images`` per prompt set.

    python benchmarks/kind_fallback.py [--images 64]

Writes benchmarks/results/kind_fallback.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selective_forgetting as sf  # noqa: E402

from fia.evaluate.suites.shapeworld import factor_cycle  # noqa: E402
from fia.io import atomic_write_text  # noqa: E402
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge  # noqa: E402
from fia.shapeworld.render import prompt_for  # noqa: E402
from fia.shapeworld.vocab import place_phrase  # noqa: E402

OUT = sf.RESULTS / "kind_fallback.json"
SEED_OFFSET = 150_000  # past the tuning split's kind, phrasing and quality seeds
WORDLESS = {"no kind word": "", "unknown word 'zed'": "zed", "unknown word 'cup'": "cup", "the word 'thing'": "thing"}


def prompt_sets(images: int, shift: int) -> dict[str, list[str]]:
    """Each probe's prompts, on the split's colour/place cycle (offset 0 for the wordless ones)."""
    out: dict[str, list[str]] = {}
    for name, word in WORDLESS.items():
        prompts = []
        for k in range(images):
            color, place = factor_cycle(k, 0, shift)
            prompts.append(" ".join(f"a {color} {word} {place_phrase(place)}".split()))
        out[name] = prompts
    out["object-less"] = [f"the {factor_cycle(k, 0, shift)[1]}" for k in range(images)]
    for kind in ("circle", "star", "house"):
        i = sf.KINDS.index(kind)
        out[f"{kind}'s prompts"] = [prompt_for(kind, *factor_cycle(k, i, shift)) for k in range(images)]
    return out


def verdicts(pipe, judges, prompts: list[str], seeds: list[int]) -> dict[str, dict[str, int]]:
    """Per judge, how many images it reads as each object (``none``: no kind it knows)."""
    labels, _ = sf.judged(pipe, judges, prompts, seeds)
    return {name: dict(collections.Counter(lab["object"]).most_common()) for name, lab in labels.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shift, seed_base = sf.SPLITS["tune"]
    pipe = load_pipeline(world=sf.WORLD.name)
    judges = {"oracle": load_oracle(world=sf.WORLD.name), "judge2": load_second_judge(world=sf.WORLD.name)}
    sets = prompt_sets(args.images, shift)
    seeds = {name: [seed_base + SEED_OFFSET + 1000 * j + k for k in range(args.images)] for j, name in enumerate(sets)}
    t0 = time.perf_counter()
    unedited = {name: verdicts(pipe, judges, prompts, seeds[name]) for name, prompts in sets.items()}
    edit = sf.edit_for(pipe, "causal", ["circle", "star"])
    edit.apply_(pipe)
    try:
        kinds = [name for name in sets if name.endswith("'s prompts")]
        erased = {name: verdicts(pipe, judges, sets[name], seeds[name]) for name in kinds}
    finally:
        edit.restore_(pipe)
    result = {
        "commit": sf.commit(),
        "split": "tune",
        "images": args.images,
        "examples": {name: prompts[:2] for name, prompts in sets.items()},
        "unedited": unedited,
        "after erasing circle + star (causal)": erased,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(OUT, json.dumps(result, indent=1) + "\n")
    for title in ("unedited", "after erasing circle + star (causal)"):
        print(title)
        for name, by_judge in result[title].items():
            print(f"  {name:24s} " + "  |  ".join(f"{j}: " + ", ".join(f"{o} {n}" for o, n in list(c.items())[:5]) for j, c in by_judge.items()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
