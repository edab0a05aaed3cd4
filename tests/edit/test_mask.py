"""ConceptMask: storage round trip, exact apply/restore, fingerprints, damaged files."""

from __future__ import annotations

import json

import pytest
import torch

from fia.errors import FIAError
from fia.mask import ConceptMask, save_edited_pipeline
from fia.targets import find_targets
from tests.helpers import load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread


def _weights(pipe):
    return {t.name: t.module.weight for t in find_targets(pipe.unet, "ffn2")}


def _random_mask(pipe, share=0.03, seed=0) -> tuple[ConceptMask, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    weights = _weights(pipe)
    prune = {n: torch.rand(w.shape, generator=g) < share for n, w in weights.items()}
    mask = ConceptMask.from_prune_masks(
        weights,
        prune,
        concepts=["circle", "star"],
        config={"task": "shapeworld", "r1": 0.05, "r2": 0.05, "alpha": 0.6},
        target_kind="ffn2",
        agnostic={n: 3 for n in weights},
        tau_ca={n: 2 for n in weights},
        selected={n: {"circle": 10, "star": 11} for n in weights},
    )
    return mask, prune


@pytest.fixture()
def pipe(tiny_dir):
    return load_tiny(tiny_dir)


def test_round_trip_and_deterministic_bytes(pipe, tmp_path):
    mask, prune = _random_mask(pipe)
    path = mask.save(tmp_path / "m" / "mask.safetensors")
    again = ConceptMask.load(path)
    assert again == mask
    assert again.concepts == ["circle", "star"] and again.config == mask.config
    assert again.fingerprint == mask.fingerprint and again.edit_fingerprint == mask.edit_fingerprint
    for name, p in prune.items():
        assert torch.equal(again.to_dense(name), p)
        assert again.layer(name).selected == {"circle": 10, "star": 11}
    # saving again (another name, another folder) gives the same bytes: no paths, no times
    other = mask.save(tmp_path / "elsewhere" / "copy.safetensors")
    assert other.read_bytes() == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["mask.safetensors"]  # no temp file left
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    meta = json.loads(header["__metadata__"]["fia"])
    assert meta["concepts"] == ["circle", "star"]
    assert meta["totals"]["pruned"] == sum(int(p.sum()) for p in prune.values())
    assert str(tmp_path) not in header["__metadata__"]["fia"]


def test_compact_storage(pipe, tmp_path):
    mask, prune = _random_mask(pipe, share=0.01)
    n = sum(int(p.sum()) for p in prune.values())
    size = mask.save(tmp_path / "mask.safetensors").stat().st_size
    # 4 bytes index + 4 bytes value per pruned weight, plus the header
    assert size < 8 * n + 20_000


def test_apply_zeroes_exactly_the_pruned_entries_and_restore_is_exact(pipe):
    mask, prune = _random_mask(pipe)
    weights = _weights(pipe)
    before = {n: w.detach().clone() for n, w in weights.items()}
    others = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if n.removesuffix(".weight") not in weights}
    mask.apply_(pipe)
    for name, w in weights.items():
        p = prune[name]
        assert torch.all(w[p] == 0)
        assert torch.equal(w[~p], before[name][~p])
    for n, p in pipe.unet.named_parameters():
        if n in others:
            assert torch.equal(p, others[n]), n
    mask.apply_(pipe)  # an already edited model is accepted (idempotent)
    mask.restore_(pipe)
    for name, w in weights.items():
        assert torch.equal(w, before[name])


def test_restore_from_a_loaded_edited_pipeline(pipe, tmp_path):
    mask, _ = _random_mask(pipe)
    before = {n: w.detach().clone() for n, w in _weights(pipe).items()}
    out = save_edited_pipeline(pipe, mask, tmp_path / "edited")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]  # temp folder renamed away
    from diffusers import StableDiffusionPipeline

    edited = StableDiffusionPipeline.from_pretrained(str(out))
    for name, w in _weights(edited).items():
        assert torch.all(w[mask.to_dense(name)] == 0)
    mask.restore_(edited)
    for name, w in _weights(edited).items():
        assert torch.equal(w, before[name])
    # saving over an existing folder replaces it
    save_edited_pipeline(pipe, mask, out)
    assert (out / "model_index.json").is_file()


def test_fingerprint_ignores_float16_copy(pipe):
    mask, prune = _random_mask(pipe)
    half = pipe.to(torch.float16)
    mask.apply_(half)
    for name, w in _weights(half).items():
        assert w.dtype == torch.float16 and torch.all(w[prune[name]] == 0)


def test_other_model_is_refused(pipe, other_dir):
    mask, _ = _random_mask(pipe)
    other = load_tiny(other_dir)
    before = {n: w.detach().clone() for n, w in _weights(other).items()}
    with pytest.raises(FIAError, match="made for a different model"):
        mask.apply_(other)
    with pytest.raises(FIAError, match="made for a different model"):
        mask.restore_(other)
    for name, w in _weights(other).items():
        assert torch.equal(w, before[name])  # nothing touched


def test_damaged_files_are_refused(pipe, tmp_path):
    mask, _ = _random_mask(pipe)
    good = mask.save(tmp_path / "mask.safetensors").read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "header-only": good[:12],
        "flipped": good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:],
        "not-safetensors": b"hello world, not a mask at all",
        "empty": b"",
    }
    for label, data in cases.items():
        p = tmp_path / f"{label}.safetensors"
        p.write_bytes(data)
        with pytest.raises(FIAError, match="truncated or not a FIA mask"):
            ConceptMask.load(p)
    # a valid safetensors file that is not a mask
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(FIAError, match="not a FIA mask"):
        ConceptMask.load(tmp_path / "weights.safetensors")
    with pytest.raises(FIAError, match="does not exist"):
        ConceptMask.load(tmp_path / "missing.safetensors")


def test_summary_names_concepts_and_counts(pipe):
    mask, prune = _random_mask(pipe)
    text = mask.summary()
    assert "circle, star" in text
    total = sum(int(p.sum()) for p in prune.values())
    assert f"{total} of {mask.total_weights}" in text
    for name in prune:
        assert name in text
