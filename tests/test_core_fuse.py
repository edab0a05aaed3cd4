import math

import pytest
import torch

from fia.core.fuse import concept_agnostic_threshold, fuse_layer_masks, fuse_masks


def test_threshold_values():
    assert concept_agnostic_threshold(5, 0.6) == 3  # float 0.6*5 = 3.0000000000000004
    assert concept_agnostic_threshold(1, 0.6) == 2
    assert concept_agnostic_threshold(10, 0.6) == 6
    assert concept_agnostic_threshold(5, 0.8) == 4
    assert concept_agnostic_threshold(3, 0.6) == 2
    assert concept_agnostic_threshold(7, 0.6) == 5
    for c in range(1, 40):
        for alpha in (0.1, 0.3, 0.6, 0.7, 0.8, 1.0):
            exact = -((-round(alpha * 10) * c) // 10)  # ceil(alpha*10*c / 10) in integers
            assert concept_agnostic_threshold(c, alpha) == max(2, exact)
    with pytest.raises(ValueError):
        concept_agnostic_threshold(0, 0.6)


def test_single_concept_prunes_whole_mask():
    m = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    f = fuse_masks([m], 0.6)
    assert f.tau_ca == 2
    assert torch.equal(f.prune, m) and not f.agnostic.any()


@pytest.mark.parametrize("c,alpha", [(2, 0.6), (5, 0.6), (6, 0.8), (12, 0.6)])
def test_matches_counting(c, alpha):
    g = torch.Generator().manual_seed(c)
    masks = [torch.rand(5, 7, generator=g) > 0.6 for _ in range(c)]
    f = fuse_masks(masks, alpha)
    tau = max(2, math.ceil(round(alpha * c, 9)))
    assert f.tau_ca == tau
    for i in range(5):
        for j in range(7):
            s = sum(bool(m[i, j]) for m in masks)
            assert int(f.counts[i, j]) == s
            assert bool(f.prune[i, j]) == (0 < s < tau)
            assert bool(f.agnostic[i, j]) == (s >= tau)
    assert not (f.prune & f.agnostic).any()


def test_layer_wise_and_errors():
    a = [torch.tensor([[True, False]]), torch.tensor([[True, True]])]
    out = fuse_layer_masks({"x": a, "y": a[::-1]}, 0.6)
    assert out["x"].agnostic.tolist() == [[True, False]]
    assert out["x"].prune.tolist() == [[False, True]]
    with pytest.raises(ValueError):
        fuse_layer_masks({"x": a, "y": a[:1]}, 0.6)
    with pytest.raises(ValueError):
        fuse_masks([], 0.6)
    with pytest.raises(ValueError):
        fuse_masks([torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)], 0.6)
