"""Does the rewrite's forgetting carry over to colour/place pairs it was not fitted on? A check that needs no held-out image.

The rewrite (``--variant rewrite``) is fitted on prompts whose colour/place
pairs are the 18 "odd" pairs (``fia.shapeworld.task.scene_pair``), and the tuning split
of ``selective_forgetting.py`` uses the same 18: it measures how well the
rewrite fits its own prompts. Here the rewrite's prompts are restricted to 12
of those pairs (places colour + 1 and colour + 3) and the judged images use
the other 6 (place colour + 5), with seeds from 400,000: pairs and seeds
neither the fitting nor the held-out split (the even pairs) uses.
``--judged-offset 1`` or ``3`` rotates that fold: the judged images use the
odd pairs with place = colour + 1 (or + 3), the rewrite's prompts the other
two odd offsets.

    python benchmarks/rewrite_generalisation.py [--concepts star,arrow] [--images 8] [--erased-images N]
        [--settings "0.3,0.03,5,4,24;0.05,0.03,5,4,24,1,1;causal"] [--context-free N] [--judged-offset 5] [--out FILE]

``--context-free N`` adds N prompts per erased kind that name it without its
full scene, a lever the library does not offer yet: "a red star" and the bare
"a star" (their scene: the empty prompt), "a star near the road" (its scene:
"the road").

Each setting is ``concept_weight,damping,balance_rounds,keep_prompts_per_kind,concept_prompts_per_concept``,
optionally followed by ``,concept_trajectory,negative_guidance`` (``1,1``: the
concept's own trajectory too, eta 1; left out: ``0,0``, the first preset's
form), then ``,anchored_guidance`` (beta; left out: 0, the push relative
to the scene), ``,anchored_below`` (a number; left out: every concept
anchored) and ``,keep_guided`` (``1``: the kept term on each kept prompt's
guided input; left out: ``0``, its rows one by one), ``,push_off_rank`` and
``,push_off_kinds`` (the push projected off that many output directions of
each layer, from what that many kept kinds add; left out: ``0`` and ``4``,
the whole push); ``causal`` is ShapeWorld's causal variant (pruning and its repair),
whose evidence prompts are held to the same 12 pairs. ``--erased-images``
judges the erased kinds on more images than the kept ones (default: as
many). Writes benchmarks/results/rewrite_generalisation.json (or ``--out``):
per setting F and P (oracle and second judge), the erased kinds' hits and
the largest kept drops.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import fia
import fia.shapeworld.task
from fia.config import RewriteConfig
from fia.evaluate.suites.shapeworld import factor_cycle
from fia.io import atomic_write_text
from fia.presets import resolve_config
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge, vocab
from fia.shapeworld.evaluate import generate
from fia.shapeworld.render import prompt_for

WORLD = vocab.SHAPEWORLD2
KINDS = list(WORLD.object_names)
RESULTS = Path(__file__).resolve().parent / "results"


# place - colour (mod 6) of the judged odd pairs; the rewrite is fitted on the other two odd offsets.
# 5 is the split every recorded figure uses; --judged-offset 1 or 3 rotates the fold.
JUDGED_OFFSET = 5


def add_fold_option(ap: argparse.ArgumentParser) -> None:
    """``--judged-offset``, shared with ``rewrite_levers.py``; :func:`use_fold` applies it."""
    ap.add_argument("--judged-offset", type=int, choices=(1, 3, 5), default=5,
                    help="the fold: judge the odd pairs with place = colour + this, fit on the other two offsets (default 5)")


def use_fold(judged_offset: int) -> None:
    """Judge the odd pairs with place = colour + ``judged_offset``; fit on the other two offsets."""
    global JUDGED_OFFSET
    JUDGED_OFFSET = judged_offset


def fitting_offsets() -> tuple[int, int]:
    """The two odd place - colour offsets the rewrite's prompts use (those not judged)."""
    return tuple(d for d in (1, 3, 5) if d != JUDGED_OFFSET)


def fitting_pairs(k: int) -> tuple[str, str]:
    """The rewrite's colour/place pair ``k``, from the 12 odd pairs with place = colour + 1 or + 3 (mod 6)
    (with ``--judged-offset``: the two odd offsets not judged)."""
    c = k % len(vocab.COLORS)
    offset = fitting_offsets()[(k // len(vocab.COLORS)) % 2]
    return vocab.COLORS[c], vocab.PLACE_NAMES[(c + offset) % len(vocab.PLACE_NAMES)]


def judged_images(images: int, erased: Sequence[str] = (), erased_images: int | None = None) -> tuple[list[str], list[int], list[str]]:
    """Per kind, ``images`` canonical prompts (``erased_images`` for the erased kinds) on the 6 odd pairs
    with place = colour + 5 (``JUDGED_OFFSET``), seeds from 400,000."""
    prompts, seeds, truth = [], [], []
    for i, kind in enumerate(KINDS):
        k = n = 0
        while n < ((erased_images or images) if kind in erased else images):
            color, place = factor_cycle(k, i, 1)
            if (vocab.PLACE_NAMES.index(place) - vocab.COLORS.index(color)) % 6 == JUDGED_OFFSET:
                prompts.append(prompt_for(kind, color, place))
                seeds.append(400_000 + 1000 * i + k)
                truth.append(kind)
                n += 1
            k += 1
    return prompts, seeds, truth


def with_context_free(n: int):
    """The rewrite's phrasings plus ``n`` context-free prompts per erased kind (module docstring)."""
    plain = fia.shapeworld.task.concept_phrasings

    def phrasings(erased, world, count):
        concept, scene = plain(erased, world, count)
        for name in erased:
            kind = next(iter(fia.shapeworld.task.shapeworld_canonical([name], world)), None)
            if kind is None:
                continue
            words = [kind, *WORLD.objects[kind]]
            for k in range(n):
                color, place = fitting_pairs(k)
                word = words[k % len(words)]
                if k % 3 == 0:
                    concept.append(prompt_for(word, color))
                    scene.append("")
                elif k % 3 == 1:
                    concept.append(prompt_for(word, None, place))
                    scene.append(prompt_for(None, None, place))
                else:
                    concept.append(prompt_for(word))
                    scene.append("")
        return concept, scene

    return phrasings


def hits_per_kind(pipe, judges, prompts, seeds, truth) -> dict[str, dict[str, int]]:
    x = generate(pipe, prompts, seeds)
    out = {}
    for name, judge in judges.items():
        labels = judge.labels(judge.predict(x))["object"]
        out[name] = {o: sum(label == t for label, t in zip(labels, truth) if t == o) for o in KINDS}
    return out


def erase_and_judge(pipe, judges, images, erase) -> tuple[dict[str, dict[str, int]], float]:
    """:func:`hits_per_kind` of the model edited by ``erase()`` (which returns the edit), and the erase's seconds.
    The model is restored afterwards."""
    t0 = time.perf_counter()
    mask = erase()
    seconds = time.perf_counter() - t0
    mask.apply_(pipe)
    try:
        return hits_per_kind(pipe, judges, *images), seconds
    finally:
        mask.restore_(pipe)


def rates(hits: dict, images: int, erased: list[str], erased_images: int | None = None) -> dict:
    kept = [o for o in KINDS if o not in erased]
    return {name: {"F": round(sum(h[o] for o in erased) / ((erased_images or images) * len(erased)), 3),
                   "P": round(sum(h[o] for o in kept) / (images * len(kept)), 3)} for name, h in hits.items()}


def config_for(setting: str):
    """The erase config of one ``--settings`` entry (module docstring)."""
    if setting == "causal":
        return resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "causal"})
    fields = setting.split(",")
    if len(fields) not in (5, 7, 8, 9, 10, 11, 12):
        raise SystemExit(f"a setting has 5 or 7 to 12 comma-separated fields, or is 'causal'; got {setting!r}")
    lam, damping, rounds, keep, concept = fields[:5]
    trajectory, eta = fields[5:7] or ("0", "0")
    anchored = fields[7] if len(fields) >= 8 else "0"
    below = float(fields[8]) if len(fields) >= 9 else None
    guided = len(fields) >= 10 and bool(int(fields[9]))
    push_off = int(fields[10]) if len(fields) >= 11 else 0
    push_kinds = int(fields[11]) if len(fields) == 12 else 4
    rc = RewriteConfig(float(lam), float(damping), int(rounds), int(keep), int(concept), bool(int(trajectory)), float(eta),
                       float(anchored), below, guided, push_off_rank=push_off, push_off_kinds=push_kinds)
    return resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "rewrite", "rewrite": rc})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="star,arrow")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--erased-images", type=int, help="images per erased kind (default: --images)")
    ap.add_argument("--settings", default="0.3,0.03,5,4,24;0.6,0.03,5,4,24;0.3,0.03,5,4,48;1.0,0.03,5,4,24;1.0,0.03,5,8,48")
    ap.add_argument("--context-free", type=int, default=0, help="context-free prompts per erased kind (docstring)")
    add_fold_option(ap)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    use_fold(args.judged_offset)
    erased = [c.strip() for c in args.concepts.split(",")]
    suffix = f"_context_free_{args.context_free}" if args.context_free else ""
    out = args.out or RESULTS / f"rewrite_generalisation{suffix}.json"
    fia.shapeworld.task.scene_pair = fitting_pairs  # the rewrite's prompts: 12 of the 18 odd pairs only
    if args.context_free:
        fia.shapeworld.task.concept_phrasings = with_context_free(args.context_free)
    pipe = load_pipeline(world=WORLD.name)
    judges = {"oracle": load_oracle(world=WORLD.name), "judge2": load_second_judge(world=WORLD.name)}
    n_erased = args.erased_images or args.images
    images = judged_images(args.images, erased, n_erased)
    base = hits_per_kind(pipe, judges, *images)
    results = {"concepts": erased, "images": args.images, "erased_images": n_erased, "context_free": args.context_free,
               "judged_offset": JUDGED_OFFSET,
               "unedited": rates(base, args.images, erased, n_erased),
               "unedited_erased_hits": {o: {j: base[j][o] for j in base} for o in erased}, "settings": []}
    print("unedited", results["unedited"], flush=True)
    for setting in args.settings.split(";"):
        cfg = config_for(setting)
        hits, seconds = erase_and_judge(pipe, judges, images, lambda: fia.erase(pipe, erased, cfg))
        drops = sorted(((hits["oracle"][o] - base["oracle"][o]) / args.images, o) for o in KINDS if o not in erased)[:3]
        row = {"setting": setting, "variant": cfg.VARIANT,
               **({"rewrite": cfg.rewrite.to_dict()} if cfg.VARIANT == "rewrite" else {}),
               "seconds": round(seconds, 1), "rates": rates(hits, args.images, erased, n_erased),
               "erased_hits": {o: {j: hits[j][o] for j in hits} for o in erased},
               "largest_kept_drops": [{"kind": o, "change": d} for d, o in drops]}
        results["settings"].append(row)
        print(setting, row["rates"], row["erased_hits"], flush=True)
        atomic_write_text(out, json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
