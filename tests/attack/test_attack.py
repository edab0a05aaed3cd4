"""fia attack: the five probes, their counting and invariants, the CLI on ShapeWorld and on a tiny SD pipeline, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fia.attack import (
    PROBES,
    AttackConfig,
    ShapeWorldConceptJudge,
    completion_steps,
    run_attack,
    shapeworld_texts,
)
from fia.attack.model import AttackModel
from fia.attack.probes import nearest_tokens
from fia.attack.runner import RESULT_FILE
from fia.cli import app
from fia.errors import FIAError
from fia.evaluate.stats import wilson
from fia.methods import unlearn
from tests.helpers import cli_refuses, load_tiny, small_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

runner = CliRunner()
ALL = ",".join(PROBES)


class Always:
    """A stand-in judge with a fixed verdict that counts the images it saw."""

    def __init__(self, verdict: bool = True):
        self.verdict, self.seen, self.name = verdict, 0, f"always-{verdict}"

    def check(self, concept: str) -> None:
        return None

    def __call__(self, images, concept):
        self.seen += len(images)
        return [self.verdict] * len(images)


def _state_hash(pipe) -> str:
    h = hashlib.sha256()
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):
        for name, t in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shapeworld():
    from fia.shapeworld import FIRST_WORLD, load_pipeline

    return load_pipeline(world=FIRST_WORLD)


@pytest.fixture(scope="module")
def circle_edit(shapeworld, tmp_path_factory):
    """The paper's FIA on circle (small settings), as fia unlearn would save it."""
    edit = unlearn(shapeworld, ["circle"], "fia", small_config())
    path = tmp_path_factory.mktemp("edit") / "edit.safetensors"
    edit.save(path)
    return edit, path


@pytest.fixture(scope="module")
def tiny():
    from fia.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


# --------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_runs_every_probe_on_a_shapeworld_edit(circle_edit, shapeworld, tmp_path):
    _, path = circle_edit
    before = _state_hash(shapeworld)
    out = tmp_path / "audit"
    res = runner.invoke(app, ["attack", "--edit", str(path), "--concepts", "circle", "--probe", ALL,
                              "--quick", "--ceiling", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULT_FILE).read_text())
    rows = {(r["target"], r["probe"]): r for r in data["results"]}
    assert set(rows) == {(t, p) for t in ("edited", "unedited") for p in PROBES}
    quick = AttackConfig.quick()
    expected = {
        "paraphrase": quick.paraphrases * quick.images,
        "prompt-attack": quick.images,
        "concept-vector": len(quick.multipliers) * quick.images,
        "textual-inversion": quick.images,
        "completion": len(quick.noise_levels) * quick.images,
        "revival": quick.images,
    }
    for (target, name), r in rows.items():
        counted = [s for s in r["settings"] if s.get("counted", True)]
        assert r["attempts"] == expected[name] == sum(s["attempts"] for s in counted)
        assert r["successes"] == sum(s["successes"] for s in counted)
        assert r["asr"] == wilson(r["successes"], r["attempts"]).to_dict()
        grid = Image.open(out / r["grid"])
        n_rows, n_cols = len(r["settings"]), max(s["attempts"] for s in r["settings"])
        assert grid.size == (n_cols * 34 + 2, n_rows * 34 + 2)  # 32 px images, 2 px padding
    # the oracle still sees circles everywhere on the unedited model (the ceiling)
    assert all(rows[("unedited", p)]["successes"] == rows[("unedited", p)]["attempts"] for p in PROBES)
    report = (out / "report.md").read_text()
    assert "| completion | circle |" in report and "images/edited/completion/circle.png" in report
    assert "| prompt-attack | circle |" in res.stdout and "wrote" in res.stdout
    assert _state_hash(shapeworld) == before  # the CLI loads its own copy; nothing here changed


def test_cli_refuses_bad_input_before_writing(circle_edit, tiny_dir, other_dir, tmp_path):
    _, path = circle_edit
    out = tmp_path / "never"

    def args(*extra: str, edit: Path = path, concepts: str = "circle", probe: str = "paraphrase") -> list[str]:
        return ["attack", "--edit", str(edit), "--concepts", concepts, "--probe", probe, "--quick", "--out", str(out), *extra]

    cli_refuses(args(probe="paraphrase,jailbreak"), out, "unknown probe 'jailbreak'")
    cli_refuses(args(probe="completion,completion"), out, "listed twice")
    cli_refuses(args(concepts="star"), out, "did not erase 'star'")
    cli_refuses(args(edit=tmp_path / "missing.safetensors"), out, "does not exist")
    # an edit made for the tiny pipeline, attacked on another model
    tiny_edit = unlearn(load_tiny(tiny_dir), ["circle"], "fia", small_config())
    tiny_path = tiny_edit.save(tmp_path / "tiny.safetensors")
    cli_refuses(args("--model", str(other_dir), edit=tiny_path), out, "made for a different model")
    cli_refuses(args(edit=tiny_path), out, "pass --model")  # no shipped world made it: the model must be named
    cli_refuses(args("--model", str(tiny_dir), "--task", "object", edit=tiny_path, concepts="circle"), out,
                "unknown imagenette class")  # fmt: skip
    cli_refuses(args("--refill", "mean"), out, "refill must be one of")
    cli_refuses(args("--model", str(other_dir), "--task", "style", "--clip", str(tmp_path / "no-clip"), edit=tiny_path),
                out, "--clip")  # fmt: skip


def test_cli_on_a_tiny_sd_pipeline(tiny_dir, tmp_path):
    edit = unlearn(load_tiny(tiny_dir), ["star"], "fia", small_config())
    path = edit.save(tmp_path / "edit.safetensors")
    out = tmp_path / "audit"
    res = runner.invoke(app, ["attack", "--edit", str(path), "--model", str(tiny_dir), "--concepts", "star",
                              "--probe", "completion,prompt-attack", "--quick", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULT_FILE).read_text())
    assert [(r["probe"], r["attempts"]) for r in data["results"]] == [("completion", 3), ("prompt-attack", 1)]


# ---------------------------------------------------------------- the library
def test_every_probe_on_a_tiny_pipeline_counts_attempts_and_an_always_yes_judge_gives_asr_one(tiny):
    config = AttackConfig.quick(images=2, paraphrases=3, multipliers=(1.0, 4.0))
    judge = Always(True)
    before = _state_hash(tiny)
    result = run_attack(tiny, None, ["circle"], list(PROBES), config, judge=judge)
    counts = {r.probe: r.attempts for r in result.results}
    assert counts == {"paraphrase": 6, "prompt-attack": 2, "concept-vector": 4, "textual-inversion": 2, "completion": 6,
                      "revival": 2}  # fmt: skip
    assert judge.seen == sum(counts.values()) + 2  # revival's reference images are judged, not counted
    for r in result.results:
        assert r.target == "unedited" and r.successes == r.attempts and r.asr.value == 1.0
        assert sum(s["attempts"] for s in r.settings if s.get("counted", True)) == r.attempts == len(r.prompts)
    assert [s["setting"] for s in result.get("concept-vector", "circle", "unedited").settings] == ["m=1", "m=4"]
    never = run_attack(tiny, None, ["circle"], ["concept-vector"], config, judge=Always(False))
    r = never.get("concept-vector", "circle", "unedited")
    assert (r.successes, r.asr.value, r.asr.low) == (0, 0.0, 0.0)
    assert _state_hash(tiny) == before


def test_prompt_attack_finds_real_vocabulary_tokens(tiny):
    config = AttackConfig.quick(attack_steps=3, restarts=2)
    result = run_attack(tiny, None, ["circle"], ["prompt-attack"], config, judge=Always())
    details = result.get("prompt-attack", "circle", "unedited").details
    model = AttackModel(tiny, num_inference_steps=4, guidance_scale=5.0, batch_size=4)
    ordinary = set(model.ordinary_ids().tolist())
    assert len(details["token_ids"]) == config.tokens == 5
    assert set(details["token_ids"]) <= ordinary  # no begin/end/padding token, nothing outside the vocabulary
    assert details["tokens"] == tiny.tokenizer.convert_ids_to_tokens(details["token_ids"])
    assert len(details["held_out_loss_per_restart"]) == 2


def test_nearest_tokens_is_the_brute_force_nearest_embedding():
    g = torch.Generator().manual_seed(0)
    table, vectors = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    allowed = torch.arange(3, 47)
    got = nearest_tokens(vectors, table, allowed)
    for v, i in zip(vectors, got):
        dists = {int(a): float((v - table[a]).pow(2).sum()) for a in allowed}
        assert int(i) == min(dists, key=dists.get)


def test_a_slot_holding_a_words_embedding_encodes_like_the_word(shapeworld):
    model = AttackModel(shapeworld, num_inference_steps=4, guidance_scale=5.0, batch_size=4)
    texts = shapeworld_texts("circle", 3)
    (word_id,) = shapeworld.tokenizer("circle", add_special_tokens=False).input_ids
    with torch.no_grad():
        slotted = model.encode_with_slots(texts.placeholders, model.token_table[word_id : word_id + 1])
    assert torch.allclose(slotted, model.encode(texts.prompts), atol=1e-6)
    # and the padded ids of a plain prompt are the pipeline's own
    ids, slots = model.token_ids(texts.prompts[0])
    assert slots == [] and ids == shapeworld.tokenizer(texts.prompts[0], padding="max_length").input_ids


def test_textual_inversion_leaves_weights_tokenizer_and_gradient_flags_unchanged(tiny):
    vocab_before, n_before = dict(tiny.tokenizer.get_vocab()), len(tiny.tokenizer)
    flags = [p.requires_grad for p in tiny.unet.parameters()] + [p.requires_grad for p in tiny.text_encoder.parameters()]
    before = _state_hash(tiny)
    result = run_attack(tiny, None, ["star"], ["textual-inversion"], AttackConfig.quick(inversion_steps=3), judge=Always())
    r = result.get("textual-inversion", "star", "unedited")
    assert r.details["steps"] == 3 and all("<*>" in p for p in r.prompts)
    assert _state_hash(tiny) == before
    assert dict(tiny.tokenizer.get_vocab()) == vocab_before and len(tiny.tokenizer) == n_before
    assert flags == [p.requires_grad for p in tiny.unet.parameters()] + [p.requires_grad for p in tiny.text_encoder.parameters()]


@pytest.mark.parametrize(("steps", "level", "expected"), [(10, 0.5, 5), (10, 0.7, 7), (10, 0.9, 9), (4, 0.7, 3), (4, 0.1, 1), (25, 1.0, 25)])
def test_completion_runs_exactly_the_remaining_steps(tiny, steps, level, expected):
    assert completion_steps(steps, level) == expected
    model = AttackModel(tiny, num_inference_steps=steps, guidance_scale=5.0, batch_size=4)
    calls = []
    handle = tiny.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        z0 = torch.zeros(2, 4, 8, 8)
        out = model.complete(z0, model.encode(["a star", "a disc"]), level, [1, 2])
    finally:
        handle.remove()
    assert len(calls) == expected and out.shape == z0.shape


def test_the_edit_is_restored_even_when_the_judge_fails(circle_edit, shapeworld):
    edit, _ = circle_edit
    before = _state_hash(shapeworld)

    def broken(images, concept):
        raise RuntimeError("judge down")

    broken.check = lambda concept: None  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="judge down"):
        run_attack(shapeworld, edit, ["circle"], ["paraphrase"], AttackConfig.quick(), judge=broken)
    assert _state_hash(shapeworld) == before


def test_an_interrupted_attack_keeps_its_finished_probes_and_resumes(tiny, tmp_path):
    config = AttackConfig.quick()

    class StopAtSecond(Always):
        def __call__(self, images, concept):
            if self.seen:
                raise KeyboardInterrupt
            return super().__call__(images, concept)

    with pytest.raises(KeyboardInterrupt):
        run_attack(tiny, None, ["circle"], ["paraphrase", "completion"], config, judge=StopAtSecond(), out_dir=tmp_path)
    kept = json.loads((tmp_path / RESULT_FILE).read_text())
    assert [r["probe"] for r in kept["results"]] == ["paraphrase"]
    judge = Always()
    judge.name = StopAtSecond().name  # the same judge name: the same run
    resumed = run_attack(tiny, None, ["circle"], ["paraphrase", "completion"], config, judge=judge, out_dir=tmp_path)
    assert judge.seen == 3  # only completion's three images were drawn and judged again
    assert [r.probe for r in resumed.results] == ["paraphrase", "completion"]
    assert resumed.results[0].to_dict() == kept["results"][0]


def test_config_budgets_are_checked():
    with pytest.raises(FIAError, match="inversion_steps"):
        AttackConfig(inversion_steps=301).validate()
    with pytest.raises(FIAError, match="noise_levels"):
        AttackConfig(noise_levels=(0.0,)).validate()
    quick = AttackConfig.quick()
    assert (quick.images, quick.target_seeds, quick.restarts, quick.tokens) == (1, 1, 1, 5)
    assert quick.noise_levels == (0.5, 0.7, 0.9)


def test_shapeworld_judge_reads_renders_of_each_family():
    from fia.shapeworld import Scene, render

    judge = ShapeWorldConceptJudge()
    scenes = [Scene("circle", "red", "grass"), Scene("star", "blue", "sand", style="Ovalli", attribute="burning")]
    images = torch.stack([torch.from_numpy(render(s)).permute(2, 0, 1).float() / 255 for s in scenes])
    assert judge(images, "circle") == [True, False]
    assert judge(images, "disc") == [True, False]
    assert judge(images, "Ovalli") == [False, True]
    assert judge(images, "burning") == [False, True]
    with pytest.raises(FIAError, match="no object, style or attribute of ShapeWorld world shapeworld2"):
        judge.check("golf ball")
    # the default world's judge reads its own kinds; the first world's does not know them
    assert judge(images, "star") == [False, True]
    judge.check("house")
    with pytest.raises(FIAError, match="world shapeworld,"):
        ShapeWorldConceptJudge(world="shapeworld").check("house")
