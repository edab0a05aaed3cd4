"""ShapeWorld suites: metrics on hand-made records, and a paired run end to end.

The oracle is a random stand-in with the real interface (the shipped oracle
is not needed); the model is a tiny random SD pipeline with a real
ConceptMask that zeroes half of every FFN2 weight.
"""

import json
import math

import pytest
import torch

from fia.evaluate import GenerationSettings, ImageStore, build_suite, evaluate
from fia.evaluate.judges import ShapeWorldJudge
from fia.errors import FIAError
from fia.evaluate.suites import shapeworld_suite
from tests.standins import StandInOracle, random_mask, write_concept_cache

torch.set_num_threads(1)
FAST = GenerationSettings(num_inference_steps=2, guidance_scale=7.5, batch_size=8)
# the after-erase report at one step (batch size and other settings as the report's defaults)
ONE_STEP_REPORT = GenerationSettings(num_inference_steps=1, batch_size=16)


def _scores(out) -> list[dict]:
    """The per-image records of a run (``scores.jsonl``)."""
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def _accuracy(out, head: str, classes: list[str], variant: str) -> float:
    """Mean over ``classes`` of the share of a class's images whose ``head`` verdict names it."""
    shares = []
    for c in classes:
        rows = [r for r in _scores(out) if r["group"] == c and r["role"] in ("forget", "preserve") and r["variant"] == variant]
        shares.append(sum(r["pred"][head] == c for r in rows) / len(rows))
    return sum(shares) / len(shares)


def _rec(heads, **pred):
    rec = {"pred": {}, "prob": {}}
    for head, names in heads.items():
        name = pred.get(head, "?")  # "?" matches no factor
        rec["pred"][head] = name
        rec["prob"][head] = [1.0 if n == name else 0.0 for n in names]
    return rec


def test_object_metrics_by_hand():
    judge = ShapeWorldJudge(StandInOracle())
    suite = shapeworld_suite("shapeworld-objects", judge, "circle, disc, square", "star", images_per_prompt=2, prompts_per_concept=2)
    assert suite.forget == ["circle", "square"]  # the synonym maps to its object
    assert suite.preserve == ["star"]
    records = {"base": {}, "edited": {}}
    for it in suite.items:
        truth = it.meta["factors"]["object"]
        k = int(it.id)
        records["base"][it.id] = _rec(judge.heads, object=truth)  # base: always right
        # edited: erased objects right 1 time in 4, kept ones 3 in 4
        right = (k % 4 == 0) if it.group in ("circle", "square") else (k % 4 != 0)
        records["edited"][it.id] = _rec(judge.heads, object=truth if right else "none")
    m = suite.summarize(suite.items, records)
    per = m["per_class"]
    for c in ("circle", "square", "star"):
        assert per[c]["base"] == 1.0 and per[c]["n"] == 4
        expect = sum(
            (int(it.id) % 4 == 0) if c != "star" else (int(it.id) % 4 != 0)
            for it in suite.items
            if it.group == c and it.role in ("forget", "preserve")
        ) / 4
        assert per[c]["edited"] == expect
    s = m["summary"]
    f_e = (per["circle"]["edited"] + per["square"]["edited"]) / 2
    p_e = per["star"]["edited"]
    assert s["forget_accuracy"] == {"base": 1.0, "edited": f_e}
    assert s["preserve_accuracy"] == {"base": 1.0, "edited": p_e}
    assert s["overall"]["base"] == 0.0  # F = 1 on the base model
    assert s["overall"]["edited"] == pytest.approx(2 * p_e * (1 - f_e) / (p_e + 1 - f_e))
    assert set(m["synonyms"]) == {"circle", "square"}
    assert m["synonyms"]["circle"]["words"] == ["disc"]
    # prompts name the synonym, the judge checks the canonical object
    assert all("disc" in it.prompt for it in suite.items if it.role == "synonym" and it.group == "circle")
    # held-out quality prompts never name an erased object
    assert all(it.meta["factors"]["object"] == "star" for it in suite.items if it.role == "quality")
    assert m["quality"]["prompt_fidelity"]["base"] == pytest.approx(1 / 3)  # object right, colour and place wrong


def test_style_fsr_by_hand():
    judge = ShapeWorldJudge(StandInOracle())
    suite = shapeworld_suite("shapeworld-styles", judge, "ovalli", "Strelka", images_per_prompt=1, prompts_per_concept=4)
    names = list(judge.heads["style"])
    records = {"base": {}, "edited": {}}
    for it in suite.items:
        rec_b, rec_e = _rec(judge.heads), _rec(judge.heads)
        if it.role in ("forget", "preserve"):
            k = names.index(it.group)
            n = int(it.id)
            rec_b["prob"]["style"] = [0.0] * len(names)
            rec_e["prob"]["style"] = [0.0] * len(names)
            rec_b["prob"]["style"][k] = 0.8
            rec_e["prob"]["style"][k] = 0.1 if (it.role == "forget" and n % 4 != 3) else 0.9
            rec_b["pred"]["style"] = it.group
            rec_e["pred"]["style"] = it.group if rec_e["prob"]["style"][k] > 0.5 else "none"
        records["base"][it.id], records["edited"][it.id] = rec_b, rec_e
    m = suite.summarize(suite.items, records)
    assert m["forget"] == ["Ovalli"] and m["preserve"] == ["Strelka"]
    assert m["summary"]["fsr"] == 0.75
    assert m["summary"]["fsr_preserve"] == 0.0
    assert m["per_class"]["Ovalli"]["edited"] == 0.25
    assert m["summary"]["forget_accuracy"] == {"base": 1.0, "edited": 0.25}


def test_all_objects_erased_quality_uses_places_alone():
    from fia.shapeworld.vocab import OBJECT_NAMES, PLACE_NAMES

    judge = ShapeWorldJudge(StandInOracle())
    suite = shapeworld_suite("shapeworld-objects", judge, list(OBJECT_NAMES), images_per_prompt=1, prompts_per_concept=1, quality_prompts=8)
    assert suite.preserve == []
    quality = [it for it in suite.items if it.role == "quality"]
    # 8 prompts over the 6 places, none naming an object
    assert [it.prompt for it in quality] == [f"the {PLACE_NAMES[i % 6]}" for i in range(8)]
    assert all(it.meta["factors"] == {"object": "none", "place": PLACE_NAMES[i % 6]} for i, it in enumerate(quality))
    records = {"base": {}, "edited": {}}
    for it in suite.items:
        f = it.meta["factors"]
        records["base"][it.id] = _rec(judge.heads, **f)
        # edited: every object forgotten; places right on even quality items only
        k = quality.index(it) if it in quality else -1
        records["edited"][it.id] = _rec(judge.heads, object="none", place=f["place"] if k % 2 == 0 else "?")
    m = suite.summarize(suite.items, records)
    assert m["summary"]["forget_accuracy"] == {"base": 1.0, "edited": 0.0}
    assert m["summary"]["preserve_accuracy"] == {"base": None, "edited": None}
    # fidelity = mean over images of the share of named factors (object "none", place) read back
    assert m["quality"]["prompt_fidelity"]["base"] == 1.0
    assert m["quality"]["prompt_fidelity"]["edited"] == pytest.approx((4 * 1.0 + 4 * 0.5) / 8)


def test_quality_on_the_kept_kinds_images_is_topped_up_with_object_less_prompts():
    from fia.shapeworld.vocab import PLACE_NAMES

    judge = ShapeWorldJudge(StandInOracle())
    # 2 kept kinds x 2 prompts x 2 images = 8 kept images; 13 wanted: 5 object-less ones more
    suite = shapeworld_suite("shapeworld-objects", judge, "circle", "star, heart", images_per_prompt=2, prompts_per_concept=2,
                             quality_images=13, quality_from_kept=True)  # fmt: skip
    kept = [it for it in suite.items if it.role == "preserve"]
    extra = [it for it in suite.items if it.role == "quality"]
    assert len(kept) == 8 and len(extra) == 5
    assert all(it.meta["factors"]["object"] == "none" and it.prompt in {f"the {p}" for p in PLACE_NAMES} for it in extra)
    assert len({(it.prompt, it.seed) for it in suite.items}) == len(suite.items)
    records = {"base": {}, "edited": {}}
    for it in suite.items:
        f = it.meta["factors"]
        records["base"][it.id] = _rec(judge.heads, **f)
        # edited: the kept kinds' objects are lost (their colour and place stay), the object-less images intact
        records["edited"][it.id] = _rec(judge.heads, **{**f, "object": "none"}) if it.role != "quality" else _rec(judge.heads, **f)
    q = suite.summarize(suite.items, records)["quality"]
    assert q["n_images"] == 13
    # kept images: 2 of their 3 factors read back; object-less: both of their 2
    assert q["prompt_fidelity"] == {"base": 1.0, "edited": pytest.approx((8 * 2 / 3 + 5 * 1.0) / 13)}
    # enough kept images: none drawn for quality alone
    enough = shapeworld_suite("shapeworld-objects", judge, "circle", "star, heart", images_per_prompt=2, prompts_per_concept=2,
                              quality_images=8, quality_from_kept=True)  # fmt: skip
    assert not [it for it in enough.items if it.role == "quality"]
    with pytest.raises(FIAError, match="object suite and quality_images"):
        shapeworld_suite("shapeworld-styles", judge, "Ovalli", images_per_prompt=1, quality_images=8, quality_from_kept=True)


def test_prompt_start_gives_a_disjoint_split():
    judge = ShapeWorldJudge(StandInOracle())
    a = shapeworld_suite("shapeworld-objects", judge, "circle", "star", images_per_prompt=2, prompts_per_concept=6, seed=0)
    b = shapeworld_suite("shapeworld-objects", judge, "circle", "star", images_per_prompt=2, prompts_per_concept=6, seed=10**6, prompt_shift=1)
    pa = {(it.prompt, it.seed) for it in a.items if it.role != "quality"}
    pb = {(it.prompt, it.seed) for it in b.items if it.role != "quality"}
    assert len(pa) == len(pb) == (6 + 6 + 6) * 2  # forget, preserve, synonym: every colour once
    assert not {p for p, _ in pa} & {p for p, _ in pb}  # other colour/place pairs
    assert not {s for _, s in pa} & {s for _, s in pb}
    for it in b.items:  # still prompts that name their factors
        if it.role in ("forget", "preserve"):
            f = it.meta["factors"]
            assert f["object"] in it.prompt and f["color"] in it.prompt


def test_unknown_concepts_are_user_errors():
    from fia.errors import FIAError

    judge = ShapeWorldJudge(StandInOracle())
    with pytest.raises(FIAError, match="unknown ShapeWorld object 'golf ball'"):
        shapeworld_suite("shapeworld-objects", judge, "golf ball")
    with pytest.raises(FIAError, match="--forget"):
        shapeworld_suite("shapeworld-styles", judge, None)


@pytest.fixture(scope="module")
def tiny():
    from fia.testing import tiny_sd_pipeline

    return tiny_sd_pipeline()


def _small_suite(name="shapeworld-objects", forget="circle, square", preserve="star, heart"):
    return build_suite(name, forget=forget, preserve=preserve, images_per_prompt=1, prompts_per_concept=2, oracle=StandInOracle())


def test_paired_run_resume_and_determinism(tiny, tmp_path):
    mask = random_mask(tiny)
    write_concept_cache(tmp_path / "erase" / "cache", tiny, mask)
    before = {n: p.clone() for n, p in tiny.unet.named_parameters()}
    out = tmp_path / "eval"
    suite = _small_suite()
    m1, report = evaluate(suite, tiny, out, mask=mask, settings=FAST, cache_dir=tmp_path / "erase" / "cache", run_info={"edit": "m"})
    # the pipe is back in its base state
    assert all(torch.equal(before[n], p) for n, p in tiny.unet.named_parameters())
    assert m1["_generated_now"] == 2 * len(suite.items)
    data = json.loads((out / "metrics.json").read_text())
    s = data["summary"]
    assert set(data["per_class"]) == {"circle", "square", "star", "heart"}
    assert {"base", "edited"} <= set(data["per_class"]["circle"])
    # the summary, recomputed from the per-image verdicts in scores.jsonl
    for v in ("base", "edited"):
        f, p = _accuracy(out, "object", ["circle", "square"], v), _accuracy(out, "object", ["star", "heart"], v)
        assert s["forget_accuracy"][v] == pytest.approx(f) and s["preserve_accuracy"][v] == pytest.approx(p)
        assert s["overall"][v] == pytest.approx(2 * p * (1 - f) / (p + 1 - f) if p + 1 - f > 0 else 0.0)
    # a random tiny model draws nothing like the renders, and the mask changes what it draws
    fid = data["quality"]["fid"]
    assert fid["base"] > 0 and fid["edited"] != fid["base"] and "renders of the scenes" in data["quality"]["fid_reference"]
    # base and edited images share prompts and seeds: the KID change carries its paired error (fia.evaluate.metrics.kid_change)
    q = data["quality"]
    assert math.isfinite(q["kid_change"]) and q["kid_change"] != 0 and 0 < q["kid_change_se"] < math.inf
    # paired: same prompt and seed, different images where the mask acts
    index = json.loads((out / "index.json").read_text())
    assert len(index["items"]) == len(suite.items)
    it = suite.items[0]
    store = ImageStore(out)
    assert store.path("base", it).is_file() and store.path("edited", it).is_file()
    assert store.path("base", it).read_bytes() != store.path("edited", it).read_bytes()
    # report with grids, per-layer shares and the overlap heatmap
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 4
    for png in ("grid_0.png", "layers.png", "overlap.png", "metrics_table.png"):
        assert (out / png).is_file(), png
    assert "skipped" not in html
    # resume: nothing generated again, same metrics
    m2, _ = evaluate(_small_suite(), tiny, out, mask=mask, settings=FAST, run_info={"edit": "m"}, report=False)
    assert m2["_generated_now"] == 0
    assert json.loads((out / "metrics.json").read_text()) == data
    # a different run in the same folder is refused unless --overwrite
    from fia.errors import FIAError

    with pytest.raises(FIAError, match="--overwrite"):
        evaluate(_small_suite(), tiny, out, mask=mask, settings=FAST, run_info={"edit": "other"}, report=False)
    # another mask on the same base: with overwrite only the edited images are made again
    other = tmp_path / "other"
    evaluate(_small_suite(), tiny, other, mask=mask, settings=FAST, run_info={"edit": "m"}, report=False)
    m_other, _ = evaluate(_small_suite(), tiny, other, mask=random_mask(tiny, seed=5), settings=FAST, run_info={"edit": "m2"}, report=False, overwrite=True)
    assert m_other["_generated_now"] == len(suite.items)
    # same seeds from scratch: the same metrics and the same pixels
    out2 = tmp_path / "eval2"
    evaluate(_small_suite(), tiny, out2, mask=mask, settings=FAST, run_info={"edit": "m"}, report=False)
    assert json.loads((out2 / "metrics.json").read_text()) == data
    assert ImageStore(out2).path("edited", it).read_bytes() == store.path("edited", it).read_bytes()
    # another suite on the same run reuses the images it shares (here: all of them)
    sub = _small_suite(preserve="star")
    m3, _ = evaluate(sub, tiny, out, mask=mask, settings=FAST, run_info={"edit": "m"}, report=False)
    assert m3["_generated_now"] == 0 and set(m3["per_class"]) == {"circle", "square", "star"}


@pytest.mark.parametrize("name,forget", [("shapeworld-styles", "Ovalli"), ("shapeworld-attribute", None)])
def test_style_and_attribute_suites_run(tiny, tmp_path, name, forget):
    mask = random_mask(tiny)
    suite = build_suite(name, forget=forget, images_per_prompt=1, prompts_per_concept=1, oracle=StandInOracle())
    if name == "shapeworld-attribute":
        suite.items = [it for it in suite.items if it.role == "quality" or int(it.id) < 3]
    m, report = evaluate(suite, tiny, tmp_path, mask=mask, settings=FAST)
    if name == "shapeworld-styles":
        # FSR: the share of Ovalli's images whose Ovalli probability the edited model lowered
        k = suite.judge.heads["style"].index("Ovalli")
        rows = {v: [r["prob"]["style"][k] for r in _scores(tmp_path) if r["group"] == "Ovalli" and r["role"] == "forget" and r["variant"] == v] for v in ("base", "edited")}
        lower = sum(e < b for b, e in zip(rows["base"], rows["edited"]))
        assert rows["base"] and m["summary"]["fsr"] == pytest.approx(lower / len(rows["base"]))
        assert "Ovalli" in m["per_class"]
    else:
        assert set(m["summary"]["detected_share"]) == {"base", "edited"}
        assert m["summary"]["n_images"] == 3
    assert "Concept-overlap heatmap skipped" in report.read_text()


def test_report_after_erase(tiny, tmp_path, monkeypatch):
    import fia.evaluate as fe
    import fia.shapeworld as sw
    from fia.config import FIAConfig
    from fia.evaluate.after_erase import REPORT_SEED_OFFSET, report_after_erase

    monkeypatch.setattr(sw, "load_oracle", lambda device="cpu", **where: StandInOracle(), raising=False)
    mask = random_mask(tiny, concepts=("circle", "square"))
    write_concept_cache(tmp_path / "cache", tiny, mask)
    mask.apply_(tiny)  # erase may hand over the pipe with the mask applied
    applied = {n: p.clone() for n, p in tiny.unet.named_parameters()}
    path = report_after_erase(tmp_path, tiny, mask, ["circle", "square"], FIAConfig(task="shapeworld", world="shapeworld"), mask_applied=True, images_per_prompt=1, prompts_per_concept=1, settings=ONE_STEP_REPORT)
    assert all(torch.equal(applied[n], p) for n, p in tiny.unet.named_parameters())  # left as it came
    mask.restore_(tiny)
    from fia.evaluate.generate import ImageStore as Store

    store = Store(tmp_path / "report")
    it = next(i for i in fe.build_suite("shapeworld-objects", forget="circle, square", images_per_prompt=1, prompts_per_concept=1, oracle=StandInOracle(), seed=REPORT_SEED_OFFSET).items)
    assert store.path("base", it).read_bytes() != store.path("edited", it).read_bytes()  # base images used the original weights
    assert path == tmp_path / "report.html" and path.is_file()
    assert "data:image/png;base64," in path.read_text()
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["forget"] == ["circle", "square"] and len(m["preserve"]) == 8
    assert (tmp_path / "report" / "overlap.png").is_file()


def test_report_after_a_causal_erase_shows_the_paper_fia_beside_it(tiny, tmp_path, monkeypatch):
    """The variant's report measures the paper's FIA on the same concepts, prompts and seeds."""
    import fia.evaluate as fe
    import fia.shapeworld as sw
    from fia.config import FIACausalConfig
    from fia.mask import ConceptMask
    from fia.evaluate.after_erase import REPORT_SEED_OFFSET, report_after_erase

    monkeypatch.setattr(sw, "load_oracle", lambda device="cpu", **where: StandInOracle(), raising=False)
    cfg = FIACausalConfig(task="shapeworld", world="shapeworld", num_inference_steps=2)  # the paper's FIA beside it: 2 of 2 steps
    made = random_mask(tiny, concepts=("circle", "square"))
    mask = ConceptMask.from_prune_masks(
        {lm.name: dict(tiny.unet.named_modules())[lm.name].weight for lm in made.layers},
        {lm.name: made.to_dense(lm.name) for lm in made.layers},
        concepts=["circle", "square"], config=cfg.to_dict(), target_kind="ffn2",
    )  # fmt: skip
    # as the main process of a launched erase writes it: alone, though the launcher started two processes
    import accelerate

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", lambda *a, **k: pytest.fail("the report looked for other processes"))
    before = {n: p.clone() for n, p in tiny.unet.named_parameters()}
    path = report_after_erase(tmp_path, tiny, mask, ["circle", "square"], cfg, mask_applied=False, images_per_prompt=1, prompts_per_concept=1, settings=ONE_STEP_REPORT)
    assert all(torch.equal(before[n], p) for n, p in tiny.unet.named_parameters())
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    paper = json.loads((tmp_path / "report" / "paper-fia" / "metrics.json").read_text())
    assert m["run"]["variant"] == "causal" and paper["run"]["variant"] == "paper"
    assert m["compare"]["paper FIA"]["summary"] == paper["summary"]
    # the same items (prompts and seeds) on both sides, and the same base images
    from fia.evaluate.generate import ImageStore as Store

    suite = fe.build_suite("shapeworld-objects", forget="circle, square", images_per_prompt=1, prompts_per_concept=1, oracle=StandInOracle(), seed=REPORT_SEED_OFFSET)
    ours, theirs = Store(tmp_path / "report"), Store(tmp_path / "report" / "paper-fia")
    for it in suite.items[:4]:
        assert ours.path("base", it).read_bytes() == theirs.path("base", it).read_bytes()
    page = path.read_text()
    assert "<th>paper FIA</th>" in page and "<th>causal FIA</th>" in page
    assert "paper FIA: erased: circle" in page
    assert paper["summary"]["forget_accuracy"]["base"] == m["summary"]["forget_accuracy"]["base"]


def test_report_after_erase_with_two_families(tiny, tmp_path, monkeypatch):
    import fia.shapeworld as sw
    from fia.config import FIAConfig
    from fia.errors import FIAError
    from fia.evaluate.after_erase import report_after_erase

    monkeypatch.setattr(sw, "load_oracle", lambda device="cpu", **where: StandInOracle(), raising=False)
    mask = random_mask(tiny, concepts=("circle", "burning"))
    path = report_after_erase(tmp_path, tiny, mask, ["circle", "burning"], FIAConfig(task="shapeworld", world="shapeworld"), mask_applied=False, images_per_prompt=1, prompts_per_concept=1, settings=ONE_STEP_REPORT)
    assert path == tmp_path / "report.html"
    assert "report/shapeworld-objects/report.html" in path.read_text() and "report/shapeworld-attribute/report.html" in path.read_text()
    assert (tmp_path / "report" / "shapeworld-attribute" / "metrics.json").is_file()
    with pytest.raises(FIAError, match="--no-report"):
        report_after_erase(tmp_path, tiny, mask, ["golf ball"], FIAConfig(task="shapeworld"), mask_applied=False)


def _assets_present() -> bool:
    try:
        from fia.shapeworld import assets_path
    except ImportError:
        return False
    return (assets_path() / "oracle_config.json").is_file() and (assets_path() / "pipeline" / "model_index.json").is_file()


@pytest.mark.skipif(not _assets_present(), reason="the shipped ShapeWorld pipeline and oracle are not installed")
def test_with_the_shipped_shapeworld_model_and_oracle(tmp_path):
    """The real oracle and pipeline through the suite (few prompts, 2 steps: interfaces, not quality)."""
    from fia.shapeworld import GENERATION_DEFAULTS, load_oracle, load_pipeline

    pipe = load_pipeline("cpu")
    suite = build_suite("shapeworld-objects", forget="circle", preserve="square", images_per_prompt=1, prompts_per_concept=1, oracle=load_oracle("cpu"))
    suite.items = [it for it in suite.items if it.role != "quality" or int(it.id) % 2 == 0]
    settings = GenerationSettings(num_inference_steps=2, guidance_scale=GENERATION_DEFAULTS["guidance_scale"], height=GENERATION_DEFAULTS["height"], width=GENERATION_DEFAULTS["width"])
    m, report = evaluate(suite, pipe, tmp_path, mask=random_mask(pipe, share=0.3), settings=settings)
    assert set(m["per_class"]) == {"circle", "square"}
    assert m["quality"]["fid"]["base"] > 0  # two denoising steps are far from the renders
    from PIL import Image

    it = suite.items[0]
    assert Image.open(ImageStore(tmp_path).path("base", it)).size == (GENERATION_DEFAULTS["width"], GENERATION_DEFAULTS["height"])
