"""Eq. 1: the energy saliency of every weight of one linear layer, one prompt.

For one prompt let ``X`` (N x C_in) be the rows entering the layer and
``Y = X W^T`` (N x C_out, bias excluded) the rows leaving it; ``X_j`` is the
j-th input column, ``Y_i`` the i-th output column. Then

    U[i, j] = |W_ij| * ||X_j|| * |<X_j, Y_i>| / (||X_j|| * ||Y_i|| + eps)

weight magnitude x input energy x |cosine| between the input column and the
output column it feeds. All inner products come from one matrix product
``G^T = Y^T X`` (C_out x C_in), about the cost of the layer's own forward.

Everything is computed in float32 whatever the dtype of the inputs.

:func:`wanda_saliency` is the public reference code's reduction, kept for
comparison (``--saliency wanda``): every token's row of ``X`` is scaled to
unit length, the cosine factor is dropped, and ``U = |W_ij| * ||X_j||`` on
the scaled rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows per block when forming the denominator, so that the only temporary of
# weight size is the output itself.
_ROW_BLOCK = 256


def _as_rows(t: Tensor, name: str) -> Tensor:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows x channels), got shape {tuple(t.shape)}")
    return t if t.dtype == torch.float32 else t.float()


def energy_saliency(
    weight: Tensor,
    x: Tensor,
    y: Tensor,
    eps: float = 1e-8,
    *,
    abs_weight: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Eq. 1 for all (i, j): ``U = |W| * ||X_j|| * |<X_j, Y_i>| / (||X_j|| ||Y_i|| + eps)``.

    Args:
        weight: ``(C_out, C_in)`` weight of the layer (any float dtype).
        x: ``(N, C_in)`` input rows of one prompt.
        y: ``(N, C_out)`` output rows ``x @ weight.T`` without bias.
        eps: the epsilon of the cosine denominator.
        abs_weight: ``|weight|`` in float32 if the caller keeps it (saves one
            pass per call); computed here otherwise.
        out: float32 ``(C_out, C_in)`` buffer to write ``U`` into (reused across
            prompts to avoid allocations); a new tensor otherwise.

    Returns:
        ``U``, float32 ``(C_out, C_in)``, all entries >= 0.

    The matrix product is written straight into ``out`` and turned into ``U``
    in place, row block by row block, so the temporaries besides ``out`` are
    vectors and one ``(block, C_in)`` slab.
    """
    c_out, c_in = weight.shape
    x = _as_rows(x, "x")
    y = _as_rows(y, "y")
    if x.shape[1] != c_in or y.shape[1] != c_out or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"shapes do not match: weight {tuple(weight.shape)}, x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if out is None:
        out = torch.empty((c_out, c_in), dtype=torch.float32, device=x.device)
    torch.matmul(y.T, x, out=out)  # out[i, j] = <Y_i, X_j>
    out.abs_()
    xn = torch.linalg.vector_norm(x, dim=0)  # ||X_j||, (C_in,)
    yn = torch.linalg.vector_norm(y, dim=0)  # ||Y_i||, (C_out,)
    aw = abs_weight
    for start in range(0, c_out, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, c_out)
        block = out[start:stop]
        denom = torch.outer(yn[start:stop], xn).add_(eps)
        block.mul_(xn).div_(denom)
        if aw is None:
            block.mul_(weight[start:stop].detach().abs().float())
        else:
            block.mul_(aw[start:stop])
    return out


# A row (one token's activations) shorter than this is divided by it instead
# of by its own length when scaled to unit length, so an all-zero row stays
# zero instead of dividing by zero (the same guard as torch's F.normalize).
WANDA_ROW_EPS = 1e-12


def wanda_saliency(
    weight: Tensor,
    x: Tensor,
    *,
    eps: float = WANDA_ROW_EPS,
    abs_weight: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """The reference code's reduction of Eq. 1: ``U[i, j] = |W_ij| * ||Xhat_j||``.

    ``Xhat`` is ``x`` with every row scaled to unit L2 length,
    ``Xhat_n = X_n / max(||X_n||, eps)`` (row ``n`` is one token's ``C_in``
    activations), and ``||Xhat_j||`` is the L2 norm of column ``j`` of
    ``Xhat`` over the prompt's rows. The cosine factor of Eq. 1 is dropped.

    Unlike Eq. 1, every token weighs the same whatever its activation energy:
    ``||Xhat_j||^2`` sums, over tokens, the share of each token's energy that
    falls on channel ``j``. Scaling one token's row leaves ``U`` unchanged;
    under Eq. 1 a loud token dominates ``||X_j||``.

    Float32 ``(C_out, C_in)``, written into ``out`` if given.
    """
    x = _as_rows(x, "x")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"shapes do not match: weight {tuple(weight.shape)}, x {tuple(x.shape)}")
    row_norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(eps)
    xn = torch.linalg.vector_norm(x / row_norms, dim=0)  # ||Xhat_j||, (C_in,)
    aw = abs_weight if abs_weight is not None else weight.detach().abs().float()
    if out is None:
        return aw * xn
    return torch.mul(aw, xn, out=out)
