"""The edit contract, for every registered method: unlearn leaves the pipeline alone, the Edit is reversible and shippable."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fia.baselines.conceptprune import ConceptPruneConfig
from fia.baselines.esd import ESDConfig
from fia.baselines.random import RandomConfig
from fia.baselines.speed import SPEEDConfig
from fia.baselines.uce import UCEConfig
from fia.config import FIACausalConfig, FIAConfig, FIASettings
from fia.edit import Edit, load_edit
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.methods import methods, plan, unlearn

torch.set_num_threads(1)

FAST = {
    "conceptprune": ConceptPruneConfig(
        saliency_steps=3, num_inference_steps=5, task="shapeworld", prompt_limit=2, sparsity=0.05
    ),
    "uce": UCEConfig(),
    "speed": SPEEDConfig(invariants=False),  # the tiny encoder's empty prompt spans all 32 dimensions
    "esd-x": ESDConfig(train_steps=3, ddim_steps=4, lr=1e-3, seed=3),
}
FAST_FIA = {"task": "shapeworld", "saliency_steps": 2, "num_inference_steps": 3, "r2": 0.05}
FAST_CAUSAL = {
    "score_steps": 2, "concept_prompts_per_concept": 2, "anchor_prompts": 2, "contrasts": 1,
    "evidence_timesteps": (0.5,), "budget": 0.02, "rounds": 1,
}  # fmt: skip


def _fast_config(name: str, pipe):
    """Settings that run in seconds on the tiny pipeline (FIA-family configs get short schedules)."""
    if name in FAST:
        return FAST[name]
    config = methods()[name].default_config()
    if isinstance(config, FIAConfig):
        return config.replace(**FAST_FIA)
    if isinstance(config, FIASettings):  # the causal and rewrite variants: the paper's knobs are not theirs
        short = {"task": "shapeworld", "num_inference_steps": FAST_FIA["num_inference_steps"]}
        return config.replace(**short, **(FAST_CAUSAL if isinstance(config, FIACausalConfig) else {}))
    if isinstance(config, RandomConfig):  # the control copies the per-layer counts of an FIA mask
        return RandomConfig(like=unlearn(pipe, ["star", "circle"], "fia", FIAConfig(**FAST_FIA)), seed=1)
    return config


@pytest.fixture(scope="module")
def base_pipe():
    from fia.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def other_pipe():
    from fia.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=1)


def _state(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{k}": v.detach().clone()
        for part in ("unet", "text_encoder", "vae")
        for k, v in getattr(pipe, part).state_dict().items()
    }


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_method_keeps_the_edit_contract(name, base_pipe, other_pipe, tmp_path):
    pipe = copy.deepcopy(base_pipe)
    original = _state(pipe)
    calls: list[tuple] = []

    def record(*args):
        calls.append(args)

    edit = unlearn(pipe, ["star", "circle"], name, _fast_config(name, pipe), preserve=["square"], progress=record)

    # the pipeline is left exactly as it was found; the change is the Edit
    assert _differing(original, _state(pipe)) == set()
    assert isinstance(edit, Edit)
    assert edit.method == name and edit.concepts == ["star", "circle"]
    # progress: the one protocol, ending complete
    assert calls and all(len(c) == 3 for c in calls), name
    done, total, _ = calls[-1]
    assert done == total

    # apply_ changes denoiser weights only; restore_ gives the exact originals back
    assert edit.apply_(pipe) is pipe
    applied = _state(pipe)
    changed = _differing(original, applied)
    assert changed and all(k.startswith("unet.") for k in changed)
    assert edit.restore_(pipe) is pipe
    assert _differing(original, _state(pipe)) == set()

    # save / load_edit: an equal edit of the same class, same bytes, same applied weights
    path = edit.save(tmp_path / "edit.safetensors")
    assert edit.save(tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    loaded = load_edit(path)
    assert type(loaded) is type(edit) and loaded == edit
    assert (loaded.method, loaded.concepts) == (edit.method, edit.concepts)
    loaded.apply_(pipe)
    assert _differing(applied, _state(pipe)) == set()
    loaded.restore_(pipe)
    assert _differing(original, _state(pipe)) == set()
    assert edit.summary() == loaded.summary() and name in edit.summary()

    # a different model (same architecture, other seed) is refused and left alone
    other = copy.deepcopy(other_pipe)
    other_before = _state(other)
    with pytest.raises(FIAError, match="made for a different model"):
        loaded.apply_(other)
    assert _differing(other_before, _state(other)) == set()


def test_concepts_and_preserve_may_be_comma_strings(base_pipe):
    as_lists = unlearn(base_pipe, ["star", "circle"], "uce", preserve=["square", "heart"])
    as_text = unlearn(base_pipe, "star,  circle", "uce", preserve="square, heart")
    assert as_text == as_lists
    assert as_text.concepts == ["star", "circle"] and as_text.stats["preserve"] == ["square", "heart"]


def test_conceptprune_mask_records_its_method_and_settings(base_pipe, tmp_path):
    mask = unlearn(base_pipe, ["star"], "conceptprune", FAST["conceptprune"])
    assert isinstance(mask, ConceptMask) and mask.method == "conceptprune" and mask.target_kind == "ffn2"
    assert mask.config == FAST["conceptprune"].to_dict()
    text = mask.summary()
    assert text.startswith("conceptprune concept mask") and "sparsity=0.05" in text and "step_share=0.5" in text
    raw = mask.save(tmp_path / "m.safetensors").read_bytes()
    meta = json.loads(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["fia"])
    assert meta["method"] == "conceptprune" and meta["format"] == "fia-mask"


def test_a_mask_file_without_a_method_loads_as_fia(base_pipe, tmp_path):
    from fia.edit import pack

    mask = unlearn(base_pipe, ["star"], "conceptprune", FAST["conceptprune"])
    meta = mask.metadata()
    del meta["method"]  # as files written before masks recorded their method
    path = tmp_path / "old.safetensors"
    path.write_bytes(pack(mask._tensors(), "fia", meta))
    old = load_edit(path)
    assert isinstance(old, ConceptMask) and old.method == "fia"
    assert old.layer_names == mask.layer_names and old.pruned == mask.pruned
    assert old.summary().startswith("FIA concept mask")


def test_plan_checks_the_request_without_a_model():
    checked = plan(" Star ,circle", "uce", preserve="square")
    assert checked.method is methods()["uce"] and checked.config == UCEConfig()
    assert (checked.concepts, checked.preserve) == (["Star", "circle"], ["square"])
    with pytest.raises(FIAError, match=r"\['star'\] are both erased and preserved"):
        plan("Star, circle", "uce", preserve="star")
    with pytest.raises(FIAError, match="unknown method"):
        plan("star", "nope")
    with pytest.raises(FIAError, match="sparsity must lie in"):
        plan("star", "conceptprune", ConceptPruneConfig(sparsity=2))
