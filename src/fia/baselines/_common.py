"""Shared plumbing of the baselines: which modules they touch, prompts, progress.

Nothing here is specific to one method. The module filters follow diffusers'
class layout (``FeedForward`` and ``BasicTransformerBlock`` in
``diffusers.models.attention``), so they find the same layers in SD 1.x/2.x,
SD XL and the tiny test pipelines of :mod:`fia.testing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fia.errors import FIAError

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``: called as work advances; may be ``None``."""


def report(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


def check_concepts(concepts: Sequence[str], *, allow_empty: bool = False) -> list[str]:
    if isinstance(concepts, str):
        raise FIAError(f"concepts must be a list of names, got the string {concepts!r}; wrap it: [{concepts!r}]")
    out = [str(c) for c in concepts]
    if not out and not allow_empty:
        raise FIAError("no concepts given; name at least one concept to erase")
    if any(not c.strip() for c in out):
        raise FIAError("a concept name is empty; remove it or give its text")
    if len(set(out)) != len(out):
        raise FIAError(f"concepts repeat: {out}; list each concept once")
    return out


def ffn2_linears(unet: nn.Module) -> dict[str, nn.Linear]:
    """FFN2 of every diffusers ``FeedForward``: the last ``nn.Linear`` of ``ff.net``.

    Keys are the linear's qualified name inside ``unet`` (e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2``), in module order.
    """
    from diffusers.models.attention import FeedForward

    found: dict[str, nn.Linear] = {}
    for name, module in unet.named_modules():
        if isinstance(module, FeedForward):
            last = None
            for sub_name, sub in module.net.named_children():
                if isinstance(sub, nn.Linear):
                    last = (sub_name, sub)
            if last is not None:
                found[f"{name}.net.{last[0]}"] = last[1]
    if not found:
        raise FIAError("the model has no diffusers FeedForward blocks, so there is no FFN2 layer to edit")
    return found


def cross_attentions(unet: nn.Module) -> dict[str, nn.Module]:
    """The text cross-attention (``attn2``) of every ``BasicTransformerBlock``, by qualified name."""
    from diffusers.models.attention import BasicTransformerBlock

    found: dict[str, nn.Module] = {}
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock):
            attn = getattr(module, "attn2", None)
            if attn is not None and getattr(attn, "is_cross_attention", True):
                found[f"{name}.attn2"] = attn
    if not found:
        raise FIAError("the model has no text cross-attention (attn2) layers to edit")
    return found


def text_embeddings(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """What the UNet receives as ``encoder_hidden_states`` for each text, (n, L, d).

    Uses the pipeline's own ``encode_prompt`` (so clip-skip, SD XL's two
    encoders etc. are honoured), without classifier-free guidance.
    """
    with torch.no_grad():
        out = pipe.encode_prompt(
            prompt=list(texts),
            device=execution_device(pipe),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
    return out[0]


def execution_device(pipe: Any) -> torch.device:
    return pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device


def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One seeded generator per prompt, on the sampler's device."""
    dev = torch.device(device)
    gen_device = "cpu" if dev.type == "mps" else dev
    return [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (0 <= value <= 1) if allow_zero else (0 < value <= 1)
    if not ok:
        low = "[0" if allow_zero else "(0"
        raise FIAError(f"{name} must lie in {low}, 1], got {value!r}; e.g. 0.01 for 1 %")


def check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FIAError(f"{name} must be a positive integer, got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value >= 0) or value == float("inf"):
        raise FIAError(f"{name} must be a finite number >= 0, got {value!r}")
