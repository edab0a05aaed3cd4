import math

import pytest
import torch

from fia.core.saliency import energy_saliency, wanda_saliency


def _brute_energy(w, x, y, eps):
    c_out, c_in = w.shape
    n = x.shape[0]
    u = torch.zeros(c_out, c_in, dtype=torch.float64)
    for i in range(c_out):
        yi = [float(y[r, i]) for r in range(n)]
        ny = math.sqrt(sum(v * v for v in yi))
        for j in range(c_in):
            xj = [float(x[r, j]) for r in range(n)]
            nx = math.sqrt(sum(v * v for v in xj))
            dot = sum(a * b for a, b in zip(xj, yi))
            u[i, j] = abs(float(w[i, j])) * nx * abs(dot) / (nx * ny + eps)
    return u


@pytest.mark.parametrize("n,c_in,c_out", [(5, 6, 4), (1, 3, 2), (9, 7, 300)])
def test_energy_matches_loops(n, c_in, c_out):
    g = torch.Generator().manual_seed(n * 100 + c_in)
    w = torch.randn(c_out, c_in, generator=g)
    x = torch.randn(n, c_in, generator=g)
    y = x @ w.T
    u = energy_saliency(w, x, y, eps=1e-8)
    assert u.dtype == torch.float32 and u.shape == (c_out, c_in)
    ref = _brute_energy(w.double(), x.double(), y.double(), 1e-8)
    torch.testing.assert_close(u.double(), ref, rtol=1e-4, atol=1e-6)
    assert (u >= 0).all()


def test_energy_out_buffer_and_abs_weight_reuse():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 5, generator=g)
    x = torch.randn(4, 5, generator=g)
    y = x @ w.T
    buf = torch.full((8, 5), 123.0)
    u = energy_saliency(w, x, y, abs_weight=w.abs(), out=buf)
    assert u.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(u, energy_saliency(w, x, y))


def test_energy_half_inputs_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, generator=g).half()
    x = torch.randn(3, 4, generator=g).half()
    y = (x.float() @ w.float().T).half()
    u = energy_saliency(w, x, y)
    assert u.dtype == torch.float32
    ref = _brute_energy(w.double(), x.double(), y.double(), 1e-8)
    torch.testing.assert_close(u.double(), ref, rtol=1e-4, atol=1e-6)


def test_energy_hand_case_and_zero_column():
    # X_1 == 0: its saliency is 0 (no division by zero); X_0 parallel to Y_0.
    w = torch.tensor([[2.0, -3.0]])
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    y = x @ w.T  # = 2 * X_0
    u = energy_saliency(w, x, y, eps=0.0 + 1e-12)
    assert u[0, 1] == 0
    # |W| * ||X_0|| * cos = 2 * sqrt(5) * 1
    assert math.isclose(float(u[0, 0]), 2 * math.sqrt(5), rel_tol=1e-5)


def _brute_wanda(w, x, eps):
    """Scale each row of X to unit length (rows shorter than eps are divided by eps), column norms, times |W|."""
    n, c_in = x.shape
    rows = []
    for r in range(n):
        row = [float(x[r, j]) for j in range(c_in)]
        length = max(math.sqrt(sum(v * v for v in row)), eps)
        rows.append([v / length for v in row])
    col = [math.sqrt(sum(rows[r][j] ** 2 for r in range(n))) for j in range(c_in)]
    return torch.tensor([[abs(float(w[i, j])) * col[j] for j in range(c_in)] for i in range(w.shape[0])], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wanda_matches_loops_with_unit_rows(dtype):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 7, generator=g)
    x = torch.randn(6, 7, generator=g) * torch.tensor([[0.01], [1.0], [30.0], [0.0], [2.0], [0.5]])  # row 3 is zero
    w, x = w.to(dtype), x.to(dtype)
    u = wanda_saliency(w, x)
    assert u.dtype == torch.float32 and u.shape == (5, 7) and torch.isfinite(u).all()
    ref = _brute_wanda(w.double(), x.double(), 1e-12)
    torch.testing.assert_close(u.double(), ref, rtol=1e-5, atol=1e-6)
    # the zero row adds nothing: the same as leaving it out
    torch.testing.assert_close(u, wanda_saliency(w, x[[0, 1, 2, 4, 5]]))
    torch.testing.assert_close(wanda_saliency(w, x, out=torch.empty(5, 7)), u)
    torch.testing.assert_close(wanda_saliency(w, x, abs_weight=w.abs().float()), u)
    # an all-zero input gives zero saliency, not NaN
    assert torch.equal(wanda_saliency(w, torch.zeros(3, 7, dtype=dtype)), torch.zeros(5, 7))


def test_wanda_weighs_every_token_alike_unlike_eq1():
    """Row scaling makes wanda blind to a token's loudness; Eq. 1 is not, so the two can rank weights oppositely."""
    w = torch.tensor([[1.0, 1.0]])
    # one loud token on channel 0, two quiet tokens on channel 1
    x = torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = x @ w.T  # (10, 1, 1)
    wanda = wanda_saliency(w, x)
    # rows scaled to unit length: ||Xhat_0|| = 1, ||Xhat_1|| = sqrt(2)
    torch.testing.assert_close(wanda, torch.tensor([[1.0, math.sqrt(2)]]))
    # Eq. 1: ||X_0|| = 10 with cosine 10/sqrt(102) to Y; ||X_1|| = sqrt(2) with cosine sqrt(2)/sqrt(102)
    energy = energy_saliency(w, x, y)
    torch.testing.assert_close(energy, torch.tensor([[100 / math.sqrt(102), 2 / math.sqrt(102)]]))
    assert wanda[0, 1] > wanda[0, 0] and energy[0, 0] > energy[0, 1]  # opposite rankings
    # making the loud token louder changes Eq. 1 (and the unscaled column norm) but not wanda
    louder = x * torch.tensor([[3.0], [1.0], [1.0]])
    torch.testing.assert_close(wanda_saliency(w, louder), wanda)
    assert not torch.allclose(energy_saliency(w, louder, louder @ w.T), energy)
    assert not torch.allclose(torch.linalg.vector_norm(louder, dim=0), torch.linalg.vector_norm(x, dim=0))
