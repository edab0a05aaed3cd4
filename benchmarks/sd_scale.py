"""FIA at Stable Diffusion scale: peak memory and seconds per concept, measured on small latents and extrapolated.

A full erase at SD scale takes hours on a CPU, so this script measures the
*primitives* an erase is made of, on the true SD 1.5, SD 2.1 and SDXL UNets
(random weights, :func:`fia.architectures.build_denoiser`, no download), at
small latents and batch sizes, and composes them with the number of calls an
erase makes. Sections (``--sections``, all by default):

``estimate``
    :mod:`fia.memory`'s estimate of each variant's peak at the models' own
    latents (64x64 for SD 1.5 and 2.1, 128x128 for SDXL), float32 and
    float16, batch sizes 1-16, and the largest batch size that fits in 24 and
    80 GiB. Traced on the meta device: nothing is allocated.
``validate``
    The estimate against the measured peak resident memory of real erases
    (ShapeWorld, the preset's settings; SD 1.5 at small latents, reduced
    settings), each in its own process, with glibc's default allocator and
    with ``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor mapped on its own, so
    freed memory goes back to the system and the resident size follows the
    live tensors).
``primitives``
    Seconds of one call of each primitive per model, latent and batch size
    ``b`` (the number of prompts), with the number of floating-point
    operations of the same call counted on the meta device:

    * ``sampler``: one step of the causal variant's differentiable sampler,
      ``2b`` rows, checkpointed: forward, then recomputation and backward to
      the input and the target weights (:meth:`fia.causal._Model._denoise`);
    * ``evidence``: one evidence call, ``(1 + m) b`` rows (``m = 3``
      contrasts), the unedited weights, forward, recomputation, backward to
      the input;
    * ``paper``: one step of the paper variant, ``2b`` rows, forward only,
      with its collector's hooks (Eq. 1-2) on every target;
    * ``gram``: one step of the repair's statistics pass, ``2b`` rows,
      forward only, with the hook that adds ``x x^T`` in float64.

    Per model and primitive, ``seconds = a + c * FLOPs`` is fitted by least
    squares on latents 8 to 16 (:func:`fit_seconds`); the extrapolation to
    the models' own latents uses the FLOPs counted there. SD 1.5's steps at
    latents 32 and 64 are measured too and left out of the fit: they check
    the extrapolation. The per-weight work (the causal variant's selection,
    its repair's solve, the paper's neuron selection) is timed once per model.
    GPU hours are an estimate, not a measurement: the denoiser's FLOPs of the
    composition over an assumed sustained 300 TFLOP/s.
``count``
    The call counts below, checked on a real reduced causal erase on
    ShapeWorld (every denoiser call counted by a hook), and its time against
    the composition of its primitives measured on the same model.

Calls per erase (``C`` concepts; causal: ``R`` rounds, ``n`` prompts per
concept, ``a`` anchor prompts, ``S`` score steps, ``K`` evidence timesteps,
micro-batches of ``b`` prompts; repair: ``N_k`` kept and ``N_c`` concept
prompts in batches of ``r`` (``b``, or 32 when unset), ``T`` sampler steps;
paper: ``P`` concept and base prompts per concept, ``s`` saliency steps)::

    causal: R * (C * ceil(n / b) + ceil(a / b)) micro-batches (no concept stopping early),
            each S sampler steps and K evidence calls, each call run forward, then
            recomputed and backpropagated: 2 (S + K) forward calls and S + K backward
            passes per micro-batch;
            repair: (ceil(N_k / r) + ceil(N_c / r)) * T forward calls of 2r rows;
            R * C selections, one solve.
    seconds(C) = R (C ceil(n/b) + ceil(a/b)) (S t_sampler(b) + K t_evidence(b))
                 + (ceil(N_k/r) + ceil(N_c/r)) T t_gram(r) + R C t_select + t_solve(C)
    paper:  C * ceil(P / b) * s forward calls of 2b rows with hooks, C selections.
    seconds(C) = C (ceil(P/b) s t_paper(b) + t_select_paper)

The causal variant refuses SDXL-style pipelines (added text-time embeddings):
for SDXL only the paper variant is timed, and the causal variant's memory is
the estimator's figure alone. SDXL runs in bfloat16 here (its UNet takes
10 GB in float32) and its paper collector watches every fourth target (all
of them would take 4 GB more); the hooks' seconds are scaled to all targets.
SD 1.5 and 2.1 run in float32.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sd_scale.py            # everything (about an hour on one core)
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sd_scale.py --quick    # about 20 minutes: fewer sizes, no SD 2.1
    python benchmarks/sd_scale.py --sections estimate                    # the estimator's table only (seconds)

It writes ``benchmarks/results/sd_scale.json`` (``--json``; ``--quick`` writes
``sd_scale_quick.json``) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
MODELS = {"sd15": 64, "sd21": 64, "sdxl": 128}  # the latent each is extrapolated to (512 px; 1024 px)
CONTRASTS = 3
EVIDENCE_TIMESTEPS = 3
# GPU seconds are an estimate, not a measurement: FLOPs over this assumed sustained throughput
# (about 30 % of an H100's dense bfloat16 peak of 989 TFLOP/s)
ASSUMED_GPU_FLOPS = 300e12
CARDS = {"24 GiB": 24 * GIB, "80 GiB": 80 * GIB}


def machine() -> dict[str, Any]:
    """The load and threads of this machine, recorded with every measurement."""
    return {"load_1min": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


# ------------------------------------------------------------- random models
def random_unet(name: str, latent: int, dtype: torch.dtype) -> torch.nn.Module:
    """The true UNet of ``name`` with random weights in ``dtype``, built without a float32 copy first."""
    from fia.architectures import build_denoiser

    model = torch.nn.Module.to(build_denoiser(name, sample_size=latent), dtype).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif pname.endswith("weight") and "norm" in pname:
                p.fill_(1.0)
            else:
                p.zero_()
        for b in model.buffers():
            b.zero_()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def call_inputs(unet: torch.nn.Module, rows: int, latent: int, device: str = "cpu", text_length: int = 77):
    """``(sample, timestep, kwargs)`` of one call of ``unet`` on ``rows`` random latents."""
    from fia.memory import denoiser_inputs

    dtype = next(unet.parameters()).dtype
    sample, _, kwargs = denoiser_inputs(dict(unet.config), rows, latent, dtype, text_length)

    def real(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, dtype=t.dtype, device=device) if device != "meta" else t

    kwargs = {k: ({kk: real(vv) for kk, vv in v.items()} if isinstance(v, dict) else real(v)) for k, v in kwargs.items()}
    return real(sample), torch.full((rows,), 500, device=device), kwargs


# ---------------------------------------------------------------- primitives
def primitive_rows(kind: str, b: int) -> int:
    """Denoiser rows of one call of primitive ``kind`` for ``b`` prompts."""
    return (1 + CONTRASTS) * b if kind == "evidence" else 2 * b


def run_primitive(kind: str, unet: torch.nn.Module, targets: list, b: int, latent: int, device: str = "cpu",
                  text_length: int = 77) -> None:  # fmt: skip
    """One call of primitive ``kind`` (module docstring) for ``b`` prompts, on ``device`` (``meta``: no arithmetic).

    ``forward`` is the bare forward call (no hooks, no gradients).
    """
    from torch.utils.checkpoint import checkpoint

    rows = primitive_rows(kind, b)
    sample, timestep, kwargs = call_inputs(unet, rows, latent, device, text_length)
    if kind == "forward":
        with torch.inference_mode():
            unet(sample, timestep, **kwargs)
        return
    if kind in ("sampler", "evidence"):  # the causal variant's checkpointed calls (fia.causal._Model._denoise)
        weights = [t.module.weight for t in targets]
        sample.requires_grad_(True)
        unedited = {f"{t.name}.weight": t.module.weight for t in targets}

        def run(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            if kind == "sampler":
                return unet(x, timestep, encoder_hidden_states=e).sample
            return torch.func.functional_call(unet, unedited, (x, timestep), {"encoder_hidden_states": e}).sample

        for w in weights:
            w.requires_grad_(kind == "sampler")
        try:  # the sampler's inputs are computed tensors, not leaves (checkpoint's early stop needs that)
            out = checkpoint(run, sample * 1, kwargs["encoder_hidden_states"], use_reentrant=False)
            torch.autograd.grad(out.float().pow(2).mean(), [sample] + (weights if kind == "sampler" else []))
        finally:
            for w in weights:
                w.requires_grad_(False)
        return
    hook, finish = _forward_hook(kind, unet, targets, b)
    from fia.sampling import capture

    with torch.inference_mode(), capture(targets, hook, within=unet):
        unet(sample, timestep, **kwargs)
    finish()


def _forward_hook(kind: str, unet: torch.nn.Module, targets: list, b: int):
    """The paper variant's collector hook (Eq. 1-2, both prompt kinds in the batch) or the repair's Gram hook."""
    if kind == "gram":
        from fia.repair import _GramAccumulator

        acc = _GramAccumulator(targets, rows="all", guided=True)
        return acc.hook, lambda: None
    from fia.collect import _Collector
    from fia.config import FIAConfig

    config = FIAConfig(task="shapeworld", saliency_steps=1, num_inference_steps=1, guidance_scale=7.5)
    collector = _Collector(SimpleNamespace(do_classifier_free_guidance=True), config, targets, 0.05, None)
    if b < 2:
        raise ValueError("the paper primitive needs a concept and a base prompt: b >= 2")
    collector.chunk_flags = [k < b // 2 for k in range(b)]  # concept prompts, then base prompts
    collector.single_chunk = True  # Eq. 2 finished in the hook, as with all prompts in one batch

    def next_step() -> None:
        collector.step += 1  # each call is a new sampler step

    return collector.on_forward, next_step


def primitive_flops(kind: str, unet_meta: torch.nn.Module, targets: list, b: int, latent: int) -> int:
    """Floating-point operations of one call of ``kind``, the denoiser's counted on the meta device.

    The hooks of ``paper`` and ``gram`` read values (``.item()``), which meta
    tensors have not, so their matrix products are added by formula: Eq. 1's
    ``Y^T X`` per prompt (``2 N out in`` for ``N`` conditional tokens) and
    the Gram's ``X^T X`` (``2 N in^2`` over all rows' tokens).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from fia.memory import trace_call

    with FlopCounterMode(display=False) as counter:
        if kind in ("sampler", "evidence"):
            run_primitive(kind, unet_meta, targets, b, latent, device="meta")
        else:
            sample, timestep, kwargs = call_inputs(unet_meta, primitive_rows(kind, b), latent, "meta")
            with torch.no_grad():
                unet_meta(sample, timestep, **kwargs)
    flops = int(counter.get_total_flops())
    if kind in ("paper", "gram"):
        rows = primitive_rows(kind, b)
        trace = trace_call(unet_meta, rows=rows, latent=latent, dtype=torch.float32, mode="forward")
        for name, (out_f, in_f) in trace.targets.items():
            tokens = trace.target_inputs[name] // in_f  # over all rows
            flops += 2 * tokens * in_f * in_f if kind == "gram" else 2 * (tokens // 2) * out_f * in_f
    return flops


def time_primitive(kind: str, unet: torch.nn.Module, targets: list, b: int, latent: int, text_length: int = 77) -> float:
    """Seconds of one call (the faster of two when one takes under 2 s)."""
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        run_primitive(kind, unet, targets, b, latent, text_length=text_length)
        best = min(best, time.perf_counter() - t0)
        if best >= 2.0:
            break
    return best


# ------------------------------------------------------------------ settings
# The published parameter counts of each model's other modules (text encoders, VAE), which the
# estimate adds to the UNet's: SD 1.5 CLIP ViT-L/14 text 123.1 M, SD 2.1 OpenCLIP ViT-H text 340.4 M,
# SDXL both (123.1 M + 694.7 M); the VAE 83.7 M in all three.
OTHER_PARAMETERS = {"sd15": 123.1e6 + 83.7e6, "sd21": 340.4e6 + 83.7e6, "sdxl": 123.1e6 + 694.7e6 + 83.7e6}
# the paper variant on a real model: the object task's 60 concept and 30 base prompts, 10 saliency steps
PAPER_PROMPTS, PAPER_STEPS = 90, 10
# the repair's prompts at SD scale, as the ShapeWorld preset makes them: 12 per erased concept, and the
# kept set of one erased concept in ShapeWorld 2 (159 prompts), taken as a large vocabulary's
REPAIR_CONCEPT_PER_CONCEPT, REPAIR_KEEP = 12, 159
SD_SCHEDULE_STEPS = 50  # SD's sampler (fia.defaults.SD_SAMPLER), which the repair's statistics pass runs


def causal_config(**changes: Any):
    """The causal variant's default settings (the ShapeWorld preset: its only one), with ``changes``."""
    from fia.presets import resolve_config

    return resolve_config("shapeworld", None, {"variant": "causal"}, default_task="shapeworld").replace(**changes)


def paper_config(**changes: Any):
    from fia.config import FIAConfig

    return FIAConfig(**changes)


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# ------------------------------------------------------------------ estimate
def estimate(model: str, variant: str, dtype: torch.dtype, batch_size: int, latent: int | None = None):
    """:mod:`fia.memory`'s estimate for one model, variant, dtype and batch size (one concept)."""
    from fia.architectures import unet_config
    from fia.memory import causal_estimate, paper_estimate

    config = unet_config(model)
    other = int(OTHER_PARAMETERS[model] * torch.empty((), dtype=dtype).element_size())
    latent = latent or MODELS[model]
    if variant == "causal":
        return causal_estimate(config, causal_config(batch_size=batch_size), concepts=1, latent=latent, dtype=dtype,
                               other_parameters=other)  # fmt: skip
    return paper_estimate(config, paper_config(batch_size=batch_size), prompts=PAPER_PROMPTS, latent=latent,
                          dtype=dtype, other_parameters=other)  # fmt: skip


def largest_fitting(model: str, variant: str, dtype: torch.dtype, card: int) -> int | None:
    """The largest batch size (causal: up to 64 prompts; paper: up to all 90) whose estimate fits ``card`` bytes."""
    top = 64 if variant == "causal" else PAPER_PROMPTS
    fitting = [b for b in range(1, top + 1) if estimate(model, variant, dtype, b).total <= card]
    return max(fitting) if fitting else None


def section_estimate(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for model, latent in MODELS.items():
        for dtype_name in ("float32", "float16"):
            dtype = dtype_of(dtype_name)
            for variant in ("causal", "paper"):
                fits = {card: largest_fitting(model, variant, dtype, size) for card, size in CARDS.items()}
                for b in (1, 2, 4, 8, 16) + ((PAPER_PROMPTS,) if variant == "paper" else ()):
                    e = estimate(model, variant, dtype, b)
                    rows.append({"model": model, "dtype": dtype_name, "variant": variant, "latent": latent,
                                 "batch_size": b, "gib": round(e.total / GIB, 2),
                                 "terms_gib": {k: round(v / GIB, 3) for k, v in e.terms.items()},
                                 "largest_batch_fitting": fits,
                                 "runs": variant == "paper" or model != "sdxl"})  # fmt: skip
                print(f"{model} {dtype_name} {variant}: largest batch fitting {fits}", flush=True)
    return rows


# ------------------------------------------------------------------ validate
# name -> (model, latent, variant, concepts, settings): real erases whose peak is measured
VALIDATION_CASES: dict[str, tuple[str, int, str, list[str], dict[str, Any]]] = {
    "shapeworld-causal": ("shapeworld", 8, "causal", ["star"], {"rounds": 2, "stop_evidence": None}),
    "shapeworld-paper": ("shapeworld", 8, "paper", ["star"], {}),
    "sd15-causal-8": ("sd15", 8, "causal", ["star"], {"rounds": 1, "score_steps": 2, "concept_prompts_per_concept": 2,
                      "anchor_prompts": 2, "num_inference_steps": 2}),
    "sd15-causal-16": ("sd15", 16, "causal", ["star"], {"rounds": 1, "score_steps": 2, "concept_prompts_per_concept": 4,
                       "anchor_prompts": 4, "num_inference_steps": 2, "batch_size": 4}),
    "sd15-paper-16": ("sd15", 16, "paper", ["star"], {"saliency_steps": 2, "num_inference_steps": 50}),
}  # fmt: skip
QUICK_CASES = ("shapeworld-causal", "shapeworld-paper", "sd15-causal-8")
# name -> (model, latent, prompts b, primitive): one denoiser call on its own, against its trace
CALL_CASES: dict[str, tuple[str, int, int, str]] = {
    "sd15-evidence-32x1": ("sd15", 32, 1, "evidence"),
    "sd15-sampler-32x2": ("sd15", 32, 2, "sampler"),
    "sd15-evidence-64x1": ("sd15", 64, 1, "evidence"),
    "sd15-forward-64x4": ("sd15", 64, 4, "forward"),
}


def load_case_pipeline(model: str, latent: int):
    if model == "shapeworld":
        from fia.shapeworld import load_pipeline

        return load_pipeline(world="shapeworld2")
    from fia.architectures import random_sd15_pipeline

    return random_sd15_pipeline(latent_size=latent)


def run_case(name: str) -> dict[str, Any]:
    """One real erase: its peak resident memory over the loaded model's, against the estimate of the same run."""
    import gc

    import fia
    from fia.bench.memory import PeakRSS
    from fia.memory import estimate_erase
    from fia.plan import plan_erase

    model, latent, variant, concepts, settings = VALIDATION_CASES[name]
    pipe = load_case_pipeline(model, latent)
    pipe.set_progress_bar_config(disable=True)
    config = causal_config(**settings) if variant == "causal" else paper_config(task="shapeworld", **settings)
    plan = plan_erase(concepts, config)
    prompts = max((len(p.concept_prompts) + len(p.base_prompts) for p in plan.prompts.values()), default=2)
    est = estimate_erase(pipe, config, len(concepts), prompts)
    gc.collect()
    t0 = time.perf_counter()
    with PeakRSS() as meter:
        fia.erase(pipe, plan, max_memory="1TB")  # the check would run the estimate again: skip its budget
    work = est.total - est.terms["parameters"]
    return {
        "case": name, "model": model, "latent": latent, "variant": variant, "batch_size": est.batch_size,
        "measured_gib": round((meter.peak - meter.start) / GIB, 3), "estimated_gib": round(work / GIB, 3),
        "ratio": round((meter.peak - meter.start) / work, 2), "phases_gib": {k: round(v / GIB, 3) for k, v in est.phases.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"), **machine(),
    }  # fmt: skip


def run_call_case(name: str) -> dict[str, Any]:
    """One call of a primitive on the real UNet: its peak resident memory over the model's, against its trace."""
    import gc

    from fia.bench.memory import PeakRSS
    from fia.memory import trace_call
    from fia.targets import find_targets

    model, latent, b, kind = CALL_CASES[name]
    unet = random_unet(model, latent, torch.float32)
    targets = find_targets(unet, "ffn2")
    mode = {"evidence": "evidence", "sampler": "sampler", "forward": "forward"}[kind]
    traced = trace_call(unet, rows=primitive_rows(kind, b), latent=latent, dtype=torch.float32, mode=mode)
    gc.collect()
    with PeakRSS() as meter:
        run_primitive(kind, unet, targets, b, latent)
    # the sampler call also leaves the targets' gradients (T x 4 bytes), which the estimate counts apart
    grads = sum(t.module.weight.numel() * 4 for t in targets) if kind == "sampler" else 0
    measured = meter.peak - meter.start
    return {"case": name, "model": model, "latent": latent, "rows": primitive_rows(kind, b), "kind": kind,
            "measured_gib": round(measured / GIB, 3), "estimated_gib": round((traced.peak + grads) / GIB, 3),
            "ratio": round(measured / (traced.peak + grads), 2),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"), **machine()}  # fmt: skip


def subprocess_json(args: list[str], env: dict[str, str] | None = None) -> Any:
    """Run this script with ``args`` in a fresh process (its own peak memory) and read its last output line."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    done = subprocess.run([sys.executable, __file__, *args], env=full_env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed (its error is above)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def case_resident_gib(flag: str, name: str) -> float:
    """About the resident memory a validation case reaches (SD 1.5 cases: the model's float32 UNet plus the
    estimate, times 1.4 for glibc's allocator; ShapeWorld cases are small), from the estimator alone."""
    from fia.architectures import unet_config
    from fia.memory import causal_estimate, paper_estimate, trace_call

    if flag == "--call-case":
        model, latent, b, kind = CALL_CASES[name]
        work = trace_call(unet_config(model), rows=primitive_rows(kind, b), latent=latent, dtype=torch.float32, mode=kind).peak
    else:
        model, latent, variant, concepts, settings = VALIDATION_CASES[name]
        if model == "shapeworld":
            return 1.0
        config = causal_config(**settings) if variant == "causal" else paper_config(task="shapeworld", **settings)
        est = (causal_estimate(unet_config(model), config, concepts=len(concepts), latent=latent) if variant == "causal"
               else paper_estimate(unet_config(model), config, prompts=2 * len(concepts), latent=latent))  # fmt: skip
        work = est.total - est.terms["parameters"]
    return (1.4 * work + 3.5 * GIB) / GIB  # the SD 1.5 UNet: 3.4 GB in float32


def section_validate(quick: bool) -> list[dict[str, Any]]:
    """Each case in its own process, with both allocator settings; a case the free memory cannot hold
    (with 2 GiB to spare for the machine's other work) is skipped and says so."""
    from fia.memory import available_memory

    rows = []
    cases = [("--case", n) for n in (QUICK_CASES if quick else VALIDATION_CASES)]
    cases += [] if quick else [("--call-case", n) for n in CALL_CASES]
    for flag, name in cases:
        needs, free = case_resident_gib(flag, name), (available_memory(torch.device("cpu")) or 0) / GIB
        if needs > free - 2:
            rows.append({"case": name, "skipped": f"needs about {needs:.1f} GiB, {free:.1f} GiB free"})
            print(f"{name:18} skipped: needs about {needs:.1f} GiB, {free:.1f} GiB free", flush=True)
            continue
        for env in ({}, {"MALLOC_MMAP_THRESHOLD_": "65536"}):
            row = subprocess_json([flag, name], env)
            rows.append(row)
            print(f"{name:18} malloc {row['malloc_mmap_threshold'] or 'default':>7}: measured {row['measured_gib']:.3f} GiB, "
                  f"estimated {row['estimated_gib']:.3f} GiB (x{row['ratio']})", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and cases: checks the script, not the figures")
    ap.add_argument("--sections", default="estimate,validate,primitives,count", help="comma-separated sections")
    ap.add_argument("--json", help="where the figures go (default benchmarks/results/sd_scale.json; with --quick, "
                    "sd_scale_quick.json beside it, so a check does not overwrite the figures)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one validation case, in a fresh process
    ap.add_argument("--call-case", help=argparse.SUPPRESS)  # one call's validation case, in a fresh process
    ap.add_argument("--primitives-of", help=argparse.SUPPRESS)  # one model's primitives, in a fresh process
    ap.add_argument("--count", action="store_true", help=argparse.SUPPRESS)  # the count check, in a fresh process
    ap.add_argument("--project", action="store_true", help="only recompute the projection and table from --json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    if args.call_case:
        print(json.dumps(run_call_case(args.call_case)))
        return
    if args.count:
        print(json.dumps(run_count(args.quick)))
        return
    if args.primitives_of:
        print(json.dumps(measure_primitives(args.primitives_of, args.quick)))
        return
    path = Path(args.json or ROOT / "benchmarks" / "results" / ("sd_scale_quick.json" if args.quick else "sd_scale.json"))
    results = json.loads(path.read_text()) if path.exists() else {}
    for section in [] if args.project else args.sections.split(","):
        results[section] = SECTIONS[section](args.quick)
        results["machine"] = machine() | {"torch": torch.__version__, "quick": args.quick}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")  # after every section, so a stopped run keeps its figures
    if {"estimate", "primitives", "count"} <= set(results):
        results["projection"] = project(results)
        path.write_text(json.dumps(results, indent=1) + "\n")
        print_table(results["projection"])



# ---------------------------------------------------------- primitives: timing
GRID = {"latents": (8, 12, 16), "causal": (1, 2, 4), "paper": (2, 4, 8)}
QUICK_GRID = {"latents": (8, 12), "causal": (1, 2), "paper": (2, 4)}
# SD 1.5 at latent 32 and at its own 64: checks the extrapolation (not fitted)
OUT_OF_SAMPLE = {32: {"sampler": 1, "paper": 2}, 64: {"sampler": 1, "paper": 2}}


def kinds_of(model: str) -> tuple[str, ...]:
    """The primitives a model runs: the causal variant refuses SDXL (added text-time embeddings)."""
    return ("paper",) if model == "sdxl" else ("sampler", "evidence", "paper", "gram")


def measure_primitives(model: str, quick: bool) -> dict[str, Any]:
    """Seconds and FLOPs of every primitive of ``model`` over the grid, and its per-weight work."""
    from fia.architectures import build_denoiser
    from fia.targets import find_targets

    dtype = torch.bfloat16 if model == "sdxl" else torch.float32
    grid = QUICK_GRID if quick else GRID
    unet = random_unet(model, grid["latents"][0], dtype)
    targets = find_targets(unet, "ffn2")
    # SDXL: the paper's collector on every target would pass 10 GB of memory here: it watches every
    # fourth target, and the hooks' seconds are scaled to all of them (module docstring)
    watched = targets[::4] if model == "sdxl" else targets
    share = sum(t.module.weight.numel() for t in targets) / sum(t.module.weight.numel() for t in watched)
    run_primitive(kinds_of(model)[0], unet, watched, 2, grid["latents"][0])  # warm-up
    rows = []
    cells = [(lat, kind, b) for lat in grid["latents"] for kind in kinds_of(model)
             for b in grid["causal" if kind in ("sampler", "evidence", "gram") else "paper"]]  # fmt: skip
    if model == "sd15" and not quick:
        cells += [(latent, kind, b) for latent, kinds in OUT_OF_SAMPLE.items() for kind, b in kinds.items()]
    for latent, kind, b in cells:
        meta = build_denoiser(model, sample_size=latent)
        seconds = time_primitive(kind, unet, watched, b, latent)
        if share > 1:  # the hooks' part of the time, scaled from the watched targets to all
            bare = time_primitive("forward", unet, watched, b, latent)
            seconds = bare + (seconds - bare) * share
        flops = primitive_flops(kind, meta, find_targets(meta, "ffn2"), b, latent)
        rows.append({"latent": latent, "kind": kind, "b": b, "seconds": round(seconds, 3), "flops": flops,
                     "out_of_sample": latent in OUT_OF_SAMPLE, **machine()})  # fmt: skip
        print(f"{model} {kind:8} latent {latent:2} b {b}: {seconds:7.2f} s, {flops / 1e9:8.1f} GFLOP", file=sys.stderr, flush=True)
    return {"model": model, "dtype": str(dtype).removeprefix("torch."), "calls": rows, "per_weight": per_weight_work(model, targets)}


def per_weight_work(model: str, targets: list, solve_concepts: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Seconds of the work that follows the weights, not the latents: selections and the repair's solve."""
    from fia.core.attribution import contrast_scores, global_top_k
    from fia.core.select import select_neurons
    from fia.repair import fit_repair

    g = torch.Generator().manual_seed(0)
    shapes = {t.name: tuple(t.module.weight.shape) for t in targets}
    n_weights = sum(o * i for o, i in shapes.values())
    t0 = time.perf_counter()
    for shape in shapes.values():
        select_neurons(torch.rand(shape, generator=g), 0.01)
    out = {"paper_select": round(time.perf_counter() - t0, 2)}
    if model == "sdxl":
        return out
    cfg = causal_config()
    scores = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    t0 = time.perf_counter()
    s = {n: contrast_scores(v, v, cfg.anchor_weight) for n, v in scores.items()}
    global_top_k(s, int(cfg.budget * n_weights / cfg.rounds), exclude={n: torch.zeros(v, dtype=torch.bool) for n, v in shapes.items()})
    out["causal_select"] = time.perf_counter() - t0
    del scores, s
    weights = {t.name: t.module.weight.detach().float() for t in targets}
    grams = {n: random_gram(i, g) for n, (_, i) in shapes.items()}
    for concepts in solve_concepts:
        prune = {n: torch.rand(s, generator=g) < concepts * cfg.budget for n, s in shapes.items()}
        t0 = time.perf_counter()
        fit_repair(weights, prune, grams, grams, concept_weight=1.0, damping=0.01)
        out[f"causal_solve_{concepts}"] = time.perf_counter() - t0
    return {k: round(v, 2) for k, v in out.items()}


def random_gram(width: int, generator: torch.Generator) -> torch.Tensor:
    """A symmetric positive definite ``width x width`` float64 matrix (identity plus a small symmetric part)."""
    r = torch.randn((width, width), generator=generator, dtype=torch.float64)
    return torch.eye(width, dtype=torch.float64) + (r + r.T) / (4 * math.sqrt(width))


def section_primitives(quick: bool) -> list[dict[str, Any]]:
    return [subprocess_json(["--primitives-of", m] + (["--quick"] if quick else [])) for m in (("sd15", "sdxl") if quick else MODELS)]



# ------------------------------------------------------------------- counting
def causal_micro_batches(config: Any, concepts: int) -> list[int]:
    """The prompts of every micro-batch an erase runs (all rounds, no concept stopping early)."""
    from fia.memory import causal_micro_batch

    def split(n: int, b: int) -> list[int]:
        return [min(b, n - s) for s in range(0, n, b)]

    per_round = concepts * split(config.concept_prompts_per_concept, causal_micro_batch(config))
    if config.anchor_weight > 0:
        per_round += split(config.anchor_prompts, config.batch_size or min(config.anchor_prompts, 16))
    return per_round * config.rounds


def repair_batches(config: Any, keep: int, concept: int) -> list[int]:
    """The prompts of every sampler batch of the repair's statistics pass."""
    from fia.repair import GRAM_BATCH

    r = config.batch_size or GRAM_BATCH
    return [min(r, n - s) for n in (keep, concept) for s in range(0, n, r)]


def expected_calls(config: Any, concepts: int, keep: int, concept_prompts: int) -> dict[str, int]:
    """Denoiser calls by kind and rows, as the module docstring counts them (forward and recomputation)."""
    from collections import Counter

    calls: Counter = Counter()
    for b in causal_micro_batches(config, concepts):
        calls[f"sampler x{2 * b}"] += 2 * config.score_steps
        calls[f"evidence x{(1 + config.contrasts) * b}"] += 2 * len(config.evidence_timesteps)
    for r in repair_batches(config, keep, concept_prompts) if config.repair is not None else []:
        calls[f"repair x{2 * r}"] += config.num_inference_steps
    return dict(calls)


def run_count(quick: bool) -> dict[str, Any]:
    """A reduced causal erase on ShapeWorld: its denoiser calls counted, its time against its primitives'."""
    from collections import Counter

    import fia
    from fia.shapeworld import load_pipeline
    from fia.tasks import task_of

    pipe = load_pipeline(world="shapeworld2")
    pipe.set_progress_bar_config(disable=True)
    concepts = ["star", "heart"]
    config = causal_config(rounds=2, stop_evidence=None, score_steps=4, concept_prompts_per_concept=6, anchor_prompts=8,
                           batch_size=4, world="shapeworld2")  # fmt: skip
    counted: Counter = Counter()

    def count(_module: Any, args: tuple, kwargs: dict) -> None:
        timestep, rows = args[1] if len(args) > 1 else kwargs["timestep"], int(args[0].shape[0])
        kind = "repair" if not torch.is_grad_enabled() else ("sampler" if torch.as_tensor(timestep).dim() == 0 else "evidence")
        counted[f"{kind} x{rows}"] += 1

    handle = pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
    t0 = time.perf_counter()
    fia.erase(pipe, concepts, config, max_memory="1TB")
    seconds = time.perf_counter() - t0
    handle.remove()
    rp = task_of(config).repair_prompts(concepts, config.repair, anchors=config.anchors, seed=config.seed)
    expected = expected_calls(config, len(concepts), len(rp.keep), len(rp.concept))
    composed = composed_shapeworld_seconds(pipe, config, len(concepts), len(rp.keep), len(rp.concept))
    return {"concepts": concepts, "settings": {k: getattr(config, k) for k in ("rounds", "score_steps", "contrasts",
            "concept_prompts_per_concept", "anchor_prompts", "batch_size", "num_inference_steps")},
            "counted_calls": dict(counted), "expected_calls": expected, "counts_match": dict(counted) == expected,
            "seconds": round(seconds, 1), "composed_seconds": round(composed, 1), **machine()}  # fmt: skip


def composed_shapeworld_seconds(pipe: Any, config: Any, concepts: int, keep: int, concept_prompts: int) -> float:
    """The count formula's seconds with each primitive timed on the ShapeWorld UNet at its batch sizes."""
    from fia.targets import find_targets

    unet, latent = pipe.unet, int(pipe.unet.config.sample_size)
    targets = find_targets(unet, "ffn2")
    length = int(pipe.tokenizer.model_max_length)

    def t(kind: str, b: int) -> float:
        return time_primitive(kind, unet, targets, b, latent, text_length=length)

    total = sum(config.score_steps * t("sampler", b) + len(config.evidence_timesteps) * t("evidence", b)
                for b in causal_micro_batches(config, concepts))  # fmt: skip
    total += sum(config.num_inference_steps * t("gram", r) for r in repair_batches(config, keep, concept_prompts))
    work = per_weight_work("shapeworld", targets, solve_concepts=(concepts,))
    return total + config.rounds * concepts * work["causal_select"] + work[f"causal_solve_{concepts}"]


def section_count(quick: bool) -> dict[str, Any]:
    row = subprocess_json(["--count"])
    print(f"count check: calls match the formula: {row['counts_match']}; erase {row['seconds']} s, "
          f"composed from its primitives {row['composed_seconds']} s", flush=True)
    return row



# ----------------------------------------------------------------- projection
def fit_seconds(points: list[dict[str, Any]]) -> tuple[float, float]:
    """``seconds = a + c * flops`` by least squares with ``a, c >= 0``; a point slowed by the machine's other
    load (its residual positive and over 3 times the median's) is dropped once and the rest refitted.

    ``a`` is what a call costs whatever its size (reading the weights, the hooks' per-call work), ``c``
    the seconds per operation. A third term per prompt was tried and dropped: at small latents it is
    nearly collinear with the operations and its fit missed the measured 64x64 steps by up to 25 %.
    """
    coef = _nonnegative_fit(points)
    residuals = [p["seconds"] - (coef[0] + coef[1] * p["flops"]) for p in points]
    median = sorted(abs(r) for r in residuals)[len(residuals) // 2]
    worst = max(range(len(points)), key=lambda k: residuals[k])
    if len(points) > 4 and residuals[worst] > 3 * median:
        return _nonnegative_fit(points[:worst] + points[worst + 1 :])
    return coef


def _nonnegative_fit(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least squares on ``1`` and ``flops``, or on one of them alone when the pair gives a negative coefficient."""
    y = torch.tensor([p["seconds"] for p in points], dtype=torch.float64)
    columns = [torch.ones(len(points), dtype=torch.float64), torch.tensor([p["flops"] for p in points], dtype=torch.float64)]
    best, best_err = (0.0, 0.0), math.inf
    for used in ([0, 1], [0], [1]):
        design = torch.stack([columns[k] for k in used], 1)
        coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
        err = float(((design @ coef - y) ** 2).sum())
        if (coef >= 0).all() and err < best_err:
            full = [0.0, 0.0]
            for k, v in zip(used, coef.tolist()):
                full[k] = v
            best, best_err = (full[0], full[1]), err
    return best


class Projection:
    """One model's primitives at its own latent: seconds from the fit, FLOPs counted on meta."""

    def __init__(self, model: str, measured: dict[str, Any]):
        self.model, self.latent = model, MODELS[model]
        calls = [c for c in measured["calls"] if not c["out_of_sample"]]
        self.coef = {k: fit_seconds([c for c in calls if c["kind"] == k]) for k in kinds_of(model)}
        self.work = measured["per_weight"]
        self._flops: dict[tuple[str, int, int], int] = {}

    def flops(self, kind: str, b: int, latent: int | None = None) -> int:
        from fia.architectures import build_denoiser
        from fia.targets import find_targets

        key = (kind, b, latent or self.latent)
        if key not in self._flops:
            meta = build_denoiser(self.model, sample_size=key[2])
            self._flops[key] = primitive_flops(kind, meta, find_targets(meta, "ffn2"), b, key[2])
        return self._flops[key]

    def seconds(self, kind: str, b: int, latent: int | None = None) -> float:
        a, c = self.coef[kind]
        return a + c * self.flops(kind, b, latent)

    def causal(self, concepts: int, b: int, cost) -> float:
        """The count formula of the module docstring, each call priced by ``cost(kind, b)``."""
        cfg = causal_config(batch_size=b, num_inference_steps=SD_SCHEDULE_STEPS)
        total = sum(cfg.score_steps * cost("sampler", m) + len(cfg.evidence_timesteps) * cost("evidence", m)
                    for m in causal_micro_batches(cfg, concepts))  # fmt: skip
        keep, concept = REPAIR_KEEP, REPAIR_CONCEPT_PER_CONCEPT * concepts
        return total + sum(cfg.num_inference_steps * cost("gram", r) for r in repair_batches(cfg, keep, concept))

    def paper(self, concepts: int, b: int, cost) -> float:
        chunks = [min(b, PAPER_PROMPTS - s) for s in range(0, PAPER_PROMPTS, b)]
        return concepts * sum(PAPER_STEPS * cost("paper", m) for m in chunks)

    def cpu_seconds(self, variant: str, concepts: int, b: int) -> float:
        calls = getattr(self, variant)(concepts, b, self.seconds)
        if variant == "paper":
            return calls + concepts * self.work["paper_select"]
        solve_1, solve_10 = self.work["causal_solve_1"], self.work["causal_solve_10"]
        solve = solve_1 + (solve_10 - solve_1) * (concepts - 1) / 9  # linear in the concepts (measured at 1 and 10)
        return calls + causal_config().rounds * concepts * self.work["causal_select"] + solve

    def gpu_seconds(self, variant: str, concepts: int, b: int) -> float:
        return getattr(self, variant)(concepts, b, lambda kind, m: self.flops(kind, m)) / ASSUMED_GPU_FLOPS


def project(results: dict[str, Any]) -> dict[str, Any]:
    """Fits, the out-of-sample check and the table rows (module docstring)."""
    rows, checks = [], []
    for measured in results["primitives"]:
        model = measured["model"]
        proj = Projection(model, measured)
        for c in (c for c in measured["calls"] if c["out_of_sample"]):
            checks.append({"model": model, "kind": c["kind"], "latent": c["latent"], "b": c["b"], "measured_s": c["seconds"],
                           "predicted_s": round(proj.seconds(c["kind"], c["b"], c["latent"]), 2)})  # fmt: skip
        for variant in ("causal", "paper"):
            for dtype in ("float16", "float32"):
                est = [e for e in results["estimate"] if (e["model"], e["variant"], e["dtype"]) == (model, variant, dtype)]
                fits = est[0]["largest_batch_fitting"]
                default = PAPER_PROMPTS if variant == "paper" else 16  # all prompts; fia.causal.MICRO_BATCH
                row = {"model": model, "latent": MODELS[model], "variant": variant, "dtype": dtype, "fits": fits,
                       "gib_at_1": next(e["gib"] for e in est if e["batch_size"] == 1),
                       "default_batch": default, "gib_at_default": next(e["gib"] for e in est if e["batch_size"] == default),
                       "runs": variant == "paper" or model != "sdxl", "cpu_dtype": measured["dtype"]}  # fmt: skip
                b = fits["80 GiB"]
                if row["runs"] and b is not None:
                    row["b"] = b
                    row["cpu_hours"] = {n: round(proj.cpu_seconds(variant, n, b) / 3600, 1) for n in (10, 100)}
                    row["gpu_hours_estimate"] = {n: round(proj.gpu_seconds(variant, n, b) / 3600, 2) for n in (10, 100)}
                rows.append(row)
    return {"rows": rows, "out_of_sample": checks, "assumed_gpu_flops": ASSUMED_GPU_FLOPS}


def print_table(projection: dict[str, Any]) -> None:
    print("| model (latent) | variant | dtype | peak at the default batch | at batch 1 | largest batch in 24 GiB | "
          "in 80 GiB | CPU hours, 10 / 100 concepts | GPU hours (estimate), 10 / 100 |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in projection["rows"]:
        def show(v: Any) -> str:
            return "none" if v is None else str(v)

        cpu = f"{r['cpu_hours'][10]} / {r['cpu_hours'][100]}" if "cpu_hours" in r else ("refused" if not r["runs"] else "-")
        gpu = f"{r['gpu_hours_estimate'][10]} / {r['gpu_hours_estimate'][100]}" if "gpu_hours_estimate" in r else "-"
        print(f"| {r['model']} ({r['latent']}x{r['latent']}) | {r['variant']} | {r['dtype']} | "
              f"{r['gib_at_default']} GiB ({r['default_batch']}) | {r['gib_at_1']} GiB | {show(r['fits']['24 GiB'])} | "
              f"{show(r['fits']['80 GiB'])} | {cpu} | {gpu} |")
    for c in projection["out_of_sample"]:
        print(f"out of sample: {c['model']} {c['kind']} latent {c['latent']} b {c['b']}: measured {c['measured_s']} s, "
              f"predicted {c['predicted_s']} s")


SECTIONS = {"estimate": section_estimate, "validate": section_validate, "primitives": section_primitives, "count": section_count}


if __name__ == "__main__":
    main()
