"""Selection for the causal variant: contrast with the anchors, then one global top-k.

The causal variant (:mod:`fia.causal`) scores every target weight ``w`` by the
first-order change of the model's evidence for a concept when ``w`` is zeroed:

    g_c(w) = w * dE_c/dw        (E_c: the concept's evidence, averaged over its prompts)
    g_a(w) = w * dE_a/dw        (E_a: the same for the anchors, concepts that must stay)

Zeroing ``w`` changes ``E_c`` by about ``-g_c(w)``, so a large positive
``g_c`` marks a weight the concept depends on. The anchor penalty keeps the
weights that the anchors depend on too:

    s_c(w) = g_c(w) - lambda * max(g_a(w), 0)                         (A1)

and a concept takes the ``k`` weights of highest ``s_c`` over *all* target
layers together (A2). A single ranking over the model, rather than Eq. 4-6's
quota per output channel and per layer, lets the set sit where the concept is
drawn: measured on ShapeWorld, most of it lands in two of seven layers. An
entry with ``s_c <= 0`` (zeroing it would not lower the evidence net of the
penalty) is never taken, and already pruned entries are skipped. Ties go to
the lower position (layers in the given order, then row-major), so a
selection is bit-identical run to run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def contrast_scores(concept: Tensor, anchor: Tensor | None, anchor_weight: float) -> Tensor:
    """Eq. (A1): ``concept - anchor_weight * max(anchor, 0)`` (float32); no anchors: ``concept``."""
    s = concept.float()
    if anchor is None or anchor_weight == 0:
        return s.clone()
    return s - float(anchor_weight) * anchor.float().clamp(min=0)


def global_top_k(
    scores: Mapping[str, Tensor],
    k: int,
    exclude: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Eq. (A2): the ``k`` entries of highest score over every layer together.

    Args:
        scores: per layer, a score tensor (any shape).
        k: how many entries to take; fewer are taken when fewer than ``k``
            entries are positive and not excluded.
        exclude: per layer, a bool tensor of entries never to take (the
            weights already pruned).

    Returns:
        Per layer, a bool tensor shaped like its scores.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
    eligible = flat > 0
    if exclude is not None:
        eligible &= ~torch.cat([exclude[n].reshape(-1).cpu() for n in names])
    order = torch.argsort(flat.masked_fill(~eligible, float("-inf")), descending=True, stable=True)
    take = order[: min(k, int(eligible.sum()))]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[take] = True
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = chosen[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def round_sizes(total: int, rounds: int) -> list[int]:
    """Split ``total`` selections over ``rounds`` as evenly as integers allow (sums to ``total``)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return [total * (r + 1) // rounds - total * r // rounds for r in range(rounds)]
