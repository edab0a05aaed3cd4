"""The closed-form rewrite (fia.core.rewrite) against brute force and its limit cases."""

from __future__ import annotations

import pytest
import torch

from fia.core.repair import RepairError
from fia.core.rewrite import balanced_rewrite, kept_feature_projector, mix_grams, relative_change, rewrite_layer


def _moments(xk, xc, xt):
    return xk.T @ xk / len(xk), xc.T @ xc / len(xc), xt.T @ xc / len(xc)


def _brute(w, xk, xc, xt, lam, damping, eta=0.0, xr=None, proj=None):
    """Row by row: ordinary least squares on the stacked system whose squared residual is J(w');
    the concept rows' target is ``w x_t - eta P (w x_c - w x_r)``, the reference ``x_r`` the scene's ``x_t``
    and the output projector ``P`` the identity unless given."""
    xr = xt if xr is None else xr
    proj = torch.eye(w.shape[0], dtype=w.dtype) if proj is None else proj
    gk, gc, _ = _moments(xk, xc, xt)
    ridge = damping * float((gk + lam * gc).diagonal().mean())
    n_in = w.shape[1]
    a = torch.cat([xk / len(xk) ** 0.5, (lam / len(xc)) ** 0.5 * xc, ridge**0.5 * torch.eye(n_in, dtype=w.dtype)])
    targets = xt @ w.T - eta * (xc - xr) @ w.T @ proj.T  # (concept rows, outputs): every output's target at once
    rows = []
    for i, r in enumerate(w):
        b = torch.cat([xk @ r / len(xk) ** 0.5, (lam / len(xc)) ** 0.5 * targets[:, i], ridge**0.5 * r])
        rows.append(torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1))
    return torch.stack(rows)


@pytest.mark.parametrize(("lam", "eta"), [(0.1, 0.0), (1.0, 0.0), (5.0, 0.0), (0.7, 0.5), (0.7, 2.0)])
def test_rewrite_matches_brute_force_least_squares(lam, eta):
    """With and without negative guidance (eta: the concept rows' target is w x_t - eta (w x_c - w x_t))."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xk, xc = torch.randn(40, 7, generator=g, dtype=torch.float64), torch.randn(30, 7, generator=g, dtype=torch.float64)
    xt = xc + 0.5 * torch.randn(30, 7, generator=g, dtype=torch.float64)
    gk, gc, cross = _moments(xk, xc, xt)
    got = rewrite_layer(w, gk, gc, cross, concept_weight=lam, damping=0.01, negative_guidance=eta)
    assert torch.allclose(got.double(), _brute(w, xk, xc, xt, lam, 0.01, eta), atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.5])
def test_a_push_reference_other_than_the_scene_matches_brute_force(eta):
    """reference R = mean x_r x_c^T: the concept rows' target is w x_t - eta (w x_c - w x_r), against brute force;
    R = C (the reference is the scene) gives the plain rewrite's weights."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xk, xc = torch.randn(40, 7, generator=g, dtype=torch.float64), torch.randn(30, 7, generator=g, dtype=torch.float64)
    xt = xc + 0.5 * torch.randn(30, 7, generator=g, dtype=torch.float64)
    xr = xc + 0.8 * torch.randn(30, 7, generator=g, dtype=torch.float64)  # another kept kind's input at the same latents
    lam, damping = 0.7, 0.01
    gk, gc, cross = _moments(xk, xc, xt)
    got = rewrite_layer(w, gk, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta, reference=xr.T @ xc / 30)
    assert torch.allclose(got.double(), _brute(w, xk, xc, xt, lam, damping, eta, xr=xr), atol=1e-5)
    plain = rewrite_layer(w, gk, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta)
    scene = rewrite_layer(w, gk, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta, reference=cross)
    assert torch.allclose(scene, plain, atol=1e-6)
    with pytest.raises(ValueError, match="R has shape"):
        rewrite_layer(w, gk, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta, reference=cross[:3])


@pytest.mark.parametrize(("eta", "anchored"), [(1.0, False), (2.0, True)])
def test_a_push_projected_off_some_outputs_matches_brute_force(eta, anchored):
    """push_projector P: the concept rows' target is w x_t - eta P (w x_c - w x_r), against brute force; P = I is
    the plain push (and the pull alone is untouched: eta 0 gives the plain rewrite whatever P)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xk, xc = torch.randn(40, 7, generator=g, dtype=torch.float64), torch.randn(30, 7, generator=g, dtype=torch.float64)
    xt = xc + 0.5 * torch.randn(30, 7, generator=g, dtype=torch.float64)
    xr = xc + 0.8 * torch.randn(30, 7, generator=g, dtype=torch.float64) if anchored else None
    u = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64)).Q
    proj = torch.eye(5, dtype=torch.float64) - u @ u.T
    lam, damping = 0.7, 0.01
    gk, gc, cross = _moments(xk, xc, xt)
    reference = None if xr is None else xr.T @ xc / 30
    kw = dict(concept_weight=lam, damping=damping, reference=reference)
    got = rewrite_layer(w, gk, gc, cross, negative_guidance=eta, push_projector=proj, **kw)
    assert torch.allclose(got.double(), _brute(w, xk, xc, xt, lam, damping, eta, xr=xr, proj=proj), atol=1e-5)
    whole = rewrite_layer(w, gk, gc, cross, negative_guidance=eta, **kw)
    assert torch.allclose(rewrite_layer(w, gk, gc, cross, negative_guidance=eta, push_projector=torch.eye(5, dtype=torch.float64), **kw),
                          whole, atol=1e-6)
    assert not torch.allclose(got, whole, atol=1e-3)
    assert torch.allclose(rewrite_layer(w, gk, gc, cross, negative_guidance=0.0, push_projector=proj, **kw),
                          rewrite_layer(w, gk, gc, cross, negative_guidance=0.0, **kw), atol=1e-6)
    with pytest.raises(ValueError, match="P has shape"):
        rewrite_layer(w, gk, gc, cross, negative_guidance=eta, push_projector=proj[:4, :4], **kw)


def test_the_kept_feature_projector_removes_the_directions_kept_kinds_add_most():
    """Hand-made case: W the identity on 4 outputs, the kinds' inputs raise outputs 2 and 0 by 5 and 3 over the
    baseline, lower output 3: rank 2 keeps outputs 1 and 3 only; rank 0 is the identity."""
    w = torch.eye(4, dtype=torch.float64)
    base = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64))
    kinds = base + torch.diag(torch.tensor([3.0, 0.5, 5.0, -1.0], dtype=torch.float64))
    p = kept_feature_projector(w, kinds, base, 2)
    assert torch.allclose(p, torch.diag(torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)), atol=1e-12)
    assert torch.equal(kept_feature_projector(w, kinds, base, 0), torch.eye(4, dtype=torch.float64))
    # a general layer: a symmetric projector of rank out - r that kills W's top excess directions
    g = torch.Generator().manual_seed(8)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xf, x0 = torch.randn(50, 7, generator=g, dtype=torch.float64) * 2, torch.randn(50, 7, generator=g, dtype=torch.float64)
    p = kept_feature_projector(w, xf.T @ xf / 50, x0.T @ x0 / 50, 3)
    assert torch.allclose(p @ p, p, atol=1e-10) and torch.allclose(p, p.T, atol=1e-12)
    assert float(p.trace()) == pytest.approx(2.0)
    excess = w @ (xf.T @ xf / 50 - x0.T @ x0 / 50) @ w.T
    top = torch.linalg.eigh(excess).eigenvectors[:, -1]
    assert float((p @ top).norm()) < 1e-8
    with pytest.raises(ValueError, match="rank"):
        kept_feature_projector(w, xf.T @ xf, x0.T @ x0, 6)
    with pytest.raises(ValueError, match="G_0 has shape"):
        kept_feature_projector(w, xf.T @ xf, torch.eye(3), 1)


def test_a_kept_cross_term_holds_the_kept_outputs_of_other_inputs():
    """keep_cross: the kept term |w' x'_k - w x_k|^2 (the layer sees x'_k, must answer w x_k), against brute force."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xk, xc = torch.randn(40, 7, generator=g, dtype=torch.float64), torch.randn(30, 7, generator=g, dtype=torch.float64)
    xk_seen = xk + 0.3 * torch.randn(40, 7, generator=g, dtype=torch.float64)
    xt = xc + 0.5 * torch.randn(30, 7, generator=g, dtype=torch.float64)
    lam, damping, eta = 0.7, 0.01, 1.0
    _, gc, cross = _moments(xk, xc, xt)
    gk_seen, keep_cross = xk_seen.T @ xk_seen / 40, xk.T @ xk_seen / 40
    got = rewrite_layer(w, gk_seen, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta, keep_cross=keep_cross)
    ridge = damping * float((gk_seen + lam * gc).diagonal().mean())
    a = torch.cat([xk_seen / 40**0.5, (lam / 30) ** 0.5 * xc, ridge**0.5 * torch.eye(7, dtype=w.dtype)])
    want = torch.stack([
        torch.linalg.lstsq(a, torch.cat([xk @ r / 40**0.5, (lam / 30) ** 0.5 * (xt @ r - eta * (xc @ r - xt @ r)),
                                         ridge**0.5 * r]).unsqueeze(1)).solution.squeeze(1)
        for r in w
    ])
    assert torch.allclose(got.double(), want, atol=1e-5)
    plain = rewrite_layer(w, gk_seen, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta)
    assert torch.equal(rewrite_layer(w, gk_seen, gc, cross, concept_weight=lam, damping=damping, negative_guidance=eta,
                                     keep_cross=gk_seen), plain)  # X = G_k is the plain rewrite


def test_negative_guidance_sends_the_concept_past_the_scene():
    """One concept direction, free of kept inputs: its output goes exactly to w x_t - eta (w x_c - w x_t)."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    xk = torch.cat([torch.randn(50, 3, generator=g, dtype=torch.float64), torch.zeros(50, 1, dtype=torch.float64)], 1)
    xc = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64).repeat(10, 1)
    xt = 0.5 * xc  # the scene's input: half the concept's
    gk, gc, cross = _moments(xk, xc, xt)
    new = rewrite_layer(w, gk, gc, cross, concept_weight=100.0, damping=1e-8, negative_guidance=1.0).double()
    # target: w x_t - (w x_c - w x_t) = 0.5 w x_c - 0.5 w x_c = 0
    assert (xc @ new.T).abs().max() < 1e-3
    assert torch.allclose(xk @ new.T, xk @ w.T, atol=1e-4)


def test_rewrite_leaves_the_layer_alone_without_a_concept_term_or_when_scene_equals_concept():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    xk, xc = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randn(20, 6, generator=g, dtype=torch.float64)
    gk, gc, _ = _moments(xk, xc, xc)
    assert torch.allclose(rewrite_layer(w, gk, gc, gc, concept_weight=0.0, damping=0.01).double(), w, atol=1e-5)
    # the scene's input equals the concept's: nothing to rewrite, whatever lambda, and no direction to push past it
    for eta in (0.0, 2.0):
        same = rewrite_layer(w, gk, gc, gc, concept_weight=10.0, damping=0.01, negative_guidance=eta)
        assert torch.allclose(same.double(), w, atol=1e-5)


def test_rewrite_moves_concept_outputs_to_the_scene_and_keeps_kept_outputs():
    """Kept inputs span 3 directions, the concept a 4th: the rewrite can send the concept's output to the scene's exactly."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    xk = torch.cat([torch.randn(50, 3, generator=g, dtype=torch.float64), torch.zeros(50, 1, dtype=torch.float64)], 1)
    xc = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64).repeat(10, 1)
    xt = torch.zeros_like(xc)  # the scene's input: nothing there
    gk, gc, cross = _moments(xk, xc, xt)
    new = rewrite_layer(w, gk, gc, cross, concept_weight=100.0, damping=1e-8).double()
    assert torch.allclose(xk @ new.T, xk @ w.T, atol=1e-4)  # kept outputs as they were
    assert (xc @ new.T).abs().max() < 1e-3  # the concept's output is the scene's (zero)
    assert (xc @ w.T).abs().max() > 0.1


def test_bad_rewrite_inputs():
    w, gram = torch.randn(2, 3), torch.eye(3)
    with pytest.raises(RepairError, match="damping"):
        rewrite_layer(w, gram, gram, gram, concept_weight=1.0, damping=0.0)
    with pytest.raises(RepairError, match="negative guidance"):
        rewrite_layer(w, gram, gram, gram, concept_weight=1.0, damping=0.01, negative_guidance=-1.0)
    with pytest.raises(RepairError, match="zero"):
        rewrite_layer(w, torch.zeros(3, 3), gram, gram, concept_weight=1.0, damping=0.01)
    with pytest.raises(ValueError, match="G_c has shape"):
        rewrite_layer(w, gram, torch.eye(2), gram, concept_weight=1.0, damping=0.01)
    with pytest.raises(RepairError, match="no kept prompts"):
        balanced_rewrite({"a": w}, {}, {}, {"a": gram}, {"a": gram}, concept_weight=1.0, damping=0.01, rounds=1)


def _two_groups(seed=3):
    """A kept group that shares the concept's direction and one that does not."""
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(4, 5, generator=g, dtype=torch.float64)}
    concept_dir = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    x_far = torch.randn(60, 5, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1, 1, 1, 1], dtype=torch.float64)
    x_near = 0.8 * concept_dir + 0.3 * torch.randn(10, 5, generator=g, dtype=torch.float64)
    xc = concept_dir + 0.1 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    xt = 0.1 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    grams = {"far": {"a": x_far.T @ x_far / 60}, "near": {"a": x_near.T @ x_near / 10}}
    return w, grams, {"far": 60, "near": 10}, {"a": xc.T @ xc / 20}, {"a": xt.T @ xc / 20}


def test_balancing_without_rounds_is_the_pooled_rewrite_and_rounds_spread_the_change():
    w, grams, sizes, gc, cross = _two_groups()
    plain = balanced_rewrite(w, grams, sizes, gc, cross, concept_weight=1.0, damping=0.01, rounds=0)
    pooled = (60 * grams["far"]["a"] + 10 * grams["near"]["a"]) / 70
    assert torch.allclose(mix_grams(grams, sizes, {"far": 1.0, "near": 1.0}, "a"), pooled)
    assert torch.equal(plain.weights["a"], rewrite_layer(w["a"], pooled, gc["a"], cross["a"], concept_weight=1.0, damping=0.01))
    # the group near the concept takes most of the change; balancing gives it more weight and less change
    assert plain.group_change["near"] > plain.group_change["far"]
    balanced = balanced_rewrite(w, grams, sizes, gc, cross, concept_weight=1.0, damping=0.01, rounds=5)
    assert balanced.group_weights["near"] > balanced.group_weights["far"]
    assert balanced.group_change["near"] < plain.group_change["near"]
    d, e = relative_change(w["a"], balanced.weights["a"], grams["near"]["a"])
    assert balanced.group_change["near"] == pytest.approx(d / e)
