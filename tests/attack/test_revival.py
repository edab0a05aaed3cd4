"""The revival probe: the data-free refill of a pruned model's zeros, by hand, on repaired masks, and end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from fia.attack import AttackConfig, run_attack
from fia.attack.revival import choose_rank, refill, refill_rowcol, refilled, zeroed_layers
from fia.attack.runner import RESULT_FILE
from fia.cli import app
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.methods import unlearn
from fia.targets import find_targets
from tests.helpers import load_tiny, small_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

runner = CliRunner()


class Always:
    """A stand-in judge that says yes to every image."""

    name = "always"

    def check(self, concept: str) -> None:
        return None

    def __call__(self, images, concept):
        return [True] * len(images)


# ------------------------------------------------------------------ the refill
def test_rowcol_refill_is_the_row_and_column_means_computed_by_hand():
    w = torch.tensor([[1.0, 0.0, 3.0, 4.0], [0.0, 2.0, 0.0, 6.0], [5.0, 1.0, 1.0, 0.0]])
    zeros = w == 0
    # observed entries: rows (1, 3, 4), (2, 6), (5, 1, 1); columns (1, 5), (2, 1), (3, 1), (4, 6); all 23 / 8
    r = [8 / 3, 4.0, 7 / 3]
    c = [3.0, 1.5, 2.0, 5.0]
    g = 23 / 8
    expected = w.clone()
    for i, j in ((0, 1), (1, 0), (1, 2), (2, 3)):
        expected[i, j] = r[i] + c[j] - g
    got = refill_rowcol(w, zeros)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got[0, 1], torch.tensor(8 / 3 + 1.5 - 23 / 8))  # 1.2917
    assert torch.equal(got[~zeros], w[~zeros])  # observed entries are untouched, bit for bit


def test_a_fully_pruned_row_or_column_takes_the_overall_mean():
    w = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 4.0], [6.0, 0.0, 8.0]])
    got = refill_rowcol(w, w == 0)
    g = 5.0  # (2 + 4 + 6 + 8) / 4
    assert float(got[0, 0]) == pytest.approx(g + 4.0 - g)  # row 0 empty: r = g; column 0 mean 4
    assert float(got[1, 1]) == pytest.approx(3.0 + g - g)  # column 1 empty: c = g; row 1 mean 3
    assert float(got[0, 1]) == pytest.approx(g)


@pytest.mark.parametrize("variant", ["rowcol", "lowrank"])
def test_a_refill_changes_only_the_zeros(variant):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=g)
    zeros = torch.rand(w.shape, generator=g) < 0.05
    w[zeros] = 0
    out, info = refill(w, zeros, variant)
    assert torch.equal(out[~zeros], w[~zeros])
    assert bool((out[zeros] != 0).all()) and info["refilled"] == int(zeros.sum())


def test_lowrank_completes_a_low_rank_matrix_and_chooses_its_rank():
    g = torch.Generator().manual_seed(1)
    full = torch.randn(48, 2, generator=g) @ torch.randn(2, 96, generator=g)
    zeros = torch.rand(full.shape, generator=g) < 0.03
    cut = full.masked_fill(zeros, 0)
    rank, errors = choose_rank(cut, zeros)
    assert rank in (2, 4) and errors[rank] < 1e-3 < errors[1]  # the hidden entries are predicted almost exactly
    out, info = refill(cut, zeros, "lowrank")
    err_low = float((out - full)[zeros].pow(2).mean() / full[zeros].pow(2).mean())
    err_rowcol = float((refill_rowcol(cut, zeros) - full)[zeros].pow(2).mean() / full[zeros].pow(2).mean())
    assert err_low < 1e-3 < err_rowcol and info["rank"] == rank


def test_unknown_refill_is_refused():
    with pytest.raises(ValueError, match="unknown refill"):
        refill(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool), "mean")
    with pytest.raises(FIAError, match="refill"):
        AttackConfig(refill="mean").validate()


# --------------------------------------------------- on a (repaired) mask
def _repaired_mask(pipe, share: float = 0.03) -> ConceptMask:
    """A format-v2 mask: random pruned entries in two FFN2 layers, their rows rewritten (pruned entries 0)."""
    found = find_targets(pipe.unet, "ffn2")[:2]
    weights = {t.name: t.module.weight.detach().clone() for t in found}
    g = torch.Generator().manual_seed(3)
    prune = {n: torch.rand(w.shape, generator=g) < share for n, w in weights.items()}
    mask = ConceptMask.from_prune_masks(weights, prune, concepts=["star"], config={"task": "shapeworld"}, target_kind="ffn2")
    repairs = {}
    for n, w in weights.items():
        rows = torch.nonzero(prune[n].any(1)).reshape(-1)
        values = (w[rows] * 0.5 + 0.01).masked_fill(prune[n][rows], 0)
        repairs[n] = SimpleNamespace(rows=rows, values=values)
    return mask.with_repair(weights, repairs)


def _poisoned(mask: ConceptMask) -> ConceptMask:
    """The same mask with every stored original value replaced by NaN: a refill that read them would show NaN."""
    import dataclasses

    layers = [dataclasses.replace(lm, values=torch.full_like(lm.values, float("nan")),
                                  row_originals=torch.full_like(lm.row_originals, float("nan")))
              for lm in mask.layers]  # fmt: skip
    return dataclasses.replace(mask, layers=layers)


def test_the_refill_of_a_repaired_model_touches_exactly_the_pruned_entries_and_reads_no_original(tiny_dir):
    mask = _repaired_mask(load_tiny(tiny_dir))
    assert mask.repaired
    seen = {}
    for name, m in (("clean", mask), ("poisoned", _poisoned(mask))):
        pipe = load_tiny(tiny_dir)
        m.apply_(pipe)
        edited = {n: w.detach().clone() for n, w in pipe.unet.state_dict().items()}
        with refilled(pipe.unet, "lowrank") as found:
            inside = {n: w.detach().clone() for n, w in pipe.unet.state_dict().items()}
        after = pipe.unet.state_dict()
        assert all(torch.equal(after[n], edited[n]) for n in edited)  # the zeros are back, bit for bit
        assert found["layers"] == 2 and found["refilled"] == mask.pruned
        for lm in mask.layers:
            key = f"{lm.name}.weight"
            changed = inside[key] != edited[key]
            assert torch.equal(changed, mask.to_dense(lm.name))  # pruned positions only, repaired values kept
            assert torch.isfinite(inside[key]).all()
        seen[name] = inside
    # the stored originals (NaN in the poisoned mask) never reach the refill
    assert all(torch.equal(seen["clean"][n], seen["poisoned"][n]) for n in seen["clean"])


def test_an_unpruned_model_has_nothing_to_refill(tiny_dir):
    pipe = load_tiny(tiny_dir)
    assert list(zeroed_layers(pipe.unet)) == []
    with refilled(pipe.unet) as found:
        assert found["layers"] == found["refilled"] == 0


# ---------------------------------------------------------------- the probe
def test_revival_probe_counts_only_the_refilled_images(tiny_dir):
    pipe = load_tiny(tiny_dir)
    mask = _repaired_mask(pipe)
    config = AttackConfig.quick(images=2)
    result = run_attack(pipe, mask, ["star"], ["revival"], config, judge=Always(), ceiling=True)
    edited, unedited = result.get("revival", "star"), result.get("revival", "star", "unedited")
    assert edited.attempts == 2 and edited.successes == 2 and len(edited.prompts) == 2
    assert [s.get("counted", True) for s in edited.settings] == [False, True]
    assert edited.details["refilled"] == mask.pruned and unedited.details["refilled"] == 0


def test_fia_attack_probe_revival_runs_end_to_end_on_a_tiny_model(tiny_dir, tmp_path):
    edit = unlearn(load_tiny(tiny_dir), ["star"], "fia", small_config())
    path = edit.save(tmp_path / "edit.safetensors")
    out = tmp_path / "audit"
    res = runner.invoke(app, ["attack", "--edit", str(path), "--model", str(tiny_dir), "--concepts", "star",
                              "--probe", "revival", "--refill", "rowcol", "--quick", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULT_FILE).read_text())
    (r,) = data["results"]
    assert r["probe"] == "revival" and r["attempts"] == 1 and data["run"]["config"]["refill"] == "rowcol"
    assert r["details"]["refilled"] == edit.pruned and r["details"]["refill"] == "rowcol"
    assert r["second"]["judge"] == "shapeworld-judge2"  # a ShapeWorld task: both of the world's judges read it
    assert "| revival | star |" in res.stdout and "not counted" in (out / "report.md").read_text()
