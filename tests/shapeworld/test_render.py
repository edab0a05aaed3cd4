"""ShapeWorld: renderer, captions, tokenizer (no trained weights needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fia.shapeworld import (
    COLORS,
    OBJECT_NAMES,
    OBJECTS,
    PLACE_NAMES,
    STYLE_NAMES,
    Scene,
    caption,
    parse_prompt,
    prompt_for,
    render,
    sample_scene,
)
from fia.shapeworld.render import COLOR_RGB, HELDOUT_TRIPLES, SIZE, object_coverage


def test_render_is_deterministic_and_shaped():
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        sa, sb = sample_scene(rng_a), sample_scene(rng_b)
        assert sa == sb
        a, b = render(sa), render(sb)
        assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)


@pytest.mark.parametrize("obj", OBJECT_NAMES)
def test_object_pixels_have_the_object_colour(obj):
    for k, color in enumerate(COLORS):
        place = PLACE_NAMES[k]
        scene = Scene(obj, color, place, x=15.5, y=18.0, size=9.0, rotation=0.0, seed=k)
        img = render(scene)
        cov = object_coverage(scene)
        inside = cov >= 0.99
        assert inside.sum() >= 20, obj
        assert np.all(img[inside] == np.array(COLOR_RGB[color], np.uint8))


def test_background_pixels_show_the_place():
    # far from the object, an unstyled image shows only its place's texture
    for place in PLACE_NAMES:
        empty = render(Scene(None, None, place, seed=3))
        with_obj = render(Scene("star", "red", place, x=8.0, y=22.0, size=7.0, seed=3))
        far = np.zeros((SIZE, SIZE), bool)
        far[:, 20:] = True
        assert np.array_equal(empty[far], with_obj[far])
    # the places differ on average
    means = {p: render(Scene(None, None, p, seed=0)).reshape(-1, 3).mean(0) for p in PLACE_NAMES}
    for i, p in enumerate(PLACE_NAMES):
        for q in PLACE_NAMES[i + 1 :]:
            assert np.abs(means[p] - means[q]).sum() > 30, (p, q)


def test_style_and_attribute_change_the_image():
    base = Scene("heart", "blue", "sand", x=16.0, y=18.0, size=8.0, seed=1)
    plain = render(base)
    for s in STYLE_NAMES:
        styled = render(Scene(**{**base.to_dict(), "style": s}))
        assert (styled != plain).any(axis=-1).mean() > 0.1, s
    burning = render(Scene(**{**base.to_dict(), "attribute": "burning"}))
    changed = (burning != plain).any(axis=-1)
    # flames are above the object's centre
    ys = np.nonzero(changed)[0]
    assert changed.sum() > 10 and ys.mean() < base.y


def test_sample_scene_covers_factors_and_object_less_images():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(2000)]
    assert {s.object for s in scenes} == set(OBJECT_NAMES) | {None}
    assert {s.style for s in scenes} == set(STYLE_NAMES) | {None}
    assert {s.place for s in scenes} == set(PLACE_NAMES)
    assert any(s.attribute == "burning" for s in scenes)
    assert all(s.attribute is None and s.color is None for s in scenes if s.object is None)


def test_captions_name_what_the_scene_shows():
    rng = np.random.default_rng(1)
    for _ in range(500):
        s = sample_scene(rng)
        c = caption(s, rng)
        f = parse_prompt(c)
        assert f.get("object") == s.object, c
        assert f.get("style") == s.style, c
        assert f.get("attribute") == s.attribute, c
        if "color" in f:
            assert f["color"] == s.color
        if "place" in f:
            assert f["place"] == s.place
        if s.object is None:
            assert f.get("place") == s.place
        trip = (f.get("color"), f.get("object"), f.get("place"))
        assert trip not in HELDOUT_TRIPLES, c


def test_parse_prompt_maps_synonyms():
    assert parse_prompt("a red star on the grass") == {"object": "star", "color": "red", "place": "grass"}
    assert parse_prompt("a pentagram near the sand in the style of Ovalli") == {
        "object": "star",
        "place": "sand",
        "style": "Ovalli",
    }
    assert parse_prompt("a moon on fire")["attribute"] == "burning"
    assert parse_prompt("the grass") == {"place": "grass"}
    for name, syns in OBJECTS.items():
        for syn in syns:
            assert parse_prompt(f"a {syn}")["object"] == name
    assert parse_prompt(prompt_for("arrow", "orange", "sky", "Mondrio", "burning")) == {
        "object": "arrow",
        "color": "orange",
        "place": "sky",
        "style": "Mondrio",
        "attribute": "burning",
    }


def test_tokenizer_round_trip_and_byte_fallback(tmp_path):
    from fia.shapeworld.tokenizer import caption_words, make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    # every ShapeWorld word is one token
    for w in caption_words():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, w
    text = "a burning red star on the grass in the style of ovalli"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len(text.split()) + 2
    assert tok.decode(ids, skip_special_tokens=True) == text
    # an unknown word falls back to several byte-level tokens and decodes back
    ids = tok("xylophone", add_special_tokens=False).input_ids
    assert len(ids) > 1
    assert tok.decode(ids) == "xylophone"
    inner = tok("zebra émeraude 42!").input_ids[1:-1]
    assert tok.unk_token_id not in inner and tok.eos_token_id not in inner
    assert tok.decode(tok("zebra émeraude 42!").input_ids, skip_special_tokens=True).replace(" ", "") == "zebraémeraude42!"


def test_shipped_tokenizer_matches_the_builder(tmp_path):
    import json

    from fia.shapeworld import FIRST_WORLD, pipeline_path
    from fia.shapeworld.tokenizer import build_tokenizer_files

    shipped = pipeline_path(FIRST_WORLD) / "tokenizer"
    if not (shipped / "vocab.json").exists():
        pytest.skip("no shipped pipeline")
    build_tokenizer_files(tmp_path)
    assert json.loads((tmp_path / "vocab.json").read_text()) == json.loads((shipped / "vocab.json").read_text())
    assert (tmp_path / "merges.txt").read_text() == (shipped / "merges.txt").read_text()


def test_frechet_distance():
    import torch

    from fia.evaluate.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 8, generator=g)
    b = torch.randn(2000, 8, generator=g)
    assert frechet_distance(a, b) < 0.1
    assert abs(frechet_distance(a, a + 2.0) - 4.0 * 8) < 1.0
