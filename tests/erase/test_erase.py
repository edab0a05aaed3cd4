"""erase(): fusion rule, determinism, cache reuse and resume, statistics."""

from __future__ import annotations

import json
import time

import pytest
import torch

import fia
import fia.collect
from fia.core.select import select_concept_neurons
from fia.engine import write_stats
from fia.errors import FIAError
from tests.helpers import load_tiny, small_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return load_tiny(tiny_dir)


@pytest.fixture()
def spy(monkeypatch):
    """Counts (and can break) calls of the engine's concept_sensitivity."""
    real = fia.collect.concept_sensitivity
    calls: list[str] = []
    fail_on: set[str] = set()

    def wrapped(pipe, concept_prompts, *args, **kwargs):
        concept = concept_prompts[0].split(" ")[1]  # "a {concept} on the grass"
        calls.append(concept)
        if concept in fail_on:
            raise KeyboardInterrupt("simulated interrupt")
        return real(pipe, concept_prompts, *args, **kwargs)

    monkeypatch.setattr(fia.collect, "concept_sensitivity", wrapped)
    return calls, fail_on


def _erase(pipe, concepts, files, **kw):
    cfg = kw.pop("config", None) or small_config()
    return fia.erase(pipe, concepts, cfg, concept_prompts=files[0], base_prompts=files[1], **kw)


def test_fusion_follows_eq_7_8_with_a_known_sensitivity(pipe, monkeypatch):
    """Independent check: with fixed A per concept, prune = selected by 0 < s < tau_ca concepts."""
    gens = {}

    def fake(pipe_, concept_prompts, base_prompts, cs, bs, config, targets, *, r1, progress=None):
        c = concept_prompts[0]
        g = gens.setdefault(c, torch.Generator().manual_seed(len(gens)))
        return {t.name: torch.rand(t.module.weight.shape, generator=g) for t in targets}

    monkeypatch.setattr(fia.collect, "concept_sensitivity", fake)
    cfg = small_config(r2=0.2, alpha=0.6)
    concepts = ["circle", "star", "heart", "cross", "ring"]
    mask = fia.erase(pipe, concepts, cfg)
    # regenerate the same A and count selections by hand
    from fia.tasks import build_prompts

    total_pruned = 0
    tau = 3  # max(2, ceil(0.6 * 5))
    for name in mask.layer_names:
        shape = mask.layer(name).shape
        counts = torch.zeros(shape, dtype=torch.int64)
        for i, c in enumerate(concepts):
            g = torch.Generator().manual_seed(i)
            first = build_prompts(c, cfg).concept_prompts[0]
            assert gens[first].initial_seed() == i
            a = None
            for layer in mask.layer_names:  # same draw order as the targets
                x = torch.rand(mask.layer(layer).shape, generator=g)
                if layer == name:
                    a = x
            counts += select_concept_neurons(a, 0.2).long()
        expected = (counts > 0) & (counts < tau)
        assert torch.equal(mask.to_dense(name), expected)
        assert mask.layer(name).agnostic == int((counts >= tau).sum())
        assert mask.layer(name).tau_ca == tau
        total_pruned += int(expected.sum())
    assert mask.pruned == total_pruned > 0
    assert mask.stats["tau_ca"] == tau


def test_single_concept_prunes_its_whole_selection(pipe, prompt_files):
    mask = _erase(pipe, ["circle"], prompt_files)
    sel = mask.stats["per_concept"]["circle"]["selected"]
    assert sel > 0 and mask.pruned == sel and mask.agnostic == 0


def test_erase_is_deterministic_and_does_not_touch_the_model(pipe, prompt_files):
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    a = _erase(pipe, "circle, star", prompt_files)
    b = _erase(pipe, ["circle", "star"], prompt_files)
    assert a.to_bytes() == b.to_bytes()
    for n, p in pipe.unet.named_parameters():
        assert torch.equal(p, before[n])
    assert a.concepts == ["circle", "star"]
    assert a.config["saliency_steps"] == 2 and a.config["r2"] == 0.05


def test_cache_reuse_refuses_nothing_and_matches_a_fresh_run(pipe, prompt_files, spy, tmp_path):
    calls, _ = spy
    cache = tmp_path / "cache"
    _erase(pipe, ["circle", "star"], prompt_files, cache_dir=cache)
    assert calls == ["circle", "star"]
    assert len(list(cache.glob("*.safetensors"))) == 2
    # alpha and r2 are not part of a concept's sensitivity: nothing is recomputed
    calls.clear()
    cfg = small_config(alpha=1.0, r2=0.1)
    cached = _erase(pipe, ["circle", "star"], prompt_files, cache_dir=cache, config=cfg)
    assert calls == []
    assert all(v["cached"] for v in cached.stats["per_concept"].values())
    fresh = _erase(pipe, ["circle", "star"], prompt_files, config=cfg)
    assert cached.to_bytes() == fresh.to_bytes()
    # adding a concept computes only that one; dropping one computes nothing
    calls.clear()
    _erase(pipe, ["circle", "star", "heart"], prompt_files, cache_dir=cache)
    assert calls == ["heart"]
    calls.clear()
    _erase(pipe, ["heart", "circle"], prompt_files, cache_dir=cache)
    assert calls == []
    # a setting A depends on (r1) is a new cache entry
    _erase(pipe, ["circle"], prompt_files, cache_dir=cache, config=small_config(r1=0.1))
    assert calls == ["circle"]


def test_interrupted_run_resumes_from_the_cache(pipe, prompt_files, spy, tmp_path):
    calls, fail_on = spy
    cache = tmp_path / "cache"
    fail_on.add("star")
    with pytest.raises(KeyboardInterrupt):
        _erase(pipe, ["circle", "star"], prompt_files, cache_dir=cache)
    assert [p.name.split("-")[0] for p in cache.glob("*.safetensors")] == ["circle"]
    assert not list(cache.glob(".*"))  # no temp file left behind
    fail_on.clear()
    calls.clear()
    resumed = _erase(pipe, ["circle", "star"], prompt_files, cache_dir=cache)
    assert calls == ["star"]
    assert resumed.stats["per_concept"]["circle"]["cached"] is True
    fresh = _erase(pipe, ["circle", "star"], prompt_files)
    assert resumed.to_bytes() == fresh.to_bytes()


def test_damaged_cache_entry_is_recomputed(pipe, prompt_files, spy, tmp_path):
    calls, _ = spy
    cache = tmp_path / "cache"
    first = _erase(pipe, ["circle"], prompt_files, cache_dir=cache)
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    calls.clear()
    again = _erase(pipe, ["circle"], prompt_files, cache_dir=cache)
    assert calls == ["circle"] and again.to_bytes() == first.to_bytes()


def test_per_concept_r2_override(pipe, prompt_files):
    cfg = small_config(r2=0.02, r2_overrides={"Star": 0.2})
    mask = _erase(pipe, ["circle", "star"], prompt_files, config=cfg)
    pc = mask.stats["per_concept"]
    assert pc["circle"]["r2"] == 0.02 and pc["star"]["r2"] == 0.2
    assert pc["star"]["selected"] > 3 * pc["circle"]["selected"]


def test_stats_file(pipe, prompt_files, tmp_path):
    started = time.perf_counter()
    mask = _erase(pipe, ["circle", "star"], prompt_files)
    wall = time.perf_counter() - started
    path = write_stats(mask, tmp_path / "fusion_stats.json")
    stats = json.loads(path.read_text())
    assert stats["concepts"] == ["circle", "star"]
    assert set(stats["per_layer"]) == set(mask.layer_names)
    for name, layer in stats["per_layer"].items():
        assert layer["pruned"] == mask.layer(name).pruned
        assert set(layer["selected"]) == {"circle", "star"}
    for c in ("circle", "star"):
        pc = stats["per_concept"][c]
        assert pc["selected"] == sum(layer["selected"][c] for layer in stats["per_layer"].values())
    assert stats["totals"]["pruned"] == mask.pruned
    # the timed parts (each concept, then the fusion) fit in the run's total,
    # and the total in the call's own wall time (every figure is rounded to 1 ms)
    seconds = stats["seconds"]
    parts = sum(stats["per_concept"][c]["seconds"] for c in ("circle", "star")) + seconds["fuse"]
    assert parts <= seconds["total"] + 0.002
    assert seconds["total"] <= wall + 0.001


def test_bad_concept_lists(pipe):
    with pytest.raises(FIAError, match="twice"):
        fia.erase(pipe, ["circle", "Circle"], small_config())
    with pytest.raises(FIAError, match="empty"):
        fia.erase(pipe, ["circle", " "], small_config())
    with pytest.raises(FIAError, match="no concepts"):
        fia.erase(pipe, [], small_config())


def test_public_api_is_light_and_complete():
    import subprocess
    import sys

    code = (
        "import sys, fia; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules;"
        "assert {'FIAConfig','ConceptMask','erase','FIAError'} <= set(fia.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # importing the submodule first must not shadow the function
    from fia.engine import write_stats  # noqa: F401

    assert callable(fia.erase) and callable(fia.ConceptMask.load)


def test_sdxl_pipeline(prompt_files, tmp_path):
    from fia.mask import ConceptMask
    from fia.testing import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    mask = _erase(pipe, ["circle", "star"], prompt_files)
    assert mask.pruned > 0
    path = mask.save(tmp_path / "mask.safetensors")
    modules = dict(pipe.unet.named_modules())
    before = {lm.name: modules[lm.name].weight.detach().clone() for lm in mask.layers}
    loaded = ConceptMask.load(path)
    loaded.apply_(pipe)
    for lm in mask.layers:
        w, dense = modules[lm.name].weight, mask.to_dense(lm.name)
        assert torch.all(w[dense] == 0) and torch.equal(w[~dense], before[lm.name][~dense])
    loaded.restore_(pipe)
    for lm in mask.layers:
        assert torch.equal(modules[lm.name].weight, before[lm.name])
