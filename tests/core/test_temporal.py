import math

import pytest
import torch

from fia.core.temporal import TimeIntegrator, persistence_threshold


def _brute(steps, r1):
    shape = steps[0].shape
    n = steps[0].numel()
    k = max(1, math.floor(r1 * n + 1e-9))
    strength = torch.zeros(shape, dtype=torch.float64)
    persist = torch.zeros(shape, dtype=torch.float64)
    for s in steps:
        vals = sorted((float(v) for v in s.reshape(-1)), reverse=True)
        positives = sum(v > 0 for v in vals)
        tau = 0.0 if positives < k else vals[k - 1]
        for idx in range(n):
            i, j = divmod(idx, shape[1])
            strength[i, j] += float(s[i, j]) / len(steps)
            persist[i, j] += (1.0 if float(s[i, j]) > tau else 0.0) / len(steps)
    top = float(strength.max())
    return 0.5 * (strength / top if top > 0 else strength * 0) + 0.5 * persist


@pytest.mark.parametrize("r1", [0.05, 0.2, 1.0])
def test_matches_loops(r1):
    g = torch.Generator().manual_seed(int(r1 * 100))
    steps = [torch.relu(torch.randn(6, 10, generator=g)) for _ in range(4)]
    ti = TimeIntegrator((6, 10), r1)
    for s in steps:
        ti.update(s)
    a = ti.result()
    assert a.dtype == torch.float32
    torch.testing.assert_close(a.double(), _brute(steps, r1), rtol=1e-5, atol=1e-6)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert float(a.max()) >= 0.5 - 1e-6  # the strongest entry has strength 1


def test_threshold_k_th_largest_and_zero_when_few_positives():
    s = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert persistence_threshold(s, 0.2) == 2.0  # k = 2: second largest
    assert persistence_threshold(s, 0.1) == 3.0  # k = 1
    assert persistence_threshold(s, 0.5) == 0.0  # k = 5 > 3 positives
    assert persistence_threshold(torch.zeros(2, 2), 0.05) == 0.0


def test_r1_times_numel_exact():
    # 0.07 * 100 == 7.000000000000001 in floats; 0.29 * 100 == 28.999999999999996
    s = torch.arange(1, 101, dtype=torch.float32).reshape(10, 10)
    assert persistence_threshold(s, 0.29) == 100 - 29 + 1
    assert persistence_threshold(s, 0.07) == 100 - 7 + 1


def test_all_zero_layer_and_errors():
    ti = TimeIntegrator((2, 3), 0.5)
    with pytest.raises(ValueError):
        ti.result()
    ti.update(torch.zeros(2, 3))
    assert torch.equal(ti.result(), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        ti.update(torch.zeros(3, 2))


def test_hand_case():
    ti = TimeIntegrator((1, 4), 0.25)  # k = 1
    ti.update(torch.tensor([[4.0, 2.0, 0.0, 0.0]]))
    ti.update(torch.tensor([[0.0, 2.0, 0.0, 0.0]]))
    # strength mean [2, 2, 0, 0] / 2; tau_1 = 4 -> none persistent; tau_2 = 2 -> none
    assert ti.thresholds == [4.0, 2.0]
    assert ti.result().tolist() == [[0.5, 0.5, 0.0, 0.0]]
