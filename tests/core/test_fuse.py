import math

import pytest
import torch

from fia.core.fuse import concept_agnostic_threshold, fuse_layer_masks, fuse_masks


def test_threshold_values():
    assert concept_agnostic_threshold(5, 0.6) == 3
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


def test_threshold_is_exact_where_float_is_not():
    from fia.config import FIAConfig
    from fia.evaluate.report import overlap_threshold
    from fia.mask import ConceptMask

    # float products land just above the integer, so a float ceiling is one too high
    assert 0.28 * 25 == 7.000000000000001 and math.ceil(0.28 * 25) == 8
    assert 0.56 * 25 == 14.000000000000002 and math.ceil(0.56 * 25) == 15
    for alpha, tau in ((0.28, 7), (0.56, 14)):
        assert concept_agnostic_threshold(25, alpha) == tau
        assert fuse_masks([torch.ones(1, 1, dtype=torch.bool)] * 25, alpha).tau_ca == tau
        # the config and the report compute it with the same function
        assert FIAConfig(alpha=alpha).concept_agnostic_threshold(25) == tau
        mask = ConceptMask(concepts=[], config={"alpha": alpha}, layers=[], fingerprint="", edit_fingerprint="")
        assert overlap_threshold(mask, 25) == tau
    # the report takes the run's alpha, not a fixed 0.6; without one, the default alpha
    run = ConceptMask(concepts=[], config={"alpha": 0.8}, layers=[], fingerprint="", edit_fingerprint="")
    assert overlap_threshold(run, 5) == 4
    assert overlap_threshold(None, 5) == concept_agnostic_threshold(5, FIAConfig().alpha) == 3


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
