"""An edit finds its shipped world from its provenance: erase -> attack -> evaluate with no --model; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fia.attack.runner import RESULT_FILE
from fia.cli import app
from fia.delta import WeightDelta
from fia.errors import FIAError
from fia.mask import ConceptMask
from fia.shapeworld import model_of_edit, pipeline_path, shipped_world_of_edit, shipped_world_path
from fia.targets import find_targets
from tests.helpers import cli_refuses, load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

runner = CliRunner()


def _unet(world: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(pipeline_path(world) / "unet"))


def _mask(unet, concepts: list[str], share: float = 0.01, **fields) -> ConceptMask:
    """A mask of random entries of two FFN2 layers of ``unet`` (what erase writes, without the search)."""
    found = find_targets(unet, "ffn2")[:2]
    weights = {t.name: t.module.weight.detach() for t in found}
    g = torch.Generator().manual_seed(0)
    prune = {n: torch.rand(w.shape, generator=g) < share for n, w in weights.items()}
    mask = ConceptMask.from_prune_masks(weights, prune, concepts=concepts, config={"task": "shapeworld"}, target_kind="ffn2")
    return mask if not fields else ConceptMask(**{**mask.__dict__, **fields})


@pytest.fixture(scope="module")
def world_masks(tmp_path_factory):
    """A saved mask made on each shipped world, and one on a tiny model no world ships."""
    d = tmp_path_factory.mktemp("masks")
    first = _mask(_unet("shapeworld"), ["star"]).save(d / "first.safetensors")
    second = _mask(_unet("shapeworld2"), ["house"]).save(d / "second.safetensors")
    return first, second


def test_an_edit_made_on_a_shipped_world_names_that_world(world_masks, tiny_dir):
    first, second = (ConceptMask.load(p) for p in world_masks)
    assert shipped_world_of_edit(first) == "shapeworld"
    assert shipped_world_of_edit(second) == "shapeworld2"
    assert model_of_edit(first) == (str(pipeline_path("shapeworld")), shipped_world_path("shapeworld"))
    # a weight delta is placed the same way, by the fingerprint of the weights it changes
    unet = _unet("shapeworld2")
    before = {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight":
              unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight.detach()}  # fmt: skip
    delta = WeightDelta.from_models(before, {k: v + 0.01 for k, v in before.items()}, method="uce", concepts=["star"], config={})
    assert shipped_world_of_edit(delta) == "shapeworld2"
    # --model wins, and an edit of another model is placed nowhere
    assert model_of_edit(first, str(tiny_dir)) == (str(tiny_dir), None)
    tiny = _mask(load_tiny(tiny_dir).unet, ["star"])
    assert shipped_world_of_edit(tiny) is None
    with pytest.raises(FIAError, match="pass --model"):
        model_of_edit(tiny)


def test_fia_attack_without_model_uses_the_edits_world_and_its_judges(world_masks, tmp_path):
    first, second = world_masks
    for path, concept, world in ((first, "star", "shapeworld"), (second, "house", "shapeworld2")):
        out = tmp_path / world
        res = runner.invoke(app, ["attack", "--edit", str(path), "--concepts", concept, "--probe", "paraphrase",
                                  "--quick", "--out", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
        data = json.loads((out / RESULT_FILE).read_text())
        assert data["run"]["judge"] == "shapeworld-oracle" and data["run"]["judge2"] == "shapeworld-judge2"
        (r,) = data["results"]
        assert r["attempts"] == r["second"]["attempts"] == 2  # two paraphrases, one image each, read by both judges
        synonym = {"star": "pentagram", "house": "hut"}[concept]  # the world's own synonym of the kind
        assert all(synonym in prompt for prompt in r["prompts"]), r["prompts"]


def test_commands_refuse_an_edit_of_no_shipped_world_without_model(tiny_dir, tmp_path):
    tiny = _mask(load_tiny(tiny_dir).unet, ["star"]).save(tmp_path / "tiny.safetensors")
    # an edit with no provenance: no model fingerprint at all
    bare = _mask(_unet("shapeworld2"), ["star"], fingerprint="", edit_fingerprint="").save(tmp_path / "bare.safetensors")
    out = tmp_path / "never"
    for edit in (tiny, bare):
        cli_refuses(["attack", "--edit", str(edit), "--concepts", "star", "--probe", "paraphrase", "--quick",
                     "--out", str(out)], out, "pass --model")  # fmt: skip
        cli_refuses(["apply", "--mask", str(edit), "--out", str(out)], out, "pass --model")
        cli_refuses(["generate", "--prompt", "a star", "--mask", str(edit), "--out", str(out / "g.png")], out, "pass --model")
        cli_refuses(["evaluate", "--suite", "shapeworld-objects", "--mask", str(edit), "--forget", "star",
                     "--out", str(out)], out, "pass --model")  # fmt: skip
