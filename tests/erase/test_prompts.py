"""Prompt templates, seed pairing, prompt files, concept lists and presets."""

from __future__ import annotations

import re

import pytest

from fia.concepts import parse_concepts
from fia.config import FIACausalConfig, FIAConfig
from fia.config import concept_value
from fia.errors import FIAError
from fia.presets import load_preset, preset_path, resolve_config
from fia.prompt_files import read_prompt_file
from fia.shapeworld import vocab
from fia.tasks import OBJECTS, PERSONS, PLACES, build_prompts


def _seed_of(prompts, seeds, text):
    assert prompts.count(text) == 1, text
    return seeds[prompts.index(text)]


def test_object_prompts_are_paired_by_place():
    cfg = FIAConfig(task="object", seed=100)
    p = build_prompts("golf ball", cfg)
    assert len(PLACES) == 30
    assert len(p.concept_prompts) == 2 * len(PLACES) and len(p.base_prompts) == len(PLACES)
    k = PLACES.index("park")
    assert _seed_of(p.concept_prompts, p.concept_seeds, "a golf ball in a park") == 100 + k
    assert _seed_of(p.concept_prompts, p.concept_seeds, "a golf ball near the park") == 100 + k
    assert _seed_of(p.base_prompts, p.base_seeds, "a park") == 100 + k
    # every place: both concept prompts and the base prompt share one seed, distinct across places
    for k, place in enumerate(PLACES):
        assert _seed_of(p.base_prompts, p.base_seeds, f"a {place}") == 100 + k
        assert _seed_of(p.concept_prompts, p.concept_seeds, f"a golf ball in a {place}") == 100 + k
    assert len(set(p.base_seeds)) == len(PLACES)


def test_style_and_explicit_templates():
    s = build_prompts("Van Gogh", FIAConfig(task="style"))
    assert s.concept_prompts[0] == f"a {OBJECTS[0]} in the style of Van Gogh"
    assert s.base_prompts[0] == f"a {OBJECTS[0]}"
    assert len(s.concept_prompts) == len(s.base_prompts) == 30
    assert s.concept_seeds == s.base_seeds
    e = build_prompts("naked", FIAConfig(task="explicit", seed=7))
    k = PERSONS.index("group of friends")
    assert e.concept_prompts[k] == "a photo of a naked group of friends"
    assert e.base_prompts[k] == "a photo of a group of friends"
    assert e.concept_seeds[k] == e.base_seeds[k] == 7 + k


def test_shapeworld_prompts_use_the_vocabulary():
    p = build_prompts("circle", FIAConfig(task="shapeworld", seed=3))
    assert "a circle on the grass" in p.concept_prompts
    assert "a circle in the sky" in p.concept_prompts
    assert "the grass" in p.base_prompts
    assert len(p.concept_prompts) == len(vocab.PLACE_NAMES)
    k = vocab.PLACE_NAMES.index("sky")
    assert _seed_of(p.concept_prompts, p.concept_seeds, "a circle in the sky") == 3 + k
    assert _seed_of(p.base_prompts, p.base_seeds, "the sky") == 3 + k


def test_prompt_files(tmp_path):
    c = tmp_path / "c.txt"
    c.write_text("# comment\n\n  a {concept} by the sea  \nplain prompt without the placeholder\n")
    b = tmp_path / "b.txt"
    b.write_text("the sea\n\n# skip\nan empty room\n")
    p = build_prompts("golf ball", FIAConfig(seed=10), c, b)
    assert p.concept_prompts == ("a golf ball by the sea", "plain prompt without the placeholder")
    assert p.base_prompts == ("the sea", "an empty room")
    assert p.concept_seeds == (10, 11) and p.base_seeds == (10, 11)
    # only one file replaced: the other set keeps the template
    q = build_prompts("golf ball", FIAConfig(task="shapeworld"), concept_file=c)
    assert len(q.base_prompts) == len(vocab.PLACE_NAMES)


def test_empty_or_missing_prompt_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    with pytest.raises(FIAError, match="no prompts"):
        read_prompt_file(empty)
    with pytest.raises(FIAError, match="no prompts"):
        build_prompts("x", FIAConfig(), concept_file=empty)
    with pytest.raises(FIAError, match="does not exist"):
        build_prompts("x", FIAConfig(), base_file=tmp_path / "nope.txt")


def test_parse_concepts():
    assert parse_concepts(" golf ball ,church,  Van   Gogh") == ["golf ball", "church", "Van Gogh"]
    assert parse_concepts(["a", "b"]) == ["a", "b"]
    for bad in ["", " , ", "a,,b", "a, b,"]:
        with pytest.raises(FIAError, match="empty"):
            parse_concepts(bad)
    with pytest.raises(FIAError, match="twice"):
        parse_concepts("church, Church")


def test_presets_follow_table_8():
    obj = resolve_config("object")
    assert (obj.r1, obj.r2, obj.alpha) == (0.05, 0.007, 0.6)
    for hard in ("parachute", "golf ball", "gas pump"):
        assert obj.r2_for(hard) == 0.03
    assert obj.r2_for("church") == 0.007
    assert (obj.saliency_steps, obj.num_inference_steps, obj.guidance_scale) == (10, 50, 7.5)
    sty = resolve_config("style")
    assert (sty.r1, sty.r2, sty.alpha) == (0.05, 0.02, 0.8)
    assert sty.r2_for("Van Gogh") == 0.03 and sty.r2_for("Monet") == 0.02
    exp = resolve_config("explicit")
    assert (exp.r1, exp.r2, exp.alpha) == (0.05, 0.01, 0.6)
    assert exp.r1_for("sexual") == 0.06 and exp.r1_for("naked") == 0.05


def test_shapeworld_preset_schedule():
    cfg = resolve_config("shapeworld")
    try:
        from fia.shapeworld import GENERATION_DEFAULTS  # type: ignore[attr-defined]
    except ImportError:
        GENERATION_DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 5.0}
    assert cfg.num_inference_steps == GENERATION_DEFAULTS["num_inference_steps"]
    assert cfg.guidance_scale == GENERATION_DEFAULTS["guidance_scale"]
    paper = resolve_config("shapeworld", overrides={"variant": "paper"})  # the preset's paper settings
    assert (paper.num_inference_steps, paper.guidance_scale) == (cfg.num_inference_steps, cfg.guidance_scale)
    assert 1 <= paper.saliency_steps <= paper.num_inference_steps


def test_a_bare_config_samples_at_its_tasks_schedule():
    """FIAConfig(task=...) and the CLI's preset read one source for the schedule and guidance."""
    from fia.config import sampler_defaults

    for task in ("object", "style", "explicit", "shapeworld"):
        bare, preset = FIAConfig(task=task), resolve_config(task)
        want = sampler_defaults(task)
        assert (bare.num_inference_steps, bare.guidance_scale) == (want["num_inference_steps"], want["guidance_scale"])
        assert (preset.num_inference_steps, preset.guidance_scale) == (bare.num_inference_steps, bare.guidance_scale)
    assert (FIAConfig().num_inference_steps, FIAConfig().guidance_scale) == (50, 7.5)  # unchanged
    # on ShapeWorld the paper variant's settings are the CLI's, field for field
    bare = FIAConfig(task="shapeworld", world="shapeworld")
    cli = resolve_config("shapeworld", overrides={"variant": "paper", "world": "shapeworld"})
    assert bare.to_dict() == cli.to_dict()
    # given values win; a config rebuilt from a run keeps its recorded schedule
    assert FIAConfig(task="shapeworld", num_inference_steps=50, guidance_scale=7.5).num_inference_steps == 50
    assert FIAConfig.from_run(FIAConfig().to_dict() | {"task": "shapeworld"}).guidance_scale == 7.5


def test_precedence_preset_file_flags(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("task: style\nr2: 0.05\nalpha: 0.7\n")
    cfg = resolve_config(None, f, {"alpha": 0.9, "r1": None})
    assert cfg.task == "style" and cfg.r2 == 0.05 and cfg.alpha == 0.9 and cfg.r1 == 0.05
    # an explicit task wins over the file's, the file still overrides the preset
    cfg = resolve_config("object", f)
    assert cfg.task == "object" and cfg.r2 == 0.05
    bad = tmp_path / "bad.yaml"
    bad.write_text("r3: 1\n")
    with pytest.raises(FIAError, match="r3"):
        resolve_config(None, bad)
    with pytest.raises(FIAError, match="unknown task"):
        resolve_config("painting")
    with pytest.raises(FIAError, match="does not exist"):
        resolve_config(None, tmp_path / "missing.yaml")


def test_presets_ship_in_the_package():
    for task in ("object", "style", "explicit", "shapeworld"):
        packaged = preset_path(task)
        assert packaged.is_file()
        assert load_preset(task)["task"] == task


def test_overrides_match_case_insensitively():
    assert concept_value({"Van Gogh": 0.03}, "van gogh", 0.02) == 0.03
    assert concept_value({"Van Gogh": 0.03}, "Monet", 0.02) == 0.02


def test_shapeworld_evidence_reads_the_configs_world():
    """The causal variant's contrasts and anchors are the object kinds of the
    model's world: a second-world kind (and its synonym) is a concept there,
    and its contrasts are other second-world kinds."""
    from fia.causal import evidence_and_anchors
    from fia.shapeworld.task import shapeworld_canonical

    world2 = vocab.get_world("shapeworld2")
    assert shapeworld_canonical(["toadstool", "disc", "zed"], "shapeworld2") == ["mushroom", "circle"]
    assert shapeworld_canonical(["toadstool", "disc"], "shapeworld") == ["circle"]  # the first world has no mushroom
    cfg = FIACausalConfig(task="shapeworld", world="shapeworld2", concept_prompts_per_concept=40, contrasts=3, anchor_prompts=64)
    ev = evidence_and_anchors(["toadstool"], cfg)[0]["toadstool"]
    named = {o for row in ev.contrasts for c in row for o in [c.split()[2]]}
    assert named <= set(world2.object_names) - {"mushroom"}
    assert named - set(vocab.OBJECT_NAMES)  # second-world kinds are among the contrasts
    anchors = evidence_and_anchors(["mushroom"], cfg)[1]
    drawn = {p.split()[2] for p in anchors.prompts}
    assert drawn == set(world2.object_names) - {"mushroom"}  # 64 prompts cycle through all 31 kept kinds
    with pytest.raises(FIAError, match="unknown world"):
        FIAConfig(task="shapeworld", world="shapeworld3").validate()


def test_a_bare_words_scene_is_an_object_less_place():
    """The rewrite pairs "box" with a place and no object, never with the empty prompt,
    which on ShapeWorld draws the commonest kinds; every other pair drops the shape and keeps the place."""
    from fia.shapeworld.render import parse_prompt
    from fia.shapeworld.task import concept_phrasings

    world = vocab.SHAPEWORLD2
    concept, scene = concept_phrasings(["square"], world, 24)
    bare = [(c, s) for c, s in zip(concept, scene) if " " not in c]
    assert len(bare) == 4 and all(c in ("square", "box") for c, _ in bare)
    for text, blank in zip(concept, scene):
        assert blank != ""
        place = parse_prompt(blank, world)
        assert "object" not in place and "place" in place
        if " " in text:
            assert parse_prompt(text, world)["place"] == place["place"]


def test_the_anchor_prompts_put_a_kept_concept_in_the_erased_ones_place():
    """Anchored guidance's references: each concept prompt with a kept kind (prompt i: kept kind 7 i mod 30) in place
    of the erased kind's name or synonym, a kept style in place of an erased style, and the scene where there is no
    kept concept of that sort (burning)."""
    from fia.shapeworld.render import parse_prompt
    from fia.config import RewriteConfig
    from fia.shapeworld.task import concept_phrasings, kept_in_place, kind_words, task_in

    world = vocab.SHAPEWORLD2
    erased = ["circle", "star"]
    concept, scene = concept_phrasings(erased, world, 24)
    anchor = kept_in_place(concept, scene, erased, world)
    kept = [o for o in world.object_names if o not in erased]
    assert len(kept) == 30 and len(anchor) == 48
    for i, (text, a) in enumerate(zip(concept, anchor)):
        want, parsed = parse_prompt(text, world), parse_prompt(a, world)
        assert parsed["object"] == kept[(7 * i) % 30]  # bare words too: "disc" -> "bell"
        assert {k: v for k, v in parsed.items() if k != "object"} == {k: v for k, v in want.items() if k != "object"}
    assert {parse_prompt(a, world)["object"] for a in anchor} == set(kept)  # every kept kind comes up
    first_kept = next(o for o in world.object_names if o != "circle")
    assert kept_in_place(["a red disc on the sand"], ["the sand"], ["circle"], world) == [f"a red {first_kept} on the sand"]
    assert kept_in_place(["the sand"], ["the sand"], ["circle"], world) == ["the sand"]  # nothing to swap: the scene
    styled, styled_scene = concept_phrasings(["Ovalli"], world, 6)
    for text, a in zip(styled, kept_in_place(styled, styled_scene, ["Ovalli"], world)):
        assert parse_prompt(a, world)["style"] != "Ovalli" and a.replace(parse_prompt(a, world)["style"], "Ovalli") == text
    every_style = list(vocab.STYLE_NAMES)
    styled, styled_scene = concept_phrasings(every_style, world, 2)
    assert kept_in_place(styled, styled_scene, every_style, world) == styled_scene  # no style left: the scene
    burning, burning_scene = concept_phrasings(["burning"], world, 4)
    assert kept_in_place(burning, burning_scene, ["burning"], world) == burning_scene
    prompts = task_in(world).rewrite_prompts(erased, RewriteConfig(), anchors=[], seed=0)
    assert prompts.anchor == tuple(anchor)
    for text, owner in zip(prompts.concept, prompts.owner):  # each prompt's owner is the kind it names
        assert re.search(kind_words([owner], world), text) and not re.search(kind_words(sorted(set(erased) - {owner}), world), text)
