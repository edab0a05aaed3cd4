"""Memory an erase needs, estimated before any work, and the pre-flight check that stops one that cannot fit.

The estimate is a sum of named terms, in bytes. Symbols: ``T`` the number of
target weights (FFN2 by default), ``s`` the bytes of one element of the
model's dtype, ``b`` the prompts per micro-batch (``--batch-size``), ``m``
the contrasts per prompt, ``C`` the concepts, ``S`` the causal variant's
sampler steps (``score_steps``), ``K`` the evidence timesteps, ``L x D`` one
prompt's text embedding.

**Activations** come from running one call of the same denoiser class, built
from its config on the ``meta`` device (no memory, no arithmetic), under a
dispatch mode that adds up the bytes of every tensor storage alive and keeps
the peak (:func:`trace_call`). Attention is counted as a fused kernel does
it (flash / memory-efficient attention, what CUDA and CPU run for
``scaled_dot_product_attention``): it saves ``q, k, v``, its output and one
float per query row, never the ``N x N`` matrix. Every activation has a
batch dimension, so the figure grows linearly with the rows of the call.

**Causal variant** (:mod:`fia.causal`): the terms that last the whole run
plus the largest of the phases that do not overlap in time.

* lasting: the parameters of every module of the pipeline; the unedited
  copies of the targets the judge reads (``T s``); the text embeddings cache
  (``(C n + a)(1 + m) L D s`` for ``n`` evidence and ``a`` anchor prompts:
  an upper bound, as if every prompt and contrast were distinct); with the
  repair, its Gram matrices ``G_k`` and ``G_c`` (``2 G``, ``G = sum_l in_l^2
  x 8`` bytes in float64), fitted before the rounds and held to the end;
* during the rounds: the pruned mask and every concept's chosen mask of a
  round (``T (1 + C)``, bool) and the anchors' scores kept while each
  concept is scored (``4 T``), plus either
    - gradient pass (one micro-batch, :meth:`fia.causal._Model.evidence_gradient`):
      float32 accumulators and autograd's gradients of the targets
      (``T (4 + s)``), the sampler's and the evidence's graph between
      checkpoints (``S 2b x 3`` and ``K (1+m) b x 4`` latents, ``K (1+m) b``
      embeddings), and the larger of one evidence call (``(1+m) b`` rows,
      forward and backward with respect to its input) and one sampler call
      (``2b`` rows, the targets' inputs saved for their gradients): each
      call is checkpointed, so one call's activations are alive at a time;
    - selection (after each concept's gradient): ``30 T`` bytes: the
      concept's scores and their per-prompt mean, the contrast scores, the
      flat copy and its masked copy, the stable sort's values and int64
      indices (:func:`fia.core.attribution.global_top_k`);
* repair statistics (before the rounds, :func:`fia.repair.repair_grams`):
  the average of the second set made from its sums (``G``), the
  forward-only activations of one sampler batch (``2 r`` rows, ``r`` =
  ``b`` or, left unset, 32 prompts), the hook's float64 copy of the largest
  target input and its ``in x in`` product;
* repair solve (after the rounds): the pruned mask (``T``) and the widest
  layer's system, its factor and inverse (``4 in^2 x 8``).

**Paper variant** (:mod:`fia.paper`, :mod:`fia.collect`), forward only: the
parameters; the collector's state in float32 (``|W|``, the Eq. 3 sum, the
int16 count: ``10 T`` bytes; one ``U`` buffer per distinct layer shape;
Eq. 2's three buffers for the largest layer, or ``12 T`` per saliency step
when the prompts run in several chunks); the forward-only activations of
one sampler batch (``2 x`` the prompts of the batch with guidance); the
hook's float32 copies of one prompt's target input and output.

**Rewrite variant** (:mod:`fia.rewrite`), forward only, statistics in
float64 (``G = sum_l in_l^2 x 8`` bytes for one ``in x in`` matrix per
target layer; ``k`` the kept groups, one per kept kind on ShapeWorld, one
on other tasks):

* lasting: the parameters; each kept group's Gram matrices (``k G``), from
  the kept pass to the end;
* kept pass: the forward-only activations of one batch (``2 r`` rows, ``r``
  the kept batch, :func:`fia.rewrite.default_batches`), the hook's float32
  copy of the largest target input and its product (``in^2 x 12``);
* paired passes: the concept sums ``G_c``, ``C`` and the anchors' shift,
  which becomes the reference ``R`` in place (``3 G``; the shift is held
  only when a concept is anchored), the activations of one
  ``[uncond; concept; scene; anchor]`` batch (``4 p`` rows, ``p`` the
  paired batch) and the hook's copies (the anchors' shift, three
  products);
* solve: the concept moments (``3 G``), the widest layer's system, its
  factor, right-hand side and the pooled ``G_k`` (``8 in^2 x 8``), two
  rounds' rewritten weights and the edit's new and original rows
  (``4 T x 4``).

Every term is counted as if on one device: on a GPU the statistics are
summed there and moved to the host when their pass ends (the kept
groups' before the paired passes), so the GPU needs up to ``k G`` less
than the total.

Not counted: the Python and torch runtime (tens of MB of host memory; on
CUDA, the context, which the free memory already excludes), the
allocator's fragmentation (glibc's default kept up to a third more than the
live tensors in ``benchmarks/sd_scale.py``; CUDA's caching allocator has its
own).
The pre-flight check (:func:`check_memory`) compares the total with the
memory available: ``--max-memory`` when given, else the device's free
memory plus the loaded model's own parameters (CUDA:
``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of ``/proc/meminfo``);
with neither, or for a denoiser it cannot trace, it checks nothing.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fia.config import FIACausalConfig, FIAConfig, FIARewriteConfig
from fia.errors import FIAError
from fia.io import proc_field_bytes
from fia.targets import denoiser, find_targets
from fia.tasks import task_of

GIB = 2**30
# bytes per target weight of the causal variant's selection (module docstring)
SELECTION_BYTES_PER_WEIGHT = 30
# denoiser classes whose call the tracer knows how to feed
_TRACEABLE = {"UNet2DConditionModel"}


# ------------------------------------------------------------------ the tracer
class _LiveBytes(TorchDispatchMode):
    """The bytes of tensor storages alive over the aten ops run under it, and their peak.

    Every op's outputs are counted once per storage (views share their base's)
    until the last tensor on that storage is freed; ``skip`` (the parameters)
    is never counted.
    """

    def __init__(self, skip: list[Tensor]):
        super().__init__()
        self.skip = {t.untyped_storage()._cdata for t in skip}
        self.sizes: dict[int, int] = {}
        self.users: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.users[key] -= 1
        if self.users[key] == 0:
            del self.users[key]
            self.now -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key in self.skip:
                continue
            if key not in self.sizes:
                self.sizes[key] = t.untyped_storage().nbytes()
                self.users[key] = 0
                self.now += self.sizes[key]
            self.users[key] += 1
            weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.now)
        return out


class _FusedAttention(torch.autograd.Function):
    """Shapes and saved tensors of a fused attention kernel (flash / memory-efficient), no arithmetic."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        logsumexp = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextmanager
def _fused_attention():
    """Route ``F.scaled_dot_product_attention`` to :class:`_FusedAttention` while tracing.

    On ``meta`` tensors torch runs the unfused math (an ``N x N`` matrix per
    head), which CUDA and CPU do not; the trace runs in the caller's thread
    before any work, and the function is put back on exit.
    """
    original = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_: Any) -> Tensor:
        if attn_mask is not None or is_causal:
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        return _FusedAttention.apply(q, k, v)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass(frozen=True)
class CallTrace:
    """One denoiser call traced on the meta device.

    Attributes:
        peak: bytes of activations alive at the call's peak (forward, or forward and backward).
        saved: bytes autograd saved for the backward (0 for a forward-only call).
        parameters: bytes of the denoiser's parameters in the traced dtype.
        targets: each target linear's ``(out, in)``.
        target_inputs: each target linear's input elements in this call.
    """

    peak: int
    saved: int
    parameters: int
    targets: dict[str, tuple[int, int]]
    target_inputs: dict[str, int]


@functools.lru_cache(maxsize=8)
def _meta_denoiser(class_name: str, config_json: str, dtype_name: str) -> torch.nn.Module:
    import diffusers

    with torch.device("meta"):
        model = getattr(diffusers, class_name).from_config(json.loads(config_json)).eval()
    # nn.Module's own cast: diffusers' override warns about casting a loaded model
    return torch.nn.Module.to(model, getattr(torch, dtype_name))


def denoiser_inputs(config: Mapping[str, Any], rows: int, latent: int, dtype: torch.dtype, text_length: int = 77):
    """``(sample, timestep, kwargs)`` of one call of a UNet of ``config``, on meta; ``None`` for a layout it does not know."""
    width = config.get("cross_attention_dim")
    extra = config.get("addition_embed_type")
    if not isinstance(width, int) or extra not in (None, "text_time"):
        return None
    meta = {"device": "meta", "dtype": dtype}
    sample = torch.empty((rows, config["in_channels"], latent, latent), **meta)
    kwargs: dict[str, Any] = {"encoder_hidden_states": torch.empty((rows, text_length, width), **meta)}
    if extra == "text_time":  # SDXL: pooled text and the six size/crop numbers, embedded in 256 dims each
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty((rows, pooled), **meta),
                                       "time_ids": torch.empty((rows, 6), **meta)}  # fmt: skip
    return sample, torch.full((rows,), 500, device="meta"), kwargs


@functools.lru_cache(maxsize=128)
def _trace_cached(class_name: str, config_json: str, rows: int, latent: int, dtype_name: str, text_length: int,
                  mode: str, target_kind: str) -> CallTrace | None:  # fmt: skip
    # the caller may run under no_grad or inference_mode; the trace needs autograd
    with torch.inference_mode(False), torch.enable_grad():
        return _trace(class_name, config_json, rows, latent, getattr(torch, dtype_name), text_length, mode, target_kind)


def _trace(class_name: str, config_json: str, rows: int, latent: int, dtype: torch.dtype, text_length: int, mode: str,
           target_kind: str) -> CallTrace | None:  # fmt: skip
    inputs = denoiser_inputs(json.loads(config_json), rows, latent, dtype, text_length)
    if inputs is None:
        return None
    model = _meta_denoiser(class_name, config_json, str(dtype).removeprefix("torch."))
    params = list(model.parameters())
    targets = find_targets(model, target_kind)
    sample, timestep, kwargs = inputs
    seen_inputs: dict[str, int] = {}
    handles = [t.module.register_forward_hook(lambda m, a, o, n=t.name: seen_inputs.__setitem__(n, a[0].numel()))
               for t in targets]  # fmt: skip
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        saved.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
        return t

    for p in params:
        p.requires_grad_(mode == "sampler" and any(p is t.module.weight for t in targets))
    try:
        with _fused_attention(), _LiveBytes(skip=params) as live:
            if mode == "forward":
                with torch.no_grad():
                    model(sample, timestep, **kwargs)
            else:  # backward with respect to the input; "sampler" also saves the targets' inputs
                sample.requires_grad_(True)
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = model(sample, timestep, **kwargs).sample
                torch.autograd.grad(out.sum(), [sample])
                del out
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(False)
    param_keys = {p.untyped_storage()._cdata for p in params}
    return CallTrace(
        peak=live.peak,
        saved=sum(v for k, v in saved.items() if k not in param_keys),
        parameters=sum(p.numel() * p.element_size() for p in params),
        targets={t.name: (int(t.module.weight.shape[0]), int(t.module.weight.shape[1])) for t in targets},
        target_inputs=dict(seen_inputs),
    )


def trace_call(unet: Any, *, rows: int, latent: int, dtype: torch.dtype, mode: str, text_length: int = 77,
               target_kind: str = "ffn2", exact: bool = False) -> CallTrace | None:  # fmt: skip
    """One call of ``unet``'s class on ``rows`` latents of ``latent x latent``, traced on meta (module docstring).

    ``mode``: ``"forward"`` (no gradients), ``"evidence"`` (forward and backward
    with respect to the input) or ``"sampler"`` (the same, with the targets'
    inputs saved as for their weights' gradients). ``unet`` is a diffusers
    denoiser or its config (a mapping with ``_class_name``); ``None`` for one
    the tracer cannot feed. Every activation has a batch dimension, so the
    figures are linear in ``rows``: they come from traces at one and two rows
    (cached), unless ``exact`` traces ``rows`` itself.
    """
    if mode not in ("forward", "evidence", "sampler"):
        raise ValueError(f"mode must be forward, evidence or sampler, got {mode!r}")
    config = dict(unet) if isinstance(unet, Mapping) else dict(getattr(unet, "config", {}) or {})
    class_name = config.get("_class_name") or type(unet).__name__
    if class_name not in _TRACEABLE:
        return None
    config = {k: v for k, v in config.items() if not k.startswith("_")} | {"sample_size": latent}
    config_json = json.dumps(config, sort_keys=True, default=list)
    dtype_name = str(dtype).removeprefix("torch.")
    if exact:
        return _trace_cached(class_name, config_json, rows, latent, dtype_name, text_length, mode, target_kind)
    one, two = (_trace_cached(class_name, config_json, r, latent, dtype_name, text_length, mode, target_kind) for r in (1, 2))
    if one is None or two is None:
        return None

    def at(a: int, b: int) -> int:
        return a + (rows - 1) * (b - a)

    return CallTrace(
        peak=at(one.peak, two.peak), saved=at(one.saved, two.saved), parameters=one.parameters, targets=one.targets,
        target_inputs={n: at(one.target_inputs[n], two.target_inputs[n]) for n in one.target_inputs},
    )


# ------------------------------------------------------------------ the estimate
@dataclass(frozen=True)
class MemoryEstimate:
    """A variant's estimated peak memory in named terms of bytes (module docstring).

    Attributes:
        variant: ``causal``, ``paper`` or ``rewrite``.
        batch_size: the prompts per batch the estimate is for.
        terms: what is alive at the peak: the terms that last the whole run
            and those of the peak phase; ``total`` is their sum.
        phases: each phase's own bytes (the parts of the run that do not
            overlap in time), beyond the lasting terms.
        peak_phase: the largest of ``phases``.
    """

    variant: str
    batch_size: int
    terms: dict[str, int]
    phases: dict[str, int] = field(default_factory=dict)
    peak_phase: str = ""

    @classmethod
    def of(cls, variant: str, batch_size: int, lasting: dict[str, int], phases: dict[str, dict[str, int]]) -> MemoryEstimate:
        """The estimate from the lasting terms and each phase's terms: the peak is the largest phase's."""
        totals = {name: sum(terms.values()) for name, terms in phases.items()}
        peak = max(totals, key=totals.get)
        return cls(variant, batch_size, lasting | phases[peak], totals, peak)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def summary(self) -> str:
        """``12.30 GiB (parameters 4.10 GiB, ...)``: the total and its three largest terms."""
        largest = sorted(self.terms.items(), key=lambda kv: -kv[1])[:3]
        return f"{gib(self.total)} (" + ", ".join(f"{name} {gib(size)}" for name, size in largest) + ")"


def gib(n: float) -> str:
    """``n`` bytes as ``"1.23 GiB"``, or ``"213 MiB"`` below one GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def _unet_config(unet: Any) -> dict[str, Any]:
    return dict(unet) if isinstance(unet, Mapping) else dict(getattr(unet, "config", {}) or {})


def _model_dtype(unet: Any, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    param = next(unet.parameters(), None) if isinstance(unet, torch.nn.Module) else None
    return param.dtype if param is not None else torch.float32


def _latent(unet: Any, latent: int | None) -> int | None:
    """The latent side: ``latent`` when given, else the denoiser's config (``None``: it has none)."""
    side = latent if latent is not None else _unet_config(unet).get("sample_size")
    return None if side is None else int(side)


def causal_micro_batch(config: FIACausalConfig) -> int:
    """Prompts per backward pass of the causal variant (:data:`fia.causal.MICRO_BATCH` when unset)."""
    from fia.causal import MICRO_BATCH

    return config.batch_size or min(max(config.concept_prompts_per_concept, config.anchor_prompts), MICRO_BATCH)


def causal_estimate(
    unet: Any, config: FIACausalConfig, *, concepts: int, batch_size: int | None = None, latent: int | None = None,
    dtype: torch.dtype | None = None, other_parameters: int = 0, text_length: int = 77, kept_groups: int = 1,
) -> MemoryEstimate | None:
    """The causal variant's peak (module docstring) on ``unet`` (a diffusers denoiser or its config).

    ``other_parameters``: bytes of the pipeline's other modules (text encoders, VAE); ``kept_groups``:
    the balanced repair's groups of kept prompts, each with its own Gram matrices. ``None`` for a
    denoiser the tracer cannot feed.
    """
    if batch_size is not None:  # as if --batch-size were given (the repair's statistics pass keeps its own batch)
        config = config.replace(batch_size=batch_size)
    b = causal_micro_batch(config)
    latent, dtype = _latent(unet, latent), _model_dtype(unet, dtype)
    if latent is None or not {"cross_attention_dim", "in_channels"} <= _unet_config(unet).keys():
        return None  # a denoiser without a diffusers config: nothing to trace
    s, m = torch.empty((), dtype=dtype).element_size(), config.contrasts
    trace = functools.partial(trace_call, unet, latent=latent, dtype=dtype, text_length=text_length, target_kind=config.targets)
    evidence, sampler = trace(rows=(1 + m) * b, mode="evidence"), trace(rows=2 * b, mode="sampler")
    if evidence is None or sampler is None:
        return None
    n_weights = sum(o * i for o, i in sampler.targets.values())
    width = _unet_config(unet)["cross_attention_dim"]
    latent_bytes = _unet_config(unet)["in_channels"] * latent * latent * s
    prompts = (concepts * config.concept_prompts_per_concept + config.anchor_prompts) * (1 + m)
    lasting = {
        "parameters": sampler.parameters + other_parameters,
        "unedited targets": n_weights * s,
        "text embeddings": prompts * text_length * width * s,
    }
    k = len(config.evidence_timesteps)
    graph = (config.score_steps * 2 * b * 3 + k * (1 + m) * b * 4) * latent_bytes + k * (1 + m) * b * text_length * width * s
    rounds = {"masks": n_weights * (1 + concepts), "anchor scores": 4 * n_weights if config.anchor_weight > 0 else 0}
    gradient = {"target gradients": n_weights * (4 + s), "sampler graph": graph,
                "activations (one call)": max(evidence.peak, sampler.peak)}  # fmt: skip
    phases = {
        "gradient pass": rounds | gradient,
        "selection": rounds | {"selection workspace": SELECTION_BYTES_PER_WEIGHT * n_weights},
    }
    if config.repair is not None:
        widths = [i for _, i in sampler.targets.values()]
        gram_set = sum(i * i for i in widths) * 8
        balanced = config.repair.balance_rounds > 0
        lasting["repair Gram matrices"] = ((kept_groups if balanced else 1) + 1) * gram_set  # kept (or each group's) + concept
        phases |= _repair_phases(unet, config, latent, dtype, text_length, gram_set, max(widths), n_weights)
    return MemoryEstimate.of("causal", b, lasting, phases)


def _repair_phases(unet: Any, config: FIACausalConfig, latent: int, dtype: torch.dtype, text_length: int,
                   gram_set: int, widest: int, n_weights: int) -> dict[str, dict[str, int]]:  # fmt: skip
    """The repair's statistics pass (the second set's sums, their average, one sampler batch, the hook's
    float64 copies) and its solve (the pruned mask, the widest layer's system and its inverse)."""
    from fia.repair import GRAM_BATCH

    rows = 2 * GRAM_BATCH  # the statistics pass runs at its own fixed batch (fia.repair), not --batch-size
    forward = trace_call(unet, rows=rows, latent=latent, dtype=dtype, mode="forward", text_length=text_length,
                         target_kind=config.targets)  # fmt: skip
    hook = 8 * max(forward.target_inputs.values()) + 8 * widest * widest  # x in float64, then x^T x
    statistics = {"Gram average copy": gram_set, "activations (statistics batch)": forward.peak, "hook copies": hook}
    return {
        "repair statistics": statistics,
        "repair solve": {"masks": n_weights, "solve workspace": 4 * 8 * widest * widest},
    }


def paper_estimate(
    unet: Any, config: FIAConfig, *, prompts: int, batch_size: int | None = None, latent: int | None = None,
    dtype: torch.dtype | None = None, other_parameters: int = 0, text_length: int = 77,
) -> MemoryEstimate | None:
    """The paper variant's peak (module docstring); ``prompts``: concept and base prompts of the largest concept."""
    if batch_size is not None:
        config = config.replace(batch_size=batch_size)
    b = min(config.batch_size or prompts, prompts)
    latent, dtype = _latent(unet, latent), _model_dtype(unet, dtype)
    if latent is None:
        return None  # a denoiser without a diffusers config: nothing to trace
    rows = b * (2 if config.guidance_scale > 1 else 1)
    forward = trace_call(unet, rows=rows, latent=latent, dtype=dtype, mode="forward", text_length=text_length,
                         target_kind=config.targets)  # fmt: skip
    if forward is None:
        return None
    shapes = forward.targets
    n_weights = sum(o * i for o, i in shapes.values())
    largest = max(o * i for o, i in shapes.values())
    chunked = b < prompts
    terms = {
        "parameters": forward.parameters + other_parameters,
        "collector state": 10 * n_weights + 4 * sum(o * i for o, i in set(shapes.values())),
        "Eq. 2 statistics": 12 * n_weights * config.saliency_steps if chunked else 12 * largest,
        "hook copies": max(_hook_copies(forward.target_inputs[n] // rows, shapes[n], config) for n in shapes),
    }
    return MemoryEstimate.of("paper", b, terms, {"sampling": {"activations (sampler batch)": forward.peak}})


def rewrite_estimate(
    unet: Any, config: FIARewriteConfig, *, kept_groups: int = 1, batch_size: int | None = None,
    latent: int | None = None, dtype: torch.dtype | None = None, other_parameters: int = 0, text_length: int = 77,
) -> MemoryEstimate | None:
    """The rewrite variant's peak (module docstring); ``kept_groups``: its groups of kept prompts."""
    from fia.rewrite import default_batches

    latent, dtype = _latent(unet, latent), _model_dtype(unet, dtype)
    if latent is None:
        return None  # a denoiser without a diffusers config: nothing to trace
    chosen = batch_size or config.batch_size  # --batch-size sets both passes' batches
    kept_batch, paired_batch = (chosen, chosen) if chosen else default_batches(latent)
    trace = functools.partial(trace_call, unet, latent=latent, dtype=dtype, mode="forward", text_length=text_length,
                              target_kind=config.targets)  # fmt: skip
    kept, paired = trace(rows=2 * kept_batch), trace(rows=4 * paired_batch)
    if kept is None or paired is None:
        return None
    widths = [i for _, i in kept.targets.values()]
    widest, gram_set = max(widths), sum(i * i for i in widths) * 8
    n_weights = sum(o * i for o, i in kept.targets.values())
    lasting = {"parameters": kept.parameters + other_parameters, "kept Gram matrices": kept_groups * gram_set}
    phases = {
        "kept pass": {"activations (kept batch)": kept.peak,
                      "hook copies": 4 * max(kept.target_inputs.values()) + 12 * widest * widest},
        "paired passes": {"concept sums": 3 * gram_set, "activations (paired batch)": paired.peak,
                          "hook copies": 4 * max(paired.target_inputs.values()) + 3 * 12 * widest * widest},
        "solve": {"concept moments": 3 * gram_set, "solve workspace": 8 * 8 * widest * widest,
                  "rewritten weights": 4 * 4 * n_weights},
    }  # fmt: skip
    return MemoryEstimate.of("rewrite", paired_batch, lasting, phases)


def _hook_copies(row_elements: int, shape: tuple[int, int], config: FIAConfig) -> int:
    """Float32 copies of one prompt's input (and, for Eq. 1, bias-free output) of a target, in the hook."""
    out_features, in_features = shape
    rows = 2 if config.cfg_rows == "both" and config.guidance_scale > 1 else 1
    tokens = rows * row_elements // in_features
    return 4 * tokens * (in_features + (out_features if config.saliency == "energy" else 0))


# --------------------------------------------------------------- the pre-flight
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str | int) -> int:
    """Bytes from ``"24GB"`` (powers of 1000), ``"24GiB"`` (powers of 1024) or an int of bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b|b)\s*", str(text).lower())
    if not found or float(found.group(1)) <= 0:
        raise FIAError(f"--max-memory {text!r} is not an amount of memory; write e.g. 24GB, 1.5GiB or 800MB")
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def pipeline_parameters(pipe: Any, device: torch.device | None = None) -> dict[str, int]:
    """Bytes of parameters (and buffers) of each module of ``pipe`` (its denoiser, text encoders, VAE),
    only those on ``device`` when it is given."""
    out = {}
    for name, module in getattr(pipe, "components", {}).items():
        if isinstance(module, torch.nn.Module):
            tensors = [t for t in (*module.parameters(), *module.buffers()) if device is None or t.device == device]
            out[name] = sum(t.numel() * t.element_size() for t in tensors)
    return out


def available_memory(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CUDA: the driver's free memory and torch's unused cache;
    CPU: ``MemAvailable``), or ``None`` where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        return proc_field_bytes("/proc/meminfo", "MemAvailable")
    return None


def estimate_erase(pipe: Any, config: Any, concepts: int, prompts: int = 0, batch_size: int | None = None,
                   kept_groups: int = 1) -> MemoryEstimate | None:  # fmt: skip
    """The estimate of an erase of ``concepts`` concepts on ``pipe`` with ``config`` (``None``: not estimated).

    ``prompts``: the paper variant's concept and base prompts of its largest concept; ``kept_groups``:
    the groups of kept prompts of the causal variant's balanced repair, or of the rewrite.
    """
    try:
        unet = denoiser(pipe)
    except FIAError:
        return None  # not a pipeline the estimate knows; the erase names what is wrong
    others = sum(v for k, v in pipeline_parameters(pipe).items() if getattr(pipe, k, None) is not unet)
    tokenizer = getattr(pipe, "tokenizer", None)
    text_length = int(getattr(tokenizer, "model_max_length", 77) or 77)
    common = {"batch_size": batch_size, "other_parameters": others, "text_length": min(text_length, 512)}
    if isinstance(config, FIACausalConfig):
        return causal_estimate(unet, config, concepts=concepts, kept_groups=kept_groups, **common)
    if isinstance(config, FIARewriteConfig):
        return rewrite_estimate(unet, config, kept_groups=kept_groups, **common)
    if isinstance(config, FIAConfig):
        return paper_estimate(unet, config, prompts=prompts, **common)
    return None


def _largest_fitting(estimate_at, now: int, budget: int) -> tuple[int, int] | None:
    """The largest batch size below ``now`` whose estimate fits ``budget``, and that estimate (``None``: none).

    Below ``now`` the estimate grows with the batch size, so a bisection finds it.
    """
    if now <= 1 or estimate_at(1).total > budget:
        return None
    low, high = 1, now - 1  # low fits; find the largest that does
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if estimate_at(mid).total <= budget else (low, mid - 1)
    return low, estimate_at(low).total


def _kept_groups(config: Any, concepts: list[str]) -> int:
    """How many groups of kept prompts a balanced repair or the rewrite weighs (each holds its own Gram
    matrices); else 1."""
    if isinstance(config, FIARewriteConfig):
        prompts = task_of(config).rewrite_prompts(concepts, config.rewrite, anchors=config.anchors, seed=config.seed)
        return max(1, len(set(prompts.keep_groups)))
    repair = getattr(config, "repair", None)
    if repair is None or repair.balance_rounds == 0:
        return 1
    prompts = task_of(config).repair_prompts(concepts, repair, anchors=config.anchors, seed=config.seed)
    return max(1, len(set(prompts.keep_groups)))


def check_memory(pipe: Any, plan: Any, max_memory: str | int | None = None) -> MemoryEstimate | None:
    """Stop an erase that will not fit before any work: :class:`FIAError` naming the estimate, the memory
    available and the largest ``--batch-size`` that fits (or that none does). Returns the estimate.

    ``max_memory`` (bytes or ``"24GB"``) is the limit; without it, the device's free memory plus the
    loaded pipeline's parameters, which the estimate counts. Nothing is checked (``None``) for a
    variant or denoiser the estimate does not cover, or where the free memory cannot be read.
    """
    config = task_of(plan.config).settle(plan.config, pipe)
    prompts = max((len(p.concept_prompts) + len(p.base_prompts) for p in (plan.prompts or {}).values()), default=2)
    groups = _kept_groups(config, plan.concepts)
    estimate = estimate_erase(pipe, config, len(plan.concepts), prompts, kept_groups=groups)
    if estimate is None:
        return None
    device = next(denoiser(pipe).parameters()).device
    if max_memory is not None:
        budget, source = parse_memory(max_memory), "--max-memory"
    else:
        free = available_memory(device)
        if free is None:
            return estimate
        budget, source = free + sum(pipeline_parameters(pipe, device).values()), f"free on {device.type} with the loaded model"
    if estimate.total <= budget:
        return estimate
    need = f"the {estimate.variant} variant needs about {estimate.summary()} at batch size {estimate.batch_size}"
    smaller = _largest_fitting(lambda b: estimate_erase(pipe, config, len(plan.concepts), prompts, b, groups),
                               estimate.batch_size, budget)  # fmt: skip
    if smaller is None:
        half = "--dtype float16, " if next(denoiser(pipe).parameters()).dtype == torch.float32 else ""
        fix = f"no batch size fits: use {half}a device with more memory, or raise --max-memory if it is wrong"
    else:
        fix = f"pass --batch-size {smaller[0]} (about {gib(smaller[1])}), or raise --max-memory if it is wrong"
    raise FIAError(f"{need}, but {gib(budget)} is available ({source}); {fix}")
