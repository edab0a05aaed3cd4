"""Hand-checked values of the pure metric functions."""

import math

import pytest
import torch

from fia.evaluate.metrics import clip_score, frechet_distance, frechet_from_stats, fsr, jaccard, jaccard_matrix, mean, overall


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
