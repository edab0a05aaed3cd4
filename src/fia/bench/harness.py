"""The benchmark harness: one pipeline, one judge, every registered method, base vs edited figures.

Every method comes from the registry (:func:`fia.methods.unlearn`) and
returns an :class:`fia.edit.Edit`: the harness applies it, judges the edited
model, and restores the pipeline with ``edit.restore_``, so every method
starts from the same pristine weights without snapshots of the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fia.bench.memory import PeakRSS
from fia.bench.report import fmt
from fia.bench.tasks import (
    TUNING,
    TUNING_SEED,
    TUNING_SHIFT,
    T2_FORGET,
    Sizes,
    Task,
    build_task_suite,
    concept_prompts,
    family_names,
)
from fia.evaluate.generate import EvalItem, GenerationSettings, run_pipe, to_uint8
from fia.evaluate.judges import ShapeWorldJudge
from fia.evaluate.suites import Suite
from fia.methods import get_method, unlearn
from fia.prompts import resolve_config
from fia.shapeworld import GENERATION_DEFAULTS, load_oracle, load_pipeline

# FIAConfig fields that make an FIA family member what it is (its registered preset)
_FIA_PRESET_FIELDS = ("variant", "saliency", "selection", "fusion")


class Bench:
    """The pipeline, the judge and the cached base records."""

    def __init__(self, sizes: Sizes, work: Path, log: Callable[[str], None]):
        self.sizes, self.work, self.log = sizes, work, log
        self.pipe = load_pipeline()
        self.oracle = load_oracle()
        self.judge = ShapeWorldJudge(self.oracle)
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

    def records(self, items: list[EvalItem]) -> dict[str, dict]:
        """The judge's record of each item's image, drawn by the pipeline as it is now."""
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
        """The unedited model's records of ``suite`` (made once; call it while no edit is applied)."""
        if key not in self._base:
            self._base[key] = self.records(suite.items)
        return self._base[key]

    def measure(self, suite: Suite, key: tuple) -> dict[str, Any]:
        """Judge the current (edited) model against the base records made by :meth:`base_records`."""
        if key not in self._base:
            raise RuntimeError(f"base records of {key} must be made before the edit is applied")
        edited = self.records(suite.items)
        return suite.summarize(suite.items, {"base": self._base[key], "edited": edited})

    # ------------------------------------------------------------ editing
    def method_config(self, method: str, setting: Any, task: Task, fia_masks: dict[str, Any]):
        """``method``'s config for ``task``: its registered default scaled to ShapeWorld, with the tuned knob."""
        knob, _ = TUNING.get(method, (None, ()))
        cfg = get_method(method).default_config()
        if method.startswith("fia"):
            preset = {f: getattr(cfg, f) for f in _FIA_PRESET_FIELDS}
            return self.fia_cfg.replace(
                **preset,
                **({"r2": setting} if knob == "r2" and setting is not None else {}),
                **({"alpha": task.alpha} if task.alpha is not None else {}),
            )
        if method == "random":
            cfg.like = fia_masks[task.key]  # the control copies FIA's per-layer counts for this task
            return cfg
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

    def edit(self, method: str, setting: Any, task: Task, fia_masks: dict[str, Any]):
        """Make ``method``'s edit for ``task`` and apply it; returns (edit, seconds/memory/notes).

        The caller judges the edited model, then undoes it with ``edit.restore_(bench.pipe)``.
        """
        info: dict[str, Any] = {}
        cfg = self.method_config(method, setting, task, fia_masks)
        prompts = concept_prompts(task.forget, task.family, self.fia_cfg)
        keep = [c for c in family_names(task.family) if c not in task.forget]
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            edit = unlearn(
                self.pipe, task.forget, method, cfg, preserve=keep, prompts=prompts,
                cache_dir=self.work / "cache",  # shared: the keys keep methods and settings apart
            )  # fmt: skip
        info["seconds"] = time.perf_counter() - t0
        info["peak_rss_growth_mb"] = mem.growth_mb
        if method == "fia":
            fia_masks[task.key] = edit
        if hasattr(edit, "pruned_share"):
            info["pruned_share"] = edit.pruned_share
        final_loss = (getattr(edit, "stats", None) or {}).get("final_loss")
        if final_loss is not None:
            info["final_loss"] = float(final_loss)
        edit.apply_(self.pipe)
        return edit, info

    def judge_method(self, method: str, setting: Any, task: Task, suite: Suite, key: tuple, fia_masks: dict[str, Any]):
        """Edit, judge, restore: (metrics, edit info). The pipeline is pristine again afterwards."""
        edit, info = self.edit(method, setting, task, fia_masks)
        try:
            metrics = self.measure(suite, key)
        finally:
            edit.restore_(self.pipe)
        return metrics, info


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
            m, info = bench.judge_method(method, value, task, suite, ("tune",), {})
            s = m["summary"]
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
    if "fid" in q:
        out["FID"] = q["fid"]
    if q.get("prompt_fidelity"):
        out["fidelity"] = q["prompt_fidelity"]
    return out
