"""The benchmark harness: one pipeline, two judges, every registered method, base vs edited figures.

Every method comes from the registry (:func:`fia.methods.unlearn`) and
returns an :class:`fia.edit.Edit`: the harness applies it, has both judges
read the edited model's images, and restores the pipeline with
``edit.restore_``, so every method starts from the same pristine weights
without snapshots of the model. The judge-guided upper bound is the causal
variant with the oracle as its evidence (:func:`oracle_evidence`); it is
measured like a method and labelled as a reference.
"""

from __future__ import annotations

import dataclasses

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fia.bench.memory import PeakRSS
from fia.bench.report import fmt
from fia.bench.tasks import (
    CAUSAL_FIA,
    DEFAULT_FIA,
    T2_FORGET,
    TUNING,
    TUNING_SEED,
    TUNING_SHIFT,
    UPPER_BOUND,
    WORLD,
    Sizes,
    Task,
    build_task_suite,
    concept_prompts,
    family_names,
)
from fia.evaluate.generate import EvalItem, GenerationSettings, run_pipe, to_uint8
from fia.evaluate.judges import ShapeWorldJudge
from fia.evaluate.suites import Suite
from fia.config import FIAConfig
from fia.methods import get_method, unlearn
from fia.presets import resolve_config
from fia.shapeworld import (
    GENERATION_DEFAULTS,
    load_oracle,
    load_pipeline,
    load_second_judge,
)
from fia.shapeworld.render import parse_prompt

# FIAConfig fields that make a paper FIA family member what it is (its registered preset)
_FIA_PRESET_FIELDS = ("saliency", "selection", "fusion")
JUDGES = ("oracle", "judge2")


def oracle_evidence(pipe: Any, oracle: Any) -> Callable:
    """Evidence read by the oracle, for the causal variant's judge hook (the upper bound).

    For a latent ``z`` made for prompt ``p`` with contrast prompts ``c``:
    ``log p(object of p | image) - mean_c log p(object of c | image)`` on
    the decoded image, summed over images (the same contrast the variant
    computes with the model's own denoising errors).
    """
    heads = list(oracle.HEADS["object"])
    for p in oracle.parameters():
        p.requires_grad_(False)

    def evidence(z, prompts, contrasts):
        x = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
        logp = oracle((x.clamp(-1, 1) + 1) / 2)["object"].log_softmax(-1)
        world = oracle.world
        own = torch.tensor([heads.index(parse_prompt(p, world)["object"]) for p in prompts])
        alt = torch.tensor([[heads.index(parse_prompt(c, world)["object"]) for c in cs] for cs in contrasts])
        return (logp.gather(1, own[:, None])[:, 0] - logp.gather(1, alt).mean(1)).sum()

    return evidence


def _drawn_as(item: EvalItem) -> tuple:
    """What makes an item's image: its prompt, seed and guidance."""
    return item.prompt, item.seed, item.guidance


class Bench:
    """The pipeline, the two judges and the cached base records."""

    def __init__(self, sizes: Sizes, work: Path, log: Callable[[str], None]):
        self.sizes, self.work, self.log = sizes, work, log
        self.pipe = load_pipeline(world=WORLD.name)
        self.oracle = load_oracle(world=WORLD.name)
        self.judges = {
            "oracle": ShapeWorldJudge(self.oracle),
            "judge2": ShapeWorldJudge(load_second_judge(world=WORLD.name)),
        }
        self.judge = self.judges["oracle"]
        self.settings = GenerationSettings(
            num_inference_steps=sizes.sample_steps or GENERATION_DEFAULTS["num_inference_steps"],
            guidance_scale=GENERATION_DEFAULTS["guidance_scale"],
            height=GENERATION_DEFAULTS.get("height"),
            width=GENERATION_DEFAULTS.get("width"),
            batch_size=sizes.batch_size,
        )
        # the paper's FIA and its ablations (ShapeWorld's preset defaults to the causal variant)
        self.fia_cfg = resolve_config("shapeworld", overrides={"variant": "paper", "world": WORLD.name})
        if sizes.saliency_steps:
            self.fia_cfg = self.fia_cfg.replace(saliency_steps=sizes.saliency_steps)
        # the causal variant with the shipped preset's settings (the pruning variant; the upper bound's attribution)
        self.causal_cfg = resolve_config("shapeworld", overrides={"variant": "causal", "world": WORLD.name})
        if sizes.causal:
            self.causal_cfg = self.causal_cfg.replace(**sizes.causal)
        # the rewrite with the shipped preset's settings (the default FIA on ShapeWorld)
        self.rewrite_cfg = resolve_config("shapeworld", overrides={"variant": "rewrite", "world": WORLD.name})
        if sizes.rewrite:
            self.rewrite_cfg = self.rewrite_cfg.replace(rewrite=dataclasses.replace(self.rewrite_cfg.rewrite, **sizes.rewrite))
        if sizes.sample_steps:  # its statistics walk the sampler's schedule: --quick's shorter one
            self.rewrite_cfg = self.rewrite_cfg.replace(num_inference_steps=sizes.sample_steps)
        self._base: dict[tuple, dict[str, dict[str, dict]]] = {}
        self._base_images: dict[tuple, dict[str, dict]] = {}
        self.images_generated = 0

    # ---------------------------------------------------------- judging
    def suites(self, task: Task, seed: int, shift: int) -> dict[str, Suite]:
        """The task's suite for each judge (same items; quality figures from the oracle's features only)."""
        return {
            name: build_task_suite(task, judge, self.oracle, seed, shift, renders=self.sizes.reference_renders,
                                   quality=name == "oracle" and task.has_quality)
            for name, judge in self.judges.items()
        }  # fmt: skip

    def records(self, items: list[EvalItem]) -> dict[str, dict[str, dict]]:
        """Each judge's record of each item's image, drawn by the pipeline as it is now."""
        out: dict[str, dict[str, dict]] = {name: {} for name in self.judges}
        bs = self.settings.batch_size
        for i in range(0, len(items), bs):
            batch = items[i : i + bs]
            images = np.stack([to_uint8(im) for im in run_pipe(self.pipe, batch, self.settings)])
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            for name, judge in self.judges.items():
                for it, rec in zip(batch, judge.score(x, batch)):
                    if name != "oracle":
                        rec.pop("_features", None)  # quality is read in the oracle's feature space only
                    out[name][it.id] = rec
            self.images_generated += len(batch)
        return out

    def base_records(self, key: tuple, items: list[EvalItem]) -> dict[str, dict[str, dict]]:
        """The unedited model's records (call it while no edit is applied).

        An image is drawn once per prompt and seed: the object tasks give every
        kind the same prompts and seeds whatever is erased, so T1, T2 and F4's
        points share their unedited images.
        """
        if key not in self._base:
            todo = [it for it in items if _drawn_as(it) not in self._base_images]
            made = self.records(todo)
            for it in todo:
                self._base_images[_drawn_as(it)] = {judge: made[judge][it.id] for judge in self.judges}
            self._base[key] = {judge: {it.id: self._base_images[_drawn_as(it)][judge] for it in items} for judge in self.judges}
        return self._base[key]

    def measure(self, suites: dict[str, Suite], key: tuple) -> tuple[dict[str, Any], dict[str, dict[str, dict]]]:
        """Judge the current (edited) model: (per-judge metrics, edited records)."""
        if key not in self._base:
            raise RuntimeError(f"base records of {key} must be made before the edit is applied")
        items = suites["oracle"].items
        edited = self.records(items)
        metrics = {
            name: suite.summarize(suite.items, {"base": self._base[key][name], "edited": edited[name]})
            for name, suite in suites.items()
        }
        return metrics, edited

    # ------------------------------------------------------------ editing
    def method_config(self, method: str, setting: Any, task: Task, masks: dict[str, Any]):
        """``method``'s config for ``task``: its registered default scaled to ShapeWorld, with the tuned knob."""
        knob, _ = TUNING.get(method, (None, ()))
        alpha = {"alpha": task.alpha} if task.alpha is not None else {}
        if method in (CAUSAL_FIA, UPPER_BOUND):
            return self.causal_cfg.replace(**alpha)
        if method == DEFAULT_FIA:  # no fusion step: alpha plays no part
            return self.rewrite_cfg
        cfg = get_method(method).default_config()
        if isinstance(cfg, FIAConfig):  # the paper's FIA and its ablations
            preset = {f: getattr(cfg, f) for f in _FIA_PRESET_FIELDS}
            tuned = {"r2": setting} if knob == "r2" and setting is not None else {}
            return self.fia_cfg.replace(**preset, **tuned, **alpha)
        if method == "random":
            return dataclasses.replace(cfg, like=masks[task.key])  # the default FIA's per-layer counts for this task
        if method == "conceptprune":
            cfg = cfg.replace(
                task="shapeworld",
                num_inference_steps=self.fia_cfg.num_inference_steps,
                guidance_scale=self.fia_cfg.guidance_scale,
                saliency_steps=self.fia_cfg.saliency_steps,
            )
        elif method == "esd-x":
            cfg = cfg.replace(
                train_steps=self.sizes.esd_steps,
                ddim_steps=self.fia_cfg.num_inference_steps,
                sample_guidance=self.fia_cfg.guidance_scale,
            )
        return cfg.replace(**{knob: setting}) if knob is not None and setting is not None else cfg

    def _upper_bound(self, task: Task, cfg) -> Any:
        from fia.causal import causal_erase
        from fia.targets import find_targets

        found = find_targets(self.pipe.unet, "ffn2")
        # the upper bound of pruning alone: no adaptive stop (its evidence is the model's), no repair
        cfg = cfg.replace(repair=None, stop_evidence=None)
        mask = causal_erase(self.pipe, list(task.forget), cfg, found, target_kind="ffn2",
                            judge=oracle_evidence(self.pipe, self.oracle))  # fmt: skip
        mask.method = UPPER_BOUND
        return mask

    def edit(self, method: str, setting: Any, task: Task, masks: dict[str, Any]):
        """Make ``method``'s edit for ``task`` and apply it; returns (edit, seconds/memory/notes).

        The caller judges the edited model, then undoes it with ``edit.restore_(bench.pipe)``.
        """
        edit, info = self.make_edit(method, setting, task, masks)
        edit.apply_(self.pipe)
        return edit, info

    def make_edit(self, method: str, setting: Any, task: Task, masks: dict[str, Any]):
        """``method``'s edit for ``task``, not applied: (edit, seconds/memory/notes)."""
        info: dict[str, Any] = {}
        cfg = self.method_config(method, setting, task, masks)
        keep = [c for c in family_names(task.family) if c not in task.forget]
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            if method == UPPER_BOUND:
                edit = self._upper_bound(task, cfg)
            else:
                prompts = concept_prompts(task.forget, task.family, self.fia_cfg)
                edit = unlearn(
                    self.pipe, task.forget, method, cfg, preserve=keep, prompts=prompts,
                    # one cache per task and method: each edit's seconds are its whole cost, never another's work
                    # reused (the paper's FIA would find a concept's saliency from an earlier task)
                    cache_dir=self.work / "cache" / task.key / method,
                )  # fmt: skip
        info["seconds"] = time.perf_counter() - t0
        info["peak_rss_growth_mb"] = mem.growth_mb
        if method == CAUSAL_FIA:  # the random control copies its per-layer counts
            masks[task.key] = edit
        if hasattr(edit, "pruned_share"):
            info["pruned_share"] = edit.pruned_share
        losses = (getattr(edit, "stats", None) or {}).get("losses")
        if losses:
            info["final_loss"] = float(losses[-1])
            info["losses"] = [round(float(v), 6) for v in losses]
        return edit, info

    def judge_method(self, method: str, setting: Any, task: Task, suites: dict[str, Suite], key: tuple, masks: dict[str, Any]):
        """Edit, judge, restore: (per-judge metrics, edited records, edit info). The pipeline is pristine afterwards."""
        edit, info = self.edit(method, setting, task, masks)
        try:
            metrics, edited = self.measure(suites, key)
        finally:
            edit.restore_(self.pipe)
        return metrics, edited, info


def tune(bench: Bench, methods: list[str], log) -> dict[str, dict[str, Any]]:
    """Each tunable method: its candidates scored by T2 Overall (oracle) on the tuning split."""
    sizes = bench.sizes
    task = Task("T2-tune", "shapeworld-objects", "objects", list(T2_FORGET), sizes.tune_prompts_per_concept,
                sizes.tune_images_per_prompt, keep_roles=("forget", "preserve"))  # fmt: skip
    suites = {"oracle": build_task_suite(task, bench.judge, bench.oracle, TUNING_SEED, TUNING_SHIFT, quality=False)}
    bench.base_records(("tune",), suites["oracle"].items)
    chosen: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method not in TUNING:
            continue
        knob, candidates = TUNING[method]
        trials = []
        for value in candidates[: sizes.candidates]:
            metrics, _, info = bench.judge_method(method, value, task, suites, ("tune",), {})
            s = metrics["oracle"]["summary"]
            trials.append({knob: value, "overall": s["overall"]["edited"], "F": s["forget_accuracy"]["edited"],
                           "P": s["preserve_accuracy"]["edited"], "seconds": round(info["seconds"], 2)})  # fmt: skip
            log(f"  tune {method:13s} {knob}={value:<8g} Overall {fmt(trials[-1]['overall'])} "
                f"F {fmt(trials[-1]['F'])} P {fmt(trials[-1]['P'])}")  # fmt: skip
        best = max(trials, key=lambda t: (t["overall"] if t["overall"] is not None else -1.0))
        chosen[method] = {"knob": knob, "value": best[knob], "trials": trials}
    return chosen


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
    for key in ("kid", "fid"):
        if key in q:
            out[key.upper()] = q[key]
    if q.get("prompt_fidelity"):
        out["fidelity"] = q["prompt_fidelity"]
    return out
