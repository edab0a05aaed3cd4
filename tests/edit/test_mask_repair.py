"""A mask with the closed-form repair: one file, bit-exact restore from a loaded copy, refused by another model."""

from __future__ import annotations

import json

import pytest
import torch

from fia.core.repair import LayerRepair
from fia.edit import load_edit
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.targets import find_targets
from tests.helpers import load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread


def _weights(pipe):
    return {t.name: t.module.weight for t in find_targets(pipe.unet, "ffn2")}


def _repaired_mask(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = _weights(pipe)
    prune = {n: torch.rand(w.shape, generator=g) < 0.03 for n, w in weights.items()}
    mask = ConceptMask.from_prune_masks(
        weights, prune, concepts=["circle"], config={"task": "shapeworld", "variant": "causal"}, target_kind="ffn2",
    )
    repairs = {}
    for n, w in weights.items():
        rows = torch.nonzero(prune[n].any(1)).reshape(-1)
        values = w.detach()[rows].clone() + 0.5 * torch.randn(rows.numel(), w.shape[1], generator=g)
        values[prune[n][rows]] = 0
        repairs[n] = LayerRepair(rows, values)
    return mask.with_repair(weights, repairs), prune, repairs


@pytest.fixture()
def pipe(tiny_dir):
    return load_tiny(tiny_dir)


def test_apply_writes_rows_and_restore_from_a_loaded_copy_is_bit_exact(pipe, tmp_path):
    before = {n: w.detach().clone() for n, w in _weights(pipe).items()}
    mask, prune, repairs = _repaired_mask(pipe)
    assert mask.repaired and mask.repaired_rows == sum(r.rows.numel() for r in repairs.values())
    path = mask.save(tmp_path / "mask.safetensors")
    loaded = load_edit(path)
    assert isinstance(loaded, ConceptMask) and loaded == mask and loaded.repaired

    loaded.apply_(pipe)
    for n, w in _weights(pipe).items():
        want = before[n].clone()
        want[prune[n]] = 0
        want[repairs[n].rows] = repairs[n].values
        assert torch.equal(w.detach(), want)
        assert (w.detach()[prune[n]] == 0).all()
    loaded.apply_(pipe)  # an edited model is recognised: applying again changes nothing
    again = ConceptMask.load(path)  # a fresh copy, never applied
    again.restore_(pipe)
    for n, w in _weights(pipe).items():
        assert torch.equal(w.detach(), before[n])


def test_format_versions_and_header(pipe, tmp_path):
    mask, _, _ = _repaired_mask(pipe)
    raw = mask.save(tmp_path / "m.safetensors").read_bytes()
    meta = json.loads(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["fia"])
    assert meta["format_version"] == 2 and meta["applied_fingerprint"] == mask.applied_fingerprint
    assert sum(layer["repaired_rows"] for layer in meta["layers"]) == mask.repaired_rows
    plain = ConceptMask.from_prune_masks(_weights(pipe), {lm.name: mask.to_dense(lm.name) for lm in mask.layers},
                                         concepts=["circle"], config={"task": "shapeworld", "variant": "causal"},
                                         target_kind="ffn2")
    raw = plain.save(tmp_path / "p.safetensors").read_bytes()
    meta = json.loads(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["fia"])
    assert meta["format_version"] == 1 and "applied_fingerprint" not in meta  # pruning-only files as before
    assert "closed-form repair" in mask.summary() and "closed-form repair" not in plain.summary()


def test_refused_by_another_model_and_a_repair_that_unprunes(pipe, other_dir):
    mask, prune, repairs = _repaired_mask(pipe)
    other = load_tiny(other_dir)
    with pytest.raises(FIAError, match="different model"):
        mask.apply_(other)
    name = next(iter(repairs))
    bad = dict(repairs)
    values = repairs[name].values.clone()
    values[prune[name][repairs[name].rows]] = 1.0
    bad[name] = LayerRepair(repairs[name].rows, values)
    plain = ConceptMask.from_prune_masks(_weights(pipe), prune, concepts=["circle"], config={}, target_kind="ffn2")
    with pytest.raises(ValueError, match="pruned weight"):
        plain.with_repair(_weights(pipe), bad)
