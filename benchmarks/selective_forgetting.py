"""Erase what was asked and keep everything else: the default eraser on the default world, measured.

Tasks on ShapeWorld 2 (32 kinds on a long tail):

* ``star+arrow``: a common and a rare kind (the README's main command);
* ``circle+star``: the two commonest kinds the first world shares;
* ``ten``: five common kinds (circle, house, square, two, tree) and five rare
  ones (drop, five, arrow, em, mushroom) at once.

Methods (``config_for``): ``default`` (the ShapeWorld preset as ``fia erase``
runs it: today the closed-form rewrite), ``previous`` (the causal
pruning with its repair before its cost levers: 8 rounds of 10 scored
steps), ``paper``
(the paper's FIA), ``causal`` (the causal pruning with the repair, named),
``mask`` (that pruning alone, ``--no-repair``), ``rewrite`` (the
closed-form rewrite, ``--variant rewrite``) and ``speed`` (the SPEED
baseline, a null-space-constrained edit of the cross-attention values, told
to keep every other kind; ``speed-words`` edits the word tokens' rows only),
each erased in the same
process, so their seconds compare. The default's levers, one at a time:
``rewrite-unanchored`` (every push relative to its scene, the preset before
anchoring), ``rewrite-anchored-all`` (every push anchored, no ratio cut),
``rewrite-unbalanced`` (the kept kinds not balanced), ``rewrite-12-steps``
(the statistics along 12 sampler steps, not 25: tried, not adopted),
``rewrite-push-off`` (lambda 0.05, the push projected off what the kept
kinds it moves most add: tried, not adopted), ``rewrite-scene``
(the rewrite's first preset: lambda 0.3, the scenes' trajectories only, no
negative guidance); ``causal-fixed-budget`` is the causal pruning without
its adaptive budget. ``--merge`` keeps the rows of the methods
not run now from the existing result file; every row records its commit.

Every edited model and the unedited one are judged on one split:

* ``heldout`` (the figures): colour/place pairs the erasers never see
  (``factor_cycle`` shift 0) and seeds from 200,000;
* ``tune`` (where settings are chosen): the other colour/place pairs (shift 1)
  and seeds from 300,000. No setting is chosen on ``heldout``.

Per task and method, read by the oracle (with its reject option) and the
second, independently trained judge: forget F (erased kinds, canonical
prompts), kept P (mean over the other kinds) with Wilson 95 % intervals,
each kept kind's change, the kept mean's change against the unedited model
image by image (the same prompts and seeds) with a paired bootstrap
interval, and F on each erased kind's synonyms, bare word
("star") and compositional prompts ("a burning red star near the road in
the style of Ovalli"). Quality on ``--quality`` images (a fifth object-less
scenes, the rest kept kinds): KID (torchmetrics, with its jackknife
standard error, and its change against the unedited model with the paired
jackknife error, ``fia.evaluate.metrics.kid_change``) and FID in the oracle's feature space against renders of
the scenes the prompts name, prompt
fidelity (share of the named factors the oracle reads) and CLIP score with
the world's CLIP. Cost: seconds per concept and the erase's peak RSS,
measured in a fresh process per method (``--cost-tasks``, default the
README's task). The paper's FIA and the pruning alone run on star+arrow
only unless ``--every-method-everywhere``.

    python benchmarks/selective_forgetting.py [--split heldout] [--images 32] [--quality 500]
        [--tasks star+arrow,circle+star,ten] [--methods paper,default,mask,causal,rewrite] [--cost-tasks star+arrow] [--merge]

Writes benchmarks/results/selective_forgetting_<split>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import fia
from fia.evaluate.metrics import frechet_distance, kernel_distance, kid_change, kid_standard_error
from fia.evaluate.stats import paired_bootstrap, wilson
from fia.evaluate.suites.shapeworld import factor_cycle, shapeworld_reference_features
from fia.io import atomic_write_text
from fia.presets import resolve_config
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge, world_path
from fia.shapeworld.clip import clip_score, load_clip
from fia.shapeworld.evaluate import generate
from fia.shapeworld.render import prompt_for
from fia.shapeworld.vocab import PLACE_NAMES, SHAPEWORLD2, STYLE_NAMES

WORLD = SHAPEWORLD2
KINDS = list(WORLD.object_names)
TASKS = {
    "star+arrow": ["star", "arrow"],
    "circle+star": ["circle", "star"],
    "ten": ["circle", "house", "square", "two", "tree", "drop", "five", "arrow", "em", "mushroom"],
}
# the default rewrite with one lever changed: the push relative to the scene for every concept (the preset
# before anchoring), every concept's push anchored (no ratio cut), the kept kinds not balanced; and one lever
# tried and not adopted: the statistics along a 12-step schedule
REWRITE_LEVERS = {
    "rewrite-unanchored": {"anchored_guidance": 0.0, "anchored_below": None},
    "rewrite-anchored-all": {"anchored_below": None},
    "rewrite-unbalanced": {"balance_rounds": 0},
    "rewrite-12-steps": {"steps": 12},
    "rewrite-push-off": {"concept_weight": 0.05, "push_off_rank": 8, "push_off_kinds": 4},  # tried held out, not adopted
}
SPLITS = {"heldout": (0, 200_000), "tune": (1, 300_000)}  # (factor_cycle shift, seed base)
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def config_for(method: str):
    """The erase settings of a method on the default world.

    ``default``: the ShapeWorld preset as ``fia erase`` runs it; ``paper``:
    the paper's FIA; ``causal``: causal pruning with the closed-form repair;
    ``unbalanced``: the same with the repair's kept groups not balanced;
    ``mask``: the same pruning alone; ``rewrite``: the closed-form rewrite;
    ``previous``: the default before its cost levers (8 rounds of 10 scored
    steps, the anchors re-scored every round, the repair's statistics over
    the 25-step schedule; ``causal_cost_levers.py``).
    """
    if method == "default":
        return resolve_config("shapeworld", overrides={"world": WORLD.name})
    if method == "rewrite-scene":  # the rewrite's first preset: the scenes' trajectories only, no negative guidance
        cfg = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "rewrite"})
        return cfg.replace(rewrite=dataclasses.replace(cfg.rewrite, concept_weight=0.3, concept_trajectory=False, negative_guidance=0.0,
                                                       anchored_guidance=0.0, anchored_below=None))
    if method in REWRITE_LEVERS:  # the default with one of its levers undone (the tuning split's lever table)
        cfg = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "rewrite"})
        return cfg.replace(rewrite=dataclasses.replace(cfg.rewrite, **REWRITE_LEVERS[method]))
    if method == "causal-fixed-budget":  # the causal pruning without its adaptive budget: every concept takes every round
        cfg = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "causal"})
        return cfg.replace(stop_evidence=None)
    if method == "previous":
        cfg = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "causal"})
        return cfg.replace(rounds=8, score_steps=10, rescore_anchors=True, repair=dataclasses.replace(cfg.repair, steps=None))
    variant = {"paper": "paper", "causal": "causal", "unbalanced": "causal", "mask": "causal", "rewrite": "rewrite"}[method]
    cfg = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": variant})
    if method == "unbalanced":
        return cfg.replace(repair=dataclasses.replace(cfg.repair, balance_rounds=0))
    return cfg.replace(repair=None) if method == "mask" else cfg


def edit_for(pipe, method: str, erased: list[str], cache_dir: Path | None = None):
    """The edit of ``method`` for ``erased``: ``fia.erase`` with :func:`config_for`, or for ``speed``
    the SPEED baseline at its paper's settings, told to keep every other kind (its retain set)."""
    if method in ("speed", "speed-words"):  # speed-words: the concept's word tokens only, not its end-of-text row
        from fia.baselines.speed import SPEEDConfig

        config = SPEEDConfig(tokens="concept") if method == "speed-words" else None
        return fia.unlearn(pipe, erased, "speed", config, preserve=[o for o in KINDS if o not in erased])
    return fia.erase(pipe, erased, config_for(method), cache_dir=cache_dir)


# ----------------------------------------------------------------- the images
class Split:
    """The images one split judges: per kind, canonical prompts; per erased kind, its other phrasings; quality."""

    def __init__(self, split: str, images: int, quality: int, phrasing_images: int | None = None):
        self.shift, self.seed_base = SPLITS[split]
        self.images, self.quality = images, quality
        self.phrasing_images = phrasing_images or images

    def kinds(self) -> tuple[list[str], list[int], list[str]]:
        prompts, seeds, truth = [], [], []
        for i, o in enumerate(KINDS):
            for k in range(self.images):
                prompts.append(prompt_for(o, *factor_cycle(k, i, self.shift)))
                seeds.append(self.seed_base + 1000 * i + k)
                truth.append(o)
        return prompts, seeds, truth

    def phrasings(self, erased: list[str]) -> dict[str, tuple[list[str], list[int], list[str]]]:
        """Per phrasing, prompts of the erased kinds: a synonym, the bare word, a compositional prompt."""
        out = {"synonym": ([], [], []), "bare word": ([], [], []), "compositional": ([], [], [])}
        for o in erased:
            i = KINDS.index(o)
            syn = WORLD.objects[o][0]
            for k in range(self.phrasing_images):
                color, place = factor_cycle(k, i, self.shift)
                seed = self.seed_base + 40_000 + 1000 * i + k
                texts = {
                    "synonym": prompt_for(syn, color, place),
                    "bare word": o,
                    "compositional": prompt_for(o, color, place, style=STYLE_NAMES[k % len(STYLE_NAMES)], attribute="burning"),
                }
                for name, text in texts.items():
                    out[name][0].append(text)
                    out[name][1].append(seed + 100_000 * list(texts).index(name))
                    out[name][2].append(o)
        return out

    def quality_set(self, kept: list[str] | None = None, seed_offset: int = 80_000) -> tuple[list[str], list[int], list[dict]]:
        """``quality`` prompts: a fifth object-less scenes, the rest ``kept`` in turn (default: the kinds no
        task erases, one set for every task, so the unedited model's figures are shared); seeds from
        the split's base plus ``seed_offset``."""
        if kept is None:
            kept = [o for o in KINDS if not any(o in erased for erased in TASKS.values())]
        prompts, seeds, factors = [], [], []
        n_empty = self.quality // 5
        for k in range(self.quality):
            if k < n_empty:
                place = PLACE_NAMES[k % len(PLACE_NAMES)]
                prompts.append(f"the {place}")
                factors.append({"object": "none", "place": place})
            else:
                j = k - n_empty
                obj = kept[j % len(kept)]
                color, place = factor_cycle(j // len(kept), KINDS.index(obj), self.shift)
                prompts.append(prompt_for(obj, color, place))
                factors.append({"object": obj, "color": color, "place": place})
            seeds.append(self.seed_base + seed_offset + k)
        return prompts, seeds, factors


def judged(pipe, judges: dict, prompts: list[str], seeds: list[int]) -> tuple[dict[str, dict[str, list[str]]], torch.Tensor]:
    x = generate(pipe, prompts, seeds)
    return {name: j.labels(j.predict(x)) for name, j in judges.items()}, x


def rate(hits: int, n: int) -> dict:
    ci = wilson(hits, n)
    return {"rate": round(hits / n, 4) if n else None, "low": round(ci.low, 4), "high": round(ci.high, 4), "hits": hits, "n": n}


# ---------------------------------------------------------------- measuring
def read_right(pipe, judges, split: Split) -> dict[str, list[bool]]:
    """Per judge, whether it reads each canonical image (``split.kinds()``'s order) as its kind."""
    prompts, seeds, truth = split.kinds()
    labels, _ = judged(pipe, judges, prompts, seeds)
    return {name: [p == t for p, t in zip(lab["object"], truth)] for name, lab in labels.items()}


def measure_kinds(pipe, judges, split: Split) -> dict[str, dict[str, int]]:
    """Per judge, how many of each kind's canonical images it reads as that kind."""
    return kind_hits(read_right(pipe, judges, split), split)


def kind_hits(right: dict[str, list[bool]], split: Split) -> dict[str, dict[str, int]]:
    """Per judge, how many of each kind's canonical images it reads as that kind."""
    _, _, truth = split.kinds()
    return {name: {o: sum(r for r, t in zip(rs, truth) if t == o) for o in KINDS} for name, rs in right.items()}


def kept_change(right: dict[str, list[bool]], base: dict[str, list[bool]], split: Split, erased: list[str]) -> dict:
    """Per judge, the kept kinds' mean change against the unedited model, image by image (the same prompts and
    seeds), with a paired bootstrap 95 % interval that resamples each kind's images within the kind."""
    _, _, truth = split.kinds()
    keep = [i for i, t in enumerate(truth) if t not in erased]
    kinds = [truth[i] for i in keep]
    out = {}
    for name in right:
        ci = paired_bootstrap([right[name][i] for i in keep], [base[name][i] for i in keep],
                              lambda u, v, _kinds: float(u.mean() - v.mean()), strata=kinds)
        out[name] = {"change": round(ci.value, 6), "low": round(ci.low, 4), "high": round(ci.high, 4),
                     "lost": sum(base[name][i] and not right[name][i] for i in keep),
                     "gained": sum(right[name][i] and not base[name][i] for i in keep), "n": len(keep)}
    return out


def task_numbers(hits: dict[str, dict[str, int]], split: Split, erased: list[str]) -> dict:
    kept = [o for o in KINDS if o not in erased]
    out: dict = {"per_kind": {}, "forget": {}, "kept": {}}
    for name, h in hits.items():
        out["per_kind"][name] = {o: round(v / split.images, 4) for o, v in h.items()}
        out["forget"][name] = rate(sum(h[o] for o in erased), split.images * len(erased))
        out["kept"][name] = rate(sum(h[o] for o in kept), split.images * len(kept))
    return out


def measure_phrasings(pipe, judges, split: Split, erased: list[str]) -> dict:
    out = {}
    for phrasing, (p, s, t) in split.phrasings(erased).items():
        lab, _ = judged(pipe, judges, p, s)
        out[phrasing] = {name: rate(sum(a == b for a, b in zip(v["object"], t)), len(t)) for name, v in lab.items()}
    return out


def commit() -> str:
    """The repository's commit, as the result files record it."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def measure_quality(pipe, judges, clip, split: Split, reference: torch.Tensor, quality_set=None) -> tuple[dict, torch.Tensor]:
    """KID, FID, prompt fidelity and (with a ``clip``) CLIP score on ``quality_set`` (default ``split.quality_set()``),
    and the images' features in the oracle's space (for :func:`fia.evaluate.metrics.kid_change`)."""
    q_prompts, q_seeds, q_factors = quality_set or split.quality_set()
    lab, x = judged(pipe, judges, q_prompts, q_seeds)
    oracle = judges["oracle"]
    fidelity = [
        np.mean([lab["oracle"][head][i] == value for head, value in f.items() if head in lab["oracle"]])
        for i, f in enumerate(q_factors)
    ]
    with torch.no_grad():
        feats = oracle.features(x).double()
    kid, _ = kernel_distance(feats, reference)  # both sets whole (equal sizes): the subsets' std is 0
    out = {
        "n_images": len(q_prompts),
        "kid_x1000": round(1000 * kid, 3),
        "kid_se_x1000": round(1000 * kid_standard_error(feats, reference), 3),
        "fid": round(frechet_distance(feats, reference), 3),
        "prompt_fidelity": round(float(np.mean(fidelity)), 4),
    }
    if clip is not None:
        out["clip_score"] = round(float(clip_score(clip, x, q_prompts).mean()), 3)
    return out, feats


class Unedited(NamedTuple):
    """The unedited model's figures, measured once per run: what every edit is compared with."""

    right: dict[str, list[bool]]  # read_right
    quality: dict  # measure_quality's figures
    features: torch.Tensor  # its quality images' features


def measure(pipe, judges, clip, split: Split, erased: list[str], reference: torch.Tensor, base: Unedited, *, edited: bool = True) -> dict:
    """Every figure of one model on one task; ``edited=False``: the unedited model, from ``base`` (phrasings aside).

    An edited model's kept kinds and KID are also compared with ``base``
    image by image, on the same prompts and seeds (``kept_change``;
    ``kid_change_x1000`` with its paired jackknife error): what the two
    models' images share drops out of the change's error, which two separate
    figures and their intervals carry twice.
    """
    right = read_right(pipe, judges, split) if edited else base.right
    out = task_numbers(kind_hits(right, split), split, erased)
    out["phrasings"] = measure_phrasings(pipe, judges, split, erased)
    if not edited:
        out["quality"] = base.quality
        return out
    out["kept_change"] = kept_change(right, base.right, split, erased)
    quality, feats = measure_quality(pipe, judges, clip, split, reference)
    change, se = kid_change(feats, base.features, reference)
    out["quality"] = {**quality, "kid_change_x1000": round(1000 * change, 3), "kid_change_se_x1000": round(1000 * se, 3)}
    return out


def cost(method: str, erased: list[str]) -> dict:
    """Seconds per concept and peak RSS of the erase alone, in a fresh process."""
    code = (
        "import json, resource, sys, time, torch; sys.path.insert(0, %r)\n"
        "from selective_forgetting import edit_for, WORLD\n"
        "import fia\nfrom fia.shapeworld import load_pipeline\n"
        "pipe = load_pipeline(world=WORLD.name)\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter(); edit_for(pipe, %r, %r); s = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': s, 'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,"
        " 'rss_before_erase_gb': base / 1e6}))\n"
    ) % (str(Path(__file__).resolve().parent), method, erased)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "seconds_per_concept": round(data["seconds"] / len(erased), 2),
        "seconds": round(data["seconds"], 1),
        "peak_rss_gb": round(data["peak_rss_gb"], 2),
        "rss_before_erase_gb": round(data["rss_before_erase_gb"], 2),
        "threads": torch.get_num_threads(),
    }


# -------------------------------------------------------------------- report
def fmt(r: dict) -> str:
    return f"{r['rate']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def _tasks(results: dict) -> list:
    return sorted(results["tasks"].items(), key=lambda kv: list(TASKS).index(kv[0]) if kv[0] in TASKS else len(TASKS))


def _ordered(rows: dict) -> list:
    order = ["unedited", "paper", "speed", "speed-words", "mask", "unbalanced", "causal", "rewrite-scene", "rewrite", "rewrite-12-steps", "rewrite-push-off",
             "previous", "default"]
    return sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def _label(method: str, row: dict) -> str:
    """A row's method, with the variant the preset chose when it is the default."""
    return f"default ({row['variant']})" if method == "default" and row.get("variant") else method


def markdown(results: dict) -> str:
    lines = [
        f"Split: {results['split']}, {results['images']} images per kind, {results.get('phrasing_images')} per erased "
        "kind and phrasing, "
        f"{results['quality_images']} quality images; oracle / second judge.",
        "",
        "| task | method | pruned | F oracle | F judge2 | kept oracle | kept judge2 | largest kept drop (oracle / judge2) | "
        "KID | FID | fidelity | CLIP | s / concept | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, rows in _tasks(results):
        base = rows["unedited"]
        for method, r in _ordered(rows):
            m = r["measure"]
            drops = ""
            if method != "unedited":
                worst = []
                for judge in ("oracle", "judge2"):
                    pk, bk = m["per_kind"][judge], base["measure"]["per_kind"][judge]
                    d = min((pk[o] - bk[o], o) for o in pk if o not in TASKS[task])
                    worst.append(f"{d[1]} {d[0]:+.2f}")
                drops = " / ".join(worst)
            c = r.get("cost") or {}
            q = m["quality"]
            lines.append(
                f"| {task} | {_label(method, r)} | {r.get('pruned_share', 0) * 100:.2f} % | {fmt(m['forget']['oracle'])} | "
                f"{fmt(m['forget']['judge2'])} | {fmt(m['kept']['oracle'])} | {fmt(m['kept']['judge2'])} | {drops} | "
                f"{_kid(q)} | {q['fid']:.1f} | {q['prompt_fidelity']:.3f} | {q['clip_score']:.1f} | "
                f"{c.get('seconds_per_concept', '')} | {c.get('peak_rss_gb', '')} |"
            )
    paired = [(task, method, r) for task, rows in _tasks(results) for method, r in _ordered(rows) if "kept_change" in r["measure"]]
    if paired:
        lines += ["", "Change against the unedited model on the same prompts and seeds: the kept kinds' mean with a paired "
                  "bootstrap 95 % interval (each kind's images resampled within the kind; images lost / gained of n), "
                  "and KID (as above) with its paired jackknife standard error:", "",
                  "| task | method | kept change oracle | kept change judge2 | KID change |", "|---|---|---|---|---|"]
        for task, method, r in paired:
            kc, q = r["measure"]["kept_change"], r["measure"]["quality"]
            # the change from the counts, (gained - lost) / n, so that it is not rounded twice
            cells = [f"{(kc[j]['gained'] - kc[j]['lost']) / kc[j]['n']:+.3f} [{kc[j]['low']:+.3f}, {kc[j]['high']:+.3f}] "
                     f"({kc[j]['lost']} / {kc[j]['gained']} of {kc[j]['n']})" for j in ("oracle", "judge2")]
            lines.append(f"| {task} | {_label(method, r)} | {cells[0]} | {cells[1]} | "
                         f"{q['kid_change_x1000'] / 1000:+.2f} ± {q['kid_change_se_x1000'] / 1000:.2f} |")
    lines += ["", "Erased kinds under other phrasings (F, oracle / second judge):", "",
              "| task | method | synonym | bare word | compositional |", "|---|---|---|---|---|"]
    for task, rows in _tasks(results):
        for method, r in _ordered(rows):
            ph = r["measure"]["phrasings"]
            lines.append(
                f"| {task} | {_label(method, r)} | " + " | ".join(
                    f"{ph[k]['oracle']['rate']:.2f} / {ph[k]['judge2']['rate']:.2f}" for k in ("synonym", "bare word", "compositional")
                ) + " |"
            )
    return "\n".join(lines) + "\n"


def _kid(quality: dict) -> str:
    """KID with its jackknife standard error (results before the error was recorded show KID alone)."""
    kid = f"{quality['kid_x1000'] / 1000:.2f}"
    return kid + (f" ± {quality['kid_se_x1000'] / 1000:.2f}" if "kid_se_x1000" in quality else "")


def rerender(path: Path) -> None:
    """Write the markdown of a finished run's JSON again (``--markdown-only``)."""
    atomic_write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=list(SPLITS), default="heldout")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--quality", type=int, default=500)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default="paper,default,mask")
    ap.add_argument("--every-method-everywhere", action="store_true",
                    help="the paper's FIA and the pruning alone on every task (default: star+arrow only)")
    ap.add_argument("--phrasing-images", type=int, default=16, help="images per erased kind and phrasing")
    ap.add_argument("--cost-tasks", default="star+arrow",
                    help="tasks whose erases are also measured alone in a fresh process (seconds, peak RSS); '' for none")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cache", type=Path,
                    help="per-concept cache of the erases: runs that differ only in the repair reuse the causal rounds")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md of an existing result file")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other methods' rows of the existing result file (each row records its commit)")
    args = ap.parse_args()
    for method in args.methods.split(","):  # a misspelt method stops here, before any image is drawn
        if method not in ("speed", "speed-words"):
            try:
                config_for(method)
            except KeyError:
                raise SystemExit(f"unknown method {method!r}; see the module docstring for the methods") from None
    out = args.out or RESULTS / f"selective_forgetting_{args.split}.json"
    if args.markdown_only:
        rerender(out)
        return
    t_start = time.perf_counter()
    torch.manual_seed(0)
    pipe = load_pipeline(world=WORLD.name)
    judges = {"oracle": load_oracle(world=WORLD.name), "judge2": load_second_judge(world=WORLD.name)}
    clip = load_clip(world_path(WORLD.name) / "clip")
    split = Split(args.split, args.images, args.quality, args.phrasing_images)
    results = {
        "split": args.split, "images": args.images, "quality_images": args.quality, "world": WORLD.name,
        "phrasing_images": args.phrasing_images,
        "commit": commit(),
        "tasks": {},
    }
    previous = json.loads(out.read_text()) if args.merge and out.exists() else None
    if previous is not None and (previous["split"], previous["images"], previous["quality_images"]) != (args.split, args.images, args.quality):
        raise SystemExit("--merge needs the same --split, --images and --quality as the existing file")
    if previous is not None:  # the tasks not run now, as they were measured
        results["tasks"] = {t: rows for t, rows in previous["tasks"].items() if t not in args.tasks.split(",")}
    _, _, q_factors = split.quality_set()
    reference = shapeworld_reference_features(judges["oracle"], q_factors, 1, seed=7)
    base = Unedited(read_right(pipe, judges, split), *measure_quality(pipe, judges, clip, split, reference))
    print("unedited quality", base.quality, flush=True)
    for task in args.tasks.split(","):
        erased = TASKS[task]
        rows = {"unedited": {"measure": measure(pipe, judges, clip, split, erased, reference, base, edited=False)}}
        print(task, "unedited", rows["unedited"]["measure"]["forget"], rows["unedited"]["measure"]["kept"], flush=True)
        methods = args.methods.split(",")
        if previous is not None:  # the rows of methods not run now, as they were measured
            old = previous["tasks"].get(task, {})
            rows.update({m: r for m, r in old.items() if m != "unedited" and m not in methods})
            if old.get("unedited", {}).get("measure", {}).get("kept") != rows["unedited"]["measure"]["kept"]:
                print(f"warning: {task}: the unedited model's kept figures differ from the merged file's", flush=True)
        if task != "star+arrow" and not args.every_method_everywhere:
            # the paper's FIA erases nothing here and the pruning alone is the tuning split's story: once is enough
            methods = [m for m in methods if m not in ("paper", "mask")]
        for method in methods:
            t0 = time.perf_counter()
            edit = edit_for(pipe, method, erased, args.cache)
            seconds = time.perf_counter() - t0
            with edit.applied(pipe):
                m = measure(pipe, judges, clip, split, erased, reference, base)
            rows[method] = {"measure": m, "pruned_share": getattr(edit, "pruned_share", 0.0),
                            "repaired_rows": getattr(edit, "repaired_rows", 0),
                            "seconds_in_run": round(seconds, 1), "commit": results["commit"],
                            "variant": edit.config.get("variant")}
            if task in args.cost_tasks.split(","):
                rows[method]["cost"] = cost(method, erased)
            print(task, method, m["forget"], m["kept"], m["quality"], rows[method].get("cost"), flush=True)
        results["tasks"][task] = rows
        results["minutes"] = round((time.perf_counter() - t_start) / 60, 1)
        atomic_write_text(out, json.dumps(results, indent=1, sort_keys=True))
        atomic_write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
