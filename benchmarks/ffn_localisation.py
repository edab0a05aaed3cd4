"""Where does the shipped ShapeWorld model keep its objects? A diagnostic.

FIA assumes that a concept lives in a few FFN2 neurons of the cross-attention
transformer blocks. This script checks that assumption on the shipped
ShapeWorld model, one object at a time, with the oracle as the judge:

1. the object accuracy of the unedited model (the concept and three others);
2. FIA on that one concept (C = 1, so nothing is concept-agnostic) at
   growing spatial sparsity r2: how much of the concept goes, and how much
   of the other objects goes with it;
3. two upper bounds: every FFN2 layer zeroed, every cross-attention output
   zeroed (the only paths by which the prompt reaches the image).

Prompts: the shapeworld-objects suite's colour/place cycle on the tuning
shift (pairs its measured split never uses), seeds from 7,000.

    python benchmarks/ffn_localisation.py [--concept ring] [--images 12]

Prints one table and ends with one JSON line of every figure.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import fia
from fia import FIAConfig
from fia.evaluate.suites import _sw_factor_cycle
from fia.shapeworld import load_oracle, load_pipeline
from fia.shapeworld.evaluate import agreement, generate
from fia.shapeworld.render import prompt_for
from fia.shapeworld.vocab import OBJECT_NAMES

R2_VALUES = (0.01, 0.05, 0.2)


def object_accuracy(pipe, oracle, objects: list[str], images: int) -> dict[str, float]:
    """Oracle object accuracy per class on ``images`` prompts of each class."""
    out = {}
    for o in objects:
        i = OBJECT_NAMES.index(o)
        prompts = [prompt_for(o, *_sw_factor_cycle(k, i, 1)) for k in range(images)]
        res = agreement(oracle, generate(pipe, prompts, [7000 + k for k in range(images)]), prompts)
        out[o] = round(res["object"], 3)
    return out


def zero_(unet: torch.nn.Module, module_suffix: str) -> None:
    """Zero the weight and bias of every module whose name ends with ``module_suffix``."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.rsplit(".", 1)[0].endswith(module_suffix):
                p.zero_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="ring", help="object to erase (default: ring, the best-drawn shape)")
    ap.add_argument("--others", default="circle,crescent,square", help="objects whose accuracy should stay")
    ap.add_argument("--images", type=int, default=12, help="images per object class")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    pipe, oracle = load_pipeline(), load_oracle()
    objects = [args.concept] + [o for o in args.others.split(",") if o and o != args.concept]
    pristine = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    rows: list[dict] = []

    def measure(label: str, pruned_share: float | None) -> None:
        acc = object_accuracy(pipe, oracle, objects, args.images)
        rows.append({"edit": label, "pruned_share": pruned_share, **acc})
        pipe.unet.load_state_dict(pristine)
        print(f"{label:32s} " + " ".join(f"{o} {acc[o]:.2f}" for o in objects), flush=True)

    measure("unedited", 0.0)
    for r2 in R2_VALUES:
        mask = fia.erase(pipe, [args.concept], FIAConfig(task="shapeworld", r2=r2))
        mask.apply_(pipe)
        measure(f"fia {args.concept} r2={r2} ({100 * mask.pruned_share:.1f} %)", round(mask.pruned_share, 4))
    zero_(pipe.unet, "ff.net.2")
    measure("every FFN2 layer zeroed", None)
    zero_(pipe.unet, "attn2.to_out.0")
    measure("every cross-attention out zeroed", None)
    print(json.dumps({"concept": args.concept, "images_per_class": args.images, "rows": rows,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
