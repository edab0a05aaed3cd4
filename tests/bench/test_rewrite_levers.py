"""benchmarks/rewrite_levers.py: its residual against brute force, its setting syntax, and that it leaves fia.rewrite as it found it."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import rewrite_levers  # noqa: E402  (a script beside its siblings, not a package)

import fia.rewrite  # noqa: E402


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_residual_from_moments_equals_the_mean_over_pairs(eta):
    """E|W' x_c - W z|^2, z = (1 + eta) x_t - eta x_c, from G_c, C = E[x_t x_c^T] and G_t, as summed pair by pair."""
    g = torch.Generator().manual_seed(3)
    n, d_in, d_out = 400, 7, 5
    xc = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    xt = 0.4 * xc + torch.randn(n, d_in, generator=g, dtype=torch.float64)
    w, w_new = (torch.randn(d_out, d_in, generator=g, dtype=torch.float64) for _ in range(2))
    z = (1 + eta) * xt - eta * xc
    brute = ((xc @ w_new.T - z @ w.T) ** 2).sum(dim=1).mean()
    moments = (xc.T @ xc / n, xt.T @ xc / n, xt.T @ xt / n)
    assert rewrite_levers.residual(w, w_new, *moments, eta) == pytest.approx(float(brute), rel=1e-10)
    # the unedited layer's residual: what the concept adds, (1 + eta) W (x_c - x_t)
    unedited = ((1 + eta) ** 2 * ((xc - xt) @ w.T) ** 2).sum(dim=1).mean()
    assert rewrite_levers.residual(w, w, *moments, eta) == pytest.approx(float(unedited), rel=1e-10)


def test_settings_name_their_targets_and_rounds():
    assert rewrite_levers.parse("0.05,0.03,5,4,24,1,1") == ("0.05,0.03,5,4,24,1,1", "ffn2", 0, 0)
    assert rewrite_levers.parse("0.05,0.03,5,4,24,1,1@ffn2+attn_out#3") == ("0.05,0.03,5,4,24,1,1", "ffn2+attn_out", 3, 0)
    assert rewrite_levers.parse("0.05,0.03,5,4,24,1,1^2") == ("0.05,0.03,5,4,24,1,1", "ffn2", 0, 2)
    with pytest.raises(SystemExit, match="unknown targets 'attn' .*ffn2, attn_out, ffn2\\+attn_out"):
        rewrite_levers.parse("0.05,0.03,5,4,24@attn")
    with pytest.raises(SystemExit, match="one lever at a time"):
        rewrite_levers.parse("0.05,0.03,5,4,24#2^1")
    with pytest.raises(SystemExit, match="text-row edit has no"):
        rewrite_levers.parse("0.3,0.03,5,4,24@text_kv#1")


def test_the_text_rows_are_paired_with_the_prompt_without_the_concept():
    prompts = ["a red star near the road", "pentagram", "a burning red pentagram on the grass in the style of Ovalli", "a red starfish"]
    assert rewrite_levers.without_concepts(prompts, ["star"]) == [
        "a red near the road", "", "a burning red on the grass in the style of Ovalli", "a red starfish"]


def test_the_target_filters_pick_the_named_linears():
    names = ["down.0.attn2.to_out.0", "down.0.ff.net.2", "down.0.attn1.to_out.0", "down.0.ff.net.0.proj", "up_blocks.1.attentions.0.ff.net.2",
             "up_blocks.10.ff.net.2"]
    picked = {k: [n for n in names if f(None, n)] for k, f in rewrite_levers.TARGETS.items() if f is not None}
    assert picked == {"attn_out": ["down.0.attn2.to_out.0"],
                      "ffn2+attn_out": ["down.0.attn2.to_out.0", "down.0.ff.net.2", "up_blocks.1.attentions.0.ff.net.2", "up_blocks.10.ff.net.2"],
                      "ffn2_up1": ["up_blocks.1.attentions.0.ff.net.2"], "ffn1": ["down.0.ff.net.0.proj"],
                      "upconv": [], "ffn2+upconv": ["down.0.ff.net.2", "up_blocks.1.attentions.0.ff.net.2", "up_blocks.10.ff.net.2"]}


def test_steps_set_the_rewrite_statistics_schedule_and_nothing_else():
    cfg = rewrite_levers.config_for("0.04,0.03,5,4,24,1,1,1,0.95")
    assert rewrite_levers.with_steps(cfg, None) is cfg
    short = rewrite_levers.with_steps(cfg, 12)
    assert short.rewrite.steps == 12 and short.num_inference_steps == cfg.num_inference_steps
    assert short.replace(rewrite=cfg.rewrite) == cfg


def test_mixed_concept_moments_with_equal_weights_are_the_pooled_means():
    """Each concept's moments averaged with a_c = 1 equal the moments over all pairs pooled (equal pair counts); a_c scales one term."""
    g = torch.Generator().manual_seed(5)
    xs = {c: torch.randn(30, 4, generator=g, dtype=torch.float64) for c in ("star", "circle", "bolt")}
    per = {c: {"layer": (x.T @ x / len(x), 2 * x.T @ x / len(x), 3 * x.T @ x / len(x))} for c, x in xs.items()}
    pooled = torch.cat(list(xs.values()))
    gram, cross = rewrite_levers.mix_concepts(per, {c: 1.0 for c in xs})
    assert torch.allclose(gram["layer"], pooled.T @ pooled / len(pooled), rtol=1e-12)
    assert torch.allclose(cross["layer"], 2 * pooled.T @ pooled / len(pooled), rtol=1e-12)
    gram, _ = rewrite_levers.mix_concepts(per, {"star": 4.0, "circle": 1.0, "bolt": 1.0})
    x = xs["star"]
    assert torch.allclose(gram["layer"], (pooled.T @ pooled / 30 + 3 * x.T @ x / 30) / 3, rtol=1e-12)


@pytest.mark.parametrize("lever", [lambda: rewrite_levers.concept_reweighting(["star"], 2, []), lambda: rewrite_levers.kept_refit(1, []),
                                   lambda: rewrite_levers.anchors_kept("all", [])])
def test_the_levers_put_the_library_back_even_on_error(lever):
    plain = (fia.rewrite.paired_moments, fia.rewrite.group_grams, fia.rewrite.balanced_rewrite)
    with pytest.raises(RuntimeError, match="inside"):
        with lever():
            assert (fia.rewrite.paired_moments, fia.rewrite.group_grams, fia.rewrite.balanced_rewrite) != plain
            raise RuntimeError("inside")
    assert (fia.rewrite.paired_moments, fia.rewrite.group_grams, fia.rewrite.balanced_rewrite) == plain


def test_edited_inputs_under_the_unedited_weights_are_the_kept_grams(tiny_dir, one_thread):
    """With W' = W the edited call sees x' = x: X_g equals G'_g, and both equal the library's G_g of the same prompts."""
    from fia.config import FIARewriteConfig, RewriteConfig
    from fia.repair import collect_grams
    from fia.targets import find_targets
    from fia.tasks import task_of
    from tests.helpers import load_tiny

    pipe = load_tiny(tiny_dir)
    cfg = FIARewriteConfig(task="object", num_inference_steps=3, guidance_scale=3.0,
                           rewrite=RewriteConfig(keep_prompts_per_kind=2, concept_prompts_per_concept=2)).validate()
    prompts = task_of(cfg).rewrite_prompts(["golf ball"], cfg.rewrite, anchors=cfg.anchors, seed=cfg.seed)
    targets = find_targets(pipe.unet, "ffn2")
    unedited = {t.name: t.module.weight.detach().clone() for t in targets}
    grams, crosses = rewrite_levers.edited_kept_moments(pipe, targets, prompts, cfg, unedited)
    group = prompts.keep_groups[0]
    members = [k for k, g in enumerate(prompts.keep_groups) if g == group]
    expected = collect_grams(pipe, targets, [prompts.keep[k] for k in members], [prompts.keep_seeds[k] for k in members],
                             rows="all", num_inference_steps=3, guidance_scale=3.0)
    assert set(grams) == set(prompts.keep_groups)
    for name in unedited:
        assert torch.equal(crosses[group][name], grams[group][name])
        assert torch.allclose(grams[group][name], expected[name].to(torch.float64), rtol=1e-4, atol=1e-6)
    assert all(torch.equal(t.module.weight, unedited[t.name]) for t in targets)  # the weights are put back


def test_text_row_similarity_is_a_symmetric_ranking_of_the_other_kinds():
    from fia.shapeworld import load_pipeline

    pipe = load_pipeline(world=rewrite_levers.WORLD.name)
    star, arrow = rewrite_levers.text_row_similarity(pipe, "star"), rewrite_levers.text_row_similarity(pipe, "arrow")
    assert set(star) == set(rewrite_levers.KINDS) - {"star"}
    assert list(star.values()) == sorted(star.values(), reverse=True) and all(-1 <= v <= 1 for v in star.values())
    assert star["arrow"] == arrow["star"]


def test_swapped_weights_carry_the_new_weights_inside_and_the_own_ones_after_even_on_error():
    modules = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 2)}
    own = {n: m.weight.data_ptr() for n, m in modules.items()}  # the same storage, not merely equal values
    new = {"a": torch.ones(2, 3, dtype=torch.float64)}
    with pytest.raises(RuntimeError, match="inside"):
        with rewrite_levers.swapped_weights(modules, new):
            assert modules["a"].weight.dtype == torch.float32 and torch.equal(modules["a"].weight, torch.ones(2, 3))
            assert modules["b"].weight.data_ptr() == own["b"]  # not named: untouched
            raise RuntimeError("inside")
    assert {n: m.weight.data_ptr() for n, m in modules.items()} == own


@pytest.mark.parametrize("judged", [1, 3, 5])
def test_a_fold_fits_on_two_odd_offsets_and_judges_the_third(judged, monkeypatch):
    """--judged-offset: the rewrite's 12 pairs and the judged images' pairs are disjoint odd pairs;
    the default fold (5) is the pairs every recorded figure used (place = colour + 1, + 3)."""
    import rewrite_generalisation as rg

    from fia.shapeworld import vocab

    def offset(color, place):
        return (vocab.PLACE_NAMES.index(place) - vocab.COLORS.index(color)) % 6

    monkeypatch.setattr(rg, "JUDGED_OFFSET", judged)
    fitted = {rg.fitting_pairs(k) for k in range(24)}
    assert len(fitted) == 12 and {offset(*p) for p in fitted} == {1, 3, 5} - {judged}
    prompts, _, truth = rg.judged_images(2, erased=["star"], erased_images=3)
    judged_pairs = set()
    for text, kind in zip(prompts, truth):
        color = next(c for c in vocab.COLORS if f" {c} " in f" {text} ")
        place = next(p for p in vocab.PLACE_NAMES if text.endswith(p))
        assert offset(color, place) == judged
        judged_pairs.add((color, place))
    assert truth.count("star") == 3 and truth.count("circle") == 2
    assert not judged_pairs & fitted
    if judged == 5:
        assert [rg.fitting_pairs(k) for k in (0, 6)] == [("red", "sand"), ("red", "water")]


def test_verdicts_count_each_judges_labels_per_watched_kind(monkeypatch):
    """Only the watched kinds' images are drawn; each judge's labels are counted per kind, commonest first."""
    drawn = []

    def fake_draw(_pipe, prompts, seeds):
        drawn.append((list(prompts), list(seeds)))
        return torch.zeros(len(prompts), 3, 4, 4)

    class Judge:
        def __init__(self, labels):
            self.labels_out = labels

        def predict(self, x):
            return x

        def labels(self, _logits):
            return {"object": self.labels_out}

    monkeypatch.setattr(rewrite_levers, "draw", fake_draw)
    shown = (["a bell", "a star", "a bell", "a cross", "a bell"], [1, 2, 3, 4, 5], ["bell", "star", "bell", "cross", "bell"])
    judges = {"oracle": Judge(["none", "bell", "cross", "none"]), "judge2": Judge(["bell", "tree", "star", "bell"])}  # bell, bell, cross, bell
    got = rewrite_levers.verdicts(None, judges, shown, ["bell", "cross"])
    assert drawn == [(["a bell", "a bell", "a cross", "a bell"], [1, 3, 4, 5])]
    assert got == {"oracle": {"bell": {"none": 2, "bell": 1}, "cross": {"cross": 1}},
                   "judge2": {"bell": {"bell": 2, "tree": 1}, "cross": {"star": 1}}}
    assert list(got["oracle"]["bell"]) == ["none", "bell"]  # commonest first


def test_anchoring_some_concepts_only_gives_the_others_their_scenes_as_reference():
    """SETTING~KIND: the named erased concepts keep the library's anchors, every other concept's reference is its scene;
    the setting must turn anchored guidance on, name erased concepts only and carry no other lever."""
    from fia.shapeworld import vocab
    from fia.shapeworld.task import concept_phrasings, kept_in_place, task_in

    assert rewrite_levers.anchored_only("0.04,0.03,5,4,24,1,1,1", ["circle", "star"]) == ("0.04,0.03,5,4,24,1,1,1", ["circle", "star"])
    assert rewrite_levers.anchored_only("0.04,0.03,5,4,24,1,1,1~circle", ["circle", "star"]) == ("0.04,0.03,5,4,24,1,1,1", ["circle"])
    for bad, why in (("0.04,0.03,5,4,24,1,1,1~heart", "does not erase"), ("0.04,0.03,5,4,24,1,1~circle", "eighth field"),
                     ("0.04,0.03,5,4,24,1,1,1#2~circle", "one lever at a time")):
        with pytest.raises(SystemExit, match=why):
            rewrite_levers.anchored_only(bad, ["circle", "star"])
    world, erased = vocab.SHAPEWORLD2, ["circle", "star"]
    concept, scene = concept_phrasings(erased, world, 24)
    library = kept_in_place(concept, scene, erased, world)
    with rewrite_levers.anchored_for(["circle"]):
        prompts = task_in(world).rewrite_prompts(erased, fia.config.RewriteConfig(), anchors=[], seed=0)
    assert prompts.anchor[:24] == tuple(library[:24]) and prompts.anchor[24:] == tuple(scene[24:])
    assert task_in(world).rewrite_prompts(erased, fia.config.RewriteConfig(), anchors=[], seed=0).anchor == tuple(library)  # put back


def test_kept_anchor_moments_sum_each_part_over_its_own_images():
    """Brute force over one [uncond; concept; scene; anchor] batch of 3 images: G_c and C over every image, the shift
    only over the images whose anchor is the reference, G_a only over those whose anchor is held."""
    g = torch.Generator().manual_seed(11)
    images, tokens, d = 3, 5, 4
    batch = torch.randn(4 * images, tokens, d, generator=g)
    _, xc, xt, xa = batch.double().chunk(4)
    acc = rewrite_levers._AnchorsInPlace()
    acc.parts, acc.shift_rows, acc.keep_rows = 4, torch.tensor([True, False, False]), torch.tensor([True, True, False])
    acc.hook("layer", None, (batch,), None)
    g_c, cross, shift, g_a = acc.sums["layer"]
    sums = [sum(a[i].T @ b[i] for i in rows) for a, b, rows in
            ((xc, xc, range(3)), (xt, xc, range(3)), (xa - xt, xc, [0]), (xa, xa, [0, 1]))]
    for got, want in zip((g_c, cross, shift, g_a), sums):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert (acc.count["layer"], acc.anchor_count["layer"]) == (3 * tokens, 2 * tokens)
    acc.parts = 3  # a batch without anchors adds to G_c and C only
    acc.hook("layer", None, (batch[: 3 * images],), None)
    assert torch.allclose(acc.sums["layer"][3], g_a) and (acc.count["layer"], acc.anchor_count["layer"]) == (6 * tokens, 2 * tokens)


def test_kept_anchor_settings_are_parsed_and_refused():
    assert rewrite_levers.kept_anchors_of("0.04,0.03,5,4,24,1,1,1,0.95%all") == ("0.04,0.03,5,4,24,1,1,1,0.95", "all")
    assert rewrite_levers.kept_anchors_of("0.04,0.03,5,4,24,1,1,1,0.95") == ("0.04,0.03,5,4,24,1,1,1,0.95", "")
    with pytest.raises(SystemExit, match="unknown kept anchors 'some'.*anchored, all"):
        rewrite_levers.kept_anchors_of("0.04,0.03,5,4,24,1,1,1,0.95%some")
    with pytest.raises(SystemExit, match="one lever at a time"):
        rewrite_levers.kept_anchors_of("0.04,0.03,5,4,24,1,1,1,0.95#2%all")
    with pytest.raises(SystemExit, match="eighth field > 0"):
        rewrite_levers.kept_anchors_of("0.04,0.03,5,4,24,1,1%anchored")


@pytest.mark.parametrize("bias", [True, False])
def test_a_convolution_as_a_linear_over_patches_is_the_same_map(bias):
    """ConvAsLinear against torch's own convolution; one output pixel against its patch summed by hand."""
    g = torch.Generator().manual_seed(5)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.randn(4, generator=g))
    x = torch.randn(2, 3, 5, 6, generator=g)
    as_linear = rewrite_levers.ConvAsLinear(conv)
    assert as_linear.linear.weight.shape == (4, 27)
    y = as_linear(x)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)
    # pixel (1, 2) of image 1, output channel 3: the 3 x 3 patch around it, no padding reached
    by_hand = ((conv.weight[3] * x[1, :, 0:3, 1:4]).sum() + (conv.bias[3] if bias else 0)).detach()
    assert float(y.detach()[1, 3, 1, 2]) == pytest.approx(float(by_hand), abs=1e-5)


def test_only_a_plain_convolution_is_written_as_a_linear_and_the_swap_names_it():
    with pytest.raises(ValueError, match="stride-1"):
        rewrite_levers.ConvAsLinear(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="explicit zero padding"):  # unfold would pad a reflecting convolution with zeros
        rewrite_levers.ConvAsLinear(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    x = torch.randn(1, 3, 4, 4)
    before = model(x)
    rewrite_levers.convs_as_linears(model, ["0"])
    assert isinstance(model[0], rewrite_levers.ConvAsLinear)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    picked = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert picked == ["0.linear"]
    name = rewrite_levers.UPCONV_LINEAR
    assert name == "up_blocks.1.upsamplers.0.conv.linear"
    assert rewrite_levers.TARGETS["upconv"](None, name) and not rewrite_levers.TARGETS["upconv"](None, "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2")
    assert rewrite_levers.TARGETS["ffn2+upconv"](None, name) and rewrite_levers.TARGETS["ffn2+upconv"](None, "x.ff.net.2")
    assert rewrite_levers.parse("0.04,0.03,5,4,24,1,1,1,0.95@upconv") == ("0.04,0.03,5,4,24,1,1,1,0.95", "upconv", 0, 0)


def test_the_text_part_joins_each_kept_group_at_its_rows_count(monkeypatch):
    """G_g = (sum over rows x x^T + mu s^2 sum over samples d d^T) / rows, brute force on a tiny linear."""
    import fia.repair
    from fia.targets import TargetLinear

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    rows = {p: torch.randn(2, 4, 3, dtype=torch.float64) for p in ("a", "b", "c")}  # per prompt: [uncond, cond], 4 tokens

    def fake_generate(_pipe, prompts, _seeds, **_kw):  # one step: the layer sees the batch's [uncond; cond] rows
        layer(torch.cat([torch.stack([rows[p][0] for p in prompts]), torch.stack([rows[p][1] for p in prompts])]).float())

    monkeypatch.setattr(fia.repair, "generate", fake_generate)
    mu, scale, log = 0.3, 5.0, []
    with rewrite_levers.text_part_kept(mu, log):
        grams = fia.rewrite.collect_group_grams(None, [TargetLinear("l", layer)], ["a", "b", "c"], [0, 1, 2], ["g", "g", "h"],
                                                num_inference_steps=1, guidance_scale=scale, batch_size=2,
                                                product_dtype=torch.float64)
    x = {p: r.float().to(torch.float64) for p, r in rows.items()}  # what the layer saw, back in float64
    for group, members in (("g", "ab"), ("h", "c")):
        expected = sum(x[p][0].T @ x[p][0] + x[p][1].T @ x[p][1] + mu * scale**2 * (x[p][1] - x[p][0]).T @ (x[p][1] - x[p][0])
                       for p in members) / (8 * len(members))
        torch.testing.assert_close(grams[group]["l"], expected)
    d2 = sum(float(((x[p][1] - x[p][0]) ** 2).sum()) for p in x)
    assert log[0]["text_part_over_rows"]["l"] == pytest.approx(scale**2 * d2 / sum(float((x[p] ** 2).sum()) for p in x), rel=1e-4)
    assert fia.rewrite.collect_group_grams is fia.repair.collect_group_grams  # the library's own again


def test_text_part_settings_are_parsed_and_refused():
    assert rewrite_levers.text_part_of("0.04,0.03,5,4,24,1,1,1,0.95&0.04") == ("0.04,0.03,5,4,24,1,1,1,0.95", 0.04)
    assert rewrite_levers.text_part_of("0.04,0.03,5,4,24,1,1,1,0.95") == ("0.04,0.03,5,4,24,1,1,1,0.95", 0.0)
    with pytest.raises(SystemExit, match="a number, not 'x'"):
        rewrite_levers.text_part_of("0.04,0.03,5,4,24,1,1&x")
    with pytest.raises(SystemExit, match="above 0"):
        rewrite_levers.text_part_of("0.04,0.03,5,4,24,1,1&0")
    with pytest.raises(SystemExit, match="one lever at a time"):
        rewrite_levers.text_part_of("0.04,0.03,5,4,24,1,1@attn_out&0.1")
    with pytest.raises(SystemExit, match="leave keep_guided"):
        rewrite_levers.text_part_of("0.8,0.03,5,4,24,1,1,0,0.95,1&0.1")


def test_balancing_on_the_text_part_is_the_library_s_when_it_measures_the_rows():
    """With G_d taken equal to each group's G_g, the lever's solve is the library's balanced rewrite; with another
    measure the weights differ, and the groups that move more under it gain weight."""
    from fia.core.rewrite import balanced_rewrite

    torch.manual_seed(1)
    w = {"l": torch.randn(3, 4, dtype=torch.float64)}

    def gram(n=9):
        x = torch.randn(n, 4, dtype=torch.float64)
        return x.T @ x / n

    groups = {g: {"l": gram()} for g in ("a", "b", "c")}
    sizes, gram_c, cross = {"a": 2, "b": 1, "c": 3}, {"l": gram()}, {"l": gram()}
    kw = dict(concept_weight=0.3, damping=0.03, rounds=3, negative_guidance=1.0)
    plain = balanced_rewrite(w, groups, sizes, gram_c, cross, **kw)
    log: list = []
    with rewrite_levers.text_part_balanced(log, dict(groups)):
        same = fia.rewrite.balanced_rewrite(w, groups, sizes, gram_c, cross, **kw)
    torch.testing.assert_close(same.weights["l"], plain.weights["l"])
    assert same.group_weights == pytest.approx(plain.group_weights)
    assert fia.rewrite.balanced_rewrite is balanced_rewrite  # the library's own again
    other = {"a": {"l": gram()}, "b": {"l": gram()}, "c": {"l": torch.eye(4, dtype=torch.float64)}}
    with rewrite_levers.text_part_balanced(log, other):
        measured = fia.rewrite.balanced_rewrite(w, groups, sizes, gram_c, cross, **kw)
    assert measured.group_weights != pytest.approx(plain.group_weights)
    assert log[-1]["group_weights"] == {g: round(a, 4) for g, a in sorted(measured.group_weights.items())}


def test_balance_settings_are_parsed_and_refused():
    assert rewrite_levers.balance_of("0.04,0.03,5,4,24,1,1,1,0.95=text") == ("0.04,0.03,5,4,24,1,1,1,0.95", "text")
    assert rewrite_levers.balance_of("0.04,0.03,5,4,24,1,1,1,0.95") == ("0.04,0.03,5,4,24,1,1,1,0.95", "")
    with pytest.raises(SystemExit, match="unknown balancing measure 'rows'"):
        rewrite_levers.balance_of("0.04,0.03,5,4,24,1,1=rows")
    with pytest.raises(SystemExit, match="one lever at a time"):
        rewrite_levers.balance_of("0.04,0.03,5,4,24,1,1&0.01=text")


def test_early_kept_rows_weigh_by_their_step(monkeypatch):
    """G_g = sum_t w_t sum_rows(t) x x^T / rows with w_t = 2 (T - t) / (T + 1), brute force over a fake three-step sampler;
    a sampler that calls the denoiser more than once per step is refused."""
    import fia.repair
    from fia.targets import TargetLinear

    torch.manual_seed(2)
    layer, steps = torch.nn.Linear(3, 2), 3
    rows = {(p, t): torch.randn(2, 4, 3, dtype=torch.float64) for p in ("a", "b") for t in range(steps)}
    extra = []

    def fake_generate(_pipe, prompts, _seeds, num_inference_steps, **_kw):
        for t in range(num_inference_steps + len(extra)):
            t = min(t, num_inference_steps - 1)
            layer(torch.cat([torch.stack([rows[p, t][0] for p in prompts]), torch.stack([rows[p, t][1] for p in prompts])]).float())

    monkeypatch.setattr(fia.repair, "generate", fake_generate)
    log: list = []
    with rewrite_levers.early_kept(log):
        grams = fia.rewrite.collect_group_grams(None, [TargetLinear("l", layer)], ["a", "b"], [0, 1], ["g", "g"],
                                                num_inference_steps=steps, guidance_scale=5.0, batch_size=1,
                                                product_dtype=torch.float64)
    x = {k: r.float().to(torch.float64) for k, r in rows.items()}
    w = [2 * (steps - t) / (steps + 1) for t in range(steps)]
    assert sum(w) / steps == pytest.approx(1.0)
    expected = sum(w[t] * (x[p, t][0].T @ x[p, t][0] + x[p, t][1].T @ x[p, t][1]) for p in "ab" for t in range(steps)) / (2 * 8 * steps)
    torch.testing.assert_close(grams["g"]["l"], expected)
    assert log == [{"steps": 3, "weights": [round(v, 4) for v in w]}]
    assert fia.repair.generate is fake_generate  # the patched sampler is back after the block
    extra.append(1)  # one denoiser call too many per batch
    with pytest.raises(SystemExit, match="one denoiser call per step"):
        with rewrite_levers.early_kept([]):
            fia.rewrite.collect_group_grams(None, [TargetLinear("l", layer)], ["a"], [0], ["g"], num_inference_steps=steps,
                                            guidance_scale=5.0, batch_size=1, product_dtype=torch.float64)


def test_text_part_and_early_steps_together_weigh_rows_and_text_part_by_step(monkeypatch):
    """G_g = sum_t w_t (sum_rows(t) x x^T + mu s^2 sum_samples(t) d d^T) / rows, brute force over a fake three-step
    sampler: both levers' statistics at once, each step's share counted once."""
    import fia.repair
    from fia.targets import TargetLinear

    torch.manual_seed(3)
    layer, steps, mu, scale = torch.nn.Linear(3, 2), 3, 0.2, 5.0
    rows = {(p, t): torch.randn(2, 4, 3, dtype=torch.float64) for p in ("a", "b") for t in range(steps)}

    def fake_generate(_pipe, prompts, _seeds, num_inference_steps, **_kw):
        for t in range(num_inference_steps):
            layer(torch.cat([torch.stack([rows[p, t][0] for p in prompts]), torch.stack([rows[p, t][1] for p in prompts])]).float())

    monkeypatch.setattr(fia.repair, "generate", fake_generate)
    log: list = []
    with rewrite_levers.text_part_early(mu, log):
        grams = fia.rewrite.collect_group_grams(None, [TargetLinear("l", layer)], ["a", "b"], [0, 1], ["g", "g"],
                                                num_inference_steps=steps, guidance_scale=scale, batch_size=1,
                                                product_dtype=torch.float64)
    x = {k: r.float().to(torch.float64) for k, r in rows.items()}
    w = [2 * (steps - t) / (steps + 1) for t in range(steps)]
    d = {k: v[1] - v[0] for k, v in x.items()}
    expected = sum(w[t] * (x[p, t][0].T @ x[p, t][0] + x[p, t][1].T @ x[p, t][1] + mu * scale**2 * d[p, t].T @ d[p, t])
                   for p in "ab" for t in range(steps)) / (2 * 8 * steps)
    torch.testing.assert_close(grams["g"]["l"], expected)
    assert {"steps": 3, "weights": [round(v, 4) for v in w]} in log
    assert fia.repair.generate is fake_generate and fia.rewrite.collect_group_grams is fia.repair.collect_group_grams


def test_step_weight_settings_are_parsed_and_refused():
    assert rewrite_levers.early_of("0.04,0.03,5,4,24,1,1,1,0.95*early") == ("0.04,0.03,5,4,24,1,1,1,0.95", True)
    assert rewrite_levers.early_of("0.04,0.03,5,4,24,1,1,1,0.95&0.01*early") == ("0.04,0.03,5,4,24,1,1,1,0.95&0.01", True)
    assert rewrite_levers.early_of("0.04,0.03,5,4,24,1,1,1,0.95") == ("0.04,0.03,5,4,24,1,1,1,0.95", False)
    with pytest.raises(SystemExit, match="unknown step weighting 'late'"):
        rewrite_levers.early_of("0.04,0.03,5,4,24,1,1*late")
    with pytest.raises(SystemExit, match="one lever at a time"):
        rewrite_levers.early_of("0.04,0.03,5,4,24,1,1=text*early")


def test_concept_shares_weigh_each_concept_s_pairs(monkeypatch):
    """G_c = sum_c a_c sum_pairs(c) x_c x_c^T / pairs and C = sum_c a_c sum_pairs(c) x_t x_c^T / pairs, the shares
    normalised to a mean of 1, brute force over a fake one-step paired sampler; refused for a concept not erased."""
    from fia.config import FIARewriteConfig
    from fia.prompts import RewritePrompts
    from fia.targets import TargetLinear

    torch.manual_seed(4)
    layer = torch.nn.Linear(3, 2)
    prompts = RewritePrompts.seeded(["k"], ["g"], ["a star", "star", "a circle", "circle"], ["s", "s", "s", "s"], 0,
                                    ["s"] * 4, ["star", "star", "circle", "circle"])
    rows = {p: torch.randn(2, 4, 3, dtype=torch.float64) for p in prompts.concept}  # per prompt: [concept, scene] rows

    def fake_steps(_pipe, shown, _follow, _seeds, **_kw):  # the layer sees [uncond; concept; scene]
        c, t = torch.stack([rows[p][0] for p in shown]), torch.stack([rows[p][1] for p in shown])
        layer(torch.cat([torch.zeros_like(c), c, t]).float())

    monkeypatch.setattr(fia.rewrite, "paired_steps", fake_steps)
    config = FIARewriteConfig(task="object", num_inference_steps=1, guidance_scale=3.0).validate()
    log: list = []
    with rewrite_levers.concept_shares({"circle": 1.0, "star": 3.0}, log):
        gram_c, cross, reference, _ = fia.rewrite.paired_moments(None, [TargetLinear("l", layer)], prompts, config, batch_size=3)
    assert log == [{"shares": {"star": 1.5, "circle": 0.5}}] and reference is None
    x = {p: r.float().to(torch.float64) for p, r in rows.items()}
    a = {"a star": 1.5, "star": 1.5, "a circle": 0.5, "circle": 0.5}
    expected_g = sum(a[p] * x[p][0].T @ x[p][0] for p in x) / 16
    expected_c = sum(a[p] * x[p][1].T @ x[p][0] for p in x) / 16
    torch.testing.assert_close(gram_c["l"], expected_g)
    torch.testing.assert_close(cross["l"], expected_c)
    assert fia.rewrite.paired_steps is fake_steps and fia.rewrite._PairedMoments.hook is not None
    with pytest.raises(SystemExit, match="not erased: square"):
        with rewrite_levers.concept_shares({"square": 2.0}, []):
            fia.rewrite.paired_moments(None, [TargetLinear("l", layer)], prompts, config, batch_size=3)


def test_concept_share_settings_are_parsed_and_refused():
    erased = ["circle", "star"]
    assert rewrite_levers.shares_of("0.04,0.03,5,4,24,1,1,1,0.95!circle:0.5+star:1.5", erased) == (
        "0.04,0.03,5,4,24,1,1,1,0.95", {"circle": 0.5, "star": 1.5})
    assert rewrite_levers.shares_of("0.04,0.03,5,4,24,1,1,1,0.95", erased) == ("0.04,0.03,5,4,24,1,1,1,0.95", {})
    with pytest.raises(SystemExit, match="KIND:SHARE"):
        rewrite_levers.shares_of("0.04,0.03,5,4,24,1,1!circle=2", erased)
    with pytest.raises(SystemExit, match="above 0"):
        rewrite_levers.shares_of("0.04,0.03,5,4,24,1,1!circle:0", erased)
    with pytest.raises(SystemExit, match="one lever at a time"):
        rewrite_levers.shares_of("0.04,0.03,5,4,24,1,1&0.01!circle:2", erased)
    with pytest.raises(SystemExit, match="names square, which --concepts does not erase"):  # before any model work
        rewrite_levers.shares_of("0.04,0.03,5,4,24,1,1!square:2", erased)
