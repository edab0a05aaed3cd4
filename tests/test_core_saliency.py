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


def test_wanda_matches_loops():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 7, generator=g)
    x = torch.randn(4, 7, generator=g)
    u = wanda_saliency(w, x)
    for i in range(5):
        for j in range(7):
            nx = math.sqrt(sum(float(x[r, j]) ** 2 for r in range(4)))
            assert math.isclose(float(u[i, j]), abs(float(w[i, j])) * nx, rel_tol=1e-5)
    torch.testing.assert_close(wanda_saliency(w, x, out=torch.empty(5, 7)), u)
