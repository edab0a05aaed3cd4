import math

import pytest
import torch

from fia.core.select import channel_top_k, layer_top_k, select_concept_neurons


def _brute(a, r2):
    c_out, c_in = a.shape
    k = max(1, math.floor(r2 * c_in + 1e-9))
    big_k = max(1, math.floor(r2 * c_in * c_out + 1e-9))
    chan = set()
    for i in range(c_out):
        order = sorted(range(c_in), key=lambda j: (-float(a[i, j]), j))
        chan |= {(i, j) for j in order[:k]}
    flat = sorted(((-float(a[i, j]), i * c_in + j) for i in range(c_out) for j in range(c_in)))
    lay = {divmod(idx, c_in) for _, idx in flat[:big_k]}
    m = torch.zeros(c_out, c_in, dtype=torch.bool)
    for i, j in chan & lay:
        if float(a[i, j]) > 0:
            m[i, j] = True
    return m


@pytest.mark.parametrize("r2", [0.01, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sorted_lists(r2, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(12, 20, generator=g)
    a[a < 0.3] = 0
    m = select_concept_neurons(a, r2)
    assert m.dtype == torch.bool
    assert torch.equal(m, _brute(a, r2))
    k = max(1, math.floor(r2 * 20 + 1e-9))
    assert int(m.sum(1).max()) <= k
    assert int(m.sum()) <= max(1, math.floor(r2 * 240 + 1e-9))


def test_ties_broken_by_lower_index():
    a = torch.tensor([[1.0, 1.0, 1.0, 0.5], [0.2, 1.0, 1.0, 1.0]])
    # quantised values: many ties
    assert channel_top_k(a, 0.5).tolist() == [[True, True, False, False], [False, True, True, False]]
    assert layer_top_k(a, 0.5).tolist() == [[True, True, True, False], [False, True, False, False]]
    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 4, (30, 40), generator=g).float() / 3
    m1 = select_concept_neurons(q, 0.1)
    assert torch.equal(m1, _brute(q, 0.1))
    assert torch.equal(m1, select_concept_neurons(q.clone(), 0.1))


def test_zero_never_selected_and_minimum_one():
    a = torch.zeros(3, 5)
    assert not select_concept_neurons(a, 0.01).any()
    a[1, 2] = 0.1
    m = select_concept_neurons(a, 0.01)  # k = K = 1
    assert m.sum() == 1 and m[1, 2]


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        select_concept_neurons(torch.rand(3), 0.1)
    with pytest.raises(ValueError):
        select_concept_neurons(torch.rand(3, 3), 0.0)
