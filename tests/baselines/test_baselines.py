"""The baselines (ConceptPrune, UCE, ESD-x) and the random-mask control, on tiny pipelines."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fia.baselines import conceptprune, esd, uce
from fia.baselines.random import counts_of, random_mask_like
from fia.baselines.conceptprune import ConceptPruneConfig, skilled_neurons
from fia.baselines.esd import ESDConfig
from fia.baselines.uce import UCEConfig
from fia.config import FIAConfig
from fia.errors import FIAError
from fia.methods import methods, unlearn
from tests.helpers import ffn2_weight_names, unet_weights

torch.set_num_threads(1)

FAST_CP = ConceptPruneConfig(saliency_steps=3, num_inference_steps=5, task="shapeworld", prompt_limit=2, sparsity=0.05)
FAST_ESD = ESDConfig(train_steps=3, ddim_steps=4, lr=1e-3, seed=3)


def _changed(before, pipe) -> set[str]:
    return {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}


def _others_unchanged(pipe, base_pipe) -> None:
    for part in ("text_encoder", "vae"):
        for (n, a), (_, b) in zip(
            getattr(pipe, part).state_dict().items(), getattr(base_pipe, part).state_dict().items()
        ):
            assert torch.equal(a, b), f"{part}.{n} changed"


# ------------------------------------------------------------------ registry
def test_registry_names_every_method_with_a_valid_default_config():
    registered = methods()
    assert {"conceptprune", "uce", "esd-x"} <= set(registered)
    types = {"conceptprune": ConceptPruneConfig, "uce": UCEConfig, "esd-x": ESDConfig}
    for name, config_type in types.items():
        assert registered[name].config_type is config_type
    for name, method in registered.items():
        assert method.name == name and method.description
        assert isinstance(method.default_config(), method.config_type)
        if name == "random":  # the control has no default: it copies the mask it is given
            with pytest.raises(FIAError, match="like="):
                method.default_config().validate()
        else:
            method.default_config().validate()
        assert callable(method.run)
    family = {"fia", "fia-causal", "fia-rewrite", "fia-union", "fia-wanda", "fia-channel", "fia-layer"}
    assert set(registered) == {"conceptprune", "uce", "speed", "esd-x", "random"} | family
    assert registered["fia-wanda"].default_config().saliency == "wanda"
    assert registered["fia-rewrite"].default_config().validate().rewrite is not None
    assert registered["fia-union"].default_config().fusion == "union"
    assert (registered["fia-channel"].default_config().selection, registered["fia-layer"].default_config().selection) == (
        "channel",
        "layer",
    )


def test_unknown_method_and_wrong_config_type_are_clear_errors(base_pipe):
    with pytest.raises(FIAError, match="unknown method 'ucee'; use one of: .*esd-x.*uce"):
        unlearn(base_pipe, ["star"], "ucee")
    with pytest.raises(FIAError, match="takes a UCEConfig, got a ESDConfig"):
        unlearn(base_pipe, ["star"], "uce", FAST_ESD)
    with pytest.raises(FIAError, match="lamb must be a finite number >= 0"):
        unlearn(base_pipe, ["star"], "uce", UCEConfig(lamb=-1))


def test_paper_defaults():
    cp = ConceptPruneConfig()
    assert (cp.sparsity, cp.saliency_steps, cp.num_inference_steps, cp.guidance_scale) == (0.01, 10, 50, 7.5)
    u = UCEConfig()
    assert u.anchor == "" and u.projections == ("to_k", "to_v")
    e = ESDConfig()
    assert e.eta == 1.0 and 200 <= e.train_steps <= 400 and e.ddim_steps == 50


@pytest.mark.parametrize(
    "cfg",
    [
        ConceptPruneConfig(sparsity=0),
        ConceptPruneConfig(step_share=1.5),
        ConceptPruneConfig(saliency_steps=60),
        ConceptPruneConfig(group="column"),
        UCEConfig(lamb=-1),
        UCEConfig(projections=("to_q",)),
        ESDConfig(lr=0),
        ESDConfig(sample_with="teacher"),
        FIAConfig(selection="rows"),
        FIAConfig(fusion="intersection"),
    ],
)
def test_bad_settings_raise_fia_error(cfg):
    with pytest.raises(FIAError):
        cfg.validate()


def test_conceptprune_uses_fia_prompts_and_seeds():
    from fia.config import FIAConfig
    from fia.prompts import ConceptPrompts
    from fia.tasks import build_prompts

    cfg = ConceptPruneConfig(task="shapeworld", seed=5)
    got = conceptprune._as_prompts("star", None, cfg)
    assert got == build_prompts("star", FIAConfig(task="shapeworld", seed=5))
    short = conceptprune._as_prompts("star", None, cfg.replace(prompt_limit=2))
    assert len(short.concept_prompts) == len(short.base_seeds) == 2
    pair = conceptprune._as_prompts("star", (["a star", "two stars"], ["a thing"]), cfg)
    assert pair == ConceptPrompts("star", ("a star", "two stars"), ("a thing",), (5, 6), (5,))
    with pytest.raises(FIAError):
        conceptprune._as_prompts("star", (["a star"], []), cfg)


# -------------------------------------------------------------- ConceptPrune
def _brute_skilled(c, r, share, step_share, group):
    steps, rows, cols = c.shape
    counts = torch.zeros(rows, cols, dtype=torch.int64)
    for t in range(steps):
        groups = (
            [[(i, j) for i in range(rows) for j in range(cols)]]
            if group == "layer"
            else [[(i, j) for j in range(cols)] for i in range(rows)]
        )
        for members in groups:
            k = max(1, math.floor(share * len(members) + 1e-9))
            flat = [(float(c[t, i, j] - r[t, i, j]), n, (i, j)) for n, (i, j) in enumerate(members)]
            ranked = sorted(flat, key=lambda e: (-e[0], e[1]))[:k]
            for d, _, (i, j) in ranked:
                if d > 0:
                    counts[i, j] += 1
    need = max(1, math.ceil(step_share * steps - 1e-9))
    return counts >= need


@pytest.mark.parametrize("group", ["layer", "row"])
@pytest.mark.parametrize("share,step_share", [(0.1, 0.5), (0.25, 1.0), (0.5, 0.2), (0.05, 0.34)])
def test_skilled_neurons_match_brute_force(group, share, step_share):
    g = torch.Generator().manual_seed(7)
    # small integers: many ties and many non-positive differences
    c = torch.randint(0, 5, (3, 4, 6), generator=g).float()
    r = torch.randint(0, 5, (3, 4, 6), generator=g).float()
    got = skilled_neurons(c, r, share, step_share, group)
    assert torch.equal(got, _brute_skilled(c, r, share, step_share, group))


def test_skilled_neurons_need_positive_difference_and_frequency():
    c = torch.zeros(2, 2, 2)
    r = torch.zeros(2, 2, 2)
    assert not skilled_neurons(c, r, 1.0, 0.5).any()  # no concept > reference: nothing
    c[0, 0, 0] = 1.0  # selected at step 0 only
    c[:, 1, 1] = 2.0  # selected at both steps
    assert skilled_neurons(c, r, 1.0, 0.5).nonzero().tolist() == [[0, 0], [1, 1]]
    assert skilled_neurons(c, r, 1.0, 1.0).nonzero().tolist() == [[1, 1]]


def test_wanda_scores():
    w = torch.tensor([[1.0, -2.0], [-3.0, 4.0]])
    sq = torch.tensor([[4.0, 9.0]])
    assert torch.equal(conceptprune.wanda_scores(w, sq)[0], torch.tensor([[2.0, 6.0], [6.0, 12.0]]))


def test_conceptprune_norms_do_not_depend_on_batching(pipe):
    prompts = ["a star on the grass", "a circle in the sky", "a ring on the sand"]
    whole = conceptprune.collect_sq_norms(pipe, prompts, FAST_CP)
    single = conceptprune.collect_sq_norms(pipe, prompts, FAST_CP.replace(batch_size=1))
    assert whole.keys() == single.keys()
    for name in whole:
        assert whole[name].shape == (3, pipe.unet.get_submodule(name).in_features)
        assert (whole[name] > 0).all()
        torch.testing.assert_close(whole[name], single[name], rtol=1e-5, atol=0)


def test_conceptprune_zeroes_only_ffn2_weights(pipe, base_pipe):
    before = unet_weights(pipe)
    mask = unlearn(pipe, ["star", "circle"], "conceptprune", FAST_CP)
    assert mask.method == "conceptprune" and mask.concepts == ["star", "circle"]
    assert _changed(before, pipe) == set(), "unlearn leaves the pipeline alone"
    mask.apply_(pipe)
    changed = _changed(before, pipe)
    ffn2 = ffn2_weight_names(pipe)
    assert changed and changed <= ffn2
    state = pipe.unet.state_dict()
    for name in ffn2:
        layer = name.removesuffix(".weight")
        diff = state[name] != before[name]
        assert (state[name][diff] == 0).all(), "pruning only zeroes weights"
        assert (state[name][mask.to_dense(layer)] == 0).all()
        assert torch.equal(diff, mask.to_dense(layer) & (before[name] != 0))
    _others_unchanged(pipe, base_pipe)
    # the edited pipeline is an ordinary pipeline
    out = pipe("a star on the grass", num_inference_steps=2, output_type="latent").images
    assert torch.isfinite(out).all()


def test_conceptprune_deterministic(base_pipe):
    a, b = copy.deepcopy(base_pipe), copy.deepcopy(base_pipe)
    prompts = {"star": (["a star on the grass", "a star in the sky"], ["the grass", "the sky"])}
    ma = unlearn(a, ["star"], "conceptprune", FAST_CP, prompts=prompts)
    mb = unlearn(b, ["star"], "conceptprune", FAST_CP, prompts=prompts)
    ma.apply_(a)
    mb.apply_(b)
    assert all(torch.equal(ma.to_dense(k), mb.to_dense(k)) for k in ma.layer_names)
    assert ma == mb  # the same bytes, provenance included
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------- UCE
def test_uce_closed_form_minimises_the_objective():
    g = torch.Generator().manual_seed(0)
    w_old = torch.randn(5, 8, generator=g, dtype=torch.float64)
    ce = torch.randn(3, 8, generator=g, dtype=torch.float64)
    ve = torch.randn(3, 5, generator=g, dtype=torch.float64)
    cp = torch.randn(4, 8, generator=g, dtype=torch.float64)
    kw = {"erase_scale": 2.0, "preserve_scale": 0.5, "lamb": 0.3}
    w = uce.closed_form(w_old, ce, ve, cp, **kw)
    # independent solve: the stacked least-squares system  A W^T = B
    a = torch.cat([math.sqrt(2.0) * ce, math.sqrt(0.5) * cp, math.sqrt(0.3) * torch.eye(8, dtype=torch.float64)])
    b = torch.cat([math.sqrt(2.0) * ve, math.sqrt(0.5) * cp @ w_old.T, math.sqrt(0.3) * w_old.T])
    ref = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(w, ref, rtol=1e-9, atol=1e-9)
    # and the gradient of the paper's objective vanishes there
    wv = w.clone().requires_grad_(True)
    uce.objective(wv, w_old, ce, ve, cp, **kw).backward()
    assert wv.grad.abs().max() < 1e-9
    # without preservation and with tiny lambda, erased inputs map onto their targets
    w2 = uce.closed_form(w_old, ce, ve, cp[:0], lamb=1e-9)
    torch.testing.assert_close(ce @ w2.T, ve, rtol=1e-6, atol=1e-6)


def test_uce_edits_exactly_cross_attention_keys_and_values(pipe, base_pipe):
    before = unet_weights(pipe)
    delta = unlearn(pipe, ["star", "circle"], "uce", preserve=["square"])
    assert _changed(before, pipe) == set(), "unlearn leaves the pipeline alone"
    delta.apply_(pipe)
    expected = {
        f"{name}.{proj}.weight"
        for name, m in pipe.unet.named_modules()
        if name.endswith("attn2")
        for proj in ("to_k", "to_v")
    }
    assert len(expected) == 8
    assert _changed(before, pipe) == expected == set(delta.parameter_names)
    _others_unchanged(pipe, base_pipe)


def test_uce_pipeline_edit_solves_the_stacked_system(pipe):
    cfg = UCEConfig(anchor="ring", preserve_scale=2.0, lamb=0.5)
    ce, ca, cp = uce.edit_inputs(pipe, ["star"], cfg, ["square", "heart"])
    # the concept's rows are its word tokens + end token, the anchor's at the same positions
    assert ce.shape == ca.shape and ce.shape[0] == len(uce.token_positions(pipe, "star", "concept_eos"))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    w_old = pipe.unet.get_submodule(name).weight.detach().double()
    unlearn(pipe, ["star"], "uce", cfg, preserve=["square", "heart"]).apply_(pipe)
    w_new = pipe.unet.get_submodule(name).weight.detach().double()
    d = w_old.shape[1]
    s, lam = math.sqrt(2.0), math.sqrt(0.5)
    a = torch.cat([ce, s * cp, lam * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([ca @ w_old.T, s * cp @ w_old.T, lam * w_old.T])
    ref = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(w_new, ref, rtol=1e-4, atol=1e-5)


def test_uce_preserve_only_leaves_weights_unchanged(pipe):
    before = unet_weights(pipe)
    uce.unlearn(pipe, [], preserve=["square", "heart", "Ovalli"]).apply_(pipe)
    for k, v in pipe.unet.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=1e-5, atol=1e-6)


def test_uce_rejects_overlap_and_nothing(pipe):
    with pytest.raises(FIAError, match="both erased and preserved"):
        unlearn(pipe, ["star"], "uce", preserve=["star"])
    with pytest.raises(FIAError, match="no concepts given"):
        unlearn(pipe, [], "uce")
    with pytest.raises(FIAError, match="no concepts given"):
        uce.unlearn(pipe, [])


def test_uce_deterministic(base_pipe):
    a, b = copy.deepcopy(base_pipe), copy.deepcopy(base_pipe)
    unlearn(a, ["star"], "uce", preserve=["square"]).apply_(a)
    unlearn(b, ["star"], "uce", preserve=["square"]).apply_(b)
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------- ESD-x
def test_esd_trains_only_cross_attention(pipe, base_pipe):
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    before = unet_weights(pipe)
    delta = unlearn(pipe, ["star"], "esd-x", FAST_ESD)
    assert _changed(before, pipe) == set(), "training ran on the pipeline, whose weights are put back"
    delta.apply_(pipe)
    losses = delta.stats["losses"]
    assert len(losses) == FAST_ESD.train_steps and all(math.isfinite(x) for x in losses)
    changed = _changed(before, pipe)
    attn2 = {n for n in before if ".attn2." in n}
    assert changed and changed <= attn2
    assert set(esd.trainable_names(pipe.unet)) == attn2
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
    assert all(p.grad is None for p in pipe.unet.parameters())
    _others_unchanged(pipe, base_pipe)


def test_esd_puts_the_weights_back_when_training_fails(pipe, monkeypatch):
    before = unet_weights(pipe)
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    real_mse, calls = torch.nn.functional.mse_loss, []

    def fail_on_second_step(pred, target):
        calls.append(1)
        if len(calls) == 2:  # the first Adam step has already moved the weights
            raise RuntimeError("interrupted")
        return real_mse(pred, target)

    monkeypatch.setattr(esd.F, "mse_loss", fail_on_second_step)
    with pytest.raises(RuntimeError, match="interrupted"):
        unlearn(pipe, ["star"], "esd-x", FAST_ESD)
    assert len(calls) == 2
    assert _changed(before, pipe) == set()
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_esd_deterministic_given_seed(base_pipe):
    runs = []
    for seed in (3, 3, 4):
        p = copy.deepcopy(base_pipe)
        unlearn(p, ["star", "circle"], "esd-x", FAST_ESD.replace(seed=seed, sample_with="frozen")).apply_(p)
        runs.append(p.unet.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_esd_target_is_negative_guidance(pipe, monkeypatch):
    """With eta = 0 the target is the frozen unconditional prediction: loss at step 1 equals that MSE."""
    seen = {}
    real_mse = torch.nn.functional.mse_loss

    def spy(pred, target):
        seen.setdefault("target", target.detach().clone())
        seen.setdefault("pred", pred.detach().clone())
        return real_mse(pred, target)

    monkeypatch.setattr(esd.F, "mse_loss", spy)
    cfg = ESDConfig(train_steps=1, ddim_steps=1, eta=0.0, seed=0)  # k = 0: x_t = x_T
    unlearn(copy.deepcopy(pipe), ["star"], "esd-x", cfg)
    gen = torch.Generator().manual_seed(0)
    torch.randint(1, (1,), generator=gen)
    x = torch.randn((1, 4, 8, 8), generator=gen) * pipe.scheduler.init_noise_sigma
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    from fia.baselines._common import text_embeddings

    with torch.no_grad():
        e_u = pipe.unet(x, t, encoder_hidden_states=text_embeddings(pipe, [""])).sample
        e_c = pipe.unet(x, t, encoder_hidden_states=text_embeddings(pipe, ["star"])).sample
    torch.testing.assert_close(seen["target"], e_u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen["pred"], e_c, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- random control
def test_random_mask_has_exact_counts_and_is_seed_deterministic():
    counts = {"a": 5, "b": 0, "c": 12}
    shapes = {"a": (4, 6), "b": (3, 3), "c": (2, 3, 4)}
    m1 = random_mask_like(counts, shapes, seed=1)
    m2 = random_mask_like(counts, shapes, seed=1)
    m3 = random_mask_like(counts, shapes, seed=2)
    for name, count in counts.items():
        assert m1[name].dtype == torch.bool and tuple(m1[name].shape) == shapes[name]
        assert int(m1[name].sum()) == count
        assert torch.equal(m1[name], m2[name])
    assert not torch.equal(m1["a"], m3["a"]) or not torch.equal(m1["c"], m3["c"])
    # a layer's draw does not depend on the other layers
    alone = random_mask_like({"c": 12}, {"c": (2, 3, 4)}, seed=1)
    assert torch.equal(alone["c"], m1["c"])
    assert counts_of(m1) == (counts, shapes)


def test_random_mask_like_a_real_mask():
    g = torch.Generator().manual_seed(0)
    mask = {"x": torch.rand(16, 64, generator=g) < 0.05, "y": torch.rand(8, 32, generator=g) < 0.2}
    rnd = random_mask_like(*counts_of(mask), seed=0)
    assert {k: int(v.sum()) for k, v in rnd.items()} == {k: int(v.sum()) for k, v in mask.items()}


@pytest.mark.parametrize(
    "counts,shapes",
    [({"a": 7}, {"a": (2, 3)}), ({"a": -1}, {"a": (2, 3)}), ({"a": 1}, {"b": (2, 3)}), ({"a": 1.5}, {"a": (2, 3)})],
)
def test_random_mask_rejects_bad_input(counts, shapes):
    with pytest.raises(FIAError):
        random_mask_like(counts, shapes, seed=0)


def test_training_free_methods_run_on_sdxl():
    from fia.testing import tiny_sdxl_pipeline

    p = tiny_sdxl_pipeline(seed=0)
    before = unet_weights(p)
    cfg = ConceptPruneConfig(saliency_steps=2, num_inference_steps=3, task="shapeworld", prompt_limit=2, sparsity=0.05)
    mask = unlearn(p, ["star"], "conceptprune", cfg)
    mask.apply_(p)
    assert len(mask.layers) == len(ffn2_weight_names(p))
    assert any(mask.to_dense(n).any() for n in mask.layer_names)
    assert _changed(before, p) <= ffn2_weight_names(p)
    before = unet_weights(p)
    unlearn(p, ["star"], "uce", preserve=["square"]).apply_(p)
    changed = _changed(before, p)
    assert changed and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in changed)
    with pytest.raises(FIAError, match="not SD XL"):
        unlearn(p, ["star"], "esd-x", FAST_ESD)
