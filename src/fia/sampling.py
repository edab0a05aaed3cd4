"""Running a pipeline's own sampler, and watching it while it runs.

Everything in the package that samples from a diffusers pipeline goes through
this module:

- :func:`generators` is the one seeding rule;
- :func:`generate` renders images (the evaluation helpers wrap it);
- :func:`first_steps` runs the sampler for its first few denoising steps only
  (FIA's and ConceptPrune's activation statistics, ESD's partially denoised
  ``x_t``, the cost benchmark's bare run);
- :func:`paired_steps` runs the sampler along one prompt's trajectory
  while the denoiser also sees a second prompt at the same latents (the
  closed-form rewrite's paired statistics);
- :func:`capture` watches layers with forward hooks for the length of a
  ``with`` block.

The seeding rule
----------------
Image ``k`` of a call is drawn from its own ``torch.Generator`` seeded with
``seeds[k]``. The pipeline draws each image's initial noise from that image's
generator alone, so an image does not depend on the batch size, on its place
in the batch or on the other images of the batch: the same prompt and seed
give the same image alone or among others (up to the last bits of batched
kernels). The generators live on the CPU, so the noise is also the same on
every device (CPU, CUDA, MPS) and in every dtype (float32 noise cast to half
precision equals half-precision noise drawn on the CPU).

Callers choose the seeds. Evaluation splits stay disjoint because they are
given disjoint seed ranges by their callers; this module only guarantees that
one seed always means the same noise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from fia.errors import FIAError
from fia.targets import TargetLinear

ForwardHook = Callable[[str, nn.Module, tuple, Any], Any]
"""``hook(name, module, args, output)``: called after every forward of a watched module; a value it
returns (not ``None``) replaces the module's output, as with torch's forward hooks."""


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per image, generator ``k`` seeded with ``seeds[k]``.

    Pass the list as a pipeline's ``generator=`` argument; see the module
    docstring for why this makes images independent of batch and device.
    """
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def generate(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
) -> Any:
    """Render one image per (prompt, seed) pair in one pipeline call; returns the pipeline's ``images``.

    ``output_type`` is passed to the pipeline: ``"pil"`` gives a list of PIL
    images, ``"np"`` an ``(N, H, W, 3)`` float array, ``"pt"`` an
    ``(N, 3, H, W)`` tensor, all in [0, 1]. ``height`` / ``width`` default to
    the pipeline's own size. Seeding follows the module's rule.
    """
    if len(prompts) != len(seeds):
        raise FIAError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt")
    kwargs: dict[str, Any] = {
        "prompt": list(prompts),
        "generator": generators(seeds),
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "output_type": output_type,
    }
    if height is not None:
        kwargs["height"] = int(height)
    if width is not None:
        kwargs["width"] = int(width)
    with torch.no_grad():
        return pipe(**kwargs).images


def first_steps(
    pipe: Any,
    steps: int,
    num_inference_steps: int,
    *,
    on_step: Callable[[int], None] | None = None,
    **call_kwargs: Any,
) -> Tensor:
    """Run the pipeline's own sampler and stop it after its first ``steps`` denoising steps.

    The pipeline is called as ``pipe(num_inference_steps=...,
    output_type="latent", callback_on_step_end=..., **call_kwargs)``; pass the
    prompts (or prompt embeddings), guidance, generators or latents in
    ``call_kwargs``. After step ``steps`` of the ``num_inference_steps``
    schedule the callback sets the pipeline's interrupt flag, so diffusers
    skips the remaining steps (no denoiser call, no VAE decode). The flag is
    cleared again when the call returns or raises.

    Args:
        pipe: a diffusers pipeline whose ``__call__`` accepts
            ``callback_on_step_end`` and honours ``_interrupt`` (Stable
            Diffusion 1.x/2.x, SD XL, PixArt, SD 3).
        steps: how many denoising steps to run, 1 to ``num_inference_steps``.
        num_inference_steps: the length of the schedule those steps belong to.
        on_step: called as ``on_step(done)`` after each step, ``done`` = 1, 2, ...
        call_kwargs: the other arguments of the pipeline call.

    Returns:
        The latents after the last step run.

    Raises:
        FIAError: ``steps`` outside 1 .. ``num_inference_steps``, or the
            sampler did not run exactly ``steps`` steps (a pipeline that
            ignores the interrupt flag, or a shorter schedule).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_inference_steps:
        raise FIAError(
            f"cannot stop the sampler after {steps!r} of {num_inference_steps} steps; "
            f"give a whole number from 1 to {num_inference_steps}"
        )
    done = 0
    latents: Tensor | None = None
    # the flag is set on the pipeline the callback receives, which is not ``pipe``
    # itself when ``pipe`` is a wrapper forwarding its calls
    interrupted: Any = None

    def stop_after_steps(pipeline: Any, index: int, _timestep: Any, callback_kwargs: dict) -> dict:
        nonlocal done, latents, interrupted
        done = index + 1
        if on_step is not None:
            on_step(done)
        if done >= steps:
            latents = callback_kwargs["latents"].detach()
            pipeline._interrupt = True
            interrupted = pipeline
        return {}

    try:
        with torch.no_grad():
            pipe(
                num_inference_steps=num_inference_steps,
                output_type="latent",
                callback_on_step_end=stop_after_steps,
                **call_kwargs,
            )
    finally:
        if interrupted is not None:
            interrupted._interrupt = False
        if hasattr(pipe, "_interrupt"):
            pipe._interrupt = False
    if done != steps or latents is None:
        raise FIAError(
            f"the sampler ran {done} steps where {steps} were asked for; use a diffusers pipeline "
            "that supports callback_on_step_end and its interrupt flag, with at least that many steps"
        )
    return latents


def initial_latents(unet: Any, seeds: Sequence[int]) -> Tensor:
    """One initial latent per seed, drawn on the CPU by the seeding rule, on ``unet``'s device and dtype
    (the noise a diffusers pipeline draws from the same generators), for samplers run outside a pipeline."""
    c, s = unet.config.in_channels, unet.config.sample_size
    lat = torch.stack([torch.randn((c, s, s), generator=g) for g in generators(seeds)])
    param = next(unet.parameters())
    return lat.to(param.device, param.dtype)


def paired_steps(
    pipe: Any,
    prompts: Sequence[str],
    follow: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    guide_by: str = "follow",
    anchors: Sequence[str] | None = None,
    stop_after: int | None = None,
) -> None:
    """Run the guided sampler along ``follow``'s trajectories and show the denoiser ``prompts`` at the same latents.

    Image ``k`` starts from seed ``k``'s noise (the module's seeding rule) and
    is denoised with guidance towards ``follow[k]`` (``guide_by="prompts"``:
    towards ``prompts[k]``, the same batch on the other trajectory); at every step the
    denoiser sees one batch ``[unconditional; prompts; follow]`` on the same
    latents, so hooks (:func:`capture`) receive each layer's input under
    ``prompts[k]`` and ``follow[k]`` at the same latent and timestep, in
    that batch's second and third thirds. With ``anchors`` (one per image)
    the batch is ``[unconditional; prompts; follow; anchors]`` and hooks get
    four quarters. ``stop_after`` runs only the schedule's first steps (a
    probe of the latents every trajectory starts from). Returns nothing: it exists for
    the hooks (the closed-form rewrite's paired statistics, :mod:`fia.rewrite`).
    Stable Diffusion 1.x/2.x-style pipelines (``encode_prompt``, a UNet
    with ``sample_size``).
    """
    import copy

    if guide_by not in ("follow", "prompts"):
        raise FIAError(f"guide_by must be 'follow' or 'prompts', got {guide_by!r}")
    if not len(prompts) == len(follow) == len(seeds) == len(prompts if anchors is None else anchors):
        raise FIAError(f"got {len(prompts)} prompts, {len(follow)} trajectories, {len(seeds)} seeds"
                       + ("" if anchors is None else f" and {len(anchors)} anchors") + "; give one of each per image")
    unet = pipe.unet
    device = next(unet.parameters()).device
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(int(num_inference_steps), device=device)
    n = len(prompts)
    with torch.no_grad():
        shown = pipe.encode_prompt(list(prompts), device, 1, False)[0]
        followed = pipe.encode_prompt(list(follow), device, 1, False)[0]
        uncond = pipe.encode_prompt([""], device, 1, False)[0].expand(n, -1, -1)
        parts = [uncond, shown, followed]
        if anchors is not None:
            parts.append(pipe.encode_prompt(list(anchors), device, 1, False)[0])
        emb = torch.cat(parts)
        lat = initial_latents(unet, seeds) * sched.init_noise_sigma
        for t in sched.timesteps[:stop_after]:
            inp = sched.scale_model_input(torch.cat([lat] * len(parts)), t)
            u, p, f = unet(inp, t, encoder_hidden_states=emb).sample.chunk(len(parts))[:3]
            c = f if guide_by == "follow" else p
            lat = sched.step(u + guidance_scale * (c - u), t, lat).prev_sample


def _named(modules: Mapping[str, Any] | Iterable[TargetLinear]) -> dict[str, Any]:
    if isinstance(modules, Mapping):
        return dict(modules)
    named: dict[str, Any] = {}
    for target in modules:
        if not isinstance(target, TargetLinear):
            raise FIAError(
                f"capture() takes a {{name: module}} mapping or TargetLinear objects, got {type(target).__name__}; "
                "build targets with fia.targets.find_targets"
            )
        named[target.name] = target.module
    return named


@contextmanager
def capture(
    modules: Mapping[str, nn.Module] | Iterable[TargetLinear],
    hook: ForwardHook,
    *,
    within: nn.Module | None = None,
) -> Iterator[None]:
    """Call ``hook(name, module, args, output)`` after every forward of the watched modules.

    A hook that returns a value other than ``None`` replaces the module's
    output with it (the attack's soft prompts fill token slots this way).

    Every module is checked before any hook is attached: it must be an
    ``nn.Module`` and, with ``within``, the submodule of ``within`` of that
    name (so hooks on another model's layers, which would never fire, are
    refused). On leaving the block every hook is removed, also when the
    body raises.

    Args:
        modules: ``{qualified name: module}`` or :class:`~fia.targets.TargetLinear` objects.
        hook: called with the module's name, the module, its positional
            inputs and its output.
        within: optional model the modules must belong to.

    Raises:
        FIAError: a module cannot be hooked; the message names it.
    """
    named = _named(modules)
    if not named:
        raise FIAError("there are no layers to watch; pass at least one module (see fia.targets.find_targets)")
    submodules = dict(within.named_modules()) if within is not None else None
    for name, module in named.items():
        if not isinstance(module, nn.Module):
            raise FIAError(
                f"cannot watch {name!r}: it is a {type(module).__name__}, not a torch.nn.Module; "
                "pass the layer itself"
            )
        if submodules is not None and submodules.get(name) is not module:
            raise FIAError(
                f"target {name} is not a layer of this pipeline's denoiser; "
                "find the targets on the same pipeline with fia.targets.find_targets"
            )
    handles = []
    try:
        for name, module in named.items():
            handles.append(module.register_forward_hook(functools.partial(hook, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()
