"""``batch_size`` is a memory knob: on the shipped default world it gives the unbatched edit (byte for byte, the rewrite to rounding).

The causal variant sums its evidence gradient over micro-batches of prompts
(each one a backward pass through the checkpointed sampler), and the paper's
FIA adds each chunk's statistics in prompt order. Both are the same sums
whatever the chunking; batched kernels may differ from unbatched ones in the
last bits of a float, which could in principle move a weight across a
selection threshold. These tests pin that it does not on ShapeWorld 2, at
sizes that split the prompts unevenly (a last chunk smaller than the rest).
The rewrite solves a linear system on such sums, so its edit agrees to
float rounding rather than byte for byte.
"""

from __future__ import annotations

import pytest

import fia
from fia.config import FIACausalConfig, FIAConfig, RepairConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    from fia.shapeworld import load_pipeline

    return load_pipeline()


def _causal(**changes) -> FIACausalConfig:
    """The ShapeWorld default's shape, scaled down: 2 rounds, 6 evidence and 6 anchor prompts, the repair on."""
    settings = dict(
        task="shapeworld", budget=0.004, rounds=2, score_steps=3, concept_prompts_per_concept=6, anchor_prompts=6,
        contrasts=2, evidence_timesteps=(0.5,), stop_evidence=0.2,
        repair=RepairConfig(keep_prompts_per_concept=1, concept_prompts_per_concept=2),
    )  # fmt: skip
    return FIACausalConfig(**(settings | changes)).validate()


def test_causal_micro_batches_give_the_unbatched_mask(world):
    whole = fia.erase(world, ["star", "arrow"], _causal(batch_size=6))
    assert whole.pruned > 0 and whole.repaired
    for size in (4, 1):
        split = fia.erase(world, ["star", "arrow"], _causal(batch_size=size))
        assert split.to_bytes() == whole.to_bytes(), size
    # the record is the unbatched run's: a batched run reproduces (and reuses the cache of) the same mask
    assert whole.config["batch_size"] is None


def test_paper_chunks_give_the_unbatched_mask(world):
    cfg = FIAConfig(task="shapeworld", saliency_steps=3, num_inference_steps=6)
    whole = fia.erase(world, ["star", "arrow"], cfg)
    assert whole.pruned > 0
    for size in (5, 1):
        split = fia.erase(world, ["star", "arrow"], cfg.replace(batch_size=size))
        assert split.to_bytes() == whole.to_bytes(), size


def test_the_recorded_settings_leave_the_batch_out():
    a = _causal(batch_size=3).to_dict()
    b = _causal().to_dict()
    assert a == b and a["batch_size"] is None


def test_rewrite_batches_give_the_same_edit(world):
    """The rewrite's kept groups share sampler batches (each sample's rows go to its group) and its paired pass
    is chunked: any batch size gives the same statistics up to the order of float sums. Those sums feed a
    solve, not a threshold, so the edits agree to rounding, not byte for byte."""
    import torch

    from fia.config import FIARewriteConfig, RewriteConfig

    rc = RewriteConfig(concept_weight=0.05, damping=0.03, balance_rounds=2, keep_prompts_per_kind=1,
                       concept_prompts_per_concept=3, concept_trajectory=True, negative_guidance=1.0)
    cfg = FIARewriteConfig(task="shapeworld", num_inference_steps=3, rewrite=rc).validate()
    whole = fia.erase(world, ["star"], cfg)
    assert len(whole.stats["balance"]["group_weights"]) > 30  # every kept kind, the scenes, the styles: groups share batches
    for size in (7, 1):
        split = fia.erase(world, ["star"], cfg.replace(batch_size=size))
        assert split.config == whole.config and whole.config["batch_size"] is None
        for layer in whole.layers:
            # the denoiser's float32 batches and the float32 products round differently per batch size: each
            # layer's edit moved by up to 2.5e-6 of its size (6e-6 in any weight) on this test's settings
            new, old = split.layer(layer.name).row_values, layer.row_values
            assert (new - old).norm() <= 1e-5 * old.norm() and (new - old).abs().max() <= 2e-5, (size, layer.name)
