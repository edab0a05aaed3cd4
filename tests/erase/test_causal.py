"""The causal variant on a tiny random SD pipeline: its gradient, determinism, resume, restore."""

from __future__ import annotations

import pytest
import torch

import fia
from fia.causal import _Model
from fia.causal import evidence_and_anchors
from fia.config import FIACausalConfig
from fia.errors import FIAError
from fia.targets import find_targets
from tests.helpers import load_tiny, tiny_causal_config


def evidence_prompts(concept, cfg):
    return evidence_and_anchors([concept], cfg)[0][concept]


def anchor_prompts(erased, cfg):
    return evidence_and_anchors(erased, cfg)[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread


def _weights(pipe):
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


def test_evidence_gradient_is_the_derivative_of_the_evidence(tiny_dir):
    """g(w) = w * dE/dw equals the central difference of E along w's own direction."""
    pipe = load_tiny(tiny_dir).to(torch.float64)
    cfg = tiny_causal_config()
    targets = find_targets(pipe.unet, "ffn2")
    model = _Model(pipe, targets, cfg)
    ep = evidence_prompts("golf ball", cfg)
    g = model.evidence_gradient(ep)

    def evidence() -> float:
        with torch.no_grad():
            return float(model.evidence(model.sample(ep.prompts, ep.seeds), ep.prompts, ep.contrasts, ep.seeds))

    name = targets[0].name
    w = targets[0].module.weight
    flat = g[name].reshape(-1)
    checked = 0
    for idx in torch.argsort(flat.abs(), descending=True)[:3].tolist():
        i, j = divmod(idx, w.shape[1])
        orig = w[i, j].item()
        h = 1e-4
        with torch.no_grad():
            w[i, j] = orig * (1 + h)
            up = evidence()
            w[i, j] = orig * (1 - h)
            down = evidence()
            w[i, j] = orig
        fd = (up - down) / (2 * h)  # d E(w * (1 + s)) / ds at s = 0  ==  w * dE/dw
        assert fd == pytest.approx(flat[idx].item(), rel=1e-4, abs=1e-9)
        checked += 1
    assert checked == 3


def test_judge_is_the_unedited_model(tiny_dir):
    """Zeroing target weights changes the sampler, never the judge."""
    pipe = load_tiny(tiny_dir)
    cfg = tiny_causal_config()
    targets = find_targets(pipe.unet, "ffn2")
    model = _Model(pipe, targets, cfg)
    ep = evidence_prompts("golf ball", cfg)
    z = model.initial_latents(ep.seeds)
    with torch.no_grad():
        before = model.evidence(z, ep.prompts, ep.contrasts, ep.seeds)
        model.zero_({t.name: torch.ones(t.module.weight.shape, dtype=torch.bool) for t in targets})
        after = model.evidence(z, ep.prompts, ep.contrasts, ep.seeds)
        model.restore_()
    assert torch.equal(before, after)


def test_causal_erase_is_deterministic_restores_the_model_and_keeps_its_budget(tiny_dir, tmp_path):
    pipe = load_tiny(tiny_dir)
    before = _weights(pipe)
    cfg = tiny_causal_config()
    calls = []
    mask = fia.erase(pipe, ["golf ball", "church"], cfg, cache_dir=tmp_path / "cache",
                     progress=lambda *args: calls.append(args))  # fmt: skip
    after = _weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert mask.config["variant"] == "causal"
    settings = mask.summary().splitlines()[2]
    assert "variant=causal" in settings and "budget=0.02" in settings and "rounds=2" in settings
    assert "r2=" not in settings  # the paper's knobs play no part in this mask
    total = mask.total_weights
    # each concept takes at most floor(budget * total) weights over all rounds
    assert 0 < mask.pruned <= 2 * int(cfg.budget * total)
    assert [r["cached"] for r in mask.stats["rounds"]] == [False, False]
    # progress(done, total, message): it only moves forward and ends at its total
    assert calls and all(len(c) == 3 for c in calls)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls) and calls[-1][0] == calls[-1][1]
    assert sum("(cached)" in m for _, _, m in calls) == 0
    # a second run reads every round from the cache and gives the same mask, byte for byte
    calls.clear()
    again = fia.erase(pipe, ["golf ball", "church"], cfg, cache_dir=tmp_path / "cache",
                      progress=lambda *args: calls.append(args))  # fmt: skip
    assert [r["cached"] for r in again.stats["rounds"]] == [True, True]
    assert sum("(cached)" in m for _, _, m in calls) == 2
    assert again.to_bytes() == mask.to_bytes()
    fresh = fia.erase(load_tiny(tiny_dir), ["golf ball", "church"], cfg)
    assert fresh.to_bytes() == mask.to_bytes()


def test_anchor_penalty_keeps_what_the_anchors_need(tiny_dir):
    """With a huge anchor weight no selected weight carries positive anchor evidence."""
    pipe = load_tiny(tiny_dir)
    cfg = tiny_causal_config(anchor_weight=1e6, rounds=1, anchors=["bicycle"])
    targets = find_targets(pipe.unet, "ffn2")
    g_anchor = _Model(pipe, targets, cfg).evidence_gradient(anchor_prompts(["golf ball"], cfg))
    mask = fia.erase(pipe, ["golf ball"], cfg)
    for lm in mask.layers:
        if lm.indices.numel():
            assert (g_anchor[lm.name].reshape(-1)[lm.indices] <= 1e-6 * g_anchor[lm.name].abs().max()).all()


def test_shapeworld_evidence_prompts_contrast_shapes_in_the_same_scene():
    cfg = FIACausalConfig(task="shapeworld", world="shapeworld", concept_prompts_per_concept=12, contrasts=3)
    ep = evidence_prompts("circle", cfg)
    assert ep.prompts[0] == "a red circle on the sand"
    # no scored prompt is one of the evaluation split's (its colour/place pairs are the even ones)
    from fia.evaluate.suites import factor_cycle
    from fia.shapeworld.render import prompt_for

    evaluated = {prompt_for("circle", *factor_cycle(k, i, 0)) for k in range(36) for i in range(10)}
    assert not evaluated & set(ep.prompts)
    assert len(set(ep.prompts)) == 12 and ep.seeds == tuple(range(12))
    for p, cs in zip(ep.prompts, ep.contrasts):
        assert len(cs) == 3
        for c in cs:
            assert "circle" not in c and c.split()[-2:] == p.split()[-2:]  # same place
    anchors = anchor_prompts(["circle", "pentagram"], cfg)  # synonyms count as their shape
    assert not any("circle" in p or "star" in p for p in anchors.prompts)
    assert min(anchors.seeds) >= 1000


def test_prompt_files_are_refused_by_the_causal_variant(tiny_dir, tmp_path):
    from fia.errors import FIAError

    lines = tmp_path / "concept.txt"
    lines.write_text("a {concept} on the grass\n")
    with pytest.raises(FIAError, match="apply to --variant paper"):
        fia.erase(load_tiny(tiny_dir), ["golf ball"], tiny_causal_config(), concept_prompts=lines)


def test_anchors_scored_once_serve_every_round_and_a_resumed_run_scores_them_unedited(tiny_dir, tmp_path, monkeypatch):
    """rescore_anchors=False: one anchor gradient, of the unedited model, for every round, even after a resume."""
    from fia.causal import _Model as Model

    cfg = tiny_causal_config(rounds=3, rescore_anchors=False)
    scored = []
    real = Model.evidence_gradient

    def counting(self, ep):
        scored.append("anchors" if len(ep.prompts) == cfg.anchor_prompts and ep.prompts == anchors.prompts else "concept")
        return real(self, ep)

    anchors = anchor_prompts(["golf ball"], cfg)
    monkeypatch.setattr(Model, "evidence_gradient", counting)
    mask = fia.erase(load_tiny(tiny_dir), ["golf ball"], cfg, cache_dir=tmp_path / "cache")
    assert scored.count("anchors") == 1 and scored.count("concept") == 3
    assert mask.config["rescore_anchors"] is False
    every_round = fia.erase(load_tiny(tiny_dir), ["golf ball"], cfg.replace(rescore_anchors=True))
    assert "rescore_anchors" not in every_round.config  # the default records what masks always did
    assert scored.count("anchors") == 4  # one per round when re-scored

    # interrupted after round 1: the resumed run zeroes round 1's weights, then scores the anchors on the unedited model
    (last, middle) = sorted((tmp_path / "cache").glob("causal-*-round[12].safetensors"), reverse=True)
    last.unlink()
    middle.unlink()
    scored.clear()
    resumed = fia.erase(load_tiny(tiny_dir), ["golf ball"], cfg, cache_dir=tmp_path / "cache")
    assert [r["cached"] for r in resumed.stats["rounds"]] == [True, False, False]
    assert scored == ["anchors", "concept", "concept"]
    assert resumed.to_bytes() == mask.to_bytes()


def test_rescore_anchors_must_be_a_bool():
    with pytest.raises(FIAError, match="rescore_anchors must be true or false"):
        tiny_causal_config(rescore_anchors="no")
