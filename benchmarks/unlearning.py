"""FIA against ConceptPrune, UCE, ESD-x and its own ablations on ShapeWorld, in one run.

Every method edits the same shipped ShapeWorld pipeline, is judged by the
same oracle on the same prompts and seeds, and starts from the pristine
weights (restored between methods). Tasks (the paper's section 9 tables,
rebuilt on ShapeWorld):

- T1  erase all 10 objects: per-class forgetting accuracy, its mean, and
      quality on what is left to draw (the places alone): ShapeWorld FID and
      prompt fidelity;
- T2  erase 5 objects, keep 5: F, P, Overall = 2P(1-F)/(P+1-F);
- T3  erase all 5 styles (FIA alpha 0.8): style accuracy, FSR, quality;
- T4  erase the attribute ("burning"): detection share, quality;
- F4  forget the first x of the 10 objects, x in 1, 2, 4, 6, 8, 10: F and
      Overall per method (PNG plot);
- seconds and peak memory (resident set growth) of each edit.

Fair comparison: each method starts from its paper's settings scaled to
ShapeWorld and gets the same tuning budget (``TUNING``: the same number of
candidate settings of its main knob), scored by T2's Overall on a tuning
split of prompts (another colour/place cycle) and seeds; every table is then
measured on the held-out split. The random control prunes, per layer, as
many weights as FIA's mask for the same task, chosen uniformly at random.

    python benchmarks/unlearning.py [--quick] [--out benchmarks/results]

``--quick`` runs every stage on a few images (a smoke test of the harness,
not of the numbers). Results: ``OUT/unlearning.json``, ``OUT/unlearning.md``
and ``OUT/f4_forgetting.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fia.baselines import CONFIGS, METHODS, random_edit
from fia.evaluate.generate import EvalItem, GenerationSettings, run_pipe, to_uint8
from fia.evaluate.judges import ShapeWorldJudge
from fia.evaluate.suites import Suite, shapeworld_reference_features, shapeworld_suite
from fia.prompts import ConceptPrompts, build_prompts, resolve_config
from fia.shapeworld import GENERATION_DEFAULTS, load_oracle, load_pipeline
from fia.shapeworld.vocab import ATTRIBUTE_NAMES, OBJECT_NAMES, PLACE_NAMES, STYLE_NAMES, place_phrase

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from erase_cost import rss_bytes  # noqa: E402  (the sibling benchmark's resident-memory reader)
METHOD_ORDER = ("fia", "fia-union", "fia-wanda", "fia-channel", "fia-layer", "random", "conceptprune", "uce", "esd-x")
F4_SIZES = (1, 2, 4, 6, 8, 10)
T2_FORGET = OBJECT_NAMES[:5]
TUNING_SEED, HELDOUT_SEED = 1_000_000, 0
TUNING_SHIFT, HELDOUT_SHIFT = 1, 0

# The knob each method tunes and its candidates: the paper's value first,
# then the same number of alternatives for every method (the tuning budget).
TUNING: dict[str, tuple[str, tuple[Any, ...]]] = {
    "fia": ("r2", (0.01, 0.05, 0.2)),
    "fia-union": ("r2", (0.01, 0.05, 0.2)),
    "fia-wanda": ("r2", (0.01, 0.05, 0.2)),
    "fia-channel": ("r2", (0.01, 0.05, 0.2)),
    "fia-layer": ("r2", (0.01, 0.05, 0.2)),
    "conceptprune": ("sparsity", (0.01, 0.05, 0.2)),
    "uce": ("erase_scale", (1.0, 3.0, 10.0)),
    "esd-x": ("lr", (1e-4, 3e-4, 1e-3)),
}


@dataclass
class Sizes:
    """How many prompts, seeds and steps each measurement uses."""

    prompts_per_concept: int = 2
    images_per_prompt: int = 2
    quality_prompts: int = 10
    f4_prompts_per_concept: int = 1
    tune_prompts_per_concept: int = 2
    tune_quality_prompts: int = 6
    esd_steps: int = 30
    f4_sizes: tuple[int, ...] = F4_SIZES
    candidates: int = 3
    batch_size: int = 40
    # None: the model's own sampler and FIA's preset; --quick shortens both
    sample_steps: int | None = None
    saliency_steps: int | None = None


QUICK = Sizes(
    prompts_per_concept=1,
    images_per_prompt=1,
    quality_prompts=2,
    f4_prompts_per_concept=1,
    tune_prompts_per_concept=1,
    tune_quality_prompts=2,
    esd_steps=2,
    f4_sizes=(1, 10),
    candidates=2,
    sample_steps=4,
    saliency_steps=2,
)


# ---------------------------------------------------------------- prompts
def style_prompts(style: str, seed: int = 0) -> ConceptPrompts:
    """'a circle on the grass in the style of Ovalli' against 'a circle on the grass'."""
    concept, base = [], []
    for k, obj in enumerate(OBJECT_NAMES):
        scene = f"a {obj} {place_phrase(PLACE_NAMES[k % len(PLACE_NAMES)])}"
        concept.append(f"{scene} in the style of {style}")
        base.append(scene)
    seeds = tuple(seed + k for k in range(len(concept)))
    return ConceptPrompts(style, tuple(concept), tuple(base), seeds, seeds)


def attribute_prompts(attribute: str, seed: int = 0) -> ConceptPrompts:
    """'a burning circle on the grass' against 'a circle on the grass'."""
    concept, base = [], []
    for k, obj in enumerate(OBJECT_NAMES):
        where = place_phrase(PLACE_NAMES[k % len(PLACE_NAMES)])
        concept.append(f"a {attribute} {obj} {where}")
        base.append(f"a {obj} {where}")
    seeds = tuple(seed + k for k in range(len(concept)))
    return ConceptPrompts(attribute, tuple(concept), tuple(base), seeds, seeds)


def concept_prompts(concepts: list[str], family: str, cfg) -> dict[str, ConceptPrompts]:
    if family == "objects":
        return {c: build_prompts(c, cfg) for c in concepts}
    if family == "styles":
        return {c: style_prompts(c, cfg.seed) for c in concepts}
    return {c: attribute_prompts(c, cfg.seed) for c in concepts}


# ---------------------------------------------------------------- tasks
@dataclass
class Task:
    key: str
    suite: str  # shapeworld-objects / -styles / -attribute
    family: str  # objects / styles / attribute
    forget: list[str]
    prompts_per_concept: int
    quality_prompts: int
    keep_roles: tuple[str, ...] = ("forget", "preserve", "synonym", "quality")
    alpha: float | None = None


def tasks_for(sizes: Sizes) -> list[Task]:
    ppc, q = sizes.prompts_per_concept, sizes.quality_prompts
    out = [
        Task("T1", "shapeworld-objects", "objects", list(OBJECT_NAMES), ppc, q),
        Task("T2", "shapeworld-objects", "objects", list(T2_FORGET), ppc, q),
        Task("T3", "shapeworld-styles", "styles", list(STYLE_NAMES), ppc, q, alpha=0.8),
        Task("T4", "shapeworld-attribute", "attribute", list(ATTRIBUTE_NAMES), ppc, q),
    ]
    for x in sizes.f4_sizes:
        # F4 measures forgetting and keeping only: no synonym or quality images
        out.append(
            Task(f"F4-{x}", "shapeworld-objects", "objects", list(OBJECT_NAMES[:x]), sizes.f4_prompts_per_concept, 1,
                 keep_roles=("forget", "preserve"))  # fmt: skip
        )
    return out


def build_task_suite(task: Task, judge, oracle, ipp: int, seed: int, shift: int) -> Suite:
    def reference(factors):
        return shapeworld_reference_features(oracle, factors, 4, seed + 12345)

    suite = shapeworld_suite(
        task.suite, judge, task.forget, None, ipp, task.prompts_per_concept, task.quality_prompts,
        seed=seed, reference=reference, prompt_shift=shift,
    )  # fmt: skip
    suite.items = [it for it in suite.items if it.role in task.keep_roles]
    return suite


# ---------------------------------------------------------------- measuring
class PeakRSS:
    """Peak resident set size while the block runs, sampled every 10 ms (Linux /proc)."""

    def __init__(self) -> None:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6


class Bench:
    """The pipeline, its pristine weights, the judge and the cached base records."""

    def __init__(self, sizes: Sizes, work: Path, log: Callable[[str], None]):
        self.sizes, self.work, self.log = sizes, work, log
        self.pipe = load_pipeline()
        self.oracle = load_oracle()
        self.judge = ShapeWorldJudge(self.oracle)
        self.pristine = {
            name: {k: v.detach().clone() for k, v in getattr(self.pipe, name).state_dict().items()}
            for name in ("unet", "text_encoder")
        }
        self.settings = GenerationSettings(
            num_inference_steps=sizes.sample_steps or GENERATION_DEFAULTS["num_inference_steps"],
            guidance_scale=GENERATION_DEFAULTS["guidance_scale"],
            height=GENERATION_DEFAULTS.get("height"),
            width=GENERATION_DEFAULTS.get("width"),
            batch_size=sizes.batch_size,
        )
        # the paper's FIA and its ablations (ShapeWorld's preset defaults to the causal variant)
        self.fia_cfg = resolve_config("shapeworld", overrides={"variant": "paper"})
        if sizes.saliency_steps:
            self.fia_cfg = self.fia_cfg.replace(saliency_steps=sizes.saliency_steps)
        self._base: dict[tuple, dict[str, dict]] = {}
        self.images_generated = 0

    def restore(self) -> None:
        for name, state in self.pristine.items():
            module = getattr(self.pipe, name)
            module.load_state_dict(state)
            module.eval()
            module.requires_grad_(False)

    def records(self, items: list[EvalItem]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        bs = self.settings.batch_size
        for i in range(0, len(items), bs):
            batch = items[i : i + bs]
            images = np.stack([to_uint8(im) for im in run_pipe(self.pipe, batch, self.settings)])
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            for it, rec in zip(batch, self.judge.score(x, batch)):
                out[it.id] = rec
            self.images_generated += len(batch)
        return out

    def base_records(self, key: tuple, suite: Suite) -> dict[str, dict]:
        if key not in self._base:
            self.restore()
            self._base[key] = self.records(suite.items)
        return self._base[key]

    def measure(self, suite: Suite, key: tuple) -> dict[str, Any]:
        """Judge the current (edited) model against the base records made by :meth:`base_records`."""
        if key not in self._base:
            # making the base records restores the pristine weights, which would undo the edit
            raise RuntimeError(f"base records of {key} must be made before the edit")
        base = self._base[key]
        edited = self.records(suite.items)
        return suite.summarize(suite.items, {"base": base, "edited": edited})

    # ------------------------------------------------------------ editing
    def method_config(self, method: str, setting: Any, task: Task):
        knob, _ = TUNING.get(method, (None, ()))
        if method.startswith("fia"):
            cfg = CONFIGS[method]()
            fia_cfg = self.fia_cfg.replace(
                saliency=cfg.fia.saliency,
                **({"r2": setting} if knob == "r2" and setting is not None else {}),
                **({"alpha": task.alpha} if task.alpha is not None else {}),
            )
            return cfg.replace(fia=fia_cfg, cache_dir=str(self.work / "cache" / fia_cfg.saliency))
        if method == "conceptprune":
            cfg = CONFIGS[method]().replace(
                task="shapeworld",
                num_inference_steps=self.fia_cfg.num_inference_steps,
                guidance_scale=self.fia_cfg.guidance_scale,
                saliency_steps=self.fia_cfg.saliency_steps,
            )
            return cfg.replace(sparsity=setting) if setting is not None else cfg
        if method == "uce":
            cfg = CONFIGS[method]()
            return cfg.replace(erase_scale=setting) if setting is not None else cfg
        if method == "esd-x":
            cfg = CONFIGS[method]().replace(
                train_steps=self.sizes.esd_steps,
                ddim_steps=self.fia_cfg.num_inference_steps,
                sample_guidance=self.fia_cfg.guidance_scale,
            )
            return cfg.replace(lr=setting) if setting is not None else cfg
        raise ValueError(method)

    def edit(self, method: str, setting: Any, task: Task, fia_masks: dict[str, Any]) -> dict[str, Any]:
        """Restore the pristine model, apply ``method``; returns seconds, memory and notes."""
        self.restore()
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            if method == "random":
                like = fia_masks[task.key]
                mask = random_edit(self.pipe, like, seed=0)
                info["pruned_share"] = _pruned_share(mask)
            else:
                cfg = self.method_config(method, setting, task)
                prompts = concept_prompts(task.forget, task.family, self.fia_cfg)
                if method.startswith("fia") or method == "conceptprune":
                    result = METHODS[method](self.pipe, task.forget, cfg, prompts=prompts)
                    if method == "fia":
                        fia_masks[task.key] = result
                    info["pruned_share"] = _pruned_share(result)
                elif method == "uce":
                    keep = [c for c in _family_names(task.family) if c not in task.forget]
                    METHODS[method](self.pipe, task.forget, cfg, preserve=keep)
                else:  # esd-x
                    losses = METHODS[method](self.pipe, task.forget, cfg)
                    info["final_loss"] = float(losses[-1]) if losses else None
        info["seconds"] = time.perf_counter() - t0
        info["peak_rss_growth_mb"] = mem.growth_mb
        self.pipe.unet.eval()
        return info


def _family_names(family: str) -> tuple[str, ...]:
    return {"objects": OBJECT_NAMES, "styles": STYLE_NAMES, "attribute": ATTRIBUTE_NAMES}[family]


def _pruned_share(mask) -> float | None:
    """Share of the FFN2 weights a mask prunes (a ConceptMask or {layer: bool tensor})."""
    if not isinstance(mask, dict):
        return mask.pruned_share
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / total if total else None


# ---------------------------------------------------------------- headline numbers
def headline(task: Task, m: dict[str, Any]) -> dict[str, Any]:
    """The few numbers each table shows, base and edited."""
    s, q = m.get("summary", {}), m.get("quality", {})
    out: dict[str, Any] = {}
    if task.suite == "shapeworld-objects":
        out["F"] = s.get("forget_accuracy")
        out["P"] = s.get("preserve_accuracy")
        out["Overall"] = s.get("overall")
        if "synonym_accuracy" in s:
            out["synonym"] = s.get("synonym_accuracy")
        if task.key == "T1":
            out["per_class"] = {c: v for c, v in m.get("per_class", {}).items()}
    elif task.suite == "shapeworld-styles":
        out["F"] = s.get("forget_accuracy")
        out["FSR"] = {"edited": s.get("fsr")}
    else:
        out["detected"] = s.get("detected_share")
    if "fid" in q:
        out["FID"] = q["fid"]
    if q.get("prompt_fidelity"):
        out["fidelity"] = q["prompt_fidelity"]
    return out


# ---------------------------------------------------------------- run
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def tune(bench: Bench, methods: list[str], log) -> dict[str, dict[str, Any]]:
    """Each tunable method: its candidates scored by T2 Overall on the tuning split."""
    sizes = bench.sizes
    task = Task("T2-tune", "shapeworld-objects", "objects", list(T2_FORGET), sizes.tune_prompts_per_concept,
                sizes.tune_quality_prompts, keep_roles=("forget", "preserve", "quality"))  # fmt: skip
    suite = build_task_suite(task, bench.judge, bench.oracle, 1, TUNING_SEED, TUNING_SHIFT)
    bench.base_records(("tune",), suite)
    chosen: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method not in TUNING:
            continue
        knob, candidates = TUNING[method]
        trials = []
        for value in candidates[: sizes.candidates]:
            info = bench.edit(method, value, task, {})
            m = bench.measure(suite, ("tune",))
            s = m["summary"]
            trials.append({knob: value, "overall": s["overall"]["edited"], "F": s["forget_accuracy"]["edited"],
                           "P": s["preserve_accuracy"]["edited"], "seconds": round(info["seconds"], 2)})  # fmt: skip
            log(f"  tune {method:13s} {knob}={value:<8g} Overall {_f(trials[-1]['overall'])} "
                f"F {_f(trials[-1]['F'])} P {_f(trials[-1]['P'])}")  # fmt: skip
        best = max(trials, key=lambda t: (t["overall"] if t["overall"] is not None else -1.0))
        chosen[method] = {"knob": knob, "value": best[knob], "trials": trials}
    return chosen


def _f(v: Any) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def run(sizes: Sizes, methods: list[str], work: Path, log) -> dict[str, Any]:
    t_start = time.time()
    bench = Bench(sizes, work, log)
    log(f"tuning ({sizes.candidates} candidates per method, T2 Overall on the tuning split)")
    chosen = tune(bench, methods, log)
    tasks = tasks_for(sizes)
    results: dict[str, dict[str, Any]] = {t.key: {} for t in tasks}
    costs: dict[str, dict[str, Any]] = {m: {} for m in methods}
    fia_masks: dict[str, Any] = {}
    order = [m for m in METHOD_ORDER if m in methods]
    if "random" in order and "fia" not in order:
        raise SystemExit("the random control copies FIA's per-layer counts: keep 'fia' in --methods")
    for task in tasks:
        suite = build_task_suite(task, bench.judge, bench.oracle, sizes.images_per_prompt, HELDOUT_SEED, HELDOUT_SHIFT)
        log(f"{task.key}: forget {', '.join(task.forget)} ({len(suite.items)} prompts x seeds per model)")
        bench.base_records((task.key,), suite)
        for method in order:
            setting = chosen.get(method, {}).get("value")
            info = bench.edit(method, setting, task, fia_masks)
            m = bench.measure(suite, (task.key,))
            results[task.key][method] = {"headline": headline(task, m), "metrics": _jsonable(m), "edit": info}
            costs[method][task.key] = {"seconds": round(info["seconds"], 2), "peak_rss_growth_mb": round(info["peak_rss_growth_mb"], 1)}
            h = results[task.key][method]["headline"]
            log(f"  {method:13s} " + "  ".join(f"{k} {_f(_edited(v))}" for k, v in h.items() if k != "per_class")
                + f"  ({info['seconds']:.1f}s)")  # fmt: skip
    bench.restore()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "quick": sizes == QUICK,
        "sizes": sizes.__dict__ | {"f4_sizes": list(sizes.f4_sizes)},
        "torch_threads": torch.get_num_threads(),
        "seconds_total": round(time.time() - t_start, 1),
        "images_generated": bench.images_generated,
        "tuning": chosen,
        "results": results,
        "costs": costs,
        "t2_forget": list(T2_FORGET),
        "methods": order,
    }


def _edited(v: Any) -> Any:
    return v.get("edited") if isinstance(v, dict) else v


def _jsonable(m: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in m.items() if not k.startswith("_")}, default=float))


# ---------------------------------------------------------------- writing
def markdown(res: dict[str, Any]) -> str:
    methods = res["methods"]
    r = res["results"]
    lines = [f"Measured {res['date']} at commit `{res['commit']}`" + (" (--quick: harness smoke test, numbers meaningless)" if res["quick"] else "")
             + f"; {res['images_generated']} images, {res['seconds_total'] / 60:.1f} min, {res['torch_threads']} threads.", ""]  # fmt: skip
    for r_ in res.get("remeasured", []):
        lines[-1:-1] = [f"Rows of {', '.join(r_['methods'])} re-measured {r_['date']} at commit `{r_['commit']}` ({r_['seconds'] / 60:.1f} min)."]

    def row(cells):
        lines.append("| " + " | ".join(cells) + " |")

    def table(title, cols, getter, base_getter=None):
        lines.extend([f"**{title}**", ""])
        row(["method"] + cols)
        row(["---"] * (len(cols) + 1))
        if base_getter is not None:
            row(["(original model)"] + [_f(x) for x in base_getter()])
        for m in methods:
            row([m] + [_f(x) for x in getter(m)])
        lines.append("")

    def e(task, m, key):
        return _edited(r[task][m]["headline"].get(key)) if m in r[task] else None

    def b(task, key):
        first = next(iter(r[task].values()))
        v = first["headline"].get(key)
        return v.get("base") if isinstance(v, dict) else None

    t1 = "T1: erase all 10 objects (forgetting accuracy, lower is better; quality on object-less prompts)"
    table(t1, ["F (mean)", "FID", "fidelity"], lambda m: [e("T1", m, "F"), e("T1", m, "FID"), e("T1", m, "fidelity")],
          lambda: [b("T1", "F"), b("T1", "FID"), b("T1", "fidelity")])  # fmt: skip
    # per-class T1
    classes = list(OBJECT_NAMES)
    lines.extend(["**T1 per class (forgetting accuracy)**", ""])
    row(["method"] + classes)
    row(["---"] * (len(classes) + 1))
    first = next(iter(r["T1"].values()))
    row(["(original model)"] + [_f(first["headline"]["per_class"][c]["base"]) for c in classes])
    for m in methods:
        pc = r["T1"][m]["headline"]["per_class"]
        row([m] + [_f(pc[c]["edited"]) for c in classes])
    lines.append("")
    t2 = f"T2: erase {', '.join(res['t2_forget'])}, keep the other 5"
    table(t2, ["F", "P", "Overall", "synonym F", "FID", "fidelity"],
          lambda m: [e("T2", m, k) for k in ("F", "P", "Overall", "synonym", "FID", "fidelity")],
          lambda: [b("T2", k) for k in ("F", "P", "Overall", "synonym", "FID", "fidelity")])  # fmt: skip
    table("T3: erase all 5 styles (style accuracy lower is better; FSR higher is better)", ["style acc.", "FSR", "FID", "fidelity"],
          lambda m: [e("T3", m, k) for k in ("F", "FSR", "FID", "fidelity")],
          lambda: [b("T3", "F"), None, b("T3", "FID"), b("T3", "fidelity")])  # fmt: skip
    table("T4: erase the attribute 'burning' (share of images where it is detected)", ["detected", "FID", "fidelity"],
          lambda m: [e("T4", m, k) for k in ("detected", "FID", "fidelity")],
          lambda: [b("T4", k) for k in ("detected", "FID", "fidelity")])  # fmt: skip
    f4 = [k for k in r if k.startswith("F4-")]
    xs = [k.split("-")[1] for k in f4]
    table("F4: forgetting accuracy F when forgetting the first x objects", [f"x={x}" for x in xs], lambda m: [e(k, m, "F") for k in f4])
    table("F4: Overall (undefined at x=10: nothing is kept)", [f"x={x}" for x in xs], lambda m: [e(k, m, "Overall") for k in f4])
    tasks = [k for k in r]
    lines.extend(["**Cost of the edit: seconds (peak resident memory growth, MB)**", ""])
    row(["method"] + tasks)
    row(["---"] * (len(tasks) + 1))
    for m in methods:
        c = res["costs"][m]
        row([m] + [f"{c[t]['seconds']:.1f} ({c[t]['peak_rss_growth_mb']:.0f})" if t in c else "-" for t in tasks])
    lines.append("")
    lines.extend(["**Tuning (T2 Overall on the tuning split; chosen value in bold)**", ""])
    for m, t in res["tuning"].items():
        parts = [(f"**{x[t['knob']]:g}**" if x[t["knob"]] == t["value"] else f"{x[t['knob']]:g}") + f": {_f(x['overall'])}" for x in t["trials"]]
        lines.append(f"- {m} ({t['knob']}): " + ", ".join(parts))
    lines.append("")
    return "\n".join(lines)


def plot_f4(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = res["results"]
    keys = [k for k in r if k.startswith("F4-")]
    xs = [int(k.split("-")[1]) for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in res["methods"]:
        f = [_edited(r[k][m]["headline"].get("F")) for k in keys]
        o = [_edited(r[k][m]["headline"].get("Overall")) for k in keys]
        style = "-o" if m == "fia" else ("--" if m == "random" else "-")
        axes[0].plot(xs, [np.nan if v is None else v for v in f], style, label=m)
        axes[1].plot(xs, [np.nan if v is None else v for v in o], style, label=m)
    base_f = [r[k][res["methods"][0]]["headline"]["F"]["base"] for k in keys]
    axes[0].plot(xs, base_f, ":k", label="original model")
    axes[0].set(xlabel="objects forgotten (x of 10)", ylabel="forgetting accuracy F (lower is better)", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="objects forgotten (x of 10)", ylabel="Overall (higher is better)", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ShapeWorld F4 ({res['date']}, {res['commit']})")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def merge(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``previous`` with the methods of ``new`` re-measured in it.

    The base images are made again by the new run; with the same model,
    prompts and seeds they must give the same base figures, which is checked.
    """
    for task, by_method in new["results"].items():
        old_first = next(iter(previous["results"][task].values()))["headline"]
        new_first = next(iter(by_method.values()))["headline"]
        for key, v in new_first.items():
            if isinstance(v, dict) and "base" in v and v["base"] != old_first[key]["base"]:
                raise SystemExit(f"--merge: base figure {task}/{key} differs ({v['base']} vs {old_first[key]['base']}); rerun everything")
    out = json.loads(json.dumps(previous))
    for task, by_method in new["results"].items():
        out["results"][task].update(by_method)
    for m in new["methods"]:
        out["costs"][m] = new["costs"][m]
        if m in new["tuning"]:
            out["tuning"][m] = new["tuning"][m]
    out.setdefault("remeasured", []).append(
        {"methods": new["methods"], "date": new["date"], "commit": new["commit"], "seconds": new["seconds_total"]}
    )
    return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few images per stage: checks the harness, not the numbers")
    ap.add_argument("--out", default=str(ROOT / "results"), help="folder for unlearning.{json,md} and f4_forgetting.png")
    ap.add_argument("--methods", default=",".join(METHOD_ORDER), help="comma-separated subset of: " + ", ".join(METHOD_ORDER))
    ap.add_argument("--work", default=None, help="folder for per-concept caches (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge", default=None, help="an earlier unlearning.json: re-measure --methods and replace their rows in it")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_ORDER]
    if unknown:
        ap.error(f"unknown methods {unknown}; use some of: {', '.join(METHOD_ORDER)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else Sizes()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="fia-bench-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        res = run(sizes, methods, work, log)
    if args.merge:
        res = merge(json.loads(Path(args.merge).read_text()), res)
    # the figures first: a failure while formatting must not lose the run
    write_atomic(out / "unlearning.json", json.dumps(res, indent=1, default=float))
    write_atomic(out / "unlearning.md", markdown(res))
    plot_f4(res, out / "f4_forgetting.png")
    log(f"done in {res['seconds_total'] / 60:.1f} min; wrote {out / 'unlearning.md'}, unlearning.json, f4_forgetting.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
