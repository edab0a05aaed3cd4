"""benchmarks/rewrite_levers.py: its residual against brute force, its setting syntax, and that it leaves fia.rewrite as it found it."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import rewrite_levers  # noqa: E402  (a script beside its siblings, not a package)

import fia.rewrite  # noqa: E402


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_residual_from_moments_equals_the_mean_over_pairs(eta):
    """E|W' x_c - W z|^2, z = (1 + eta) x_t - eta x_c, from G_c, C = E[x_t x_c^T] and G_t, as summed pair by pair."""
    g = torch.Generator().manual_seed(3)
    n, d_in, d_out = 400, 7, 5
    xc = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    xt = 0.4 * xc + torch.randn(n, d_in, generator=g, dtype=torch.float64)
    w, w_new = (torch.randn(d_out, d_in, generator=g, dtype=torch.float64) for _ in range(2))
    z = (1 + eta) * xt - eta * xc
    brute = ((xc @ w_new.T - z @ w.T) ** 2).sum(dim=1).mean()
    moments = (xc.T @ xc / n, xt.T @ xc / n, xt.T @ xt / n)
    assert rewrite_levers.residual(w, w_new, *moments, eta) == pytest.approx(float(brute), rel=1e-10)
    # the unedited layer's residual: what the concept adds, (1 + eta) W (x_c - x_t)
    unedited = ((1 + eta) ** 2 * ((xc - xt) @ w.T) ** 2).sum(dim=1).mean()
    assert rewrite_levers.residual(w, w, *moments, eta) == pytest.approx(float(unedited), rel=1e-10)


def test_settings_name_their_targets_and_rounds():
    assert rewrite_levers.parse("0.05,0.03,5,4,24,1,1") == ("0.05,0.03,5,4,24,1,1", "ffn2", 0)
    assert rewrite_levers.parse("0.05,0.03,5,4,24,1,1@ffn2+attn_out#3") == ("0.05,0.03,5,4,24,1,1", "ffn2+attn_out", 3)
    with pytest.raises(SystemExit, match="unknown targets 'attn' .*ffn2, attn_out, ffn2\\+attn_out"):
        rewrite_levers.parse("0.05,0.03,5,4,24@attn")


def test_the_target_filters_pick_the_named_linears():
    names = ["down.0.attn2.to_out.0", "down.0.ff.net.2", "down.0.attn1.to_out.0", "down.0.ff.net.0.proj"]
    picked = {k: [n for n in names if f(None, n)] for k, f in rewrite_levers.TARGETS.items() if f is not None}
    assert picked == {"attn_out": ["down.0.attn2.to_out.0"], "ffn2+attn_out": ["down.0.attn2.to_out.0", "down.0.ff.net.2"]}


def test_concept_reweighting_puts_the_library_back_even_on_error():
    plain = (fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite)
    with pytest.raises(RuntimeError, match="inside"):
        with rewrite_levers.concept_reweighting(["star"], 2, []):
            assert (fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite) != plain
            raise RuntimeError("inside")
    assert (fia.rewrite.paired_moments, fia.rewrite.balanced_rewrite) == plain
