"""One set of rules for every Edit: restore_ from a copy read from the file, refusals, edit.applied(pipe), file versions."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fia
from fia.delta import WeightDelta
from fia.edit import Edit, load_edit, pack
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.targets import find_targets


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread


@pytest.fixture(scope="module")
def shapeworld():
    """The shipped ShapeWorld pipeline (the default world), never modified: tests edit deep copies."""
    from fia.shapeworld import load_pipeline

    return load_pipeline()


def _bits(pipe) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the pipeline's three networks, as raw bytes (so -0.0 and 0.0 differ)."""
    out = {}
    for part in ("unet", "text_encoder", "vae"):
        for name, t in getattr(pipe, part).state_dict().items():
            t = t.detach().contiguous()
            out[f"{part}.{name}"] = t.reshape(-1).view(torch.uint8).clone() if t.numel() else t.clone()
    return out


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def _random_mask(pipe, share: float = 0.02) -> ConceptMask:
    """A format-1 mask: random entries of three FFN2 layers pruned."""
    found = find_targets(pipe.unet, "ffn2")[:3]
    weights = {t.name: t.module.weight.detach() for t in found}
    g = torch.Generator().manual_seed(0)
    prune = {n: torch.rand(w.shape, generator=g) < share for n, w in weights.items()}
    return ConceptMask.from_prune_masks(weights, prune, concepts=["star"], config={"task": "shapeworld"}, target_kind="ffn2")


def _repaired_mask(pipe) -> ConceptMask:
    """A format-2 mask: the random pruning above, every touched row rewritten (pruned entries kept at 0)."""
    mask = _random_mask(pipe)
    weights = {lm.name: dict(pipe.unet.named_modules())[lm.name].weight.detach() for lm in mask.layers}
    repairs = {}
    for name, w in weights.items():
        pruned = mask.to_dense(name)
        rows = torch.nonzero(pruned.any(1)).reshape(-1)
        repairs[name] = SimpleNamespace(rows=rows, values=(w[rows] * 0.5 + 0.01).masked_fill(pruned[rows], 0))
    return mask.with_repair(weights, repairs)


def _uce(pipe) -> WeightDelta:
    return fia.unlearn(pipe, ["star"], method="uce", preserve=["square"])


EDITS = {"mask": _random_mask, "repaired mask": _repaired_mask, "uce delta": _uce}


# ------------------------------------------------------- restore from the file
@pytest.mark.parametrize("kind", sorted(EDITS))
def test_a_copy_loaded_from_the_file_restores_bit_for_bit(kind, shapeworld, tmp_path):
    pipe = copy.deepcopy(shapeworld)
    before = _bits(pipe)
    edit = EDITS[kind](pipe)
    assert isinstance(edit, Edit)
    path = edit.save(tmp_path / "edit.safetensors")
    edit.apply_(pipe)
    edited = _bits(pipe)
    assert _changed(before, edited) and all(k.startswith("unet.") for k in _changed(before, edited))
    del edit  # nothing but the file is left of the object that applied it
    loaded = load_edit(path)
    assert loaded.restore_(pipe) is pipe
    assert _changed(before, _bits(pipe)) == set()
    # and the other way round: applied by the loaded copy, restored by a second one
    loaded.apply_(pipe)
    assert _changed(edited, _bits(pipe)) == set()
    load_edit(path).restore_(pipe)
    assert _changed(before, _bits(pipe)) == set()


def test_a_uce_delta_on_a_float16_copy_restores_bit_for_bit(shapeworld, tmp_path):
    """Made on the float32 model, applied to a float16 copy, restored by a copy read from the file."""
    delta = _uce(shapeworld)
    path = delta.save(tmp_path / "uce.safetensors")
    half = copy.deepcopy(shapeworld).to(torch.float16)
    before = _bits(half)
    delta.apply_(half)
    assert _changed(before, _bits(half))
    load_edit(path).restore_(half)
    assert _changed(before, _bits(half)) == set()


def test_a_uce_delta_made_in_float16_stores_float16_originals(shapeworld, tmp_path):
    half = copy.deepcopy(shapeworld).to(torch.float16)
    before = _bits(half)
    delta = _uce(half)
    assert delta.dtype == "float16" and {t.dtype for t in delta.originals.values()} == {torch.float16}
    path = delta.save(tmp_path / "uce16.safetensors")
    delta.apply_(half)
    load_edit(path).restore_(half)
    assert _changed(before, _bits(half)) == set()


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kind", sorted(EDITS))
def test_restore_refuses_a_model_that_does_not_carry_the_edit(kind, shapeworld):
    pipe = copy.deepcopy(shapeworld)
    edit = EDITS[kind](pipe)
    before = _bits(pipe)
    with pytest.raises(FIAError, match="is not applied to this model, so there is nothing to restore"):
        edit.restore_(pipe)
    assert _changed(before, _bits(pipe)) == set()
    # applied, then one edited entry changed by something else: neither state, refused and left alone
    edit.apply_(pipe)
    name, index = (edit.layers[0].name, int(edit.layers[0].indices[0])) if kind != "uce delta" else (edit.parameter_names[0], 0)
    with torch.no_grad():
        edit.check(pipe)[name].view(-1)[index] += 1.0
    changed = _bits(pipe)
    # (a mask's fingerprint skips its pruned entries, so it sees the change; a delta's sees another model)
    with pytest.raises(FIAError, match="does not hold the weights this .* leaves|changed after the edit was applied"):
        edit.restore_(pipe)
    assert _changed(changed, _bits(pipe)) == set()


@pytest.fixture(scope="module")
def first_world():
    """The first ShapeWorld world's pipeline: another model."""
    from fia.shapeworld import FIRST_WORLD, load_pipeline

    return load_pipeline(world=FIRST_WORLD)


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_apply_twice_is_apply_once_and_another_model_is_refused(kind, shapeworld, first_world):
    pipe = copy.deepcopy(shapeworld)
    edit = EDITS[kind](pipe)
    before = _bits(pipe)
    edit.apply_(pipe)
    edited = _bits(pipe)
    edit.apply_(pipe)  # the model already carries it: left as it is
    assert _changed(edited, _bits(pipe)) == set()
    edit.restore_(pipe)
    assert _changed(before, _bits(pipe)) == set()
    other_before = _bits(first_world)
    for method in (edit.apply_, edit.restore_):
        with pytest.raises(FIAError, match="different model"):
            method(first_world)
    assert _changed(other_before, _bits(first_world)) == set()


def test_an_empty_mask_applies_and_restores_freely(shapeworld):
    """An edit that changes nothing carries no state: neither apply_ nor restore_ can be out of turn."""
    pipe = copy.deepcopy(shapeworld)
    found = find_targets(pipe.unet, "ffn2")[:1]
    weights = {t.name: t.module.weight.detach() for t in found}
    empty = ConceptMask.from_prune_masks(weights, {n: torch.zeros_like(w, dtype=torch.bool) for n, w in weights.items()},
                                         concepts=["star"], config={}, target_kind="ffn2")  # fmt: skip
    before = _bits(pipe)
    empty.restore_(pipe)
    empty.apply_(pipe)
    empty.restore_(pipe)
    assert _changed(before, _bits(pipe)) == set()


# ------------------------------------------------------------ edit.applied()
@pytest.mark.parametrize("kind", sorted(EDITS))
def test_applied_edits_inside_the_block_and_restores_after_it(kind, shapeworld):
    pipe = copy.deepcopy(shapeworld)
    edit = EDITS[kind](pipe)
    before = _bits(pipe)
    reference = copy.deepcopy(pipe)
    edit.apply_(reference)
    with edit.applied(pipe) as inside:
        assert inside is pipe
        assert _changed(_bits(reference), _bits(pipe)) == set()  # exactly what apply_ makes
    assert _changed(before, _bits(pipe)) == set()


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_applied_restores_when_the_block_raises(kind, shapeworld):
    pipe = copy.deepcopy(shapeworld)
    edit = EDITS[kind](pipe)
    before = _bits(pipe)
    with pytest.raises(KeyError, match="inside the block"):
        with edit.applied(pipe):
            assert _changed(before, _bits(pipe))
            raise KeyError("inside the block")
    assert _changed(before, _bits(pipe)) == set()


def test_applied_refuses_a_model_that_already_carries_the_edit(shapeworld):
    pipe = copy.deepcopy(shapeworld)
    delta = _uce(pipe)
    delta.apply_(pipe)
    edited = _bits(pipe)
    with pytest.raises(FIAError, match="already applied to this model, and leaving the with block would undo"):
        with delta.applied(pipe):
            pass
    assert _changed(edited, _bits(pipe)) == set()  # the edit made outside the block stays


# ------------------------------------------------------ older weight delta files
def test_a_format_1_delta_file_applies_but_says_it_cannot_restore(shapeworld, tmp_path):
    pipe = copy.deepcopy(shapeworld)
    delta = _uce(pipe)
    # a file as format version 1 wrote it: the deltas, no original values
    old = {k: v for k, v in delta._tensors().items() if k.startswith("delta/")}
    path = tmp_path / "v1.safetensors"
    path.write_bytes(pack(old, "fia-delta", delta.metadata() | {"format_version": 1}))
    loaded = load_edit(path)
    assert isinstance(loaded, WeightDelta) and loaded.originals is None
    assert loaded.to_bytes() == path.read_bytes()  # written back as it was read
    assert "format version 1: no original weights stored, so restore_ cannot undo it" in loaded.summary()
    reference = copy.deepcopy(pipe)
    delta.apply_(reference)
    loaded.apply_(pipe)  # adds the delta to the model's own values, as format 1 always did
    assert _changed(_bits(reference), _bits(pipe)) == set()
    with pytest.raises(FIAError, match="format-1 file, which does not store the original weights.*re-run fia unlearn"):
        loaded.restore_(pipe)
    delta.restore_(pipe)  # a format-2 copy of the same edit can
    assert _changed(_bits(shapeworld), _bits(pipe)) == set()


def test_the_delta_file_stores_the_originals_in_the_model_dtype(shapeworld, tmp_path):
    delta = _uce(shapeworld)
    raw = delta.save(tmp_path / "uce.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["fia-delta"])
    assert meta["format_version"] == 2
    params = dict(shapeworld.unet.named_parameters())
    for info in meta["parameters"]:
        entry = header[f"original/{info['name']}"]
        assert entry["dtype"] == "F32" and entry["shape"] == info["shape"]
        assert torch.equal(delta.originals[info["name"]], params[info["name"]].detach())


# -------------------------------------------------------------- module layers
def _fia_imports(path: Path) -> set[str]:
    """Every ``fia.*`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fia"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fia")}
    return found


def test_the_edit_modules_import_each_other_one_way_only():
    """weights and edit_base at the bottom, mask and delta on them, edit on top: no cycle, lazy imports included."""
    src = Path(fia.__file__).parent
    below = {
        "fia.weights": set(),
        "fia.edit_base": set(),
        "fia.mask": {"fia.weights", "fia.edit_base"},
        "fia.delta": {"fia.weights", "fia.edit_base"},
        "fia.edit": {"fia.weights", "fia.edit_base", "fia.mask", "fia.delta"},
    }
    for module, allowed in below.items():
        imported = _fia_imports(src / f"{module.removeprefix('fia.')}.py") & set(below)
        assert imported <= allowed, (module, imported - allowed)
