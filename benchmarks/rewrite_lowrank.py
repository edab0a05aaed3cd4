"""Does a rewrite confined to the concept's own input directions generalise better? A lever measured, not offered.

The rewrite (``--variant rewrite``, :mod:`fia.core.rewrite`) changes every
FFN2 row freely; on colour/place pairs it was not fitted on it forgets much
less (``rewrite_generalisation.py``). One guess is that a free edit also
learns the fitted scenes' particulars. Here the edit of each layer is
confined to a rank-``r`` subspace ``U`` of its inputs, ``W' = W + A U^T``:
the directions along which a concept prompt's input ``x_c`` differs most
from its scene's ``x_t`` relative to the kept inputs' spread, i.e. the top
``r`` generalised eigenvectors of

    S v = mu (G_k + eps I) v,    S = mean (x_c - x_t)(x_c - x_t)^T = G_c - C - C^T + G_t

(``C = mean x_t x_c^T``, ``G_t = mean x_t x_t^T``, ``eps`` 1e-3 of
``G_k``'s mean diagonal). ``A`` minimises the rewrite's objective on that
subspace,

    |A U^T X_k|^2 + lambda |(W + A U^T) X_c - W X_t|^2 + delta s |A|^2,

    A (U^T (G_k + lambda G_c) U + delta s I) = lambda W (C - G_c) U

(``s`` the mean diagonal of the bracket's first term). Rank 0 means the full
input space (``U = I``): the plain, unbalanced rewrite. ``G_k`` pools the
kept groups by prompt count (no balancing).

Protocol of ``rewrite_generalisation.py``: the statistics come from prompts
on 12 of the 18 odd colour/place pairs, the judged images (8 per kind,
seeds from 400,000) use the other 6; no held-out image is used.

    python benchmarks/rewrite_lowrank.py [--concepts star,arrow] [--settings "8,0.3;32,1.0;0,0.3"]

Each setting is ``rank,lambda`` (damping 0.03). Writes
benchmarks/results/rewrite_lowrank.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fia.shapeworld.task
from fia.config import RewriteConfig
from fia.core.rewrite import mix_grams
from fia.io import atomic_write_text
from fia.presets import resolve_config
from fia.rewrite import group_grams
from fia.sampling import capture, paired_steps
from fia.shapeworld import load_oracle, load_pipeline, load_second_judge
from fia.targets import denoiser, find_targets
from fia.tasks import task_of
from rewrite_generalisation import KINDS, WORLD, fitting_pairs, hits_per_kind, judged_images, rates

RESULTS = Path(__file__).resolve().parent / "results"
DAMPING = 0.03


class PairedMoments:
    """``G_c``, ``C = mean x_t x_c^T`` and ``G_t`` per layer over ``[uncond; concept; scene]`` batches."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {"gc": {}, "cross": {}, "gt": {}}
        self.count: dict[str, int] = {}

    def hook(self, name: str, _module, args: tuple, _output) -> None:
        _, xc, xt = args[0].detach().chunk(3)
        xc = xc.reshape(-1, xc.shape[-1]).double()
        xt = xt.reshape(-1, xt.shape[-1]).double()
        for key, value in (("gc", xc.T @ xc), ("cross", xt.T @ xc), ("gt", xt.T @ xt)):
            self.sums[key][name] = self.sums[key].get(name, 0) + value
        self.count[name] = self.count.get(name, 0) + xc.shape[0]

    def mean(self, key: str, name: str) -> torch.Tensor:
        return self.sums[key][name] / self.count[name]


def concept_subspace(gk: torch.Tensor, s: torch.Tensor, rank: int) -> torch.Tensor:
    """An orthonormal basis of the top ``rank`` generalised eigenvectors of ``(S, G_k + eps I)``."""
    d = gk.shape[0]
    if rank <= 0 or rank >= d:
        return torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(gk + 1e-3 * gk.diagonal().mean() * torch.eye(d, dtype=torch.float64))
    inv = torch.linalg.inv(chol)
    _, vectors = torch.linalg.eigh(inv @ s @ inv.T)
    basis, _ = torch.linalg.qr(inv.T @ vectors[:, -rank:])
    return basis


def lowrank_rewrite(w: torch.Tensor, gk, gc, cross, gt, rank: int, lam: float) -> torch.Tensor:
    """``W + A U^T`` (module docstring), float32."""
    w = w.double()
    u = concept_subspace(gk, gc - cross - cross.T + gt, rank)
    h = u.T @ (gk + lam * gc) @ u
    h = h + DAMPING * h.diagonal().mean() * torch.eye(u.shape[1], dtype=torch.float64)
    a = torch.linalg.solve(h, (lam * w @ (cross - gc) @ u).T).T
    return (w + a @ u.T).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="star,arrow")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--settings", default="8,0.3;16,0.3;32,0.3;32,1.0;64,1.0;64,3.0;0,0.3;0,1.0")
    ap.add_argument("--out", type=Path, default=RESULTS / "rewrite_lowrank.json")
    args = ap.parse_args()
    erased = [c.strip() for c in args.concepts.split(",")]
    fia.shapeworld.task.scene_pair = fitting_pairs  # the statistics: 12 of the 18 odd pairs only
    pipe = load_pipeline(world=WORLD.name)
    judges = {"oracle": load_oracle(world=WORLD.name), "judge2": load_second_judge(world=WORLD.name)}
    rc = RewriteConfig(0.3, DAMPING, 0, 4, 24)
    cfg = resolve_config("shapeworld", overrides={"world": WORLD.name, "variant": "rewrite", "rewrite": rc})
    cfg = task_of(cfg).settle(cfg, pipe)
    found = find_targets(denoiser(pipe), "ffn2")
    prompts = task_of(cfg).rewrite_prompts(erased, rc, anchors=cfg.anchors, seed=cfg.seed)
    t0 = time.perf_counter()
    grams, sizes = group_grams(pipe, found, prompts, cfg)
    moments = PairedMoments()
    with capture(found, moments.hook):
        for s in range(0, len(prompts.concept), 16):
            paired_steps(pipe, prompts.concept[s : s + 16], prompts.scene[s : s + 16], prompts.concept_seeds[s : s + 16],
                         num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)  # fmt: skip
    results = {"concepts": erased, "images": args.images, "statistics_seconds": round(time.perf_counter() - t0, 1), "settings": []}
    unedited = {t.name: t.module.weight.detach().clone() for t in found}
    images = judged_images(args.images)
    base = hits_per_kind(pipe, judges, *images)
    results["unedited"] = rates(base, args.images, erased)
    print("unedited", results["unedited"], flush=True)
    pooled = {t.name: mix_grams(grams, sizes, {g: 1.0 for g in grams}, t.name) for t in found}
    for setting in args.settings.split(";"):
        rank, lam = int(setting.split(",")[0]), float(setting.split(",")[1])
        new = {t.name: lowrank_rewrite(unedited[t.name], pooled[t.name], *(moments.mean(k, t.name) for k in ("gc", "cross", "gt")),
                                       rank, lam) for t in found}  # fmt: skip
        with torch.no_grad():
            for t in found:
                t.module.weight.copy_(new[t.name])
        try:
            hits = hits_per_kind(pipe, judges, *images)
        finally:
            with torch.no_grad():
                for t in found:
                    t.module.weight.copy_(unedited[t.name])
        drops = sorted(((hits["oracle"][o] - base["oracle"][o]) / args.images, o) for o in KINDS if o not in erased)[:3]
        change = sum(float((new[n] - unedited[n]).norm() / unedited[n].norm()) for n in new) / len(new)
        row = {"rank": rank, "concept_weight": lam, "damping": DAMPING, "rates": rates(hits, args.images, erased),
               "erased_hits": {o: {j: hits[j][o] for j in hits} for o in erased},
               "largest_kept_drops": [{"kind": o, "change": d} for d, o in drops], "mean_relative_weight_change": round(change, 3)}
        results["settings"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_text(args.out, json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
