"""The HTML report: self-contained, and rendered by a real headless Chromium."""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fia.evaluate.generate import EvalItem, ImageStore
from fia.evaluate.report import write_report
from fia.evaluate.stats import wilson
from fia.evaluate.suites import Suite
from tests.standins import StandInOracle


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
    # 2 grids of 3 columns (base and edited), layers, overlap; the metrics table is HTML only
    assert html.count("<img ") == 2 * 3 * 2 + 2
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
    assert out.count('src="data:image/png;base64,') == 14
    # the images decode: their natural width is set once the page has loaded
    shot = tmp_path / "shot.png"
    js = tmp_path / "check.html"
    js.write_text(
        f"<html><body><iframe id='f' src='{url}' width='1200' height='3000'></iframe>"
        "<script>document.getElementById('f').onload=function(){var d=this.contentDocument;"
        "var ok=[].every.call(d.images,function(i){return i.complete&&i.naturalWidth>0;});"
        # the captions' font size as the browser computes it (in px, at 100 % zoom)
        "var px=[].map.call(d.querySelectorAll('.caption'),function(e){return parseFloat(getComputedStyle(e).fontSize);});"
        "document.title=((ok&&d.images.length==14)?'IMAGES-OK':'IMAGES-BAD')+' CAPTIONS-'+px.length+'-PX-'+Math.min.apply(null,px);};"
        "</script></body></html>"
    )
    res = subprocess.run([chrome, *_chrome_args(tmp_path / "p2"), "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", js.as_uri()], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<title>IMAGES-OK " in res.stdout
    captions, px = re.search(r"CAPTIONS-(\d+)-PX-([\d.]+)</title>", res.stdout).groups()
    assert int(captions) >= 2 * 3 + 2 and float(px) >= 11  # every column's caption and the two titles
    res = subprocess.run([chrome, *_chrome_args(tmp_path / "p3"), "--window-size=1300,1400", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
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


# ------------------------------------------------- what a reader of the report needs
def _shapeworld_run(tmp_path, quality_images=None):
    """A ShapeWorld objects suite judged by hand-made records, summarised as a run does, and its report.

    Erased: circle (the edited model never draws it). Kept: star (untouched),
    heart (3 of its 4 images lost) and cross (1 of 4 lost). Quality prompts
    carry features, so KID and FID are measured.
    """
    from fia.evaluate.judges import ShapeWorldJudge
    from fia.evaluate.stats import metric_intervals
    from fia.evaluate.suites import shapeworld_suite

    judge = ShapeWorldJudge(StandInOracle())
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(64, 8, generator=g, dtype=torch.float64)
    suite = shapeworld_suite(
        "shapeworld-objects", judge, "circle", "star, heart, cross", images_per_prompt=2, prompts_per_concept=2,
        reference=reference, quality_images=quality_images,
    )  # fmt: skip
    lost = {"heart": 3, "cross": 1}
    seen: dict[str, int] = {}
    store = ImageStore(tmp_path)
    rng = np.random.default_rng(0)
    records = {"base": {}, "edited": {}}
    for it in suite.items:
        f = it.meta["factors"]
        truth = f["object"] if it.role == "quality" else it.group
        records["base"][it.id] = _rec(judge.heads, truth, f)
        k = seen[it.group] = seen.get(it.group, 0) + (it.role == "preserve")
        wrong = it.role in ("forget", "synonym") or (it.role == "preserve" and k <= lost.get(it.group, 0))
        records["edited"][it.id] = _rec(judge.heads, "none" if wrong else truth, f)
        for v in ("base", "edited"):
            records[v][it.id]["_features"] = torch.randn(8, generator=g).tolist()
            store.save(v, it, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    metrics = suite.summarize(suite.items, records)
    metrics["n_items"] = len(suite.items)
    metrics["intervals"] = metric_intervals(metrics)
    return metrics, write_report(tmp_path, metrics, suite)


def _rec(heads, obj, factors):
    rec = {"pred": {}, "prob": {}}
    for head, names in heads.items():
        name = obj if head == "object" else factors.get(head, "?")
        rec["pred"][head] = name
        rec["prob"][head] = [1.0 if n == name else 0.0 for n in names]
    return rec


class _Page(HTMLParser):
    """The parts of the report a reader looks at: style sheet, tables by id, figures, headline text."""

    def __init__(self):
        super().__init__()
        self.css, self.tables, self.figures, self.headline = "", {}, {}, ""
        self._stack, self._table, self._row, self._cell, self._figure = [], None, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._stack.append((tag, a))
        if tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": "", "ci": 0}
            self._row.append(self._cell)
        elif tag == "span" and "ci" in a.get("class", "").split() and self._cell is not None:
            self._cell["ci"] += 1
        elif tag == "figure":
            self._figure = self.figures.setdefault(a.get("id"), {"imgs": 0, "captions": [], "classes": []})
        if self._figure is not None and tag == "img":
            self._figure["imgs"] += 1
        if self._figure is not None and tag in ("th", "figcaption"):
            self._figure["classes"].append(a.get("class", ""))

    def handle_endtag(self, tag):
        while self._stack:
            t, _ = self._stack.pop()
            if t == tag:
                break
        if tag == "table":
            self._table, self._row = None, None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._stack and self._stack[-1][0] == "style":
            self.css += data
        if self._cell is not None:
            self._cell["text"] += data
        if any(t == "div" and a.get("id") == "headline" for t, a in self._stack):
            self.headline += data
        if self._figure is not None and self._stack[-1][0] in ("th", "figcaption", "q", "br"):
            self._figure["captions"].append(data)


def _css_font_px(css, selector):
    """The font-size (px) the style sheet gives ``selector``, or None."""
    for rule in re.finditer(r"([^{}]+)\{([^}]*)\}", css):
        if selector in [s.strip() for s in rule.group(1).split(",")]:
            size = re.search(r"font-size:\s*([\d.]+)px", rule.group(2))
            if size:
                return float(size.group(1))
    return None


def test_report_captions_intervals_and_kept_grid(tmp_path):
    metrics, path = _shapeworld_run(tmp_path)
    text = path.read_text()
    page = _Page()
    page.feed(text)

    # captions (prompt, seed) are HTML text of at least 11 px, not pixels in a picture
    assert _css_font_px(page.css, ".caption") >= 11
    assert not re.search(r"font-size:\s*([0-9]|10)(\.\d+)?px", text)  # nothing smaller anywhere
    grids = {k: f for k, f in page.figures.items() if k and k.startswith("grid-")}
    assert grids
    for f in grids.values():
        assert f["classes"] and all("caption" in c.split() for c in f["classes"] if c)
        assert any("seed" in c for c in f["captions"])

    # an interval beside every rate: each base/edited cell of a rate row, each per-concept accuracy
    rates = {"forget_accuracy", "preserve_accuracy", "overall", "synonym_accuracy", "quality: prompt_fidelity"}
    rows = {r[0]["text"]: r for r in page.tables["metrics"][1:]}
    assert rates <= set(rows)
    for name in rates:
        assert [c["ci"] for c in rows[name][2:]] == [1, 1], name
        assert rows[name][1]["text"].strip().isdigit()  # the number of images it rests on
    assert rows["forget_accuracy"][1]["text"] == "4" and rows["preserve_accuracy"][1]["text"] == "12"
    for name, row in rows.items():
        if name not in rates:
            assert all(c["ci"] == 0 for c in row), name  # counts, CLIP score: no rate, no interval
    per = page.tables["per-concept"]
    head = [c["text"] for c in per[0]]
    acc = [head.index("accuracy base"), head.index("accuracy edited")]
    assert len(per) - 1 == 4 and all(row[i]["ci"] == 1 for row in per[1:] for i in acc)
    # the interval is Wilson's on the images: heart kept 1 of 4
    heart = next(r for r in per[1:] if r[0]["text"] == "heart")
    low, high = wilson(1, 4).low, wilson(1, 4).high
    assert f"0.250 [{low:.2f}, {high:.2f}]" in heart[acc[1]]["text"]

    # the headline names the number of images and the largest losses, heart first
    assert "4 images per concept" in page.headline
    assert re.search(r"heart 1\.00 -> 0\.25.*cross 1\.00 -> 0\.75", page.headline)
    assert "star" not in page.headline.split("Largest losses")[1].split(";")[0]  # star lost nothing: named after them, if at all

    # the kept concepts that changed most as grids, base and edited, below their heading
    kept = text.split("<h2 id='kept'>", 1)[1]
    assert kept.index("grid-preserve-heart") < kept.index("grid-preserve-cross") < kept.index("grid-preserve-star")
    assert grids["grid-preserve-heart"]["imgs"] == 2 * 4  # 4 seeds, base and edited

    # 72 quality images: no KID or FID in the page (they are in metrics.json), and how to get them
    assert metrics["quality"]["n_images"] < 500 and "kid" in metrics["quality"]
    assert not any(n.startswith("quality: kid") or n.startswith("quality: fid") for n in rows)
    assert "fia evaluate --suite shapeworld-objects" in text and "--quality-images 500" in text


def test_report_shows_kid_and_fid_from_500_quality_images(tmp_path):
    metrics, path = _shapeworld_run(tmp_path, quality_images=500)
    assert metrics["quality"]["n_images"] >= 500
    page = _Page()
    page.feed(path.read_text())
    rows = {r[0]["text"] for r in page.tables["metrics"][1:]}
    assert {"quality: kid", "quality: fid", "quality: kid_change", "quality: kid_change_se"} <= rows
    assert "--quality-images" not in path.read_text()


def test_quality_images_is_for_shapeworld_suites(tmp_path):
    from typer.testing import CliRunner

    from fia.cli import app

    mask = tmp_path / "mask.safetensors"
    mask.write_bytes(b"")
    res = CliRunner().invoke(app, ["evaluate", "--suite", "coco", "--model", str(tmp_path), "--mask", str(mask),
                                   "--quality-images", "500", "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 2 and "--quality-images" in res.output
