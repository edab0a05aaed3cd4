"""UCE: closed-form erasure in the cross-attention key/value projections.

Reference: R. Gandikota, H. Orgad, Y. Belinkov, J. Materzynska, D. Bau,
"Unified Concept Editing in Diffusion Models", arXiv:2308.14761 (WACV 2024),
method section: the edit objective with its erase and preserve terms, its
closed-form solution, and the erasing case ``v*_i = W^old c_*``.

What is implemented
-------------------
For every text cross-attention ``attn2`` of every ``BasicTransformerBlock``
and for each of its projections ``W in {to_k, to_v}`` (shape ``(d_out, d)``),
with ``c_i`` text embeddings of the concepts to erase (set ``E``), ``c_j``
those of the concepts to preserve (set ``P``), the paper's objective

    min_W  sum_{c_i in E} ||W c_i - v*_i||^2 + sum_{c_j in P} ||W c_j - W^old c_j||^2

has the closed form (the paper's solution)

    W = ( sum_E v*_i c_i^T + sum_P W^old c_j c_j^T ) ( sum_E c_i c_i^T + sum_P c_j c_j^T )^-1 .

For erasing, ``v*_i = W^old c_*`` with ``c_*`` the embedding of an anchor
("" by default, or a neutral concept such as "art"). The inverse exists only
when the ``c``'s span the embedding space, which a few concepts never do;
like TIME (Orgad et al., arXiv:2303.08084, whose objective UCE extends), we
add ``lambda ||W - W^old||_F^2``, and weight the two sums by scales
``s_e`` and ``s_p``. The solved problem is therefore

    min_W  s_e sum_E ||W c_i - v*_i||^2 + s_p sum_P ||W c_j - W^old c_j||^2 + lambda ||W - W^old||_F^2

    W = ( s_e sum_E v*_i c_i^T + s_p sum_P W^old c_j c_j^T + lambda W^old )
        ( s_e sum_E c_i c_i^T  + s_p sum_P c_j c_j^T        + lambda I   )^-1

solved in float64 with a linear solve (no explicit inverse). With ``E``
empty the solution is ``W^old`` exactly.

Embeddings: ``c`` are rows of the text encoder's output (what the UNet
receives), one per token of the concept's own text (the paper edits the
concept's token embeddings). Which positions count is an option
(``tokens``): ``"concept_eos"`` (default) takes the concept's word tokens
and the end-of-text token after them, which in CLIP summarises the prompt;
``"concept"`` the word tokens only; ``"all"`` every position after the
start token. The anchor's embedding is taken at the same positions, so
position ``p`` of the concept maps to position ``p`` of the anchor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fia.baselines import _common
from fia.config import check_nonnegative
from fia.delta import WeightDelta
from fia.errors import FIAError
from fia.progress import Progress, report

TOKEN_MODES, PROJECTIONS = _common.TOKEN_MODES, _common.PROJECTIONS


@dataclass(frozen=True)
class UCEConfig(_common.CrossAttentionEditConfig):
    """Settings of UCE.

    Attributes:
        anchor: text whose embedding the erased concepts are mapped to
            (``v*_i = W^old c_anchor``); ``""`` maps them to "nothing".
        anchors: per-concept anchors that replace ``anchor``.
        erase_scale: ``s_e``, weight of the erase terms.
        preserve_scale: ``s_p``, weight of the preservation terms.
        lamb: ``lambda``, weight of ``||W - W^old||^2`` (keeps the system
            invertible and untouched directions unchanged).
        tokens: which token positions give the ``c`` vectors (see module doc).
        projections: which cross-attention projections are edited.
    """

    anchor: str = ""
    anchors: dict[str, str] = field(default_factory=dict)
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.1
    tokens: Literal["concept_eos", "concept", "all"] = "concept_eos"
    projections: tuple[str, ...] = PROJECTIONS

    def validate(self) -> UCEConfig:
        check_nonnegative("erase_scale", self.erase_scale)
        check_nonnegative("preserve_scale", self.preserve_scale)
        check_nonnegative("lamb", self.lamb)
        self.check_rows_and_projections()
        return self


# ----------------------------------------------------------------- pure math
def closed_form(
    w_old: Tensor,
    erase_inputs: Tensor,
    erase_targets: Tensor,
    preserve_inputs: Tensor,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.1,
) -> Tensor:
    """UCE's closed form (module doc), in float64.

    Args:
        w_old: (d_out, d) current weight.
        erase_inputs: (n_e, d) rows ``c_i``.
        erase_targets: (n_e, d_out) rows ``v*_i``.
        preserve_inputs: (n_p, d) rows ``c_j``.
    Returns the new weight (d_out, d), float64.
    """
    w = w_old.double()
    d = w.shape[1]
    ce, ve, cp = erase_inputs.double(), erase_targets.double(), preserve_inputs.double()
    if ce.shape[0] != ve.shape[0]:
        raise ValueError(f"{ce.shape[0]} erase inputs but {ve.shape[0]} targets")
    lhs = lamb * torch.eye(d, dtype=torch.float64)
    rhs = lamb * w
    if ce.shape[0]:
        lhs = lhs + erase_scale * ce.T @ ce
        rhs = rhs + erase_scale * ve.T @ ce
    if cp.shape[0]:
        lhs = lhs + preserve_scale * cp.T @ cp
        rhs = rhs + preserve_scale * (w @ cp.T) @ cp
    # W lhs = rhs with lhs symmetric  <=>  lhs W^T = rhs^T
    try:
        return torch.linalg.solve(lhs, rhs.T).T
    except RuntimeError as exc:  # singular: lamb = 0 and too few concepts
        raise FIAError("the UCE system is singular (too few concepts to determine W); set lamb > 0") from exc


def objective(
    w: Tensor,
    w_old: Tensor,
    erase_inputs: Tensor,
    erase_targets: Tensor,
    preserve_inputs: Tensor,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.1,
) -> Tensor:
    """The least-squares objective that :func:`closed_form` minimises (for checks)."""
    w, w_old = w.double(), w_old.double()
    ce, ve, cp = erase_inputs.double(), erase_targets.double(), preserve_inputs.double()
    total = lamb * (w - w_old).pow(2).sum()
    total = total + erase_scale * (ce @ w.T - ve).pow(2).sum()
    total = total + preserve_scale * (cp @ w.T - cp @ w_old.T).pow(2).sum()
    return total


# ---------------------------------------------------------------- embeddings
def token_positions(pipe: Any, text: str, mode: str) -> list[int]:
    """Positions (in the encoder's padded sequence) whose embeddings stand for ``text``."""
    tok = pipe.tokenizer
    length = tok.model_max_length
    n_words = len(tok(text, add_special_tokens=False, truncation=True, max_length=length - 2).input_ids)
    if mode == "concept":
        if n_words == 0:
            raise FIAError(f"the concept {text!r} has no tokens; use tokens='concept_eos'")
        return list(range(1, 1 + n_words))
    if mode == "concept_eos":
        return list(range(1, 2 + n_words))
    if mode == "all":
        return list(range(1, length))
    raise FIAError(f"unknown tokens {mode!r}; use one of: {', '.join(TOKEN_MODES)}")


def concept_embeddings(pipe: Any, text: str, positions: Sequence[int]) -> Tensor:
    """Rows of ``text``'s encoder output at ``positions``: (len(positions), d), float64."""
    emb = _common.text_embeddings(pipe, [text])[0]
    return emb[list(positions)].double().cpu()


def edit_inputs(
    pipe: Any, concepts: Sequence[str], config: UCEConfig, preserve: Sequence[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """(erase inputs c_i, anchor inputs c_* aligned with them, preserve inputs c_j), float64."""
    ce, ca, cp = [], [], []
    for concept in concepts:
        pos = token_positions(pipe, concept, config.tokens)
        ce.append(concept_embeddings(pipe, concept, pos))
        ca.append(concept_embeddings(pipe, config.anchor_for(concept), pos))
    for concept in preserve:
        pos = token_positions(pipe, concept, config.tokens)
        cp.append(concept_embeddings(pipe, concept, pos))
    dim = (ce + cp)[0].shape[1] if ce or cp else _common.text_embeddings(pipe, [""]).shape[-1]
    empty = torch.zeros(0, dim, dtype=torch.float64)
    cat = lambda xs: torch.cat(xs) if xs else empty
    return cat(ce), cat(ca), cat(cp)


def unlearn(
    pipe: Any,
    concepts: Sequence[str],
    config: UCEConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    prompts: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_dir: Any = None,
) -> WeightDelta:
    """UCE's edit of every ``attn2.to_k`` / ``to_v`` of ``pipe``'s UNet that erases ``concepts`` and keeps ``preserve``.

    Registered as ``uce``: call it through :func:`fia.unlearn`, which checks
    the names (none both erased and preserved) and the config. ``pipe`` is not changed; the result is a
    :class:`fia.delta.WeightDelta` (apply it with ``delta.apply_(pipe)``).
    Called directly, ``concepts`` may be empty when ``preserve`` is not.
    ``prompts`` is not used: UCE edits the embeddings of the names themselves.
    """
    config = config or UCEConfig()
    if not concepts and not preserve:
        raise FIAError("no concepts given; name at least one concept to erase")
    ce, ca, cp = edit_inputs(pipe, concepts, config, preserve)
    edited = _common.edited_projections(pipe, config.projections)
    before: dict[str, Tensor] = {}
    after: dict[str, Tensor] = {}
    with torch.no_grad():
        for done, target in enumerate(edited, start=1):
            weight = target.module.weight
            w_old = _common.float64_weight(target, ce.shape[1])
            targets = ca @ w_old.T
            w_new = closed_form(
                w_old, ce, targets, cp,
                erase_scale=config.erase_scale, preserve_scale=config.preserve_scale, lamb=config.lamb,
            )  # fmt: skip
            before[f"{target.name}.weight"] = weight.detach().cpu().clone()
            # rounded to the model's dtype, as writing it into the model would
            after[f"{target.name}.weight"] = w_new.to(weight.dtype)
            report(progress, done, len(edited), f"UCE: edited {target.name}")
    return WeightDelta.from_models(
        before, after, method="uce", concepts=list(concepts), config=config.to_dict(),
        stats={"preserve": list(preserve)},
    )  # fmt: skip
