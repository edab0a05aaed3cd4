"""WeightDelta: hand-made deltas, exact apply/restore, fingerprints, storage and damaged files."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from torch import nn

from fia.delta import WeightDelta
from fia.edit import Edit, edit_format, load_edit
from fia.errors import FIAError
from fia.mask import fingerprint_weights


def _model(seed: int = 0) -> nn.Module:
    """A small stand-in denoiser: two linears with weights of whole multiples of 1/8 (exact in float32)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-16, 16, p.shape, generator=g).float() / 8)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# the change: +0.25 everywhere on the first weight, a single -1 on the last bias
CHANGE = {"0.weight": torch.full((4, 6), 0.25), "2.bias": torch.tensor([0.0, -1.0, 0.0])}


def _delta(model: nn.Module, **provenance) -> WeightDelta:
    before = {name: model.get_parameter(name).detach().clone() for name in CHANGE}
    after = {name: before[name] + CHANGE[name] for name in CHANGE}
    kwargs = {"method": "uce", "concepts": ["star", "circle"], "config": {"lamb": 0.1, "projections": ["to_k"]}}
    kwargs.update(provenance)
    return WeightDelta.from_models(before, after, **kwargs)


def test_from_models_holds_after_minus_before_and_the_base_fingerprint():
    model = _model()
    delta = _delta(model)
    assert isinstance(delta, Edit)
    assert delta.method == "uce" and delta.concepts == ["star", "circle"]
    assert delta.parameter_names == ["0.weight", "2.bias"]
    for name, change in CHANGE.items():
        assert delta.deltas[name].dtype == torch.float32
        assert torch.equal(delta.deltas[name], change)  # exact: the values are multiples of 1/8
    base = {name: model.get_parameter(name) for name in CHANGE}
    assert delta.fingerprint == fingerprint_weights(base)
    assert delta.dtype == "float32"
    assert delta.total_values == 24 + 3 and delta.changed_values == 24 + 1


def test_apply_adds_the_delta_and_restore_is_bit_exact():
    model = _model()
    before = _state(model)
    delta = _delta(model)
    assert delta.apply_(model) is model
    after = _state(model)
    for name, value in before.items():
        expected = value + CHANGE[name] if name in CHANGE else value
        assert torch.equal(after[name], expected), name
    delta.restore_(model)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    delta.apply_(model)  # after a restore it may be applied again
    assert torch.equal(model.get_parameter("0.weight"), after["0.weight"])


def test_restore_is_bit_exact_when_the_sum_rounds():
    """before + (after - before) need not be exactly after in float32; restore_ still gives before back."""
    model = _model()
    with torch.no_grad():
        model.get_parameter("0.weight").mul_(1 / 3)  # values not representable exactly
    before = _state(model)
    w = model.get_parameter("0.weight").detach().clone()
    delta = WeightDelta.from_models({"0.weight": w}, {"0.weight": w * 1e-3 + 1e6}, method="esd-x", concepts=["a"], config={})
    delta.apply_(model)
    assert not torch.equal(model.get_parameter("0.weight"), before["0.weight"])
    delta.restore_(model)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_apply_twice_adds_once_and_restore_without_apply_is_refused():
    model = _model()
    delta = _delta(model)
    with pytest.raises(FIAError, match="not applied to this model"):
        delta.restore_(model)
    delta.apply_(model)
    applied = _state(model)
    delta.apply_(model)  # the model already carries the delta: it is not added a second time
    assert all(torch.equal(v, applied[k]) for k, v in _state(model).items())
    # a second object holding the same delta sees the edit too, and can undo it
    other_copy = copy.deepcopy(_delta(_model()))
    other_copy.apply_(model)
    assert all(torch.equal(v, applied[k]) for k, v in _state(model).items())
    other_copy.restore_(model)
    assert all(torch.equal(v, _state(_model())[k]) for k, v in _state(model).items())
    with pytest.raises(FIAError, match="not applied to this model"):
        delta.restore_(model)


def test_other_model_is_refused_and_left_alone():
    delta = _delta(_model(seed=0))
    other = _model(seed=1)
    before = _state(other)
    with pytest.raises(FIAError, match="made for a different model"):
        delta.apply_(other)
    assert all(torch.equal(v, before[k]) for k, v in _state(other).items())
    narrow = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(FIAError, match=r"0\.weight has shape \(4, 5\).*different model"):
        delta.apply_(narrow)
    with pytest.raises(FIAError, match="is missing.*different model"):
        delta.apply_(nn.Sequential(nn.Linear(6, 4)))


def test_one_delta_on_two_copies_and_a_float16_copy():
    model = _model()
    delta = _delta(model)
    a, b = copy.deepcopy(model), copy.deepcopy(model).half()  # float16 rounding keeps the fingerprint
    before_a, before_b = _state(a), _state(b)
    delta.apply_(a)
    delta.apply_(b)
    assert b.get_parameter("0.weight").dtype == torch.float16
    assert torch.equal(b.get_parameter("0.weight"), (before_b["0.weight"].float() + 0.25).half())
    delta.restore_(b)
    assert all(torch.equal(v, before_b[k]) for k, v in _state(b).items())
    assert torch.equal(a.get_parameter("0.weight"), before_a["0.weight"] + 0.25)  # a is still edited
    delta.restore_(a)
    assert all(torch.equal(v, before_a[k]) for k, v in _state(a).items())


def test_save_load_round_trip_and_deterministic_bytes(tmp_path):
    model = _model()
    before = _state(model)
    delta = _delta(model, stats={"losses": [0.5, 0.25]})
    path = delta.save(tmp_path / "d" / "edit.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["edit.safetensors"]  # no temporary file left
    assert delta.save(tmp_path / "elsewhere.safetensors").read_bytes() == path.read_bytes()
    assert _delta(model, stats={"losses": [0.5, 0.25]}).to_bytes() == path.read_bytes()
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["fia-delta"])
    assert meta["format"] == "fia-delta" and meta["method"] == "uce" and meta["concepts"] == ["star", "circle"]
    assert meta["config"] == {"lamb": 0.1, "projections": ["to_k"]} and meta["stats"] == {"losses": [0.5, 0.25]}
    assert meta["parameters"] == [{"name": "0.weight", "shape": [4, 6]}, {"name": "2.bias", "shape": [3]}]
    assert str(tmp_path) not in header["__metadata__"]["fia-delta"]
    assert meta["format_version"] == 2  # the original values are stored beside the deltas
    # the integrity hash: sha256 over name, dtype, shape and bytes of each tensor, in name order
    h = hashlib.sha256()
    stored = [("delta/0.weight", CHANGE["0.weight"]), ("delta/2.bias", CHANGE["2.bias"]),
              ("original/0.weight", before["0.weight"]), ("original/2.bias", before["2.bias"])]  # fmt: skip
    for name, value in stored:
        h.update(name.encode() + b"torch.float32" + json.dumps(list(value.shape)).encode())
        h.update(value.numpy().astype("<f4").tobytes())
    assert meta["content_sha256"] == h.hexdigest()
    assert edit_format(path) == "fia-delta"

    loaded = load_edit(path)
    assert isinstance(loaded, WeightDelta) and loaded == delta
    assert loaded.stats == {"losses": [0.5, 0.25]} and loaded.fingerprint == delta.fingerprint
    loaded.apply_(model)
    assert torch.equal(model.get_parameter("0.weight"), before["0.weight"] + 0.25)
    loaded.restore_(model)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_summary_names_method_concepts_parameters_and_loss():
    text = _delta(_model(), stats={"losses": [0.5, 0.25], "preserve": ["square"]}).summary()
    assert text.startswith("uce weight delta")
    assert "concepts (2): star, circle" in text and "preserved: square" in text
    assert "lamb=0.1" in text and "0.weight" in text and "2.bias" in text
    assert "total: 25 of 27 values changed in 2 parameters" in text
    assert "training loss over 2 steps: first 0.5, last 0.25" in text


def test_damaged_and_foreign_files_are_clear_errors(tmp_path):
    delta = _delta(_model())
    good = delta.save(tmp_path / "edit.safetensors").read_bytes()
    with pytest.raises(FIAError, match="does not exist"):
        WeightDelta.load(tmp_path / "missing.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good[:-10])
    with pytest.raises(FIAError, match="weight delta file .* is truncated or not a FIA weight delta; re-run fia unlearn"):
        WeightDelta.load(trunc)
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # a changed value no longer matches the header's content hash
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(FIAError, match="weight delta file .* is truncated or not a FIA weight delta; re-run fia unlearn"):
        WeightDelta.load(tmp_path / "flipped.safetensors")
    with pytest.raises(FIAError, match="truncated or not a FIA mask or weight delta"):
        load_edit(trunc)
    with pytest.raises(FIAError, match="does not exist"):
        load_edit(tmp_path / "missing.safetensors")


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    from fia.edit import pack

    delta = _delta(_model())
    path = tmp_path / "future.safetensors"
    path.write_bytes(pack(delta._tensors(), "fia-delta", delta.metadata() | {"format_version": 99}))
    with pytest.raises(FIAError, match="fia-delta format version 99, newer than .* upgrade forget-it-all"):
        load_edit(path)


def test_from_models_refuses_mismatched_inputs():
    w = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="same parameters"):
        WeightDelta.from_models({"a": w}, {"b": w}, method="uce", concepts=["x"], config={})
    with pytest.raises(ValueError, match="shape"):
        WeightDelta.from_models({"a": w}, {"a": torch.zeros(2, 3)}, method="uce", concepts=["x"], config={})
    with pytest.raises(ValueError, match="at least one"):
        WeightDelta.from_models({}, {}, method="uce", concepts=["x"], config={})
