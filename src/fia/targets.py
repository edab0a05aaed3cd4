"""Which linear layers FIA scores and prunes.

The paper edits FFN2, the second linear of every transformer feed-forward
block. diffusers builds those blocks as ``FeedForward`` whose ``net`` is
``[activation (GEGLU/GELU/... holding the first projection), Dropout,
Linear(inner -> dim), (Dropout)]``. Kinds of targets:

- ``"ffn2"`` (default): the last ``nn.Linear`` inside each ``FeedForward.net``;
- ``"ffn1"``: the first ``nn.Linear`` inside ``FeedForward.net`` (the
  activation's projection, e.g. ``GEGLU.proj``);
- ``"attn_kv"``: ``to_k`` and ``to_v`` of the cross-attention ``attn2`` of
  each transformer block;
- a callable ``filter(module, qualified_name) -> bool``: applied to every
  ``nn.Linear`` of the model, the ones it accepts are targets.

Targets come in ``model.named_modules()`` order, so order and names are the
same from run to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fia.errors import FIAError

TargetFilter = Callable[[nn.Module, str], bool]

_KIND_WORDS = {
    "ffn2": ("FFN2 layer", "the feed-forward blocks of transformer layers"),
    "ffn1": ("FFN1 layer", "the feed-forward blocks of transformer layers"),
    "attn_kv": ("cross-attention key/value projection (attn2.to_k / attn2.to_v)", "the cross-attention of transformer layers"),
}


@dataclass(frozen=True)
class TargetLinear:
    """One edited layer: its qualified name in the denoiser and the module itself."""

    name: str
    module: nn.Linear

    @property
    def shape(self) -> tuple[int, int]:
        """``(C_out, C_in)`` of the weight."""
        return tuple(self.module.weight.shape)  # type: ignore[return-value]


def _is_feed_forward(module: nn.Module) -> bool:
    try:
        from diffusers.models.attention import FeedForward
    except Exception:  # pragma: no cover - diffusers is a dependency
        FeedForward = ()  # type: ignore[assignment]
    if FeedForward and isinstance(module, FeedForward):
        return True
    # Same layout defined elsewhere (forks, other model files): a class named
    # FeedForward holding its layers in ``net``.
    return type(module).__name__ == "FeedForward" and isinstance(getattr(module, "net", None), nn.Module)


def _linears_in(module: nn.Module, prefix: str) -> list[tuple[str, nn.Linear]]:
    return [
        (f"{prefix}.{name}" if name else prefix, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
    ]


def _ffn_targets(model: nn.Module, which: str) -> list[TargetLinear]:
    found: list[TargetLinear] = []
    for name, module in model.named_modules():
        if not _is_feed_forward(module):
            continue
        net = module.net
        linears = _linears_in(net, f"{name}.net" if name else "net")
        if len(linears) < 2:
            continue
        qual, lin = linears[-1] if which == "ffn2" else linears[0]
        found.append(TargetLinear(qual, lin))
    return found


def _attn_kv_targets(model: nn.Module) -> list[TargetLinear]:
    found: list[TargetLinear] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "attn2":
            continue
        for proj in ("to_k", "to_v"):
            lin = getattr(module, proj, None)
            if isinstance(lin, nn.Linear):
                found.append(TargetLinear(f"{name}.{proj}", lin))
    return found


def find_targets(model: nn.Module, targets: str | TargetFilter = "ffn2") -> list[TargetLinear]:
    """The linear layers of ``model`` that FIA scores and prunes, in module order.

    Args:
        model: the denoiser (a UNet or a diffusion transformer).
        targets: ``"ffn2"`` (paper default), ``"ffn1"``, ``"attn_kv"``, or a
            callable ``filter(module, qualified_name) -> bool`` tried on every
            ``nn.Linear``.

    Raises:
        FIAError: unknown kind, or no layer of that kind in the model.
    """
    model_name = type(model).__name__
    if callable(targets):
        found = [
            TargetLinear(name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and targets(m, name)
        ]
        if not found:
            raise FIAError(
                f"the target filter matched no nn.Linear in {model_name}; "
                "check the filter against the names listed by model.named_modules()"
            )
        return found
    if targets in ("ffn2", "ffn1"):
        found = _ffn_targets(model, targets)
    elif targets == "attn_kv":
        found = _attn_kv_targets(model)
    else:
        raise FIAError(f"unknown targets {targets!r}; use one of: ffn2, ffn1, attn_kv, or a filter function")
    if not found:
        raise FIAError(
            f"no {_KIND_WORDS[targets][0]} found in {model_name}: FIA edits {_KIND_WORDS[targets][1]}; "
            "pass a model with cross-attention transformer blocks or choose another --targets"
        )
    return found


def denoiser(pipe) -> nn.Module:
    """The denoising network of a diffusers pipeline (``pipe.unet`` or ``pipe.transformer``).

    A bare ``nn.Module`` (the denoiser itself) is returned as is.
    """
    for attr in ("unet", "transformer"):
        model = getattr(pipe, attr, None)
        if isinstance(model, nn.Module):
            return model
    if isinstance(pipe, nn.Module):
        return pipe
    raise FIAError(
        f"{type(pipe).__name__} has no `unet` or `transformer`; pass a diffusers "
        "text-to-image pipeline such as StableDiffusionPipeline"
    )
