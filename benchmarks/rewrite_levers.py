"""Two more levers for the rewrite's kept/forgotten trade-off, measured and not offered: other layers, per-concept weights.

On circle + star the rewrite of FFN2 (``--variant rewrite``) forgets star
only by also taking part of arrow, cross, bolt and bell, which share star's
strokes (benchmarks/README.md, "what the kept kinds' loss trades against").
Every weighting of the FFN2 edit moves along one line there. Two other
levers:

* **Layers whose input carries the text.** FFN2's inputs are visual
  features, which star shares with arrow. The cross-attention's output
  projection ``attn2.to_out.0`` sees, at every pixel, a softmax mix of the
  prompt's value rows, so a star prompt's input differs from an arrow
  prompt's by what the text says. The same closed-form rewrite (same
  statistics, same solve) runs there instead of, or beside, FFN2
  (``@attn_out``, ``@ffn2+attn_out``), through ``fia.erase``'s target filter.
* **Per-concept weights** (the issue's "adaptive budget", in the rewrite's
  terms). The concept term ``lambda |W' X_c - W Z|^2`` (``z = (1 + eta) x_t
  - eta x_c``) pools every erased concept's pairs. With ``#R`` the pairs are
  collected per concept and the term becomes ``lambda sum_c a_c |W' X_c^(c)
  - W Z^(c)|^2 / sum_c a_c``; after each solve every concept's remaining
  residual, relative to the unedited layer's,

      r_c = sum_layers E|W' x_c - W z|^2 / sum_layers E|W x_c - W z|^2,
      E|W' x_c - W z|^2 = tr(W' G_c W'^T) - 2 tr(W' E[x_c z^T] W^T) + tr(W E[z z^T] W^T),

  multiplies ``a_c`` by ``r_c / median r`` (capped at 4, renormalised to
  mean 1), ``R`` rounds: a concept the edit fits worst gets more weight.
  The kept groups are balanced inside each solve as in the library.

Protocol of ``rewrite_generalisation.py``: the rewrite's prompts use 12 of
the 18 odd colour/place pairs, the judged images the other 6 (seeds from
400,000); no held-out image is used.

    python benchmarks/rewrite_levers.py [--concepts circle,star] [--images 16] [--erased-images 32]
        [--settings "0.05,0.03,5,4,24,1,1@attn_out;0.05,0.03,5,4,24,1,1#3"] [--out FILE]

Each setting is a ``rewrite_generalisation.py`` setting, then optionally
``@TARGETS`` (``ffn2``, the default; ``attn_out``; ``ffn2+attn_out``) and
``#R`` (concept reweighting rounds; 0, the default, is the library's pooled
term). Writes benchmarks/results/rewrite_levers.json (or ``--out``): per
setting F and P (oracle and second judge), the erased kinds' hits, the four
largest kept drops per judge and, with ``#R``, each round's ``r_c``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import fia
import fia.rewrite
import fia.shapeworld.task
from fia.io import atomic_write_text
from fia.sampling import capture, paired_steps
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge
from rewrite_generalisation import KINDS, WORLD, config_for, fitting_pairs, hits_per_kind, judged_images, rates

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    "ffn2": None,  # the config's own targets: FFN2, as the library edits it
    "attn_out": lambda _m, name: name.endswith(".attn2.to_out.0"),
    "ffn2+attn_out": lambda _m, name: name.endswith((".ff.net.2", ".attn2.to_out.0")),
}
WEIGHT_CAP = 4.0


def residual(weight, new, gram_c, cross, gram_t, eta: float) -> float:
    """``E|W' x_c - W z|^2`` with ``z = (1 + eta) x_t - eta x_c`` from the moments ``G_c``, ``C = E[x_t x_c^T]``, ``G_t``."""
    w, wn = weight.to(torch.float64), new.to(torch.float64)
    ezz = (1 + eta) ** 2 * gram_t - eta * (1 + eta) * (cross + cross.T) + eta**2 * gram_c
    exz = (1 + eta) * cross.T - eta * gram_c
    return float(((wn @ gram_c) * wn).sum() - 2 * ((wn @ exz) * w).sum() + ((w @ ezz) * w).sum())


class _PerConcept:
    """``G_c``, ``C`` and ``G_t`` per (concept, layer), from ``[uncond; concept; scene]`` batches."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], list] = {}
        self.concept = ""

    def hook(self, name, _module, args, _output) -> None:
        _, xc, xt = args[0].detach().chunk(3)
        xc, xt = (x.reshape(-1, x.shape[-1]).to(torch.float64) for x in (xc, xt))
        parts = [xc.T @ xc, xt.T @ xc, xt.T @ xt, xc.shape[0]]
        key = (self.concept, name)
        self.sums[key] = [a + b for a, b in zip(self.sums[key], parts)] if key in self.sums else parts


@contextlib.contextmanager
def concept_reweighting(names: list[str], rounds: int, log: list) -> Iterator[None]:
    """Within the block, ``fia.rewrite`` collects its concept pairs per concept and reweights them (module docstring)."""
    plain_moments, plain_solve = fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite
    per: dict[str, dict[str, tuple]] = {}

    def moments(pipe, targets, prompts, config, batch_size=16):
        acc, n = _PerConcept(), config.rewrite.concept_prompts_per_concept  # the prompts come concept by concept
        guides = ("follow", "prompts") if config.rewrite.concept_trajectory else ("follow",)
        with capture(targets, acc.hook):
            for i, concept in enumerate(names):
                acc.concept = concept
                shown, scene, seeds = (v[i * n : (i + 1) * n] for v in (prompts.concept, prompts.scene, prompts.concept_seeds))
                for guide, s in ((g, s) for g in guides for s in range(0, n, batch_size)):
                    paired_steps(pipe, shown[s : s + batch_size], scene[s : s + batch_size], seeds[s : s + batch_size],
                                 num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale, guide_by=guide)
        for (concept, layer), (g, c, t, count) in acc.sums.items():
            per.setdefault(concept, {})[layer] = (g.cpu() / count, c.cpu() / count, t.cpu() / count)
        return mixed({c: 1.0 for c in names})

    def mixed(a):
        layers = per[names[0]]
        return tuple({l: sum(a[c] * per[c][l][k] for c in names) / sum(a.values()) for l in layers} for k in (0, 1))

    def solve(weights, group_grams, sizes, _gram_c, _cross, *, negative_guidance=0.0, **kw):
        a = {c: 1.0 for c in names}
        for r in range(rounds + 1):
            result = plain_solve(weights, group_grams, sizes, *mixed(a), negative_guidance=negative_guidance, **kw)
            rel = {c: sum(residual(w, result.weights[l], *per[c][l], negative_guidance) for l, w in weights.items())
                      / sum(residual(w, w, *per[c][l], negative_guidance) for l, w in weights.items()) for c in names}
            log.append({"round": r, "weights": {c: round(v, 3) for c, v in a.items()}, "residual": {c: round(v, 4) for c, v in rel.items()}})
            median = sorted(rel.values())[len(rel) // 2]
            a = {c: min(WEIGHT_CAP, a[c] * rel[c] / median) for c in names}
            a = {c: v * len(a) / sum(a.values()) for c, v in a.items()}
        return result

    fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite = moments, solve
    try:
        yield
    finally:
        fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite = plain_moments, plain_solve


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (how the command is recorded in the results)."""
    try:
        return str(path.resolve().relative_to(RESULTS.parents[1]))
    except ValueError:
        return str(path)


def parse(setting: str) -> tuple[str, str, int]:
    """``(rewrite_generalisation setting, targets, concept rounds)`` of one ``--settings`` entry."""
    base, _, rounds = setting.partition("#")
    base, _, targets = base.partition("@")
    targets = targets or "ffn2"
    if targets not in TARGETS:
        raise SystemExit(f"unknown targets {targets!r} in {setting!r}; use one of: {', '.join(TARGETS)}")
    return base, targets, int(rounds or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="circle,star")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--erased-images", type=int, default=32)
    ap.add_argument("--settings", default="0.05,0.03,5,4,24,1,1;0.05,0.03,5,4,24,1,1@attn_out;0.05,0.03,5,4,24,1,1@ffn2+attn_out")
    ap.add_argument("--out", type=Path, default=RESULTS / "rewrite_levers.json")
    args = ap.parse_args()
    erased = [c.strip() for c in args.concepts.split(",")]
    settings = [parse(s) for s in args.settings.split(";")]  # bad input stops before any model work
    fia.shapeworld.task.scene_pair = fitting_pairs  # the rewrite's prompts: 12 of the 18 odd pairs only
    pipe = load_pipeline(world=WORLD.name)
    judges = {"oracle": load_oracle(world=WORLD.name), "judge2": load_second_judge(world=WORLD.name)}
    images = judged_images(args.images, erased, args.erased_images)
    base = hits_per_kind(pipe, judges, *images)
    results = {"concepts": erased, "images": args.images, "erased_images": args.erased_images,
               "command": f"python benchmarks/rewrite_levers.py --concepts {args.concepts} --images {args.images} "
                          f"--erased-images {args.erased_images} --settings \"{args.settings}\" --out {_shown(args.out)}",
               "unedited": rates(base, args.images, erased, args.erased_images), "settings": []}
    print("unedited", results["unedited"], flush=True)
    for text, (setting, targets, rounds) in zip(args.settings.split(";"), settings):
        log: list = []
        t0 = time.perf_counter()
        with concept_reweighting(erased, rounds, log) if rounds else contextlib.nullcontext():
            mask = fia.erase(pipe, erased, config_for(setting), targets=TARGETS[targets])
        seconds = time.perf_counter() - t0
        mask.apply_(pipe)
        try:
            hits = hits_per_kind(pipe, judges, *images)
        finally:
            mask.restore_(pipe)
        drops = {j: [{"kind": o, "change": round((hits[j][o] - base[j][o]) / args.images, 4)}
                     for _, o in sorted((hits[j][o] - base[j][o], o) for o in KINDS if o not in erased)[:4]] for j in hits}
        row = {"setting": text, "targets": targets, "concept_rounds": rounds, "seconds": round(seconds, 1),
               "rates": rates(hits, args.images, erased, args.erased_images),
               "erased_hits": {o: {j: hits[j][o] for j in hits} for o in erased}, "largest_kept_drops": drops,
               **({"concept_residuals": log} if rounds else {})}
        results["settings"].append(row)
        print(text, row["rates"], row["erased_hits"], drops, flush=True)
        atomic_write_text(args.out, json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
