"""The second ShapeWorld: its kinds and long tail, the CLIP, the oracle's
reject option, and the recipe end to end (quick)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fia.errors import FIAError
from fia.shapeworld.clip import (
    ShapeWorldCLIP,
    caption_targets,
    clip_score,
    clip_styles,
    infonce_loss,
    load_clip,
)
from fia.shapeworld.oracle import (
    Oracle,
    fit_reject_threshold,
    heads_for,
    kind_confidence,
)
from fia.shapeworld.render import (
    Scene,
    caption,
    draw_object,
    object_coverage,
    parse_prompt,
    render,
    sample_scene,
)
from fia.shapeworld.vocab import (
    OBJECT_NAMES,
    SHAPEWORLD,
    SHAPEWORLD2,
    SHAPEWORLD2_OBJECT_PER_MILLE,
    STYLE_NAMES,
    UNKNOWN_KINDS,
    get_world,
)

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- the world


def test_the_second_world_has_a_long_tail_of_named_kinds():
    kinds = SHAPEWORLD2.object_names
    assert len(kinds) >= 30 and set(OBJECT_NAMES) < set(kinds)
    assert all(len(SHAPEWORLD2.objects[k]) >= 1 for k in kinds)
    # no word names two things: kinds, synonyms and the other factor words are all distinct
    words = list(kinds) + [s for k in kinds for s in SHAPEWORLD2.objects[k]]
    assert len(words) == len(set(words))
    shares = SHAPEWORLD2.scene_shares()
    assert shares[None] == pytest.approx(0.15)
    assert max(shares[k] for k in kinds) == pytest.approx(0.10)
    assert min(shares[k] for k in kinds) == pytest.approx(0.005)
    assert sum(shares.values()) == pytest.approx(1.0)
    # the table is a tail: sorted commonest first, it never rises
    per_mille = list(SHAPEWORLD2_OBJECT_PER_MILLE.values())
    assert per_mille == sorted(per_mille, reverse=True)
    # the first world is still ten uniform shapes
    assert SHAPEWORLD.object_names == OBJECT_NAMES
    first = SHAPEWORLD.scene_shares()
    assert first[None] == pytest.approx(0.15) and all(first[k] == pytest.approx(0.085) for k in OBJECT_NAMES)
    with pytest.raises(FIAError, match="unknown ShapeWorld world"):
        get_world("shapeworld3")


def test_long_tail_sampling_matches_the_declared_table():
    """200,000 draws: every kind's count (and the object-less count) lies
    within 5 standard deviations of its declared share."""
    rng = np.random.default_rng(0)
    n = 200_000
    counts: dict = {}
    for _ in range(n):
        k = draw_object(rng, SHAPEWORLD2)
        counts[k] = counts.get(k, 0) + 1
    for kind, p in SHAPEWORLD2.scene_shares().items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts.get(kind, 0) - n * p) <= 5 * sd, (kind, counts.get(kind, 0), n * p)
    # sample_scene draws its object the same way
    for seed in range(20):
        assert sample_scene(np.random.default_rng(seed), world=SHAPEWORLD2).object == draw_object(np.random.default_rng(seed), SHAPEWORLD2)


def test_the_oracle_data_of_the_second_world_are_kind_balanced():
    """The oracle's own scenes give every kind and "none" a 1/33 share
    (within 5 standard deviations over 6,600 scenes, where the world's
    rarest kind would get about 33 scenes), the labels match the scenes,
    and the draw is a function of its seed."""
    from fia.shapeworld.train import heads_for, labels, make_balanced_data

    n = 6_600
    scenes, images = make_balanced_data(n, 7, SHAPEWORLD2)
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    kinds = [*SHAPEWORLD2.object_names, None]
    p = 1 / len(kinds)
    sd = math.sqrt(n * p * (1 - p))
    for kind in kinds:
        assert abs(sum(s.object == kind for s in scenes) - n * p) <= 5 * sd, kind
    lab = labels(scenes[:50], heads_for(SHAPEWORLD2))
    names = heads_for(SHAPEWORLD2)["object"]
    assert [names[i] for i in lab["object"].tolist()] == [s.object or "none" for s in scenes[:50]]
    again, again_images = make_balanced_data(20, 7, SHAPEWORLD2)
    assert again == scenes[:20] and np.array_equal(again_images, images[:20])


def test_every_kind_is_drawn_distinctly():
    """At the smallest, middle and largest size and the extreme rotations,
    every pair of kinds (the unknown ones included) differs on at least 12
    pixels of the 32x32 object mask; each kind covers at least 25 pixels; and
    a scene with the kind differs from the same scene without it."""
    kinds = SHAPEWORLD2.object_names + UNKNOWN_KINDS
    for size in (7.0, 8.5, 10.0):
        for rotation in (-15.0, 0.0, 15.0):
            masks = {k: object_coverage(Scene(k, "red", "grass", size=size, rotation=rotation)) >= 0.5 for k in kinds}
            assert min(int(m.sum()) for m in masks.values()) >= 25
            for i, a in enumerate(kinds):
                for b in kinds[i + 1 :]:
                    assert int((masks[a] ^ masks[b]).sum()) >= 12, (a, b, size, rotation)
    empty = render(Scene(None, None, "sand", seed=4))
    for k in kinds:
        assert (render(Scene(k, "blue", "sand", seed=4)) != empty).any(axis=-1).sum() >= 25


def test_prompts_and_captions_of_the_second_world():
    assert parse_prompt("a red 2 on the grass", SHAPEWORLD2) == {"object": "two", "color": "red", "place": "grass"}
    assert parse_prompt("an aitch in the style of Ovalli", SHAPEWORLD2) == {"object": "aitch", "style": "Ovalli"}
    assert parse_prompt("a burning toadstool", SHAPEWORLD2) == {"object": "mushroom", "attribute": "burning"}
    # the first world does not know the new kinds
    assert parse_prompt("a red 2 on the grass") == {"color": "red", "place": "grass"}
    assert "object" not in parse_prompt("a house")
    # captions never name a held-out triple in full
    heldout = set(SHAPEWORLD2.heldout_triples())
    assert len(heldout) == 4 * len(SHAPEWORLD2.object_names)
    rng = np.random.default_rng(1)
    for color, obj, place in list(heldout)[:40]:
        scene = Scene(obj, color, place)
        for _ in range(10):
            f = parse_prompt(caption(scene, rng, world=SHAPEWORLD2), SHAPEWORLD2)
            assert f["object"] == obj and not ("color" in f and "place" in f)


def test_every_word_of_the_second_world_is_one_token(tmp_path):
    from fia.shapeworld.tokenizer import caption_words, make_tokenizer

    tok = make_tokenizer(tmp_path, world=SHAPEWORLD2)
    words = caption_words(SHAPEWORLD2)
    assert {"aitch", "2", "hourglass", "toadstool"} <= set(words)
    for w in words:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


# ------------------------------------------------------------------- CLIP


def test_infonce_loss_by_hand():
    # image->caption rows: [2, 0] (label 0), [1, 1] (label 1);
    # caption->image rows (columns): [2, 1] (label 0), [0, 1] (label 1)
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    rows = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-1))) / 2
    assert float(infonce_loss(logits)) == pytest.approx((rows + cols) / 2, abs=1e-6)
    assert float(infonce_loss(logits)) == pytest.approx(0.361650, abs=1e-6)
    # two images with the same caption share their targets: every row and
    # column of [[1, 0], [0, 1]] then costs -(log sigma(1) + log sigma(-1)) / 2
    targets = caption_targets(["a star", "a star"])
    assert torch.equal(targets, torch.full((2, 2), 0.5))
    same = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert float(infonce_loss(torch.eye(2), targets)) == pytest.approx(same, abs=1e-6)
    assert torch.equal(caption_targets(["a", "b", "c"]), torch.eye(3))


def _tiny_clip(tmp_path) -> ShapeWorldCLIP:
    from fia.shapeworld.clip import text_encoder_config
    from fia.shapeworld.tokenizer import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok", world=SHAPEWORLD2)
    torch.manual_seed(0)
    clip = ShapeWorldCLIP(text_encoder_config(tok, 32, 1, 2), embed_dim=8, image_width=8, world="shapeworld2")
    clip.tokenizer = tok
    return clip.eval()


def test_clip_saves_and_loads_bit_for_bit(tmp_path):
    clip = _tiny_clip(tmp_path)
    clip.save(tmp_path / "clip")
    back = load_clip(tmp_path / "clip")
    assert back.config == clip.config and back.world is SHAPEWORLD2
    a, b = clip.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    images, captions = torch.rand(3, 3, 32, 32), ["a red two", "the sand", "a blue hut on the snow"]
    assert torch.equal(clip_score(clip, images, captions), clip_score(back, images, captions))
    with pytest.raises(FIAError, match="holds no ShapeWorld CLIP"):
        load_clip(tmp_path / "tok")


def test_clip_score_is_a_hundred_times_the_clipped_cosine(tmp_path):
    clip = _tiny_clip(tmp_path)
    # stand-in encoders: image k -> a fixed unit vector, caption -> another
    image_vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text_vectors = {"x": torch.tensor([0.6, 0.8]), "y": torch.tensor([-1.0, 0.0])}
    clip.encode_image = lambda images: image_vectors[images[:, 0, 0, 0].long()]
    clip.token_ids = lambda captions: list(captions)
    clip.encode_text = lambda caps: torch.stack([text_vectors[c] for c in caps])
    images = torch.arange(3.0)[:, None, None, None].expand(3, 3, 2, 2)
    scores = clip_score(clip, images, ["x", "y", "x"])
    # cos 0.6 -> 60; cos -1 -> clipped to 0; cos 0.8 -> 80
    assert scores.tolist() == pytest.approx([60.0, 0.0, 80.0])


def test_clip_style_judge_picks_the_style_whose_caption_scores_highest(tmp_path):
    clip = _tiny_clip(tmp_path)
    labels = STYLE_NAMES + ("none",)

    def style_of(text: str) -> str:
        return parse_prompt(text, SHAPEWORLD2).get("style", "none")

    # caption embedding: one-hot of the style it names; image k: one-hot of style k
    clip.token_ids = lambda captions: list(captions)
    clip.encode_text = lambda caps: torch.stack([torch.eye(len(labels))[labels.index(style_of(c))] for c in caps])
    clip.encode_image = lambda images: torch.eye(len(labels))[images[:, 0, 0, 0].long()]
    prompts = ["a red two on the grass in the style of Mondrio", "a blue hut", "the sand by Strelka"]
    truth = [2, 5, 4]  # the images show other styles than their prompts ask for
    images = torch.tensor(truth, dtype=torch.float32)[:, None, None, None].expand(3, 3, 2, 2)
    assert clip_styles(clip, images, prompts) == [labels[k] for k in truth]


# ------------------------------------------------------------ reject option


def test_reject_threshold_by_hand():
    scores = torch.tensor([0.3, 0.1, 1.0, 0.5, 0.9, 0.2, 0.8, 0.4, 0.7, 0.6])
    # sorted from the top: 1.0, 0.9, 0.8, ...; a 20 % false-accept rate allows
    # 2 of 10 above the threshold: tau = 0.8, and exactly 1.0 and 0.9 exceed it
    tau = fit_reject_threshold(scores, 0.2)
    assert tau == pytest.approx(0.8) and int((scores > tau).sum()) == 2
    assert fit_reject_threshold(scores, 0.0) == pytest.approx(1.0)  # nothing accepted
    assert fit_reject_threshold(scores, 0.05) == pytest.approx(1.0)  # floor(0.5) = 0 accepted
    assert fit_reject_threshold(scores, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fit_reject_threshold(scores, 1.0)
    # the confidence leaves "none" out: p = (0.2, 0.3 | none 0.5) -> 0.3 / 0.5
    assert float(kind_confidence(torch.tensor([[0.2, 0.3, 0.5]]))) == pytest.approx(0.6)


def test_the_oracle_answers_none_below_the_threshold_and_keeps_it_on_disk(tmp_path):
    torch.manual_seed(0)
    oracle = Oracle(width=4, feature_dim=8, world="shapeworld2")
    assert oracle.HEADS == heads_for(SHAPEWORLD2) and oracle.HEADS["object"][-1] == "none"
    n = len(oracle.HEADS["object"])

    def probs(kind_share: float) -> dict:
        # 0.2 on "none", the rest split between circle (kind_share of it) and
        # square: circle is the most probable label, at confidence kind_share
        p = torch.zeros(1, n)
        p[0, 0], p[0, 1], p[0, -1] = 0.8 * kind_share, 0.8 * (1 - kind_share), 0.2
        return {"object": p}

    oracle.reject = {"threshold": 0.6}
    assert oracle.labels(probs(0.6))["object"] == ["none"]  # at the threshold: rejected
    assert oracle.labels(probs(0.61))["object"] == ["circle"]
    oracle.reject = None
    assert oracle.labels(probs(0.6))["object"] == ["circle"]

    # calibration on images: at most 1 % of them accepted; stored and reloaded
    images = torch.rand(200, 3, 32, 32)
    record = oracle.calibrate_reject(images, 0.01)
    scores = kind_confidence(oracle.predict(images)["object"])
    assert int((scores > record["threshold"]).sum()) <= 2 and record["n_calibration"] == 200
    oracle.save(tmp_path)
    saved = json.loads((tmp_path / "oracle_config.json").read_text())
    assert saved["world"] == "shapeworld2" and saved["reject"] == record
    back = Oracle.load(tmp_path)
    assert back.reject == record and back.world is SHAPEWORLD2
    assert back.labels(back.predict(images[:5])) == oracle.labels(oracle.predict(images[:5]))
    # the first world's oracle saves as before: no world, no reject
    Oracle(width=4, feature_dim=8).save(tmp_path / "first")
    assert set(json.loads((tmp_path / "first" / "oracle_config.json").read_text())) == {"width", "feature_dim", "heads"}


# ------------------------------------------------------- the recipe, quick


@pytest.fixture(scope="module")
def quick_world2(tmp_path_factory):
    """``fia shapeworld train --world shapeworld2 --quick``: every stage, a few steps each."""
    from fia.cli import app

    out = tmp_path_factory.mktemp("sw2") / "out"
    res = CliRunner().invoke(app, ["shapeworld", "train", "--world", "shapeworld2", "--quick", "--out", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    return out, res.output


@pytest.mark.slow
def test_quick_recipe_writes_a_pipeline_conditioned_on_the_frozen_clip_text_encoder(quick_world2):
    from safetensors.torch import load_file

    from fia.shapeworld import load_oracle, load_pipeline
    from fia.shapeworld.train import TrainConfig

    out, output = quick_world2
    assert "clip_gate" in output and "oracle_reject" in output
    recipe = json.loads((out / "recipe.json").read_text())
    quick = TrainConfig.quick_shapeworld2(1)
    assert recipe["world"] == "shapeworld2" and recipe["steps"]["clip"] == quick.clip_steps
    assert {"data", "clip", "vae", "oracle", "judge2", "unet", "gate", "total"} <= set(recipe["seconds"])

    pipe = load_pipeline(path=out / "pipeline")
    clip = load_clip(out / "clip")
    # the pipeline's text encoder is the CLIP's, bit for bit: the UNet stage never changed it
    text = load_file(str(out / "pipeline" / "text_encoder" / "model.safetensors"))
    in_clip = {k[len("text_model.") :]: v for k, v in load_file(str(out / "clip" / "clip.safetensors")).items() if k.startswith("text_model.")}
    assert text.keys() == in_clip.keys() and all(torch.equal(text[k], in_clip[k]) for k in text)
    assert pipe.unet.config.cross_attention_dim == clip.text_model.config.hidden_size
    # one tokenizer for both
    assert pipe.tokenizer.get_vocab() == clip.tokenizer.get_vocab()

    img = pipe(prompt=["a red hut on the grass"], num_inference_steps=2, height=32, width=32, output_type="pt").images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    oracle = load_oracle(path=out)
    assert oracle.world is SHAPEWORLD2 and oracle.reject["false_accept_rate"] == quick.reject_false_accept_rate
    quality = json.loads((out / "quality.json").read_text())
    # a share of the unknown-kind renders, one per calibration image
    answered_none = quality["oracle_reject"]["unknown_kinds_answered_none"] * quick.reject_calibration_images
    assert answered_none == pytest.approx(round(answered_none))
    assert quality["clip_gate"]["n_images"] == quality["gate"]["n_images"] == quick.gate_limit
    clip_gate = quality["clip_gate"]  # the generated images' CLIP score over the renders' own
    renders = clip_gate["clip_score_renders"]
    assert clip_gate["clip_score_ratio"] == pytest.approx(clip_gate["clip_score_generated"] / renders if renders > 0 else 0.0)


@pytest.mark.slow
def test_the_quality_benchmark_reads_the_second_world(quick_world2):
    out, _ = quick_world2
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "shapeworld_quality.py"),
        "--model", str(out / "pipeline"),
        "--oracle", str(out),
        "--limit", "6",
        "--threads", "1",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["world"] == "shapeworld2" and line["n_images"] == 6
    assert {"object", "color", "place", "object_per_class", "clip_score_ratio", "clip_style"} <= set(line)
    assert set(line["object_per_class"]) <= set(SHAPEWORLD2.object_names)


# ------------------------------------------------- suites in the second world


def test_a_suite_in_the_second_world_with_the_clip_beside_the_judge(tmp_path):
    """A judge of the second world builds the suites in that world (its kinds,
    synonyms and held-out triples), and a CLIP beside it adds the CLIP score
    and the CLIP style verdicts to every record and to the summary."""
    from tests.standins import StandInOracle

    from fia.evaluate.judges import ShapeWorldJudge
    from fia.evaluate.metrics import fsr
    from fia.evaluate.suites import shapeworld_suite
    from fia.shapeworld.clip import STYLE_LABELS, clip_style_probs

    clip = _tiny_clip(tmp_path)
    judge = ShapeWorldJudge(StandInOracle(world="shapeworld2"), clip=clip)
    with pytest.raises(FIAError, match="trained on shapeworld2 but the judge on shapeworld"):
        ShapeWorldJudge(StandInOracle(), clip=clip)

    suite = shapeworld_suite("shapeworld-objects", judge, "toadstool", images_per_prompt=1, prompts_per_concept=2, quality_prompts=31)
    assert suite.forget == ["mushroom"] and suite.preserve == [k for k in SHAPEWORLD2.object_names if k != "mushroom"]
    assert {it.prompt.split()[2] for it in suite.items if it.role == "synonym"} == {"toadstool"}
    quality = [it for it in suite.items if it.role == "quality"]
    triples = set(SHAPEWORLD2.heldout_triples())
    assert len(quality) == 31 and all(
        (it.meta["factors"]["color"], it.meta["factors"]["object"], it.meta["factors"]["place"]) in triples for it in quality
    )

    # records from the judge itself, on random images; base and edited differ
    g = torch.Generator().manual_seed(0)
    records = {"base": {}, "edited": {}}
    for variant in records:
        images = torch.rand(len(suite.items), 3, 8, 8, generator=g)
        for it, rec in zip(suite.items, judge.score(images, suite.items)):
            records[variant][it.id] = rec
        if variant == "edited":  # the CLIP score of one image, recomputed here by hand
            k = 0
            with torch.no_grad():
                img = clip.encode_image(images[k : k + 1])
                txt = clip.encode_text(clip.token_ids([suite.items[k].prompt]))
            by_hand = 100 * max(float((img * txt).sum()), 0.0)
            assert records["edited"][suite.items[k].id]["clip_score"] == pytest.approx(by_hand, abs=1e-3)
    m = suite.summarize(suite.items, records)
    for v in ("base", "edited"):
        expect = sum(records[v][it.id]["clip_score"] for it in quality) / len(quality)
        assert m["quality"]["clip_score"][v] == pytest.approx(expect)
        own = [records[v][it.id]["clip_score"] for it in suite.items if it.group == "mushroom" and it.role == "forget"]
        assert m["per_class"]["mushroom"]["clip_score"][v] == pytest.approx(sum(own) / len(own))

    # the styles suite: CLIP accuracy and FSR on the CLIP's own probabilities
    styles = shapeworld_suite("shapeworld-styles", judge, "Mondrio", images_per_prompt=1, prompts_per_concept=3, quality_prompts=2)
    images = {v: torch.rand(len(styles.items), 3, 8, 8, generator=g) for v in ("base", "edited")}
    recs = {v: dict(zip([it.id for it in styles.items], judge.score(images[v], styles.items))) for v in images}
    sm = styles.summarize(styles.items, recs)
    sel = [k for k, it in enumerate(styles.items) if it.group == "Mondrio" and it.role == "forget"]
    prompts = [styles.items[k].prompt for k in sel]
    j = STYLE_LABELS.index("Mondrio")
    p = {v: clip_style_probs(clip, images[v][sel], prompts)[:, j].tolist() for v in images}
    assert sm["per_class"]["Mondrio"]["clip_fsr"] == pytest.approx(fsr(p["base"], p["edited"]), abs=1e-5)
    assert sm["summary"]["fsr_clip"] == sm["per_class"]["Mondrio"]["clip_fsr"]
    verdicts = [STYLE_LABELS[int(r.argmax())] for r in clip_style_probs(clip, images["edited"][sel], prompts)]
    assert sm["per_class"]["Mondrio"]["clip_accuracy"]["edited"] == pytest.approx(sum(x == "Mondrio" for x in verdicts) / len(sel))


def test_second_world_suites_never_share_a_seed():
    """Brute force: with 32 concept blocks, 32 synonym blocks and 128 held-out
    triples of up to 100 images each, every image of a second-world suite has
    its own seed, and the tuning split (seed 1,000,000, shift 1) shares none."""
    from tests.standins import StandInOracle

    from fia.evaluate.judges import ShapeWorldJudge
    from fia.evaluate.suites import shapeworld_suite
    from fia.evaluate.suites.seeds import SPLIT_SEED_SPAN

    judge = ShapeWorldJudge(StandInOracle(world="shapeworld2"))
    every = list(SHAPEWORLD2.object_names)
    kw = dict(images_per_prompt=10, prompts_per_concept=100, quality_prompts=100, quality_images_per_prompt=100)
    a = shapeworld_suite("shapeworld-objects", judge, every[:16], every[16:], **kw)
    b = shapeworld_suite("shapeworld-objects", judge, every[:16], every[16:], seed=SPLIT_SEED_SPAN, prompt_shift=1, **kw)
    seeds_a = [it.seed for it in a.items]
    quality = [it for it in a.items if it.role == "quality"]
    # the kept kinds' 4 triples each, among them triples 100..127 (past one block's 100 prompts)
    assert len(quality) == 16 * 4 * 100 and every[-1] in {it.meta["factors"]["object"] for it in quality}
    assert len(set(seeds_a)) == len(seeds_a)
    assert not set(seeds_a) & {it.seed for it in b.items}
    places = shapeworld_suite("shapeworld-objects", judge, every, images_per_prompt=10, prompts_per_concept=100,
                              quality_prompts=100, quality_images_per_prompt=100)  # fmt: skip
    seeds_p = [it.seed for it in places.items]
    assert len(set(seeds_p)) == len(seeds_p) and any(it.prompt == "the grass" for it in places.items)


@pytest.mark.slow
def test_erase_and_evaluate_on_a_trained_world_folder(quick_world2, tmp_path):
    """`fia erase --shapeworld DIR` erases DIR's model with DIR's kinds and
    writes a report judged by DIR's oracle, with the CLIP's score beside it;
    `fia evaluate --shapeworld DIR` reads the mask on the same world."""
    from fia.cli import app
    from fia.shapeworld import world_of, world_path

    out, _ = quick_world2
    assert world_path(out) == out and world_of(out) is SHAPEWORLD2
    with pytest.raises(FIAError, match="not a ShapeWorld folder"):
        world_path(out / "clip")
    with pytest.raises(FIAError, match="neither a shipped world"):
        world_path(tmp_path / "nowhere")

    run = tmp_path / "erase"
    args = ["erase", "--shapeworld", str(out), "--concepts", "toadstool", "--out", str(run), "--variant", "paper",
            "--steps", "2", "--saliency-steps", "1", "--seed", "3"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["forget"] == ["mushroom"] and len(metrics["preserve"]) == 31  # the second world's other kinds
    assert set(metrics["quality"]["clip_score"]) == {"base", "edited"}
    assert metrics["per_class"]["mushroom"]["clip_score"]["base"] is not None

    res = CliRunner().invoke(app, ["erase", "--shapeworld", str(out), "--model", str(out / "pipeline"),
                                   "--concepts", "two", "--out", str(tmp_path / "both")])  # fmt: skip
    assert res.exit_code == 2 and "not both" in res.output
    res = CliRunner().invoke(app, ["erase", "--shapeworld", str(out), "--concepts", "zed", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "'zed' is no ShapeWorld object" in res.output

    ev = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "--suite", "shapeworld-objects", "--shapeworld", str(out), "--mask",
                                   str(run / "mask.safetensors"), "--forget", "mushroom", "--preserve", "two, house",
                                   "--images-per-prompt", "1", "--prompts-per-concept", "1", "--steps", "2",
                                   "--out", str(ev), "--no-report"])  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((ev / "metrics.json").read_text())
    assert m["preserve"] == ["two", "house"] and m["quality"]["clip_score"]["edited"] is not None


# ------------------------------------------------- the shipped second world


def _second_world_shipped() -> bool:
    from fia.shapeworld import SHIPPED_WORLD_FOLDERS, assets_path

    return (assets_path() / SHIPPED_WORLD_FOLDERS["shapeworld2"] / "oracle_config.json").is_file()


shipped_only = pytest.mark.skipif(not _second_world_shipped(), reason="the second world is not installed")


@shipped_only
def test_the_shipped_second_world_is_one_run_of_the_committed_recipe():
    """The shipped folder is small, holds safe formats only, and records one
    from-scratch run (no stage reused) of exactly TrainConfig.shapeworld2
    within the 120-minute budget; its recorded gate meets every target."""
    from dataclasses import asdict

    from fia.shapeworld import DEFAULT_WORLD, shipped_world_path
    from fia.shapeworld.train import TrainConfig

    assert DEFAULT_WORLD == "shapeworld2"
    root = shipped_world_path("shapeworld2")
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 1024 * 1024
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert not (root / ".work").exists()
    recipe = json.loads((root / "recipe.json").read_text())
    assert recipe["config"] == json.loads(json.dumps(asdict(TrainConfig.shapeworld2(seed=recipe["seed"]))))
    assert recipe["reused_stages_seconds"] == {}
    assert recipe["seconds"]["total"] <= 120 * 60
    quality = json.loads((root / "quality.json").read_text())
    gate = quality["gate"]
    assert gate["n_images"] == 896
    assert gate["object"] >= 0.85 and min(gate["object_per_class"].values()) >= 0.60
    assert gate["place"] >= 0.90 and gate["color"] >= 0.90
    assert gate["style"] >= 0.85 and gate["attribute"] >= 0.85
    assert quality["clip_gate"]["clip_score_ratio"] >= 0.90
    assert set(gate["object_per_class"]) == set(SHAPEWORLD2.object_names)


@pytest.mark.slow
@shipped_only
def test_the_shipped_second_world_draws_what_it_is_asked():
    """Half the quality gate, generated again here (448 held-out prompt/seed
    pairs), read by the shipped oracle with its reject option: the gate's
    targets hold on it, and the object figure is within 0.03 of the recorded
    full-gate figure."""
    from fia.shapeworld import load_oracle, load_pipeline, shipped_world_path
    from fia.shapeworld.evaluate import agreement, gate_images

    pipe, oracle = load_pipeline(), load_oracle()
    assert oracle.world is SHAPEWORLD2 and oracle.reject is not None
    res = agreement(oracle, *gate_images(pipe, limit=448, world=SHAPEWORLD2))
    assert res["n_images"] == 448
    assert res["object"] >= 0.85 and res["place"] >= 0.90 and res["color"] >= 0.90
    assert res["style"] >= 0.85 and res["attribute"] >= 0.85
    recorded = json.loads((shipped_world_path("shapeworld2") / "quality.json").read_text())["gate"]
    assert abs(res["object"] - recorded["object"]) <= 0.03


@shipped_only
def test_commands_find_the_world_of_their_model(tmp_path):
    """No model: the default world. A --model that is a world's pipeline/:
    that world. Any other model: no world."""
    from fia.shapeworld import (
        FIRST_WORLD,
        pipeline_path,
        shipped_world_path,
        world_folder_of,
        world_of,
    )

    assert world_folder_of(None) == shipped_world_path("shapeworld2")
    assert world_of(world_folder_of(None)) is SHAPEWORLD2
    assert world_folder_of(str(pipeline_path(FIRST_WORLD))) == shipped_world_path(FIRST_WORLD)
    assert world_of(world_folder_of(str(pipeline_path(FIRST_WORLD)))) is SHAPEWORLD
    assert world_folder_of(None, "shapeworld") == shipped_world_path(FIRST_WORLD)
    other = tmp_path / "model"
    other.mkdir()
    (other / "model_index.json").write_text("{}")
    assert world_folder_of(str(other)) is None
    assert world_folder_of("org/some-model") is None


@shipped_only
def test_an_erase_with_another_world_s_kinds_is_refused_before_any_work():
    """A world's tokenizer knows its kind names whole, so the model's world
    can be read from it; settings naming a smaller world are refused (its
    kinds would be the only contrasts and anchors), the matching world passes
    the check, and a tokenizer of no world (byte-level) is not checked."""
    from transformers import CLIPTokenizer

    import fia
    from fia.config import FIAConfig
    from fia.shapeworld.task import check_config_world, tokenizer_world
    from fia.shapeworld import FIRST_WORLD, pipeline_path
    from fia.shapeworld.tokenizer import byte_level_tokenizer

    second = CLIPTokenizer.from_pretrained(str(pipeline_path("shapeworld2") / "tokenizer"))
    first = CLIPTokenizer.from_pretrained(str(pipeline_path(FIRST_WORLD) / "tokenizer"))
    assert tokenizer_world(second) is SHAPEWORLD2 and tokenizer_world(first) is SHAPEWORLD
    assert tokenizer_world(byte_level_tokenizer()) is None

    class Pipe:  # erase reads the tokenizer before anything else of the model
        tokenizer = second

    with pytest.raises(FIAError, match=r"FIAConfig\(world='shapeworld2'\)"):
        fia.erase(Pipe(), ["arrow"], FIAConfig(task="shapeworld", world=FIRST_WORLD))
    check_config_world(Pipe(), "shapeworld2")
    Pipe.tokenizer = first
    check_config_world(Pipe(), "shapeworld")
    Pipe.tokenizer = byte_level_tokenizer()
    check_config_world(Pipe(), "shapeworld")
    # settings that name no world take the model's: its tokenizer's, else the default world
    from fia.shapeworld import DEFAULT_WORLD
    from fia.tasks import task_of

    unnamed = FIAConfig(task="shapeworld")
    assert unnamed.world is None
    for tokenizer, world in ((second, "shapeworld2"), (first, FIRST_WORLD), (byte_level_tokenizer(), DEFAULT_WORLD)):
        Pipe.tokenizer = tokenizer
        assert task_of(unnamed).settle(unnamed, Pipe()).world == world
