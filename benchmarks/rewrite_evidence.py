"""The rewrite reweighted by the model's own evidence, measured and not offered: the world's CLIP says which kept kinds
the edit hurt and which concepts it left.

The library balances the kept kinds by how much each one's *layer output*
moves (``fia.core.balance``). On circle + star the edit that matters sits in
the two ``up_blocks.1`` FFN2 layers (``rewrite_levers.py``'s ``@ffn2_up1``
gives the preset's figures with the other five layers left alone), whose
weights move by several times their own norm (docs/rewrite.md, limits), so
every kind's output there moves a lot; yet most kinds keep their images
while arrow, bell, bolt and cross lose theirs. A layer's output change does
not say which kind will be lost. Here the edited model's images say it.

After the library's balanced solve, ``R`` rounds:

1. the edited model draws every kind on the rewrite's own 12 colour/place
   pairs (``--evidence-images`` per kind, seeds from 700,000: neither the
   judged images' 400,000 nor the held-out or tuning splits' seeds);
2. the world's CLIP (``shapeworld/assets/<world>/clip``, trained on
   renderings and captions; neither the oracle nor the second judge, but
   the CLIP of the quality figures' CLIP score, which therefore would not
   be an independent check of a rewrite fitted this way) scores
   each image zero-shot: the softmax, at its learned scale, over the
   captions that name the image's colour and place with each kind in turn;
   ``p_o`` is kind ``o``'s mean probability of its own caption;
3. each kept kind's group weight is multiplied by
   ``max(1, p_o(unedited) / p_o(edited)) ** gamma_keep`` (at most 4 in all),
   and each erased concept's pairs by ``(1 + p_c(edited) / tau) **
   gamma_concept`` with ``tau = 0.05`` (at most 4): a kept kind the edit
   weakened weighs more in the kept term, a concept still seen weighs more
   in the concept term, ``sum_c a_c |W' X_c^(c) - W Z^(c)|^2 / n_concepts``
   (so the concept term grows; a concept the evidence no longer sees keeps
   its weight);
4. the layers are solved again (``fia.core.rewrite.rewrite_layer``) with
   those weights.

Nothing here uses a judge: the oracle and the second judge only score the
judged images, as in ``rewrite_generalisation.py`` (fitted on 12 of the 18
odd pairs, judged on the other 6; no held-out image).

    python benchmarks/rewrite_evidence.py [--concepts circle,star] [--images 16] [--erased-images 32]
        [--evidence-images 8] [--settings "0.05,0.03,5,4,24,1,1%2,2,0"] [--out FILE]

Each setting is a ``rewrite_generalisation.py`` setting, then ``%R,gamma_keep,gamma_concept``.
Writes benchmarks/results/rewrite_evidence.json (or ``--out``): per
setting F and P (oracle and second judge), the erased kinds' hits, the four
largest kept drops per judge, and each round's evidence (the concepts'
``p_c``, the kept kinds' largest ``p_o`` ratios, the kept kinds' mean ``p_o``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

import fia
import fia.rewrite
import fia.shapeworld.task
from fia.core.balance import mix_grams
from fia.core.rewrite import Rewrite, rewrite_layer
from fia.io import atomic_write_text
from fia.shapeworld import load_pipeline, world_path
from fia.shapeworld.clip import load_clip
from fia.shapeworld.evaluate import generate
from fia.shapeworld.render import prompt_for
from rewrite_generalisation import KINDS, WORLD, config_for, erase_and_judge, fitting_pairs
from rewrite_levers import _shown, judged_fields, judged_start, mix_concepts, per_concept_pass, swapped_weights

RESULTS = Path(__file__).resolve().parent / "results"
EVIDENCE_SEED = 700_000
TAU = 0.05
CAP = 4.0


class KindEvidence:
    """``p_o`` of every kind (module docstring) for the pipeline as it is, or with some linears' weights replaced."""

    def __init__(self, pipe, clip, images_per_kind: int) -> None:
        self.pipe, self.clip = pipe, clip
        self.prompts, self.seeds, self.kinds, self.pairs = [], [], [], []
        for i, kind in enumerate(KINDS):
            for k in range(images_per_kind):
                pair = fitting_pairs(k + i)
                self.prompts.append(prompt_for(kind, *pair))
                self.seeds.append(EVIDENCE_SEED + 100 * i + k)
                self.kinds.append(kind)
                self.pairs.append(pair)
        with torch.no_grad():
            self.captions = {p: clip.encode_text(clip.token_ids([prompt_for(o, *p) for o in KINDS])) for p in dict.fromkeys(self.pairs)}
        self._unedited: dict[str, float] | None = None

    def unedited(self) -> dict[str, float]:
        """``p_o`` of the unedited pipeline, computed once."""
        if self._unedited is None:
            self._unedited = self()
        return self._unedited

    @torch.no_grad()
    def __call__(self, weights: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        with swapped_weights(dict(self.pipe.unet.named_modules()), weights or {}):
            x = generate(self.pipe, self.prompts, self.seeds)
        emb = torch.cat([self.clip.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])
        own = torch.stack([(self.clip.scale() * self.captions[p] @ emb[j]).softmax(-1)[KINDS.index(o)]
                           for j, (p, o) in enumerate(zip(self.pairs, self.kinds))])
        return {o: float(own[[j for j, k in enumerate(self.kinds) if k == o]].mean()) for o in KINDS}


def kept_multipliers(mult: dict[str, float], before: dict[str, float], after: dict[str, float], gamma: float) -> dict[str, float]:
    """Each kept kind's weight times ``max(1, p_before / p_after) ** gamma``, at most ``CAP``; other groups unchanged."""
    return {g: min(CAP, m * max(1.0, before[g] / max(after[g], 1e-3)) ** gamma) if g in after else m for g, m in mult.items()}


def concept_multipliers(a: dict[str, float], after: dict[str, float], gamma: float) -> dict[str, float]:
    """Each concept's weight times ``(1 + p_after / TAU) ** gamma``, at most ``CAP``."""
    return {c: min(CAP, v * (1 + after[c] / TAU) ** gamma) for c, v in a.items()}


@contextlib.contextmanager
def evidence_guided(names: list[str], evidence: KindEvidence, rounds: int, gamma_keep: float, gamma_concept: float,
                    log: list) -> Iterator[None]:
    """Within the block, ``fia.rewrite`` solves ``rounds`` more times with evidence-guided weights (module docstring)."""
    plain_solve, per = fia.rewrite.balanced_rewrite, {}
    before = evidence.unedited()

    moments = per_concept_pass(names, per)

    def solve(weights, group_grams, sizes, gram_c, cross, *, concept_weight, damping, negative_guidance=0.0, **kw):
        result = plain_solve(weights, group_grams, sizes, gram_c, cross, concept_weight=concept_weight, damping=damping,
                             negative_guidance=negative_guidance, **kw)
        kept = {o: p for o, p in before.items() if o not in names}
        balanced = dict(result.group_weights)  # the library's balance; the evidence multiplies it
        mult, a = {g: 1.0 for g in balanced}, {c: 1.0 for c in names}
        for r in range(rounds + 1):
            after = evidence(result.weights)
            ratios = sorted(((o, before[o] / max(after[o], 1e-3)) for o in kept), key=lambda kv: -kv[1])
            log.append({"round": r, "concept_p": {c: round(after[c], 4) for c in names}, "concept_weights": {c: round(v, 3) for c, v in a.items()},
                        "largest_kept_ratios": {o: round(v, 3) for o, v in ratios[:6]},
                        "kept_mean_p": round(sum(after[o] for o in kept) / len(kept), 4)})
            if r == rounds:
                return result
            mult = kept_multipliers(mult, kept, {o: after[o] for o in kept}, gamma_keep)
            a = concept_multipliers(a, after, gamma_concept)
            alpha = {g: balanced[g] * mult[g] for g in mult}
            gc, cx = mix_concepts(per, a)
            new = {n: rewrite_layer(w, mix_grams(group_grams, sizes, alpha, n), gc[n], cx[n], concept_weight=concept_weight,
                                    damping=damping, negative_guidance=negative_guidance) for n, w in weights.items()}
            result = Rewrite(new, alpha, result.group_change)

    with mock.patch.multiple(fia.rewrite, paired_moments=moments, balanced_rewrite=solve):
        yield


def parse(setting: str) -> tuple[str, int, float, float]:
    """``(rewrite_generalisation setting, rounds, gamma_keep, gamma_concept)`` of one ``--settings`` entry."""
    base, _, lever = setting.partition("%")
    fields = lever.split(",") if lever else ["0", "0", "0"]
    try:
        rounds, gamma_keep, gamma_concept = int(fields[0]), float(fields[1]), float(fields[2])
    except (ValueError, IndexError):
        raise SystemExit(f"{setting!r}: after '%' give R,gamma_keep,gamma_concept (for example %2,2,0)") from None
    if len(fields) != 3 or rounds < 0 or gamma_keep < 0 or gamma_concept < 0:
        raise SystemExit(f"{setting!r}: after '%' give three numbers R,gamma_keep,gamma_concept, none negative")
    return base, rounds, gamma_keep, gamma_concept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="circle,star")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--erased-images", type=int, default=32)
    ap.add_argument("--evidence-images", type=int, default=8, help="images per kind for the CLIP evidence, on the fitting pairs")
    ap.add_argument("--settings", default="0.05,0.03,5,4,24,1,1%2,2,0")
    ap.add_argument("--out", type=Path, default=RESULTS / "rewrite_evidence.json")
    args = ap.parse_args()
    erased = [c.strip() for c in args.concepts.split(",")]
    settings = [parse(s) for s in args.settings.split(";")]  # bad input stops before any model work
    fia.shapeworld.task.scene_pair = fitting_pairs  # the rewrite's prompts: 12 of the 18 odd pairs only
    pipe = load_pipeline(world=WORLD.name)
    command = (f"python benchmarks/rewrite_evidence.py --concepts {args.concepts} --images {args.images} --erased-images "
               f"{args.erased_images} --evidence-images {args.evidence_images} --settings \"{args.settings}\" --out {_shown(args.out)}")
    judges, images, base, results = judged_start(pipe, erased, args.images, args.erased_images, command)
    results["evidence_images"] = args.evidence_images
    evidence = KindEvidence(pipe, load_clip(world_path(WORLD.name) / "clip"), args.evidence_images)
    for text, (setting, rounds, gamma_keep, gamma_concept) in zip(args.settings.split(";"), settings):
        log: list = []
        with evidence_guided(erased, evidence, rounds, gamma_keep, gamma_concept, log):
            hits, seconds = erase_and_judge(pipe, judges, images, lambda: fia.erase(pipe, erased, config_for(setting)))
        row = {"setting": text, "seconds": round(seconds, 1), **judged_fields(hits, base, erased, args.images, args.erased_images),
               "evidence": log}
        results["settings"].append(row)
        print(text, row["rates"], row["erased_hits"], row["largest_kept_drops"], flush=True)
        atomic_write_text(args.out, json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
