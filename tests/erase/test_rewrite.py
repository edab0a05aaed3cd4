"""The rewrite variant on a tiny random SD pipeline: no pruning, one reversible deterministic edit, its statistics."""

from __future__ import annotations

import pytest
import torch

import fia
from fia.config import FIARewriteConfig, RewriteConfig, config_for_variant
from fia.core.rewrite import rewrite_layer
from fia.errors import FIAError
from fia.repair import collect_grams
from fia.rewrite import paired_moments
from fia.targets import find_targets
from tests.helpers import load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

SMALL = RewriteConfig(keep_prompts_per_kind=2, concept_prompts_per_concept=2, balance_rounds=1)


def tiny_rewrite_config(**changes) -> FIARewriteConfig:
    base = {"task": "object", "num_inference_steps": 3, "guidance_scale": 3.0, "rewrite": SMALL}
    base.update(changes)
    return FIARewriteConfig(**base).validate()


def rewrite_prompts(erased, cfg):
    from fia.tasks import task_of

    return task_of(cfg).rewrite_prompts(erased, cfg.rewrite, anchors=cfg.anchors, seed=cfg.seed)


def _ffn2(pipe):
    return {t.name: t.module.weight.detach().clone() for t in find_targets(pipe.unet, "ffn2")}


def test_rewrite_is_one_reversible_deterministic_edit_without_zeros(tiny_dir, tmp_path):
    pipe = load_tiny(tiny_dir)
    before = _ffn2(pipe)
    cfg = tiny_rewrite_config()
    mask = fia.erase(pipe, ["golf ball"], cfg)
    assert all(torch.equal(w, before[n]) for n, w in _ffn2(pipe).items())  # the model is left as it was
    assert mask.pruned == 0 and mask.repaired
    assert mask.config["variant"] == "rewrite" and mask.config["rewrite"]["balance_rounds"] == 1
    for lm in mask.layers:  # every row is carried, with its original values
        assert lm.rows.tolist() == list(range(lm.shape[0]))
        assert torch.equal(lm.row_originals, before[lm.name])
    assert fia.erase(pipe, ["golf ball"], cfg).to_bytes() == mask.to_bytes()
    path = mask.save(tmp_path / "mask.safetensors")
    mask.apply_(pipe)
    edited = _ffn2(pipe)
    assert all(not torch.equal(edited[n], before[n]) for n in before)
    assert all(int((edited[n] == 0).sum()) == int((before[n] == 0).sum()) for n in before)  # no zeros to refill
    fia.load_edit(path).apply_(pipe)  # applying the same edit again changes nothing
    assert all(torch.equal(w, edited[n]) for n, w in _ffn2(pipe).items())
    fia.load_edit(path).restore_(pipe)
    assert all(torch.equal(w, before[n]) for n, w in _ffn2(pipe).items())
    assert "closed-form rewrite: every row" in mask.summary()
    from fia.evaluate.report import layers_figure

    assert layers_figure(fia.load_edit(path), tmp_path / "layers.png").stat().st_size > 0  # the report's figure reads it
    stats = mask.stats
    assert stats["variant"] == "rewrite" and stats["prompts"]["concept"] == 2 and set(stats["per_layer"]) == set(before)


def test_rewrite_solves_the_system_of_its_own_statistics(tiny_dir):
    """With no balancing, each layer's new weight is rewrite_layer on G_k, G_c and C collected independently here."""
    pipe = load_tiny(tiny_dir)
    cfg = tiny_rewrite_config(rewrite=RewriteConfig(concept_weight=0.7, damping=0.05, balance_rounds=0,
                                                   keep_prompts_per_kind=2, concept_prompts_per_concept=2))
    mask = fia.erase(pipe, ["golf ball"], cfg)
    targets = find_targets(pipe.unet, "ffn2")
    rp = rewrite_prompts(["golf ball"], cfg)
    assert len(rp.concept) == len(rp.scene) == 2 and all("golf ball" not in s for s in rp.scene)
    gk = collect_grams(pipe, targets, rp.keep, rp.keep_seeds, rows="all", num_inference_steps=3, guidance_scale=3.0)
    gc, cross, reference, anchoring = paired_moments(pipe, targets, rp, cfg)
    assert reference is None and anchoring == {}  # anchored guidance off: the push is relative to the scene
    for t in targets:
        expected = rewrite_layer(t.module.weight, gk[t.name], gc[t.name], cross[t.name], concept_weight=0.7, damping=0.05)
        assert torch.allclose(mask.layer(t.name).row_values, expected, atol=1e-5, rtol=1e-4)


def _paired_means(pipe, targets, rp, guide_by):
    """Mean ``x_c x_c^T`` and ``x_t x_c^T`` per target along one kind of trajectory, collected here by hand."""
    from fia.sampling import capture, paired_steps

    sums = {}

    def hook(name, _module, args, _output):
        _, xc, xt = (x.reshape(-1, x.shape[-1]).double() for x in args[0].detach().chunk(3))
        g, c, n = sums.get(name, (0, 0, 0))
        sums[name] = (g + xc.T @ xc, c + xt.T @ xc, n + xc.shape[0])

    with capture(targets, hook):
        paired_steps(pipe, rp.concept, rp.scene, rp.concept_seeds, num_inference_steps=3, guidance_scale=3.0, guide_by=guide_by)
    return {n: (g / k, c / k) for n, (g, c, k) in sums.items()}


def test_concept_trajectory_and_negative_guidance_solve_the_system_of_both_trajectories(tiny_dir):
    """With concept_trajectory, G_c and C are the mean over the scene's and the concept's trajectories
    (equal counts); negative_guidance reaches the solve."""
    pipe = load_tiny(tiny_dir)
    rc = RewriteConfig(concept_weight=0.7, damping=0.05, balance_rounds=0, keep_prompts_per_kind=2,
                       concept_prompts_per_concept=2, concept_trajectory=True, negative_guidance=1.5)
    cfg = tiny_rewrite_config(rewrite=rc)
    mask = fia.erase(pipe, ["golf ball"], cfg)
    assert mask.config["rewrite"]["concept_trajectory"] is True and mask.config["rewrite"]["negative_guidance"] == 1.5
    targets = find_targets(pipe.unet, "ffn2")
    rp = rewrite_prompts(["golf ball"], cfg)
    gk = collect_grams(pipe, targets, rp.keep, rp.keep_seeds, rows="all", num_inference_steps=3, guidance_scale=3.0)
    scene, concept = _paired_means(pipe, targets, rp, "follow"), _paired_means(pipe, targets, rp, "prompts")
    for t in targets:
        assert not torch.allclose(scene[t.name][0], concept[t.name][0])  # the two trajectories differ
        gc = (scene[t.name][0] + concept[t.name][0]) / 2
        cross = (scene[t.name][1] + concept[t.name][1]) / 2
        expected = rewrite_layer(t.module.weight, gk[t.name], gc, cross, concept_weight=0.7, damping=0.05, negative_guidance=1.5)
        assert torch.allclose(mask.layer(t.name).row_values, expected, atol=1e-5, rtol=1e-4)


def test_anchored_guidance_pushes_relative_to_a_kept_concept_in_the_erased_ones_place(tiny_dir):
    """With anchored_guidance beta, the push's reference is R = (1 - beta) C + beta A, A = mean x_a x_c^T under the
    anchor prompt ("a golf ball in a park" -> "a dog in a park") at the same latents, collected here by hand."""
    from fia.sampling import capture, paired_steps

    pipe = load_tiny(tiny_dir)
    rc = RewriteConfig(concept_weight=0.7, damping=0.05, balance_rounds=0, keep_prompts_per_kind=2,
                       concept_prompts_per_concept=2, negative_guidance=1.5, anchored_guidance=0.5)
    cfg = tiny_rewrite_config(rewrite=rc, anchors=["dog"])
    mask = fia.erase(pipe, ["golf ball"], cfg)
    assert mask.config["rewrite"]["anchored_guidance"] == 0.5
    targets = find_targets(pipe.unet, "ffn2")
    rp = rewrite_prompts(["golf ball"], cfg)
    assert [a.replace("dog", "golf ball") for a in rp.anchor] == list(rp.concept) and all("dog" in a for a in rp.anchor)
    gk = collect_grams(pipe, targets, rp.keep, rp.keep_seeds, rows="all", num_inference_steps=3, guidance_scale=3.0)
    sums = {}

    def hook(name, _module, args, _output):
        _, xc, xt, xa = (x.reshape(-1, x.shape[-1]).double() for x in args[0].detach().chunk(4))
        g, c, a, n = sums.get(name, (0, 0, 0, 0))
        sums[name] = (g + xc.T @ xc, c + xt.T @ xc, a + xa.T @ xc, n + xc.shape[0])

    with capture(targets, hook):
        paired_steps(pipe, rp.concept, rp.scene, rp.concept_seeds, num_inference_steps=3, guidance_scale=3.0, anchors=rp.anchor)
    for t in targets:
        g, c, a, n = sums[t.name]
        assert not torch.allclose(a, c)  # the anchor's inputs are not the scene's
        expected = rewrite_layer(t.module.weight, gk[t.name], g / n, c / n, concept_weight=0.7, damping=0.05,
                                 negative_guidance=1.5, reference=(0.5 * c + 0.5 * a) / n)
        assert torch.allclose(mask.layer(t.name).row_values, expected, atol=1e-5, rtol=1e-4)
    plain = fia.erase(pipe, ["golf ball"], tiny_rewrite_config(rewrite=RewriteConfig(**{**rc.to_dict(), "anchored_guidance": 0.0}),
                                                               anchors=["dog"]))
    assert not torch.allclose(plain.layer(targets[0].name).row_values, mask.layer(targets[0].name).row_values)


def test_anchored_shares_anchor_only_the_concepts_whose_anchors_move_the_layers_less():
    from fia.rewrite import anchored_shares

    ratios = {"a": 0.5, "b": 3.0, "c": 1.0}
    below_one = anchored_shares(ratios, 0.8, 1.0)
    assert {c: v["beta"] for c, v in below_one.items()} == {"a": 0.8, "b": 0.0, "c": 0.0}  # a tie is not below
    assert {c: v["anchored"] for c, v in anchored_shares(ratios, 0.8, 0.4).items()} == {"a": False, "b": False, "c": False}
    assert {c: v["anchored"] for c, v in anchored_shares(ratios, 0.8, None).items()} == {"a": True, "b": True, "c": True}


def test_anchored_below_anchors_each_concept_by_its_first_step_energies(tiny_dir):
    """anchored_below 1: per concept, E|W (x_c - x_t)|^2 and E|W (x_a - x_t)|^2 over its own prompts and every layer,
    at the sampler's first step, decide whether its push is anchored; then R = C + beta mean (x_a - x_t) x_c^T with
    x_a = x_t for the concepts not anchored. All collected here by hand, image by image."""
    from fia.sampling import capture, paired_steps

    pipe = load_tiny(tiny_dir)
    rc = RewriteConfig(concept_weight=0.7, damping=0.05, balance_rounds=0, keep_prompts_per_kind=2,
                       concept_prompts_per_concept=2, negative_guidance=1.5, anchored_guidance=0.6, anchored_below=1.0)
    cfg = tiny_rewrite_config(rewrite=rc, anchors=["dog"])
    erased = ["golf ball", "church"]
    mask = fia.erase(pipe, erased, cfg)
    targets = find_targets(pipe.unet, "ffn2")
    rp = rewrite_prompts(erased, cfg)
    assert rp.owner == ("golf ball", "golf ball", "church", "church")
    gk = collect_grams(pipe, targets, rp.keep, rp.keep_seeds, rows="all", num_inference_steps=3, guidance_scale=3.0)
    energy = {c: torch.zeros(2, dtype=torch.float64) for c in erased}
    owner, steps = [""], [0]

    def first_step(name, module, args, _output):
        _, xc, xt, xa = (x.reshape(-1, x.shape[-1]).double() for x in args[0].detach().chunk(4))
        w = module.weight.double()
        energy[owner[0]] += torch.stack([((xc - xt) @ w.T).square().sum(), ((xa - xt) @ w.T).square().sum()])
        steps[0] += name == targets[0].name

    with capture(targets, first_step):
        for k in range(len(rp.concept)):  # one image at a time, so each one's owner is known
            owner[0] = rp.owner[k]
            paired_steps(pipe, rp.concept[k : k + 1], rp.scene[k : k + 1], rp.concept_seeds[k : k + 1], num_inference_steps=3,
                         guidance_scale=3.0, anchors=rp.anchor[k : k + 1], stop_after=1)
    assert steps[0] == len(rp.concept)  # one denoiser call per image: the first step only
    ratio = {c: float(e[1] / e[0]) for c, e in energy.items()}
    recorded = mask.stats["anchoring"]
    assert {c: v["anchor_over_concept"] for c, v in recorded.items()} == pytest.approx(ratio, abs=1e-4)
    assert {c: v["anchored"] for c, v in recorded.items()} == {c: r < 1 for c, r in ratio.items()}
    assert {v["anchored"] for v in recorded.values()} == {True, False}  # this tiny model has one of each: both branches checked
    sums = {}

    def paired(name, _module, args, _output):
        _, xc, xt, xa = (x.reshape(-1, x.shape[-1]).double() for x in args[0].detach().chunk(4))
        g, c, d, n = sums.get(name, (0, 0, 0, 0))
        sums[name] = (g + xc.T @ xc, c + xt.T @ xc, d + (xa - xt).T @ xc, n + xc.shape[0])

    shown = [a if ratio[o] < 1 else t for o, a, t in zip(rp.owner, rp.anchor, rp.scene)]
    with capture(targets, paired):
        paired_steps(pipe, rp.concept, rp.scene, rp.concept_seeds, num_inference_steps=3, guidance_scale=3.0, anchors=shown)
    for t in targets:
        g, c, d, n = sums[t.name]
        expected = rewrite_layer(t.module.weight, gk[t.name], g / n, c / n, concept_weight=0.7, damping=0.05,
                                 negative_guidance=1.5, reference=(c + 0.6 * d) / n)
        assert torch.allclose(mask.layer(t.name).row_values, expected, atol=1e-5, rtol=1e-4)
    every = fia.erase(pipe, erased, tiny_rewrite_config(rewrite=RewriteConfig(**{**rc.to_dict(), "anchored_below": None}),
                                                        anchors=["dog"]))
    assert all(v["anchored"] for v in every.stats["anchoring"].values())
    assert not torch.allclose(every.layer(targets[0].name).row_values, mask.layer(targets[0].name).row_values)
    # no concept below the cut: the edit of the scene's push, byte for byte, with the ratios still recorded
    none = fia.erase(pipe, erased, tiny_rewrite_config(rewrite=RewriteConfig(**{**rc.to_dict(), "anchored_below": 0.0}),
                                                       anchors=["dog"]))
    plain = fia.erase(pipe, erased, tiny_rewrite_config(rewrite=RewriteConfig(**{**rc.to_dict(), "anchored_guidance": 0.0}),
                                                        anchors=["dog"]))
    assert not any(v["anchored"] for v in none.stats["anchoring"].values()) and "anchoring" not in plain.stats
    assert all(torch.equal(none.layer(t.name).row_values, plain.layer(t.name).row_values) for t in targets)


def test_without_an_anchor_concept_the_push_reference_is_the_scene(tiny_dir):
    """No anchors named: every anchor prompt is its scene, so anchored guidance changes nothing."""
    cfg = tiny_rewrite_config(rewrite=RewriteConfig(**{**SMALL.to_dict(), "anchored_guidance": 1.0}))
    rp = rewrite_prompts(["golf ball"], cfg)
    assert rp.anchor == rp.scene


def test_bad_rewrite_settings_stop_before_any_work(tmp_path):
    with pytest.raises(FIAError, match="belong to --variant rewrite"):
        config_for_variant("causal", {"rewrite": RewriteConfig()})
    with pytest.raises(FIAError, match="damping must be > 0"):
        tiny_rewrite_config(rewrite={"damping": 0.0})
    with pytest.raises(FIAError, match="balance_rounds"):
        tiny_rewrite_config(rewrite={"balance_rounds": -1})
    with pytest.raises(FIAError, match="negative_guidance must be a finite number >= 0"):
        tiny_rewrite_config(rewrite={"negative_guidance": -0.5})
    with pytest.raises(FIAError, match="anchored_guidance is a share between 0 and 1"):
        tiny_rewrite_config(rewrite={"anchored_guidance": 1.5})
    with pytest.raises(FIAError, match="anchored_below must be a finite number >= 0, got 'some'"):
        tiny_rewrite_config(rewrite={"anchored_below": "some"})
    with pytest.raises(FIAError, match="concept_trajectory must be true or false"):
        tiny_rewrite_config(rewrite={"concept_trajectory": "yes"})
    with pytest.raises(FIAError, match="unknown setting"):
        tiny_rewrite_config(rewrite={"lambda": 1.0})
    prompts = tmp_path / "p.txt"
    prompts.write_text("a {concept}\n")
    with pytest.raises(FIAError, match="prompt files apply to --variant paper; the rewrite variant"):
        fia.plan_erase(["golf ball"], tiny_rewrite_config(), concept_prompts=prompts)
    with pytest.raises(FIAError, match="golf ball is both erased and an anchor; the rewrite cannot keep and erase"):
        fia.plan_erase(["golf ball", "tower"], tiny_rewrite_config(anchors=["Golf Ball", "church"]))
    fia.plan_erase(["tower"], tiny_rewrite_config(anchors=["Golf Ball", "church"]))  # disjoint: planned
    assert FIARewriteConfig().validate().rewrite == RewriteConfig()  # the defaults fill in


def test_statistics_take_float32_products_and_float64_sums():
    """Each batch's ``x^T x`` is computed in float32 and added to a float64 sum: the means match float64
    products summed by hand to float32 rounding, and stay float64 (many batches add no float32 error)."""
    from fia.repair import _GroupGramAccumulator
    from fia.rewrite import PRODUCT_DTYPE, _PairedMoments

    assert PRODUCT_DTYPE == torch.float32
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 5, 8, generator=gen) for _ in range(40)]  # [uncond; concept; scene] x 2 prompts, 5 tokens
    paired = _PairedMoments()
    grouped = _GroupGramAccumulator(guided=True, product_dtype=PRODUCT_DTYPE)
    grouped.batch_groups = ["a", "b", "a"]  # guided: sample i is rows i and 3 + i
    for x in batches:
        paired.hook("layer", None, (x,), None)
        grouped.hook("layer", None, (x,), None)
    gram_c, cross, shift = paired.means()
    assert shift == {}  # no batch showed anchors: no shift is held
    gram_c, cross = gram_c["layer"], cross["layer"]
    rows = [x.double().chunk(3) for x in batches]
    xc = torch.cat([r[1].reshape(-1, 8) for r in rows])
    xt = torch.cat([r[2].reshape(-1, 8) for r in rows])
    assert gram_c.dtype == cross.dtype == torch.float64
    torch.testing.assert_close(gram_c, xc.T @ xc / len(xc), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cross, xt.T @ xc / len(xc), rtol=1e-6, atol=1e-6)
    group_a = torch.cat([x.double()[[0, 2, 3, 5]].reshape(-1, 8) for x in batches])
    mean_a = grouped.means()["a"]["layer"]
    assert mean_a.dtype == torch.float64
    torch.testing.assert_close(mean_a, group_a.T @ group_a / len(group_a), rtol=1e-6, atol=1e-6)


def test_default_batches_grow_only_on_small_latents():
    """Left unset, the batches are 32 kept / 16 paired prompts on SD-sized latents and 64 / 48 on ShapeWorld's."""
    from types import SimpleNamespace

    from fia.rewrite import _batches, default_batches

    def model(side=None):
        module = torch.nn.Linear(1, 1)
        if side is not None:
            module.config = {"sample_size": side}
        return module

    assert default_batches(8) == default_batches(16) == (64, 48)
    assert default_batches(64) == default_batches(17) == default_batches(None) == (32, 16)
    assert _batches(SimpleNamespace(unet=model(8))) == (64, 48)
    assert _batches(SimpleNamespace(transformer=model(128))) == (32, 16)
    assert _batches(model()) == (32, 16)  # a bare denoiser without a config: the SD-sized batches


def test_keep_guided_holds_the_mix_the_sampler_steps_with():
    """With ``combine`` (the guidance scale) each kept sample's rows ``[x_u; x_c]`` count as the one row
    ``x_u + s (x_c - x_u)``: the group's mean is that row's ``x x^T``, checked against a hand sum."""
    from fia.repair import _GroupGramAccumulator

    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 4, 5, generator=gen) for _ in range(10)]  # 3 samples x [uncond; cond], 4 tokens
    plain = _GroupGramAccumulator(guided=True)
    mixed = _GroupGramAccumulator(guided=True, product_dtype=torch.float64, combine=5.0)
    unguided = _GroupGramAccumulator(guided=False, combine=5.0)  # one row per sample: nothing to combine
    for acc in (plain, mixed, unguided):
        acc.batch_groups = ["a", "b", "a"]
        for x in batches:
            acc.hook("layer", None, (x.double(),), None)
    rows = torch.cat([x.double()[[0, 2]] + 5.0 * (x.double()[[3, 5]] - x.double()[[0, 2]]) for x in batches]).reshape(-1, 5)
    torch.testing.assert_close(mixed.means()["a"]["layer"], rows.T @ rows / len(rows))
    both = torch.cat([x.double()[[0, 2, 3, 5]] for x in batches]).reshape(-1, 5)
    torch.testing.assert_close(plain.means()["a"]["layer"], both.T @ both / len(both))
    first = torch.cat([x.double()[[0, 2]] for x in batches]).reshape(-1, 5)  # unguided: rows i of the group only
    torch.testing.assert_close(unguided.means()["a"]["layer"], first.T @ first / len(first))


def test_keep_guided_is_a_recorded_switch():
    assert RewriteConfig().keep_guided is False  # edit files made before it read back as they were made
    cfg = config_for_variant("rewrite", {"task": "object", "rewrite": {"keep_guided": True}})
    assert cfg.rewrite.keep_guided is True and cfg.to_dict()["rewrite"]["keep_guided"] is True
    with pytest.raises(FIAError, match="rewrite.keep_guided must be true or false"):
        RewriteConfig(keep_guided="yes").validate()


def test_keep_guided_solves_with_the_kept_prompts_guided_inputs(tiny_dir):
    """With keep_guided (no balancing), each layer's weight is rewrite_layer on G_k = mean g g^T of the kept
    prompts' guided rows g = x_u + s (x_c - x_u), collected here by hand, and the concept statistics as before."""
    import dataclasses

    from fia.sampling import capture, generate

    pipe = load_tiny(tiny_dir)
    rc = RewriteConfig(concept_weight=0.7, damping=0.05, balance_rounds=0, keep_prompts_per_kind=2,
                       concept_prompts_per_concept=2, keep_guided=True)
    cfg = tiny_rewrite_config(rewrite=rc)
    mask = fia.erase(pipe, ["golf ball"], cfg)
    plain = fia.erase(pipe, ["golf ball"], cfg.replace(rewrite=dataclasses.replace(rc, keep_guided=False)))
    targets = find_targets(pipe.unet, "ffn2")
    rp = rewrite_prompts(["golf ball"], cfg)
    sums = {}

    def hook(name, _module, args, _output):
        u, c = args[0].detach().double().chunk(2)
        g = (u + 3.0 * (c - u)).reshape(-1, u.shape[-1])
        total, n = sums.get(name, (0, 0))
        sums[name] = (total + g.T @ g, n + g.shape[0])

    with capture(targets, hook):
        generate(pipe, rp.keep, rp.keep_seeds, num_inference_steps=3, guidance_scale=3.0, output_type="latent")
    gc, cross, _, _ = paired_moments(pipe, targets, rp, cfg)
    for t in targets:
        gk = sums[t.name][0] / sums[t.name][1]
        expected = rewrite_layer(t.module.weight, gk, gc[t.name], cross[t.name], concept_weight=0.7, damping=0.05)
        assert torch.allclose(mask.layer(t.name).row_values, expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(mask.layer(t.name).row_values, plain.layer(t.name).row_values, atol=1e-4)


def test_rewrite_steps_read_the_statistics_along_a_shorter_schedule(tiny_dir):
    """rewrite.steps=k gives the edit a schedule of k steps gives (the passes are the only use of the schedule);
    unset, the schedule's own; recorded only when set, so older edit files read back as they were made."""
    import dataclasses

    pipe = load_tiny(tiny_dir)
    cfg = tiny_rewrite_config(rewrite=dataclasses.replace(SMALL, negative_guidance=1.0, anchored_guidance=1.0, anchored_below=None))
    short = fia.erase(pipe, ["golf ball"], cfg.replace(rewrite=dataclasses.replace(cfg.rewrite, steps=2)))
    schedule = fia.erase(pipe, ["golf ball"], cfg.replace(num_inference_steps=2))
    full = fia.erase(pipe, ["golf ball"], cfg)
    for lm in short.layers:
        assert torch.equal(lm.row_values, schedule.layer(lm.name).row_values)
        assert not torch.equal(lm.row_values, full.layer(lm.name).row_values)
    assert short.config["rewrite"]["steps"] == 2 and "steps" not in full.config["rewrite"]
    assert short.config["num_inference_steps"] == 3  # the schedule a user generates with is not changed
    with pytest.raises(FIAError, match="rewrite.steps must be a positive integer"):
        tiny_rewrite_config(rewrite={"steps": 0})
