"""What erasing costs: seconds per concept, overhead over bare sampling, extra memory.

For each number of saliency steps and each number of concepts it runs
:func:`fia.erase` (no cache) and, on the same pipeline, the *bare* sampler
for the same batches: the same prompts, seeds, schedule and guidance, stopped
after the same number of steps, with no hooks. It reports

* seconds per concept (erase time / concepts);
* the overhead ratio = erase time / bare sampling time (target <= 1.3), and
  the same read inside the erase run (``in-run``: erase time over erase time
  minus the time spent in the engine's forward hooks), which does not suffer
  from load that changes between the two runs on a shared machine;
* the extra state memory in units of the target (FFN2) weights in float32
  (target <= 5x), counted two ways:
    - ``state``: the bytes of the tensors the collector holds (per-layer
      ``|W|``, Eq. 3 sums and counts, reused buffers) plus the Eq. 2
      accumulators alive at that moment, sampled after every accumulator
      update; the maximum over the run;
    - ``rss``: the growth of the process's resident memory during a
      concept's sampling (sampled at every step end) over the bare run's,
      which also sees temporaries;
* the peak resident memory of the process (``resource.getrusage``).

Usage (SD 1.5 architecture with random weights; small latents on CPU)::

    python benchmarks/erase_cost.py --model sd15 --prompts 2 --latent 8
    python benchmarks/erase_cost.py --model shapeworld --prompts 6

``--json FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import weakref
from typing import Any

import torch
from torch import nn

from fia.bench.memory import peak_rss_bytes, rss_bytes


def tensor_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the distinct tensor storages reachable from FIA's own objects."""
    if depth > 6:
        return 0
    if isinstance(obj, torch.Tensor):
        try:
            key = obj.untyped_storage().data_ptr()
        except Exception:
            key = id(obj)
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, nn.Module):
        return 0  # the model's own weights are not state
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    ours = any((c.__module__ or "").startswith("fia.") for c in type(obj).__mro__)
    if ours and type(obj).__name__ != "TargetLinear" and hasattr(obj, "__dict__"):
        return sum(tensor_bytes(v, seen, depth + 1) for k, v in vars(obj).items() if k not in ("pipe", "config"))
    return 0


class StateMeter:
    """Samples the engine's tensor state while it runs (patches fia.collect)."""

    def __init__(self) -> None:
        from fia import collect
        from fia.core import contrastive

        self.collect = collect
        self.contrastive = contrastive
        self.collectors: list[Any] = []
        self.accumulators: weakref.WeakSet = weakref.WeakSet()
        self.peak_state = 0
        self.peak_rss = 0
        self.hook_seconds = 0.0
        self._orig_collector = collect._Collector
        self._orig_add = contrastive.ContrastiveAccumulator.add
        self._orig_acc_init = contrastive.ContrastiveAccumulator.__init__

    def __enter__(self) -> StateMeter:
        meter = self
        orig_collector, orig_add, orig_init = self._orig_collector, self._orig_add, self._orig_acc_init

        class MeteredCollector(orig_collector):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, **k)
                meter.collectors = [self]

            def on_forward(self, *a: Any, **k: Any) -> None:  # time the engine's work inside the forward hooks
                t0 = time.perf_counter()
                try:
                    super().on_forward(*a, **k)
                finally:
                    meter.hook_seconds += time.perf_counter() - t0

        def init(acc: Any, *a: Any, **k: Any) -> None:
            orig_init(acc, *a, **k)
            meter.accumulators.add(acc)

        def add(acc: Any, *a: Any, **k: Any) -> None:
            orig_add(acc, *a, **k)
            meter.sample()

        self.collect._Collector = MeteredCollector
        self.contrastive.ContrastiveAccumulator.__init__ = init
        self.contrastive.ContrastiveAccumulator.add = add
        return self

    def __exit__(self, *exc: object) -> None:
        self.collect._Collector = self._orig_collector
        self.contrastive.ContrastiveAccumulator.add = self._orig_add
        self.contrastive.ContrastiveAccumulator.__init__ = self._orig_acc_init

    def sample(self) -> None:
        seen: set[int] = set()
        total = sum(tensor_bytes(c, seen) for c in self.collectors)
        total += sum(tensor_bytes(a, seen) for a in list(self.accumulators))
        self.peak_state = max(self.peak_state, total)

    def sample_rss(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes())

    def reset(self) -> None:
        self.hook_seconds = 0.0
        self.collectors = []
        self.peak_state = 0
        self.peak_rss = 0


def load(model: str, latent: int):
    if model == "sd15":
        from fia.architectures import random_sd15_pipeline

        pipe = random_sd15_pipeline(latent_size=latent)
    elif model == "shapeworld":
        from fia.models import load_pipeline

        pipe = load_pipeline(None)
    else:
        from fia.models import load_pipeline

        pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def concept_plan(concepts: list[str], prompts: int, seed: int):
    """``prompts`` concept prompts and as many paired base prompts per concept (ShapeWorld-style places)."""
    from fia.prompts import ConceptPrompts
    from fia.shapeworld import vocab

    places = list(vocab.PLACE_NAMES)
    k = [places[i % len(places)] for i in range(prompts)]
    return {
        c: ConceptPrompts(
            concept=c,
            concept_prompts=tuple(f"a {c} {vocab.place_phrase(p)}" for p in k),
            base_prompts=tuple(vocab.base_phrase(p) for p in k),
            concept_seeds=tuple(seed + i for i in range(prompts)),
            base_seeds=tuple(seed + i for i in range(prompts)),
        )
        for c in concepts
    }


def bare_run(pipe, plan, config, meter: StateMeter | None = None) -> float:
    """Time the sampler alone on the batches erase runs (all prompts of a concept at once)."""
    from fia.sampling import first_steps, generators

    def on_step(_done: int) -> None:
        if meter is not None:
            meter.sample_rss()

    total = 0.0
    for cp in plan.values():
        t0 = time.perf_counter()
        with torch.inference_mode():
            first_steps(
                pipe,
                config.saliency_steps,
                config.num_inference_steps,
                on_step=on_step,
                prompt=list(cp.concept_prompts) + list(cp.base_prompts),
                guidance_scale=config.guidance_scale,
                generator=generators(list(cp.concept_seeds) + list(cp.base_seeds)),
            )
        total += time.perf_counter() - t0
    return total


def write_json(args: argparse.Namespace, w_bytes: int, rows: list[dict[str, Any]]) -> None:
    with open(args.json, "w") as fh:
        json.dump(
            {
                "model": args.model,
                "latent": args.latent,
                "ffn2_weights": w_bytes // 4,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "rows": rows,
            },
            fh,
            indent=2,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sd15", help="sd15 (random SD 1.5 UNet), shapeworld, or a diffusers folder")
    ap.add_argument("--latent", type=int, default=8, help="latent size for --model sd15 (8 -> 64x64 images)")
    ap.add_argument("--prompts", type=int, default=2, help="concept prompts (and as many base prompts) per concept")
    ap.add_argument("--saliency-steps", default="10,20", help="comma-separated saliency step counts")
    ap.add_argument("--concepts", default="1,5", help="comma-separated concept counts")
    ap.add_argument("--steps", type=int, default=50, help="schedule length")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=1, help="repeat each measurement, keep the fastest")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import fia
    from fia.config import FIAConfig
    from fia.targets import denoiser, find_targets

    pipe = load(args.model, args.latent)
    targets = find_targets(denoiser(pipe), "ffn2")
    w_bytes = sum(t.module.weight.numel() * 4 for t in targets)
    names = ["circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond", "crescent", "arrow"]
    step_list = [int(s) for s in args.saliency_steps.split(",")]
    count_list = [int(c) for c in args.concepts.split(",")]
    print(
        f"model {args.model}: {len(targets)} FFN2 layers, {w_bytes // 4 / 1e6:.1f} M weights "
        f"({w_bytes / 2**20:.0f} MiB float32); {args.prompts}+{args.prompts} prompts per concept; "
        f"guidance {args.guidance}; {torch.get_num_threads()} threads"
    )
    # warm-up (first calls allocate and pick kernels)
    warm_cfg = FIAConfig(task="shapeworld", saliency_steps=1, num_inference_steps=args.steps)
    bare_run(pipe, concept_plan(names[:1], args.prompts, 0), warm_cfg)

    rows = []
    header = (
        f"{'sal.steps':>9} {'concepts':>8} {'s/concept':>10} {'bare s/c':>9} {'hooks s/c':>9} "
        f"{'overhead':>9} {'in-run':>7} {'state/W':>8} {'rss/W':>6} {'peak RSS':>9}"
    )
    print(header)
    for steps in step_list:
        cfg = FIAConfig(
            task="shapeworld",
            saliency_steps=steps,
            num_inference_steps=max(args.steps, steps),
            guidance_scale=args.guidance,
        )
        for n in count_list:
            plan = concept_plan(names[:n], args.prompts, cfg.seed)
            erase_t, bare_t, state, rss_extra, hook_t = float("inf"), float("inf"), 0, 0, 0.0
            for _ in range(args.repeats):
                gc.collect()
                meter = StateMeter()
                base_rss = rss_bytes()
                meter.reset()
                bare_t = min(bare_t, bare_run(pipe, plan, cfg, meter))
                bare_peak = meter.peak_rss - base_rss
                gc.collect()
                meter.reset()
                base_rss = rss_bytes()

                def on_progress(done: int, total: int, message: str, meter: StateMeter = meter) -> None:
                    meter.sample_rss()

                with meter:
                    t0 = time.perf_counter()
                    fia.erase(pipe, list(plan), cfg, prompts=plan, progress=on_progress)
                    erase_t = min(erase_t, time.perf_counter() - t0)
                state = max(state, meter.peak_state)
                hook_t = meter.hook_seconds
                rss_extra = max(rss_extra, meter.peak_rss - base_rss - max(bare_peak, 0))
            row = {
                "saliency_steps": steps,
                "concepts": n,
                "prompts_per_set": args.prompts,
                "seconds_per_concept": erase_t / n,
                "bare_seconds_per_concept": bare_t / n,
                "overhead_ratio": erase_t / bare_t,
                "hook_seconds_per_concept": hook_t / n,
                # the same ratio read inside the erase run: its time over its time without the hooks'
                # work (robust to load that changes between the bare and the erase run)
                "overhead_in_run": erase_t / max(erase_t - hook_t, 1e-9),
                "state_over_ffn2_fp32": state / w_bytes,
                "rss_growth_over_ffn2_fp32": max(rss_extra, 0) / w_bytes,
                "peak_rss_gib": peak_rss_bytes() / 2**30,
            }
            rows.append(row)
            print(
                f"{steps:>9} {n:>8} {row['seconds_per_concept']:>10.2f} {row['bare_seconds_per_concept']:>9.2f} "
                f"{row['hook_seconds_per_concept']:>9.2f} "
                f"{row['overhead_ratio']:>9.2f} {row['overhead_in_run']:>7.2f} {row['state_over_ffn2_fp32']:>8.2f} "
                f"{row['rss_growth_over_ffn2_fp32']:>6.2f} {row['peak_rss_gib']:>8.2f}G",
                flush=True,
            )
            if args.json:  # after every row, so an interrupted run keeps its figures
                write_json(args, w_bytes, rows)


if __name__ == "__main__":
    main()
