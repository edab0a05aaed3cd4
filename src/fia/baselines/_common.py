"""What the baselines need from a pipeline: text embeddings and its device.

Checks, layer discovery and progress live in their own modules
(:func:`fia.concepts.parse_concepts`, :mod:`fia.config`'s ``check_*``,
:func:`fia.targets.find_targets`, :mod:`fia.progress`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from fia.errors import FIAError



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


# ------------------------------------------- closed-form cross-attention edits
TOKEN_MODES = ("concept_eos", "concept", "all")
PROJECTIONS = ("to_k", "to_v")


class CrossAttentionEditConfig:
    """What the closed-form cross-attention edits' configs (UCE, SPEED) share.

    A frozen dataclass subclass declares ``anchor``, ``anchors``, ``tokens``
    and ``projections`` and has a ``validate()`` that returns the config and
    calls :meth:`check_rows_and_projections`.
    """

    anchor: str
    anchors: dict[str, str]
    tokens: str
    projections: tuple[str, ...]

    def check_rows_and_projections(self) -> None:
        """Refuse an unknown token mode or projection (one line naming the choices)."""
        if self.tokens not in TOKEN_MODES:
            raise FIAError(f"unknown tokens {self.tokens!r}; use one of: {', '.join(TOKEN_MODES)}")
        bad = [p for p in self.projections if p not in PROJECTIONS]
        if bad or not self.projections:
            raise FIAError(f"projections must be a non-empty subset of {PROJECTIONS}, got {self.projections!r}")

    def anchor_for(self, concept: str) -> str:
        """The text ``concept`` is mapped to: its own anchor if it has one, else ``anchor``."""
        return self.anchors.get(concept, self.anchor)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes).validate()  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def edited_projections(pipe: Any, projections: Sequence[str]) -> list[Any]:
    """The cross-attention key/value linears of ``pipe``'s UNet that a closed-form edit changes (``to_k``, ``to_v``)."""
    from fia.targets import find_targets

    return [t for t in find_targets(pipe.unet, "attn_kv") if t.name.rsplit(".", 1)[-1] in projections]


def float64_weight(target: Any, embedding_dim: int) -> torch.Tensor:
    """``target``'s weight in float64 on the CPU, after checking it reads ``embedding_dim``-d text embeddings."""
    w = target.module.weight.detach().double().cpu()
    if w.shape[1] != embedding_dim:
        raise FIAError(
            f"{target.name} takes {w.shape[1]}-d inputs but the text encoder gives "
            f"{embedding_dim}-d embeddings; this pipeline is not supported"
        )
    return w

