"""The seeding rule of the ShapeWorld suites, the suite table, and the one source of ShapeWorld's sampler settings."""

import pytest

from fia.errors import FIAError
from fia.evaluate.judges import ShapeWorldJudge
from fia.evaluate.suites import (
    SHAPEWORLD_SUITES,
    SPLIT_SEED_SPAN,
    shapeworld_suite,
    split_seed,
)
from tests.standins import StandInOracle


def test_split_seed_by_hand():
    assert split_seed(0, 0, 0, 0) == 0
    assert split_seed(7, 3, 4, 5) == 7 + 3000 + 40 + 5
    assert split_seed(1_000_000, 50, 39, 1) == 1_050_391
    assert split_seed(0, 999, 99, 9) == SPLIT_SEED_SPAN - 1  # the largest seed of a split


def _all_seeds(seed_base, offsets, prompts, images):
    return [split_seed(seed_base, o, k, j) for o in offsets for k in range(prompts) for j in range(images)]


def test_splits_never_share_a_seed_by_brute_force():
    # every block a suite uses (concepts 0-19, synonyms 20-29, quality 50 and 60) and more,
    # at the largest sizes the rule allows
    offsets, prompts, images = range(100), 100, 10
    tuning = _all_seeds(1_000_000, offsets, prompts, images)  # the benchmark's tuning split
    heldout = _all_seeds(0, offsets, prompts, images)  # and the one it measures on
    assert len(set(tuning)) == len(tuning) == 100 * 100 * 10  # no two images of a split share a seed
    assert len(set(heldout)) == len(heldout)
    assert not set(tuning) & set(heldout)
    # any two bases a span apart, whatever the base
    assert not set(_all_seeds(123, range(0, 1000, 37), prompts, images)) & set(
        _all_seeds(123 + SPLIT_SEED_SPAN, range(0, 1000, 37), prompts, images)
    )


def test_the_bounds_are_what_keeps_seeds_apart():
    # without them the formula collides: image 10 of prompt 0 is image 0 of prompt 1,
    # prompt 100 of block 0 is prompt 0 of block 1
    assert 1000 * 0 + 10 * 0 + 10 == 1000 * 0 + 10 * 1 + 0
    assert 1000 * 0 + 10 * 100 + 0 == 1000 * 1 + 10 * 0 + 0
    for args, name in [
        ((0, 0, 0, 10), "image_index"),
        ((0, 0, 100, 0), "prompt_index"),
        ((0, 1000, 0, 0), "offset"),
        ((0, 0, 0, -1), "image_index"),
        ((0, -1, 0, 0), "offset"),
        ((0, 0, 1.5, 0), "prompt_index"),
        ((0, 0, True, 0), "prompt_index"),
    ]:
        with pytest.raises(FIAError, match=name):
            split_seed(*args)


@pytest.mark.parametrize("name,forget", [("shapeworld-objects", "circle"), ("shapeworld-styles", "Ovalli"), ("shapeworld-attribute", None)])
def test_suite_seeds_follow_the_rule_and_never_repeat(name, forget):
    judge = ShapeWorldJudge(StandInOracle())
    a = shapeworld_suite(name, judge, forget, images_per_prompt=10, prompts_per_concept=30, quality_prompts=20)
    b = shapeworld_suite(name, judge, forget, images_per_prompt=10, prompts_per_concept=30, quality_prompts=20, seed=SPLIT_SEED_SPAN, prompt_shift=1)
    for suite in (a, b):
        seeds = [it.seed for it in suite.items]
        assert len(set(seeds)) == len(seeds)
    assert not {it.seed for it in a.items} & {it.seed for it in b.items}
    # the first concept's block: offset 0, prompt k, image j
    first = [it for it in a.items if it.group == a.forget[0] and it.role == "forget"]
    assert [it.seed for it in first[:12]] == [10 * k + j for k in range(2) for j in range(10)][:12]
    if name == "shapeworld-objects":
        synonym = [it for it in a.items if it.role == "synonym"]
        assert synonym[0].seed == 20_000 and synonym[11].seed == 20_011  # prompt 1, image 1 of block 20
    quality = [it for it in a.items if it.role == "quality"]
    assert all(50_000 <= it.seed < 51_000 for it in quality)


def test_suite_sizes_beyond_the_rule_are_refused():
    judge = ShapeWorldJudge(StandInOracle())
    with pytest.raises(FIAError, match="images_per_prompt must be an integer from 1 to 10, got 11"):
        shapeworld_suite("shapeworld-objects", judge, "circle", images_per_prompt=11)
    with pytest.raises(FIAError, match="prompts_per_concept must be an integer from 1 to 100, got 101"):
        shapeworld_suite("shapeworld-styles", judge, "Ovalli", prompts_per_concept=101)
    with pytest.raises(FIAError, match="quality_prompts"):
        shapeworld_suite("shapeworld-attribute", judge, None, quality_prompts=0)
    assert len(shapeworld_suite("shapeworld-objects", judge, "circle", "star", images_per_prompt=10, prompts_per_concept=100).items) > 0


def test_the_suite_table():
    from fia.evaluate.suites.shapeworld import FAMILIES

    assert tuple(FAMILIES) == SHAPEWORLD_SUITES
    judge = ShapeWorldJudge(StandInOracle())
    with pytest.raises(FIAError, match="unknown ShapeWorld suite 'shapeworld-colours'"):
        shapeworld_suite("shapeworld-colours", judge, "red")
    # the attribute suite erases every attribute by default, keeps none, and shows it on every object
    attr = shapeworld_suite("shapeworld-attribute", judge, "Burning", "star", images_per_prompt=1, prompts_per_concept=1)
    assert attr.forget == ["burning"] and attr.preserve == []
    shown = {it.meta["factors"]["object"] for it in attr.items if it.role == "forget"}
    assert len(shown) == 10 and all(it.prompt.startswith("a burning ") for it in attr.items if it.role == "forget")
    with pytest.raises(FIAError, match="unknown ShapeWorld attribute 'frozen'"):
        shapeworld_suite("shapeworld-attribute", judge, "frozen")
    # style concept i starts its objects at object i; a kept style defaults to the others
    styles = shapeworld_suite("shapeworld-styles", judge, "Strelka", images_per_prompt=1, prompts_per_concept=2)
    assert styles.preserve == ["Ovalli", "Pointini", "Mondrio", "Diagonov"]
    kept = [it for it in styles.items if it.group == "Ovalli"]
    assert [it.meta["factors"]["object"] for it in kept] == ["square", "triangle"]
    assert all(it.meta["factors"]["style"] == "Ovalli" and it.prompt.endswith("in the style of Ovalli") for it in kept)


def test_shapeworld_sampler_settings_have_one_source(monkeypatch):
    """Every ShapeWorld default reads fia.shapeworld.GENERATION_DEFAULTS."""
    from fia.models import generation_defaults
    from fia.presets import resolve_config
    from fia.shapeworld import GENERATION_DEFAULTS
    from fia.evaluate.after_erase import report_settings

    monkeypatch.setitem(GENERATION_DEFAULTS, "num_inference_steps", 7)
    monkeypatch.setitem(GENERATION_DEFAULTS, "guidance_scale", 3.5)
    monkeypatch.setitem(GENERATION_DEFAULTS, "height", 48)
    settings = report_settings()
    assert (settings.num_inference_steps, settings.guidance_scale, settings.height) == (7, 3.5, 48)
    assert generation_defaults(None)["num_inference_steps"] == 7
    assert generation_defaults("some/model") == {"num_inference_steps": 50, "guidance_scale": 7.5}
    assert (resolve_config("shapeworld").num_inference_steps, resolve_config("shapeworld").guidance_scale) == (7, 3.5)
    cfg = resolve_config("shapeworld", overrides={"variant": "paper"})
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (7, 3.5)
    assert cfg.saliency_steps <= 7
