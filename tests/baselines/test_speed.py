"""SPEED: the null-space projector, the constrained closed form, and the edit on tiny pipelines."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fia.baselines import speed
from fia.baselines.speed import SPEEDConfig
from fia.errors import FIAError
from fia.methods import methods, unlearn
from tests.helpers import unet_weights

torch.set_num_threads(1)

KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
VALUE = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"


def _random(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _null_basis(rows: torch.Tensor, d: int) -> torch.Tensor:
    """Brute force: an orthonormal basis (d, k) of {v : rows @ v = 0}, from a full SVD."""
    if rows.shape[0] == 0:
        return torch.eye(d, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(rows, full_matrices=True)
    rank = int((s > 1e-10 * s.max()).sum())
    return vh[rank:].T


# ------------------------------------------------------------------ pure math
def test_projector_is_the_orthogonal_projector_onto_the_retain_null_space():
    retain = _random(5, 12, seed=0)  # rank 5 in 12 dimensions
    p = speed.null_space_projector(retain, tol=1e-10)
    torch.testing.assert_close(p, p.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-12)
    assert round(float(torch.trace(p))) == 12 - 5
    assert (retain @ p).abs().max() < 1e-10  # every retained direction is annihilated
    basis = _null_basis(retain, 12)
    torch.testing.assert_close(p, basis @ basis.T, rtol=0, atol=1e-10)
    # no retain rows: nothing to keep, the identity
    torch.testing.assert_close(speed.null_space_projector(retain[:0], 1e-5), torch.eye(12, dtype=torch.float64))


def test_projector_tolerance_keeps_the_weak_directions_within_its_bound():
    strong = _random(4, 10, seed=1)
    weak = 1e-4 * _random(2, 10, seed=2)
    retain = torch.cat([strong, weak])
    tol = 1e-6
    p = speed.null_space_projector(retain, tol)
    # the weak rows' eigenvalues fall under tol * largest: their directions stay in the null space
    assert round(float(torch.trace(p))) == 10 - 4
    gram_max = float(torch.linalg.eigvalsh(retain.T @ retain).max())
    bound = math.sqrt(6 * tol * gram_max)  # ||P c||^2 <= dim(null) * tol * max eigenvalue
    assert float((retain @ p).norm(dim=1).max()) <= bound


def _brute_force_update(w, c1, target, p, c2, lamb):
    """The constrained least squares solved directly: X = Y N^T with N a basis of the feasible directions."""
    d = w.shape[1]
    feasible = _null_basis(torch.cat([torch.eye(d, dtype=torch.float64) - p, c2]), d)  # X (I-P) = 0 and X C2^T = 0
    a = torch.cat([c1 @ feasible, math.sqrt(lamb) * torch.eye(feasible.shape[1], dtype=torch.float64)])
    b = torch.cat([target - c1 @ w.T, torch.zeros(feasible.shape[1], w.shape[0], dtype=torch.float64)])
    y = torch.linalg.lstsq(a, b).solution.T
    return y @ feasible.T


@pytest.mark.parametrize("n_invariant", [0, 1, 3])
def test_constrained_update_matches_brute_force_least_squares(n_invariant):
    d, d_out = 14, 6
    w = _random(d_out, d, seed=3)
    c1 = _random(3, d, seed=4)
    target = _random(3, d_out, seed=5)
    p = speed.null_space_projector(_random(4, d, seed=6), tol=1e-12)
    c2 = _random(n_invariant, d, seed=7)
    x = speed.constrained_update(w, c1, target, p, c2, lamb=0.7, tol=1e-12)
    torch.testing.assert_close(x, _brute_force_update(w, c1, target, p, c2, 0.7), rtol=1e-8, atol=1e-9)
    # the constraints hold exactly: retained and invariant rows see no change
    assert (x @ (torch.eye(d, dtype=torch.float64) - p)).abs().max() < 1e-10
    if n_invariant:
        assert (c2 @ x.T).abs().max() < 1e-10


def test_constrained_update_without_constraints_is_ridge_regression():
    d, d_out = 8, 5
    w, c1, target = _random(d_out, d, seed=8), _random(3, d, seed=9), _random(3, d_out, seed=10)
    eye = torch.eye(d, dtype=torch.float64)
    x = speed.constrained_update(w, c1, target, eye, c1[:0], lamb=0.5)
    a = torch.cat([c1, math.sqrt(0.5) * eye])
    b = torch.cat([target - c1 @ w.T, torch.zeros(d, d_out, dtype=torch.float64)])
    torch.testing.assert_close(x, torch.linalg.lstsq(a, b).solution.T, rtol=1e-9, atol=1e-10)
    # and IPF's probe is that same update
    torch.testing.assert_close(speed.erase_only_update(w, c1, target, 0.5), x, rtol=1e-9, atol=1e-10)


def test_influence_filter_keeps_the_rows_the_erasure_moves_most():
    update = torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    rows = torch.eye(3, dtype=torch.float64)  # shifts 9, 1, 0: mean 10/3
    torch.testing.assert_close(speed.influential_rows(update, rows), rows[:1])


def test_directed_augmentations_move_rows_only_along_the_weakest_directions():
    w = torch.diag(torch.tensor([5.0, 4.0, 3.0, 0.01, 0.001], dtype=torch.float64))
    rows = _random(2, 5, seed=11)
    copies = speed.directed_augmentations(
        w, rows, count=4, rank=2, scale=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert copies.shape == (8, 5)
    moved = copies - rows.repeat_interleave(4, dim=0)
    assert moved[:, :3].abs().max() == 0 and moved[:, 3:].abs().min() > 0
    assert speed.directed_augmentations(w, rows, 0, 2, 1.0, torch.Generator()).shape == (0, 5)


# ------------------------------------------------------------- on a pipeline
def _outputs(pipe, name, rows):
    return rows.float() @ pipe.unet.get_submodule(name).weight.detach().T


def _check_edit(pipe, names, cfg, erased, preserve):
    """Apply SPEED and check: retained and invariant rows keep their outputs, the erased rows move toward the anchor."""
    c1, anchor, c0, c2 = speed.edit_inputs(pipe, erased, cfg, preserve)
    before = {
        n: (_outputs(pipe, n, c0), _outputs(pipe, n, c2), _outputs(pipe, n, c1), _outputs(pipe, n, anchor))
        for n in names
    }
    unlearn(pipe, erased, "speed", cfg, preserve=preserve).apply_(pipe)
    for name in names:
        retained, invariant, old_erased, anchor_out = before[name]
        new_erased = _outputs(pipe, name, c1)
        change = float((new_erased - old_erased).norm())
        assert change > 0.05 * float(old_erased.norm()), "the erased rows' outputs move"
        # exact in float64 (the constraints hold to 1e-10 above); what remains is the weights' rounding
        # to float32 (2^-24 relative per entry) times the row norms: far below 1e-4 of the edit's size
        for old, rows in ((retained, c0), (invariant, c2)):
            if rows.shape[0]:
                assert float((_outputs(pipe, name, rows) - old).abs().max()) < 1e-4 * change
        assert (new_erased - anchor_out).norm() < 0.9 * (old_erased - anchor_out).norm(), "toward the anchor"


def test_tiny_pipeline_keeps_the_retained_rows_and_moves_the_concept_to_its_anchor(pipe):
    # IPF off: every retained row is constrained; invariants off: the tiny encoder's 32-d empty
    # prompt spans its whole embedding space (see the next test)
    cfg = SPEEDConfig(projections=("to_k", "to_v"), influence_filter=False, augment_count=0, invariants=False)
    _check_edit(pipe, (KEY, VALUE), cfg, ["star"], ["square"])
    assert speed.edit_inputs(pipe, ["star"], cfg, ["square"])[2].shape[0] == len("square") + 1  # word tokens + end


def test_no_room_to_edit_is_a_clear_error(pipe):
    with pytest.raises(FIAError, match="leave no direction to edit in any layer.*invariants=false"):
        unlearn(pipe, ["star"], "speed", preserve=["square"])


def test_shapeworld_keeps_retained_kinds_and_the_empty_prompt_exactly():
    from fia.shapeworld import load_pipeline

    pipe = load_pipeline()
    cfg = SPEEDConfig(projections=("to_k", "to_v"), influence_filter=False)
    layer = "mid_block.attentions.0.transformer_blocks.0.attn2"
    _check_edit(pipe, (f"{layer}.to_k", f"{layer}.to_v"), cfg, ["star"], ["circle", "square", "heart", "arrow"])


def test_default_edit_changes_exactly_the_value_projections(pipe):
    before = unet_weights(pipe)
    delta = unlearn(pipe, ["star", "circle"], "speed", SPEEDConfig(invariants=False), preserve=["square"])
    assert {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])} == set()
    delta.apply_(pipe)
    expected = {f"{n}.to_v.weight" for n, _ in pipe.unet.named_modules() if n.endswith("attn2")}
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert len(expected) == 4 and changed == expected == set(delta.parameter_names)
    assert delta.stats["preserve"] == ["square"] and set(delta.stats["retain_rows"]) == {n[:-7] for n in expected}


def test_preserve_only_leaves_weights_unchanged(pipe):
    before = unet_weights(pipe)
    speed.unlearn(pipe, [], preserve=["square", "heart"]).apply_(pipe)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_deterministic_bytes(base_pipe, tmp_path):
    cfg = SPEEDConfig(projections=("to_k", "to_v"), invariants=False)  # DPA's noise included
    a = unlearn(copy.deepcopy(base_pipe), ["star"], "speed", cfg, preserve=["square", "heart"])
    b = unlearn(copy.deepcopy(base_pipe), ["star"], "speed", cfg, preserve=["square", "heart"])
    assert a.save(tmp_path / "a.safetensors").read_bytes() == b.save(tmp_path / "b.safetensors").read_bytes()


def test_registered_with_its_default_config():
    method = methods()["speed"]
    assert method.config_type is SPEEDConfig and "null space" in method.description
    cfg = method.default_config().validate()
    assert (cfg.anchor, cfg.lamb, cfg.augment_count, cfg.projections) == ("", 1.0, 10, ("to_v",))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lamb": 0}, "lamb must be > 0"),
        ({"lamb": -1}, "lamb must be a finite number >= 0"),
        ({"null_space_tol": 1.0}, "null_space_tol must be < 1"),
        ({"augment_count": -1}, "augment_count must be an integer >= 0"),
        ({"augment_rank": 0}, "augment_rank must be a positive integer"),
        ({"influence_filter": "yes"}, "influence_filter must be true or false"),
        ({"tokens": "words"}, "unknown tokens 'words'"),
        ({"projections": ("to_q",)}, "projections must be a non-empty subset"),
    ],
)
def test_bad_settings_are_refused_in_one_line(changes, message):
    with pytest.raises(FIAError, match=message) as err:
        SPEEDConfig().replace(**changes)
    assert "\n" not in str(err.value)


def test_rejects_overlap_and_nothing(pipe):
    with pytest.raises(FIAError, match="both erased and preserved"):
        unlearn(pipe, ["star"], "speed", preserve=["star"])
    with pytest.raises(FIAError, match="no concepts given"):
        speed.unlearn(pipe, [])
