"""The causal variant's selection (Eq. A1-A2) against brute force and hand cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from fia.core.attribution import contrast_scores, global_top_k, round_sizes


def test_contrast_scores_by_hand():
    concept = torch.tensor([[3.0, 1.0], [-2.0, 0.5]])
    anchor = torch.tensor([[1.0, -4.0], [1.0, 0.25]])
    # s = concept - 2 * max(anchor, 0): a negative anchor score (the anchors gain) costs nothing
    expected = torch.tensor([[1.0, 1.0], [-4.0, 0.0]])
    assert torch.equal(contrast_scores(concept, anchor, 2.0), expected)
    assert torch.equal(contrast_scores(concept, None, 2.0), concept)
    assert torch.equal(contrast_scores(concept, anchor, 0.0), concept)


def _brute_top_k(scores, k, exclude):
    """Rank every (layer, flat index) by (-score, position), keep positive, not excluded."""
    entries = []
    pos = 0
    for name, s in scores.items():
        for i, v in enumerate(s.reshape(-1).tolist()):
            if v > 0 and not (exclude and bool(exclude[name].reshape(-1)[i])):
                entries.append((-v, pos + i, name, i))
        pos += s.numel()
    entries.sort()
    out = {n: torch.zeros(s.numel(), dtype=torch.bool) for n, s in scores.items()}
    for _, _, name, i in entries[:k]:
        out[name][i] = True
    return {n: out[n].reshape(s.shape) for n, s in scores.items()}


@pytest.mark.parametrize("seed", range(5))
def test_global_top_k_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    # integer-valued scores force many ties across layers
    scores = {
        "b": torch.randint(-3, 4, (3, 5), generator=g).float(),
        "a": torch.randint(-3, 4, (2, 4), generator=g).float(),
    }
    exclude = {n: torch.rand(s.shape, generator=g) < 0.2 for n, s in scores.items()}
    for k in (0, 1, 4, 9, 40):
        got = global_top_k(scores, k, exclude)
        want = _brute_top_k(scores, k, exclude)
        for n in scores:
            assert torch.equal(got[n], want[n]), (seed, k, n)


def test_global_top_k_ties_go_to_the_earlier_layer_then_lower_index():
    scores = {"first": torch.tensor([[0.0, 2.0]]), "second": torch.tensor([[2.0, 2.0]])}
    got = global_top_k(scores, 2)
    assert got["first"].tolist() == [[False, True]]
    assert got["second"].tolist() == [[True, False]]


def test_global_top_k_never_takes_non_positive_or_excluded_entries():
    scores = {"l": torch.tensor([[5.0, 0.0, -1.0, 4.0]])}
    got = global_top_k(scores, 4, {"l": torch.tensor([[True, False, False, False]])})
    assert got["l"].tolist() == [[False, False, False, True]]


def test_round_sizes_split_evenly_and_sum():
    for total, rounds in itertools.product((0, 1, 7, 100, 1689), (1, 2, 3, 4, 8)):
        sizes = round_sizes(total, rounds)
        assert len(sizes) == rounds and sum(sizes) == total
        assert max(sizes) - min(sizes) <= 1
    assert round_sizes(10, 4) == [2, 3, 2, 3]
    with pytest.raises(ValueError):
        round_sizes(5, 0)
