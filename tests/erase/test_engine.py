"""The engine's plan step, its selection and fusion rules, the FIA family in the registry, the cache, the random control."""

from __future__ import annotations

import copy

import pytest
import torch

import fia
from fia.cache import ConceptCache, sensitivity_key
from fia.config import FIACausalConfig, FIAConfig, FIARewriteConfig, FIASettings, as_variant
from fia.core.fuse import fuse_by_rule, fuse_masks
from fia.core.select import select_neurons
from fia.engine import ErasePlan, erase, plan_erase
from fia.errors import FIAError
from fia.methods import get_method, methods, unlearn
from fia.tasks import build_prompts
from tests.helpers import ffn2_weight_names, unet_weights

torch.set_num_threads(1)

FAST_FIA = FIAConfig(task="shapeworld", saliency_steps=2, num_inference_steps=3, r2=0.05)


@pytest.fixture(scope="module")
def base_pipe():
    from fia.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


# ------------------------------------------------------------------ plan step
def test_plan_checks_inputs_before_any_model_work(tmp_path):
    plan = plan_erase("circle, star", FAST_FIA)
    assert plan.concepts == ["circle", "star"] and plan.config is FAST_FIA
    assert plan.prompts["circle"] == build_prompts("circle", FAST_FIA)
    with pytest.raises(FIAError, match="listed twice"):
        plan_erase(["circle", "Circle"], FAST_FIA)
    with pytest.raises(FIAError, match="prompt files apply to --variant paper"):
        plan_erase(["circle"], as_variant(FAST_FIA, FIACausalConfig), concept_prompts=tmp_path / "c.txt")
    with pytest.raises(FIAError, match="r2"):
        plan_erase(["circle"], FIAConfig(r2=1.5))
    assert plan_erase(["circle"], as_variant(FAST_FIA, FIACausalConfig)).prompts == {}


@pytest.mark.slow
def test_erase_runs_a_plan_as_it_runs_names(base_pipe):
    plan = plan_erase(["star", "circle"], FAST_FIA)
    assert erase(base_pipe, plan) == erase(base_pipe, ["star", "circle"], FAST_FIA)
    with pytest.raises(FIAError, match="plan_erase"):
        erase(base_pipe, plan, FAST_FIA)
    assert isinstance(plan, ErasePlan)


# ------------------------------------------------------ selection and fusion
def test_selection_rules_compose_to_eq6():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(6, 40, generator=g) * (torch.rand(6, 40, generator=g) < 0.7)
    both = select_neurons(a, 0.1, "both")
    channel = select_neurons(a, 0.1, "channel")
    layer = select_neurons(a, 0.1, "layer")
    assert torch.equal(both, channel & layer)
    assert int(channel.sum(dim=1).max()) <= 4 and int(layer.sum()) <= 24
    assert not (channel & (a == 0)).any() and not (layer & (a == 0)).any()
    with pytest.raises(ValueError, match="selection"):
        select_neurons(a, 0.1, "row")


def test_union_fusion_by_hand():
    m1 = torch.tensor([[True, False], [True, False]])
    m2 = torch.tensor([[True, True], [False, False]])
    m3 = torch.tensor([[True, False], [False, False]])
    union = fuse_by_rule([m1, m2, m3], 0.6, "union")
    assert torch.equal(union.prune, torch.tensor([[True, True], [True, False]]))
    assert not union.agnostic.any() and union.tau_ca == 1
    fia_rule = fuse_by_rule([m1, m2, m3], 0.6, "fia")
    # tau_ca = max(2, ceil(0.6 * 3)) = 2: the entry chosen by all three is concept-agnostic
    assert torch.equal(fia_rule.prune, fuse_masks([m1, m2, m3], 0.6).prune)
    assert torch.equal(fia_rule.prune, torch.tensor([[False, True], [True, False]]))


def test_union_fusion_prunes_what_fia_prunes_plus_what_it_keeps(base_pipe, tmp_path):
    concepts = ["star", "circle", "square"]
    m_fia = erase(base_pipe, concepts, FAST_FIA, cache_dir=tmp_path)
    m_union = erase(base_pipe, concepts, FAST_FIA.replace(fusion="union"), cache_dir=tmp_path)  # reuses the cached A
    assert all(s["cached"] for s in m_union.stats["per_concept"].values())
    assert m_fia.agnostic > 0 and m_union.agnostic == 0
    for name in m_fia.layer_names:
        fia_dense = m_fia.to_dense(name)
        assert torch.equal(m_union.to_dense(name) & fia_dense, fia_dense)
        kept = m_union.to_dense(name) & ~fia_dense
        assert int(kept.sum()) == m_fia.layer(name).agnostic
    assert (m_union.config["selection"], m_union.config["fusion"]) == ("both", "union")
    # only FFN2 weights change when it is applied, and only to zero
    pipe = copy.deepcopy(base_pipe)
    before = unet_weights(pipe)
    m_union.apply_(pipe)
    state = pipe.unet.state_dict()
    changed = {k for k, v in state.items() if not torch.equal(v, before[k])}
    assert changed and changed <= ffn2_weight_names(pipe)
    assert all((state[n][state[n] != before[n]] == 0).all() for n in changed)


# ------------------------------------------------------------------ registry
def test_the_fia_family_is_registered_with_its_presets():
    known = methods()
    family = {"fia", "fia-causal", "fia-union", "fia-wanda", "fia-channel", "fia-layer"}
    assert family | {"random"} <= set(known)
    for name in family:
        cfg = known[name].default_config()
        assert isinstance(cfg, FIASettings) and cfg.validate() is cfg
    assert known["fia-wanda"].default_config().saliency == "wanda"
    assert known["fia-union"].default_config().fusion == "union"
    assert type(known["fia-causal"].default_config()) is FIACausalConfig
    assert type(known["fia-rewrite"].default_config()) is FIARewriteConfig
    assert all(type(known[name].default_config()) is FIAConfig for name in family - {"fia-causal"})
    assert (known["fia-channel"].default_config().selection, known["fia-layer"].default_config().selection) == (
        "channel",
        "layer",
    )
    with pytest.raises(FIAError, match="unknown method 'nope'; use one of:"):
        get_method("nope")


def test_unlearn_fia_is_the_engine_and_leaves_the_pipe_alone(base_pipe):
    pipe = copy.deepcopy(base_pipe)
    before = unet_weights(pipe)
    calls: list[tuple] = []
    mask = unlearn(pipe, ["star", "circle"], "fia", FAST_FIA, preserve=["square"], progress=lambda *a: calls.append(a))
    assert calls and all(len(c) == 3 for c in calls)
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert mask == erase(pipe, ["star", "circle"], FAST_FIA)
    assert mask.method == "fia"
    assert unlearn(pipe, ["star", "circle"], "fia-channel", FAST_FIA.replace(selection="channel")).method == "fia-channel"
    with pytest.raises(FIAError, match="takes a FIAConfig"):
        unlearn(pipe, ["star"], "fia", config={"r2": 0.01})


# --------------------------------------------------------------------- cache
def test_cache_reads_only_an_entry_made_with_the_same_key(base_pipe, tmp_path):
    cache = ConceptCache(tmp_path)
    cp = build_prompts("star", FAST_FIA)
    layers = {"a": (2, 3)}
    key = sensitivity_key(base_pipe, cp, FAST_FIA, layers=layers, model_fingerprint="f" * 64, dtype=torch.float32)
    entry = cache.entry(key)
    assert entry.path.parent == tmp_path and entry.path.name.startswith("star-")
    a = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    cache.save_sensitivity(entry, a)
    assert torch.equal(cache.load_sensitivity(entry)["a"], a["a"])
    other = cache.entry({**key, "r1": 0.5})
    assert other.path != entry.path and cache.load_sensitivity(other) is None
    # an entry whose header names another key is not used, even under the right file name
    lied = type(entry)(entry.concept, entry.path, {**key, "r1": 0.5})
    assert cache.load_sensitivity(lied) is None
    entry.path.write_bytes(b"damaged")
    assert cache.load_sensitivity(entry) is None
    assert key["r1"] == FAST_FIA.r1 and sensitivity_key(
        base_pipe, cp, FAST_FIA.replace(r1_overrides={"STAR": 0.2}), layers=layers, model_fingerprint="f", dtype="float32"
    )["r1"] == 0.2  # overrides match names case-insensitively


# ------------------------------------------------------------ random control
def test_random_control_copies_per_layer_counts_and_leaves_the_pipe_alone(base_pipe):
    from fia.baselines.random import RandomConfig

    pipe = copy.deepcopy(base_pipe)
    like = erase(pipe, ["star", "circle"], FAST_FIA.replace(fusion="union"))
    before = unet_weights(pipe)
    r1 = unlearn(pipe, ["star", "circle"], "random", RandomConfig(like=like, seed=0))
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert r1.method == "random"
    assert [lm.pruned for lm in r1.layers] == [lm.pruned for lm in like.layers]
    assert r1.layer_names == like.layer_names
    assert r1 == unlearn(copy.deepcopy(base_pipe), ["star", "circle"], "random", RandomConfig(like=like, seed=0))
    assert r1 != unlearn(pipe, ["star", "circle"], "random", RandomConfig(like=like, seed=1))
    r1.apply_(pipe)
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed <= ffn2_weight_names(pipe)
    with pytest.raises(FIAError, match="like="):
        unlearn(pipe, ["star"], "random", RandomConfig())
    with pytest.raises(FIAError, match="does not erase"):
        unlearn(pipe, ["heart"], "random", RandomConfig(like=like))


def test_fia_is_importable_lazily():
    assert callable(fia.erase) and callable(fia.plan_erase)
