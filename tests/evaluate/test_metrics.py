"""Hand-checked values of the pure metric functions."""

import math

import pytest
import torch

from fia.evaluate.metrics import (clip_score, frechet_distance, frechet_from_stats, fsr, jaccard, jaccard_matrix, kernel_distance,
                                  kid_change, kid_standard_error, mean, overall)


def test_overall_is_the_harmonic_mean_of_p_and_one_minus_f():
    # P = 0.8, F = 0.2: 2 * 0.8 * 0.8 / 1.6 = 0.8
    assert overall(0.8, 0.2) == pytest.approx(0.8)
    # P = 0.767, F = 0.021 (paper: 86.0)
    assert overall(0.767, 0.021) == pytest.approx(2 * 0.767 * 0.979 / (0.767 + 0.979))
    assert round(100 * overall(0.767, 0.021), 1) == 86.0
    assert overall(0.0, 1.0) == 0.0
    assert overall(1.0, 0.0) == 1.0
    assert overall(None, 0.1) is None


def test_fsr_counts_strictly_lower_edited_scores():
    assert fsr([0.9, 0.5, 0.3, 0.2], [0.1, 0.5, 0.4, 0.1]) == 0.5
    assert fsr([], []) is None
    with pytest.raises(ValueError):
        fsr([1.0], [])


def test_frechet_distance_of_gaussians_by_hand():
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    assert frechet_from_stats(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[1.0]])) == pytest.approx(4 + 1)
    # diagonal covariances: sum over dims of (sqrt(a) - sqrt(b))^2
    d = frechet_from_stats(torch.zeros(2), torch.diag(torch.tensor([9.0, 1.0])), torch.ones(2), torch.diag(torch.tensor([1.0, 4.0])))
    assert d == pytest.approx(2 + (3 - 1) ** 2 + (1 - 2) ** 2)
    # a non-diagonal case against tr(S1 + S2 - 2 (S1 S2)^1/2) with S1 = S2: distance = ||mu||^2
    s = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_from_stats(torch.zeros(2), s, torch.tensor([1.0, 2.0]), s) == pytest.approx(5.0, abs=1e-9)


def test_frechet_distance_of_feature_sets():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x + torch.tensor([3.0, 4.0])) == pytest.approx(25.0)
    assert frechet_distance(x, 2 * x) == pytest.approx(2 + 2 * (math.sqrt(4 / 3) * (2 - 1)) ** 2)


def test_clip_score_and_jaccard():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    txt = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert clip_score(img, txt).tolist() == pytest.approx([100.0, 0.0, 100 / math.sqrt(2)])
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    assert jaccard_matrix([a, b]) == [[1.0, pytest.approx(1 / 3)], [pytest.approx(1 / 3), 1.0]]
    assert mean([]) is None and mean([1, 2]) == 1.5


def _kid_by_hand(a, b) -> float:
    """The unbiased squared MMD with k(x, y) = (x . y / D + 1)^3, pair by pair."""
    k = lambda x, y: (float(x @ y) / a.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    s_aa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j)
    s_bb = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j)
    s_ab = sum(k(a[i], b[j]) for i in range(m) for j in range(n))
    return s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2 * s_ab / (m * n)


def test_kid_on_whole_sets_is_the_unbiased_mmd_by_hand():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 3, generator=g, dtype=torch.float64)
    b = torch.randn(8, 3, generator=g, dtype=torch.float64) + 0.7
    kid, std = kernel_distance(a, b)
    assert kid == pytest.approx(_kid_by_hand(a, b), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole of both sets
    assert kernel_distance(b, a)[0] == pytest.approx(kid, rel=1e-9)  # symmetric


def test_kid_standard_error_is_the_jackknife_over_both_sets():
    """Against the jackknife by brute force: the estimate recomputed with each image of either set left out."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(9, 4, generator=g, dtype=torch.float64)
    b = torch.randn(7, 4, generator=g, dtype=torch.float64) + 0.5
    left_a = [_kid_by_hand(torch.cat([a[:i], a[i + 1:]]), b) for i in range(len(a))]
    left_b = [_kid_by_hand(a, torch.cat([b[:j], b[j + 1:]])) for j in range(len(b))]

    def spread(values):
        mu = sum(values) / len(values)
        return (len(values) - 1) / len(values) * sum((v - mu) ** 2 for v in values)

    assert kid_standard_error(a, b) == pytest.approx(math.sqrt(spread(left_a) + spread(left_b)), rel=1e-9)
    # more images of the same two distributions: a smaller error
    big_a = torch.randn(400, 4, generator=g, dtype=torch.float64)
    big_b = torch.randn(400, 4, generator=g, dtype=torch.float64) + 0.5
    assert kid_standard_error(big_a, big_b) < kid_standard_error(big_a[:40], big_b[:40])
    with pytest.raises(ValueError, match="at least 3 images"):
        kid_standard_error(a[:2], b)


def test_kid_change_is_the_paired_jackknife_of_the_difference():
    """Against brute force: the two KIDs by hand, left out pair by pair and reference image by image."""
    g = torch.Generator().manual_seed(3)
    old = torch.randn(8, 4, generator=g, dtype=torch.float64)
    new = old + 0.3 * torch.randn(8, 4, generator=g, dtype=torch.float64) + 0.2  # paired with old, shifted
    ref = torch.randn(6, 4, generator=g, dtype=torch.float64) + 0.5
    change, se = kid_change(new, old, ref)
    assert change == pytest.approx(_kid_by_hand(new, ref) - _kid_by_hand(old, ref), rel=1e-9)
    drop = lambda x, i: torch.cat([x[:i], x[i + 1:]])  # noqa: E731
    left_pair = [_kid_by_hand(drop(new, i), ref) - _kid_by_hand(drop(old, i), ref) for i in range(len(old))]
    left_ref = [_kid_by_hand(new, drop(ref, j)) - _kid_by_hand(old, drop(ref, j)) for j in range(len(ref))]

    def spread(values):
        mu = sum(values) / len(values)
        return (len(values) - 1) / len(values) * sum((v - mu) ** 2 for v in values)

    assert se == pytest.approx(math.sqrt(spread(left_pair) + spread(left_ref)), rel=1e-9)
    # the same images twice: no change and no spread
    assert kid_change(old, old, ref) == (0.0, 0.0)
    # a small paired change is resolved far more finely than either KID alone is
    big_old = torch.randn(300, 4, generator=g, dtype=torch.float64)
    big_new = big_old + 0.05 * torch.randn(300, 4, generator=g, dtype=torch.float64)
    big_ref = torch.randn(300, 4, generator=g, dtype=torch.float64) + 0.3
    _, paired = kid_change(big_new, big_old, big_ref)
    assert paired < 0.2 * kid_standard_error(big_old, big_ref)
    with pytest.raises(ValueError, match="same shape"):
        kid_change(new[:5], old, ref)
    with pytest.raises(ValueError, match="at least 3 pairs"):
        kid_change(new[:2], old[:2], ref)
