"""The closed-form repair against a brute-force constrained least squares."""

import pytest
import torch

from fia.core.repair import RepairError, balanced_repair, repair_layer


def _brute_force_row(w, pruned_cols, xk, xc, lam, delta_abs):
    """min_d ||X_k d||^2/n_k + lam ||X_c (d + e)||^2/n_c + delta ||d||^2, d[P] = -w[P], by stacked lstsq on the free entries."""
    n_in = w.numel()
    free = [j for j in range(n_in) if j not in pruned_cols]
    e = torch.zeros(n_in, dtype=torch.float64)
    e[pruned_cols] = w[pruned_cols]
    d_fixed = torch.zeros(n_in, dtype=torch.float64)
    d_fixed[pruned_cols] = -w[pruned_cols]
    # residual blocks, each linear in d[free]: A d_free - b
    blocks_a, blocks_b = [], []
    sk = 1 / xk.shape[0] ** 0.5
    blocks_a.append(sk * xk[:, free]); blocks_b.append(-sk * xk @ d_fixed)
    if lam > 0:
        sc = (lam / xc.shape[0]) ** 0.5
        blocks_a.append(sc * xc[:, free]); blocks_b.append(-sc * xc @ (d_fixed + e))
    blocks_a.append(delta_abs ** 0.5 * torch.eye(n_in, dtype=torch.float64)[:, free])
    blocks_b.append(-(delta_abs ** 0.5) * d_fixed)
    a, b = torch.cat(blocks_a), torch.cat(blocks_b)
    d_free = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    out = w + d_fixed
    out[free] += d_free
    return out


@pytest.mark.parametrize("lam", [0.0, 0.5, 4.0])
def test_repair_equals_brute_force_constrained_least_squares(lam):
    g = torch.Generator().manual_seed(0)
    n_out, n_in = 6, 9
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    xk = torch.randn(40, n_in, generator=g, dtype=torch.float64)
    xc = torch.randn(15, n_in, generator=g, dtype=torch.float64) + 2.0
    prune = torch.zeros(n_out, n_in, dtype=torch.bool)
    prune[0, [1, 4]] = True
    prune[3, [0]] = True
    prune[5, [2, 3, 8]] = True
    gk, gc = xk.T @ xk / xk.shape[0], xc.T @ xc / xc.shape[0]
    damping = 0.01
    rep = repair_layer(w, prune, gk, gc, concept_weight=lam, damping=damping)
    assert rep.rows.tolist() == [0, 3, 5]  # only pruned rows change
    h_diag_mean = float((gk + lam * gc).diagonal().mean())
    for i, r in enumerate(rep.rows.tolist()):
        cols = torch.nonzero(prune[r]).reshape(-1).tolist()
        want = _brute_force_row(w[r], cols, xk, xc, lam, damping * h_diag_mean)
        torch.testing.assert_close(rep.values[i].double(), want, atol=1e-5, rtol=1e-5)
        assert (rep.values[i][cols] == 0).all()  # exact zeros


def test_kept_term_alone_reduces_kept_error_and_concept_term_holds_the_mask():
    g = torch.Generator().manual_seed(1)
    n_out, n_in = 8, 16
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    # inputs on a few directions (as activations are): the free weights can carry the pruned ones' share
    basis = torch.randn(6, n_in, generator=g, dtype=torch.float64)
    xk = torch.randn(200, 6, generator=g, dtype=torch.float64) @ basis
    xc = torch.randn(60, 6, generator=g, dtype=torch.float64) @ basis + torch.randn(60, n_in, generator=g, dtype=torch.float64)
    prune = torch.rand(n_out, n_in, generator=g) < 0.2
    masked = torch.where(prune, torch.zeros_like(w), w)
    gk, gc = xk.T @ xk / 200, xc.T @ xc / 60

    def kept_err(m):
        return float(((xk @ (m - w).T) ** 2).mean())

    def concept_dev(m):
        return float(((xc @ (m - masked).T) ** 2).mean())

    plain = repair_layer(w, prune, gk, None, damping=1e-4)
    repaired = masked.clone()
    repaired[plain.rows] = plain.values.double()
    assert kept_err(repaired) < 0.2 * kept_err(masked)
    held = repair_layer(w, prune, gk, gc, concept_weight=100.0, damping=1e-4)
    heavy = masked.clone()
    heavy[held.rows] = held.values.double()
    # a heavy concept term keeps the concept's output near the masked one, far nearer than the plain repair
    assert concept_dev(heavy) < 0.05 * concept_dev(repaired)


def test_no_pruned_entry_changes_nothing_and_zero_gram_is_refused():
    w = torch.randn(3, 4)
    rep = repair_layer(w, torch.zeros(3, 4, dtype=torch.bool), torch.eye(4))
    assert rep.rows.numel() == 0
    prune = torch.zeros(3, 4, dtype=torch.bool)
    prune[1, 2] = True
    with pytest.raises(RepairError, match="no kept inputs"):
        repair_layer(w, prune, torch.zeros(4, 4))


def _kept_groups(seed=5):
    """A layer whose pruned entries sit on the concept's input direction; a kept group near that
    direction (few prompts) and one far from it (many)."""
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(6, 5, generator=g, dtype=torch.float64)}
    prune = {"a": torch.zeros(6, 5, dtype=torch.bool)}
    prune["a"][:3, 0] = True  # the concept's input direction is column 0
    prune["a"][4, 1] = True
    concept_dir = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    x_far = torch.randn(60, 5, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1, 1, 1, 1], dtype=torch.float64)
    x_near = 0.8 * concept_dir + 0.3 * torch.randn(10, 5, generator=g, dtype=torch.float64)
    xc = concept_dir + 0.1 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    grams = {"far": {"a": x_far.T @ x_far / 60}, "near": {"a": x_near.T @ x_near / 10}}
    return w, prune, grams, {"far": 60, "near": 10}, {"a": xc.T @ xc / 20}


def _change(w, values, rows, gram):
    new = w.clone()
    new[rows] = values.double()
    d = new - w
    return float(((d @ gram) * d).sum() / ((w @ gram) * w).sum())


def test_balanced_repair_without_rounds_is_the_pooled_repair_and_rounds_spread_the_change():
    w, prune, grams, sizes, gc = _kept_groups()
    plain = balanced_repair(w, prune, grams, sizes, gc, concept_weight=1.0, damping=0.01, rounds=0)
    pooled = (60 * grams["far"]["a"] + 10 * grams["near"]["a"]) / 70
    direct = repair_layer(w["a"], prune["a"], pooled, gc["a"], concept_weight=1.0, damping=0.01)
    assert torch.equal(plain.result["a"].rows, direct.rows) and torch.equal(plain.result["a"].values, direct.values)
    # each group's change is its relative output change, computed here from the rows by hand
    for group in grams:
        assert plain.group_change[group] == pytest.approx(_change(w["a"], direct.values, direct.rows, grams[group]["a"]), rel=1e-6)
    assert plain.group_change["near"] > plain.group_change["far"]
    balanced = balanced_repair(w, prune, grams, sizes, gc, concept_weight=1.0, damping=0.01, rounds=5)
    assert balanced.group_weights["near"] > balanced.group_weights["far"]
    assert balanced.group_change["near"] < plain.group_change["near"]
    # the constraint holds in every solve: pruned entries exactly zero, only rows with a pruned entry change
    rows, values = balanced.result["a"].rows, balanced.result["a"].values
    assert rows.tolist() == [0, 1, 2, 4]
    assert bool((values[prune["a"][rows]] == 0).all())


def test_balanced_repair_refuses_no_kept_groups_and_skips_untouched_layers():
    w, prune, grams, sizes, gc = _kept_groups()
    with pytest.raises(RepairError, match="no kept prompts"):
        balanced_repair(w, prune, {}, {}, gc, concept_weight=1.0, damping=0.01, rounds=1)
    w2 = w | {"b": torch.ones(3, 5, dtype=torch.float64)}
    prune2 = prune | {"b": torch.zeros(3, 5, dtype=torch.bool)}
    grams2 = {g: layers | {"b": torch.eye(5, dtype=torch.float64)} for g, layers in grams.items()}
    out = balanced_repair(w2, prune2, grams2, sizes, gc | {"b": torch.eye(5, dtype=torch.float64)},
                          concept_weight=1.0, damping=0.01, rounds=2)  # fmt: skip
    assert set(out.result) == {"a"}
