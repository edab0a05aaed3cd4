"""The HTML report: self-contained, and rendered by a real headless Chromium."""

import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fia.evaluate.generate import EvalItem, ImageStore
from fia.evaluate.report import write_report
from fia.evaluate.suites import Suite


def _fake_run(tmp_path):
    store = ImageStore(tmp_path)
    rng = np.random.default_rng(0)
    items = [EvalItem(f"{k:05d}", "a red circle on the grass", 10 + k, "circle" if k < 3 else "star", "forget" if k < 3 else "preserve") for k in range(6)]
    for it in items:
        for v in ("base", "edited"):
            store.save(v, it, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    suite = Suite("shapeworld-objects", items, SimpleNamespace(name="oracle"), None, ["circle"], ["star"],
                  [("erased: circle", "forget:circle"), ("kept: star", "preserve:star")])  # fmt: skip
    metrics = {
        "suite": "shapeworld-objects",
        "forget": ["circle"],
        "preserve": ["star"],
        "per_class": {"circle": {"role": "forget", "n": 3, "base": 1.0, "edited": 0.0}, "star": {"role": "preserve", "n": 3, "base": 1.0, "edited": 2 / 3}},
        "summary": {
            "forget_accuracy": {"base": 1.0, "edited": 0.0},
            "preserve_accuracy": {"base": 1.0, "edited": 2 / 3},
            "overall": {"base": 0.0, "edited": 0.8},
        },
        "quality": {"fid": {"base": 12.5, "edited": 14.25}},
        "generation": {"num_inference_steps": 2},
    }
    layers = [SimpleNamespace(name=f"down_blocks.{k}.attentions.0.transformer_blocks.0.ff.net.2", pruned=5 * (k + 1), numel=1000) for k in range(3)]
    mask = SimpleNamespace(layers=layers, pruned_share=30 / 3000, agnostic=7)
    g = torch.Generator().manual_seed(0)
    cm = {c: {"l0": torch.rand(8, 8, generator=g) < 0.3, "l1": torch.rand(4, 8, generator=g) < 0.3} for c in ("circle", "square", "star")}
    return write_report(tmp_path, metrics, suite, mask=mask, concept_masks=cm)


def test_report_is_self_contained(tmp_path):
    path = _fake_run(tmp_path)
    html = path.read_text()
    assert "<table id='metrics'>" in html and "forget_accuracy" in html
    assert html.count("<img ") == 5  # 2 grids, layers, overlap, metrics table
    assert "src='data:image/png;base64," in html
    assert "file:" not in html and "http" not in html
    for png in ("grid_0.png", "grid_1.png", "layers.png", "overlap.png", "metrics_table.png"):
        assert (tmp_path / png).stat().st_size > 1000


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _chrome_args(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir(parents=True)
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}",
    ]  # fmt: skip


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = _fake_run(tmp_path / "run")
    url = path.resolve().as_uri()
    chrome = _chromium()
    dom = subprocess.run([chrome, *_chrome_args(tmp_path), "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    out = dom.stdout
    assert '<table id="metrics">' in out
    assert "preserve_accuracy" in out and "0.800" in out
    assert out.count('src="data:image/png;base64,') == 5
    # the images decode: their natural width is set once the page has loaded
    shot = tmp_path / "shot.png"
    js = tmp_path / "check.html"
    js.write_text(
        f"<html><body><iframe id='f' src='{url}' width='1200' height='3000'></iframe>"
        "<script>document.getElementById('f').onload=function(){var d=this.contentDocument;"
        "var ok=[].every.call(d.images,function(i){return i.complete&&i.naturalWidth>0;});"
        "document.title=(ok&&d.images.length==5)?'IMAGES-OK':'IMAGES-BAD';};</script></body></html>"
    )
    res = subprocess.run([chrome, *_chrome_args(tmp_path / "p2"), "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", js.as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<title>IMAGES-OK</title>" in res.stdout
    res = subprocess.run([chrome, *_chrome_args(tmp_path / "p3"), "--window-size=1100,1400", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] > 500 and img.std() > 10  # not blank
    assert (np.abs(np.diff(img, axis=1)).sum(-1) > 60).mean() > 0.001  # edges of text and figures


def test_overlap_from_the_erase_cache_reproduces_the_fused_mask(tmp_path):
    """Q_c recomputed from erase's per-concept cache give exactly the mask's pruned and agnostic counts."""
    from fia.config import FIAConfig
    from fia.engine import erase
    from fia.evaluate.report import concept_masks_from_cache
    from fia.mask import ConceptMask
    from fia.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    pipe = tiny_sd_pipeline()
    cfg = FIAConfig(task="object", num_inference_steps=3, saliency_steps=1, r2=0.05, r2_overrides={"tench": 0.03})
    concepts = ["church", "golf ball", "tench"]
    mask = erase(pipe, concepts, cfg, cache_dir=tmp_path / "cache")
    mask = ConceptMask.from_bytes(mask.to_bytes())  # what fia evaluate --mask reads back
    q = concept_masks_from_cache(tmp_path / "cache", mask, pipe)
    assert list(q) == concepts
    _assert_reproduces(q, mask, cfg.concept_agnostic_threshold(len(concepts)))


def _assert_reproduces(q, mask, tau):
    pruned = agnostic = 0
    for layer in mask.layer_names:
        s = sum(q[c][layer].int() for c in mask.concepts)
        pruned += int(((s > 0) & (s < tau)).sum())
        agnostic += int((s >= tau).sum())
        assert torch.equal((s > 0) & (s < tau), mask.to_dense(layer))
    assert (pruned, agnostic) == (mask.pruned, mask.agnostic)


def test_report_reads_the_cache_entry_of_its_run_not_the_newest(tmp_path):
    """Two runs with another r1 leave two entries per concept; each run's report reads its own."""
    import os

    from fia.cache import ConceptCache
    from fia.config import FIAConfig
    from fia.engine import erase
    from fia.evaluate.report import concept_masks_from_cache
    from fia.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    pipe = tiny_sd_pipeline()
    cache = tmp_path / "cache"
    concepts = ["church", "golf ball"]
    # with several scored steps r1 (Eq. 3's persistence) changes which neurons are selected
    cfg = FIAConfig(task="object", num_inference_steps=4, saliency_steps=4, r2=0.05)
    first = erase(pipe, concepts, cfg, cache_dir=cache)
    second = erase(pipe, concepts, cfg.replace(r1=0.3), cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 4
    ours = {c: e.path for c, e in ConceptCache(cache).entries(pipe, first).items()}
    theirs = {c: e.path for c, e in ConceptCache(cache).entries(pipe, second).items()}
    assert all(ours[c] != theirs[c] and ours[c].is_file() and theirs[c].is_file() for c in concepts)
    for path in theirs.values():  # the other run's entries are the newest
        os.utime(path, (os.path.getmtime(path) + 100,) * 2)
    q_first = concept_masks_from_cache(cache, first, pipe)
    q_second = concept_masks_from_cache(cache, second, pipe)
    # the two runs selected different neurons, so reading the wrong entry would show
    assert any(not torch.equal(q_first[c][n], q_second[c][n]) for c in concepts for n in first.layer_names)
    _assert_reproduces(q_first, first, cfg.concept_agnostic_threshold(2))
    _assert_reproduces(q_second, second, cfg.concept_agnostic_threshold(2))
    # an entry of other settings is never a stand-in: without its own entries a run gets nothing
    for path in ours.values():
        path.unlink()
    assert concept_masks_from_cache(cache, first, pipe) == {}
