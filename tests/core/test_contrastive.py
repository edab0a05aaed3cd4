import statistics

import pytest
import torch

from fia.core.contrastive import ContrastiveAccumulator, contrastive_saliency


def _brute(concept, base):
    c_out, c_in = concept[0].shape
    s = torch.zeros(c_out, c_in, dtype=torch.float64)
    for i in range(c_out):
        for j in range(c_in):
            cs = [float(u[i, j]) for u in concept]
            bs = [float(u[i, j]) for u in base]
            s[i, j] = max(0.0, statistics.fmean(cs) - statistics.fmean(bs) - statistics.pstdev(bs))
    return s


@pytest.mark.parametrize("pc,pb", [(1, 1), (3, 2), (2, 5)])
def test_matches_statistics_module(pc, pb):
    g = torch.Generator().manual_seed(pc * 10 + pb)
    concept = [torch.rand(4, 6, generator=g) * 2 for _ in range(pc)]
    base = [torch.rand(4, 6, generator=g) for _ in range(pb)]
    acc = ContrastiveAccumulator((4, 6))
    for u in concept:
        acc.add(u, True)
    for u in base:
        acc.add(u, False)
    s = acc.saliency()
    torch.testing.assert_close(s.double(), _brute(concept, base), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, contrastive_saliency(torch.stack(concept), torch.stack(base)))
    assert (s >= 0).all()
    assert (s > 0).any()


def test_interleaved_order_and_reset():
    g = torch.Generator().manual_seed(7)
    concept = [torch.rand(3, 3, generator=g) + 1 for _ in range(2)]
    base = [torch.rand(3, 3, generator=g) for _ in range(3)]
    acc = ContrastiveAccumulator((3, 3))
    for c, b in zip(concept + [None], base):
        acc.add(b.clone(), False, overwrite=True)
        if c is not None:
            acc.add(c, True)
    s1 = acc.saliency()
    assert acc.num_base == 0 and acc.num_concept == 0
    for u in concept:
        acc.add(u, True)
    for u in base:
        acc.add(u, False)
    torch.testing.assert_close(acc.saliency(), s1)


def test_caller_buffer_untouched_without_overwrite():
    acc = ContrastiveAccumulator((2, 2))
    u = torch.ones(2, 2)
    acc.add(u, False)
    acc.add(u * 3, False)
    assert torch.equal(u, torch.ones(2, 2))


def test_hand_case_and_errors():
    acc = ContrastiveAccumulator((1, 2))
    acc.add(torch.tensor([[5.0, 1.0]]), True)
    acc.add(torch.tensor([[1.0, 1.0]]), False)
    acc.add(torch.tensor([[3.0, 3.0]]), False)
    # base mean 2, pstdev 1 in column 0: 5 - 2 - 1 = 2; column 1: 1 - 2 - 1 < 0 -> 0
    assert acc.saliency().tolist() == [[2.0, 0.0]]
    acc.add(torch.ones(1, 2), True)
    with pytest.raises(ValueError):
        acc.saliency()
    with pytest.raises(ValueError):
        acc.add(torch.ones(2, 2), True)


def test_welford_stable_for_large_mean():
    # large mean, tiny spread: naive E[U^2]-E[U]^2 in float32 would give garbage
    base = [torch.full((1, 1), 1e4 + d) for d in (0.0, 0.01, 0.02)]
    acc = ContrastiveAccumulator((1, 1))
    acc.add(torch.full((1, 1), 1e4 + 0.05), True)
    for u in base:
        acc.add(u, False)
    expect = 0.05 - 0.01 - statistics.pstdev([0.0, 0.01, 0.02])
    assert abs(float(acc.saliency()) - expect) < 3e-3
