"""Collect a concept's sensitivity ``A`` (Eq. 1-3) from one early-stopped sampler run.

:func:`concept_sensitivity` puts the concept prompts and the base prompts of
one concept in one batch, runs the pipeline itself for the first
``saliency_steps`` steps of a ``num_inference_steps`` schedule (then sets the
pipeline's interrupt flag, so the remaining steps are skipped), and reads the
input ``X`` and bias-free output ``Y`` of every target linear with forward
hooks: nothing is recomputed.

Per layer and step, the hook splits the batch into prompts. Prompt ``p`` of a
batch of ``P`` prompts owns batch row ``p`` (unconditional half) and row
``P + p`` (conditional half) when classifier-free guidance is on (diffusers
concatenates ``[uncond; cond]``), row ``p`` otherwise. ``cfg_rows="cond"``
uses the conditional row's spatial tokens as the ``N`` rows of Eq. 1, ``"both"``
stacks both rows' tokens. For each prompt in batch order it computes ``U``
(Eq. 1, float32) into one reused buffer and folds it into a
:class:`~fia.core.contrastive.ContrastiveAccumulator`; with all prompts seen,
``S_t`` (Eq. 2) goes to the layer's :class:`~fia.core.temporal.TimeIntegrator`
(Eq. 3) and the accumulator is dropped.

Batching is a speed choice only: prompt ``k`` is always sampled with a
``torch.Generator`` seeded with its own seed (the seeding rule of
:mod:`fia.sampling`), its
text is encoded alone, and its statistics are added in prompt order, so
batched and per-prompt runs give the same ``U``, ``S`` and ``A`` up to the
last bits of batched kernels.

Memory, in units of the target weights in float32 (``W``; SD 1.5 FFN2:
49.6 M weights = 198 MB), besides the model and one batch's activations:

- kept per layer for the whole run: ``|W|`` in float32 (1), the strength
  sum of Eq. 3 (1), the persistence count in int16 (0.5) -> 2.5 W;
- one float32 ``U`` buffer per distinct layer shape, reused by every prompt
  and step (SD 1.5: 320x1280 + 640x2560 + 1280x5120 = 8.6 M = 0.17 W);
- with all prompts in one batch (``batch_size=None``) ``S_t`` is finished
  inside the hook, so Eq. 2's three buffers (concept sum, base mean, base
  squared deviations) exist for one layer at a time: 3 x the largest layer
  (SD 1.5: 3 x 6.55 M = 0.40 W); ``S_t`` is computed in the concept-sum buffer;
- total about 3.1 W for SD 1.5 (about 610 MB), whatever the number of steps
  and prompts, within the 5 W budget. At the end each layer's state is
  released as its ``A`` (1 W in all, the result) is formed.

With ``batch_size`` smaller than the number of prompts, the prompts run in
chunks (one sampler run each); every step's Eq. 2 statistics must then
survive until the last chunk, which costs 3 W per saliency step (SD 1.5 with
10 steps: 30 W, about 6 GB). Prefer ``batch_size=None`` unless the
activations of one batch do not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fia.config import FIAConfig
from fia.core.contrastive import ContrastiveAccumulator
from fia.core.saliency import energy_saliency, wanda_saliency
from fia.core.temporal import TimeIntegrator
from fia.errors import FIAError
from fia.progress import Progress, report
from fia.sampling import capture, first_steps, generators
from fia.targets import TargetLinear, denoiser

SaliencyObserver = Callable[[str, int, Tensor], None]


@dataclass
class _LayerState:
    target: TargetLinear
    abs_weight: Tensor
    integrator: TimeIntegrator
    # step -> Eq. 2 statistics still waiting for more prompts (chunked runs only)
    pending: dict[int, ContrastiveAccumulator] = field(default_factory=dict)
    last_call: tuple[int, int] | None = None  # (chunk, step) of the previous hook call


class _Collector:
    """The hooks' shared state for one :func:`concept_sensitivity` call."""

    def __init__(self, pipe, config: FIAConfig, targets: list[TargetLinear], r1: float,
                 on_saliency: SaliencyObserver | None):
        self.pipe = pipe
        self.config = config
        self.on_saliency = on_saliency
        self.layers: dict[str, _LayerState] = {}
        for t in targets:
            w = t.module.weight.detach()
            self.layers[t.name] = _LayerState(
                target=t,
                abs_weight=w.abs().float() if w.dtype != torch.float32 else w.abs(),
                integrator=TimeIntegrator(w.shape, r1, device=w.device),
            )
        self.step = 0
        self.chunk = 0
        self.single_chunk = True
        self.chunk_flags: list[bool] = []  # is_concept per prompt of the running chunk
        self._buffers: dict[tuple[tuple[int, int], torch.device], Tensor] = {}

    # -------------------------------------------------------------- helpers
    def _u_buffer(self, shape: tuple[int, int], device: torch.device) -> Tensor:
        key = (tuple(shape), device)
        buf = self._buffers.get(key)
        if buf is None:
            # one buffer per distinct layer shape; they are small next to the state
            buf = self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=device)
        return buf

    def _prompt_rows(self, t: Tensor, num_prompts: int) -> tuple[Tensor, int]:
        """Reshape a hook tensor to ``(batch, tokens, C)`` and return rows per prompt (1 or 2)."""
        c = t.shape[-1]
        if t.dim() >= 3:
            batch = t.shape[0]
            t = t.reshape(batch, -1, c)
        else:
            cfg = getattr(self.pipe, "do_classifier_free_guidance", self.config.guidance_scale > 1)
            batch = num_prompts * (2 if cfg else 1)
            if t.shape[0] % batch:
                raise RuntimeError(
                    f"a target layer got {t.shape[0]} rows, not a multiple of the batch of {batch}"
                )
            t = t.reshape(batch, -1, c)
        if batch not in (num_prompts, 2 * num_prompts):
            raise RuntimeError(
                f"a target layer saw a batch of {batch} rows for {num_prompts} prompts; "
                "expected one row per prompt, or two with classifier-free guidance"
            )
        return t, batch // num_prompts

    def _rows_of_prompt(self, t: Tensor, p: int, num_prompts: int, per_prompt: int) -> Tensor:
        if per_prompt == 1:
            rows = t[p]
        elif self.config.cfg_rows == "cond":
            rows = t[num_prompts + p]
        else:
            rows = torch.cat([t[p], t[num_prompts + p]], dim=0)
        return rows.float()

    # ----------------------------------------------------------------- hook
    def on_forward(self, name: str, module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        """Forward hook of target ``name``: fold this step's ``U`` of every prompt into Eq. 2."""
        state = self.layers[name]
        call = (self.chunk, self.step)
        if state.last_call == call:
            raise RuntimeError(
                f"target layer {name} ran twice in one denoising step; FIA expects one "
                "batched denoiser call per step"
            )
        state.last_call = call
        x = args[0] if args else None
        if not isinstance(x, Tensor):
            raise RuntimeError(f"target layer {name} was called without a tensor input")
        flags = self.chunk_flags
        num_prompts = len(flags)
        xb, per_prompt = self._prompt_rows(x.detach(), num_prompts)
        yb = None
        if self.config.saliency == "energy":
            y = output.detach()
            if module.bias is not None:
                y = y.float() - module.bias.detach().float()
            yb, _ = self._prompt_rows(y, num_prompts)
        w = module.weight
        acc = state.pending.get(self.step)
        if acc is None:
            acc = ContrastiveAccumulator(w.shape, device=w.device)
        buf = self._u_buffer(tuple(w.shape), w.device)
        for p in range(num_prompts):
            xp = self._rows_of_prompt(xb, p, num_prompts, per_prompt)
            if yb is None:
                u = wanda_saliency(w, xp, abs_weight=state.abs_weight, out=buf)
            else:
                yp = self._rows_of_prompt(yb, p, num_prompts, per_prompt)
                u = energy_saliency(w, xp, yp, self.config.eps, abs_weight=state.abs_weight, out=buf)
            acc.add(u, flags[p], overwrite=True)
        if self.single_chunk:
            self._finish(name, self.step, acc)
        else:
            state.pending[self.step] = acc

    def _finish(self, name: str, step: int, acc: ContrastiveAccumulator) -> None:
        s = acc.saliency()
        if self.on_saliency is not None:
            self.on_saliency(name, step, s)
        self.layers[name].integrator.update(s)

    def finish_pending(self, steps: int) -> None:
        for t in range(steps):
            for name, state in self.layers.items():
                acc = state.pending.pop(t, None)
                if acc is None:
                    raise RuntimeError(f"target layer {name} did not run at step {t}")
                self._finish(name, t, acc)


def _check_inputs(concept_prompts, base_prompts, concept_seeds, base_seeds) -> None:
    if not concept_prompts or not base_prompts:
        raise FIAError(
            "Eq. 2 needs both concept prompts and base prompts; give at least one of each"
        )
    if len(concept_seeds) != len(concept_prompts) or len(base_seeds) != len(base_prompts):
        raise FIAError(
            f"got {len(concept_prompts)} concept prompts with {len(concept_seeds)} seeds and "
            f"{len(base_prompts)} base prompts with {len(base_seeds)} seeds; give one seed per prompt"
        )


def concept_sensitivity(
    pipe,
    concept_prompts: Sequence[str],
    base_prompts: Sequence[str],
    concept_seeds: Sequence[int],
    base_seeds: Sequence[int],
    config: FIAConfig,
    targets: list[TargetLinear],
    *,
    r1: float,
    progress: Progress | None = None,
    on_saliency: SaliencyObserver | None = None,
) -> dict[str, Tensor]:
    """One concept's time-integrated sensitivity ``A`` (Eq. 1-3) for every target layer.

    Args:
        pipe: a diffusers text-to-image pipeline whose ``__call__`` accepts
            ``callback_on_step_end`` and honours ``_interrupt`` (Stable
            Diffusion 1.x/2.x, SDXL).
        concept_prompts / base_prompts: the two prompt sets of Eq. 2.
        concept_seeds / base_seeds: one seed per prompt; prompt ``k``'s noise
            comes from ``seed_k`` alone (:func:`fia.sampling.generators`; pair a
            concept prompt and its base prompt by giving them the same seed).
        config: ``saliency_steps``, ``num_inference_steps``, ``guidance_scale``,
            ``batch_size``, ``saliency``, ``cfg_rows`` and ``eps`` are used.
        targets: the layers to score (see :func:`fia.targets.find_targets`).
        r1: temporal sparsity of Eq. 3 for this concept.
        progress: called as ``progress(done, total, message)`` (:mod:`fia.progress`) after each sampler step.
        on_saliency: optional observer called as ``on_saliency(layer, step, S_t)``
            with each finished Eq. 2 saliency (do not keep ``S_t``'s memory
            beyond the call without cloning it).

    Returns:
        ``{target name: A}``, float32 CPU tensors shaped like the weights, in [0, 1].

    Concept and base prompts run in one batch (or in chunks of
    ``config.batch_size`` prompts, concept prompts first); see the module
    docstring for the memory this takes.
    """
    config.validate()
    _check_inputs(concept_prompts, base_prompts, concept_seeds, base_seeds)
    if not targets:
        raise FIAError("no target layers were given; build them with fia.targets.find_targets(model)")
    prompts = list(concept_prompts) + list(base_prompts)
    seeds = [int(s) for s in concept_seeds] + [int(s) for s in base_seeds]
    flags = [True] * len(concept_prompts) + [False] * len(base_prompts)
    size = config.batch_size or len(prompts)
    chunks = [range(i, min(i + size, len(prompts))) for i in range(0, len(prompts), size)]
    steps = config.saliency_steps
    total = steps * len(chunks)

    with torch.inference_mode():
        col = _Collector(pipe, config, targets, r1, on_saliency)
        col.single_chunk = len(chunks) == 1
        done = 0

        def on_step(step_done: int) -> None:
            nonlocal done
            col.step = step_done  # the hooks of the next denoiser call belong to this step
            done += 1
            report(progress, done, total, f"sampler step {done} of {total}")

        with capture(targets, col.on_forward, within=denoiser(pipe)):
            for ci, chunk in enumerate(chunks):
                col.chunk = ci
                col.step = 0
                col.chunk_flags = [flags[k] for k in chunk]
                first_steps(
                    pipe,
                    steps,
                    config.num_inference_steps,
                    on_step=on_step,
                    prompt=[prompts[k] for k in chunk],
                    guidance_scale=config.guidance_scale,
                    generator=generators([seeds[k] for k in chunk]),
                )
        if not col.single_chunk:
            col.finish_pending(steps)
        return _integrated(col, steps)


def _integrated(col: _Collector, steps: int) -> dict[str, Tensor]:
    """Each layer's time-integrated ``A``, checking that every layer ran in every step."""
    result: dict[str, Tensor] = {}
    for name in list(col.layers):
        state = col.layers.pop(name)  # free |W| and the sums as A grows
        if state.integrator.steps != steps:
            raise RuntimeError(
                f"target layer {name} ran in {state.integrator.steps} of {steps} steps; "
                "is it part of the denoiser's forward pass?"
            )
        result[name] = state.integrator.result().cpu()
    return result
