"""Concept-parallel erase: processes started by ``accelerate launch`` write the mask one process writes, byte for byte.

The launches start real processes talking over gloo (``accelerate launch
--multi_gpu``, which on a machine without GPUs starts CPU processes; ``--cpu``
alone would start one). Both sides run one torch thread, so their sums
round alike.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fia
from fia.cli import app
from fia.parallel import Workers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread, as the launched processes

PAPER = ["--task", "shapeworld", "--variant", "paper", "--saliency-steps", "2", "--steps", "4", "--r2", "0.05",
         "--no-report"]  # fmt: skip
# the causal variant at its smallest, with anchors and a repair refitted after every round
CAUSAL_YAML = """\
task: object
variant: causal
num_inference_steps: 4
score_steps: 2
concept_prompts_per_concept: 2
anchor_prompts: 2
contrasts: 1
evidence_timesteps: [0.5]
budget: 0.02
rounds: 2
guidance_scale: 3.0
anchors: [bicycle]
repair: {keep_prompts_per_concept: 2, concept_prompts_per_concept: 2, every_round: true}
"""
CAUSAL_CONCEPTS = "church, golf ball, parachute"  # three concepts on two processes: one scores two


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``fia ARGS`` on ``processes`` CPU processes, one torch thread each."""
    src = str(Path(fia.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "fia"]  # fmt: skip
    res = subprocess.run(launch + args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _erase_once(args: list[str]) -> None:
    """``fia ARGS`` in this process (one process, not launched)."""
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def _bytes(out: Path) -> bytes:
    return (out / "mask.safetensors").read_bytes()


def _stats(out: Path) -> dict:
    return json.loads((out / "fusion_stats.json").read_text())


@pytest.fixture(scope="module")
def causal_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "causal.yaml"
    path.write_text(CAUSAL_YAML)
    return path


@pytest.fixture(scope="module")
def paper_one(tiny_dir, tmp_path_factory) -> Path:
    """The paper variant's erase of circle and star in one process."""
    out = tmp_path_factory.mktemp("paper") / "one"
    _erase_once(["erase", "--concepts", "circle, star", "--model", str(tiny_dir), "--out", str(out), *PAPER])
    return out


@pytest.fixture(scope="module")
def causal_one(tiny_dir, causal_config, tmp_path_factory) -> Path:
    """The causal variant's erase (anchors, two rounds, repair every round) in one process."""
    out = tmp_path_factory.mktemp("causal") / "one"
    _erase_once(["erase", "--concepts", CAUSAL_CONCEPTS, "--model", str(tiny_dir), "--out", str(out),
                 "--config", str(causal_config)])  # fmt: skip
    return out


# ------------------------------------------------------------------ one process
def test_one_process_shares_everything_and_calls_no_collective(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)

    def refuse(*_args, **_kwargs):
        raise AssertionError("a one-process run made a torch.distributed call")

    for call in ("init_process_group", "all_gather", "broadcast", "all_reduce"):
        monkeypatch.setattr(torch.distributed, call, refuse)
    workers = Workers.from_environment(cpu=True)
    assert (workers.rank, workers.size, workers.is_main, workers.launched) == (0, 1, True, False)
    assert workers.share(3) == [0, 1, 2] and workers.idle_note(3) is None
    result = ({"layer": torch.tensor([4, 1], dtype=torch.int32)}, {"seconds": 0.5})
    assert workers.gather_shares(1, {0: result}) == [result]
    assert workers.all_true(False) is False and workers.broadcast_json([1, 2]) == [1, 2]
    assert workers.device_for("cuda") == "cuda"  # one process keeps the device it was given


def test_shares_are_dealt_round_robin_and_idle_processes_say_so():
    # process 2 of 3 (rank 1) over 5 concepts scores the 2nd and 5th
    workers = Workers(rank=1, size=3, local_rank=1)
    assert workers.share(5) == [1, 4]
    assert [workers.owner(p) for p in range(5)] == [0, 1, 2, 0, 1]
    # a bare cuda is the process's own GPU; a named one is kept
    assert [workers.device_for(d) for d in ("cuda", "cuda:0", "cpu")] == ["cuda:1", "cuda:0", "cpu"]
    assert Workers(rank=3, size=4).idle_note(2) == (
        "process 4 of 4 has no concept to score (2 concepts); it waits for the fusion"
    )
    assert Workers(rank=1, size=4).idle_note(2) is None


def test_a_process_encodes_a_rounds_prompts_in_the_batches_one_process_would(tiny_dir):
    """A process scoring one concept first replays the text encodings of the whole round, batch by batch."""
    from fia.causal import _Model, evidence_and_anchors
    from fia.targets import denoiser, find_targets
    from tests.helpers import load_tiny, tiny_causal_config

    cfg = tiny_causal_config(anchors=["bicycle"])
    plans, anchors = evidence_and_anchors(["church", "golf ball"], cfg)
    sets = [anchors, plans["church"], plans["golf ball"]]

    def batches_of(run) -> list[list[str]]:
        pipe = load_tiny(tiny_dir)
        seen, encode = [], pipe.encode_prompt
        pipe.encode_prompt = lambda prompts, *a, **k: (seen.append(list(prompts)), encode(prompts, *a, **k))[1]
        run(_Model(pipe, find_targets(denoiser(pipe), "ffn2"), cfg))
        return seen

    def score_all(model):
        for ep in sets:
            model.evidence_gradient(ep)

    def replay_then_score_the_last(model):
        model.embed_as_scored(sets)
        model.evidence_gradient(sets[-1])

    scored = batches_of(score_all)
    assert len(scored) > len(sets)  # the empty prompt, then each set's prompts and its judge's texts
    assert batches_of(replay_then_score_the_last) == scored


# ------------------------------------------------------------- launched processes
def test_three_processes_for_two_concepts_give_the_same_mask_and_one_idles(paper_one, tiny_dir, tmp_path):
    out = tmp_path / "three"
    res = _launch(3, ["erase", "--concepts", "circle, star", "--model", str(tiny_dir), "--out", str(out), *PAPER])
    assert _bytes(out) == _bytes(paper_one)
    assert "process 3 of 3 has no concept to score (2 concepts); it waits for the fusion" in res.stderr
    assert res.stdout.count("wrote ") == 1  # only the main process writes and prints its summary
    assert sorted(p.name for p in out.iterdir()) == ["cache", "fusion_stats.json", "mask.safetensors"]
    # each concept was scored by its own process
    assert [_stats(out)["per_concept"][c]["process"] for c in ("circle", "star")] == [0, 1]


def test_two_processes_resume_the_paper_variant_from_a_partial_cache(paper_one, tiny_dir, tmp_path):
    # an earlier run that got through circle only left its entry in OUT/cache
    out = tmp_path / "two"
    _erase_once(["erase", "--concepts", "circle", "--model", str(tiny_dir), "--out", str(out), *PAPER])
    res = _launch(2, ["erase", "--concepts", "circle, star", "--model", str(tiny_dir), "--out", str(out), *PAPER])
    assert _bytes(out) == _bytes(paper_one)
    per_concept = _stats(out)["per_concept"]
    assert per_concept["circle"]["cached"] is True and per_concept["star"]["cached"] is False
    assert "cache" in res.stdout and "computed" in res.stdout


def test_two_processes_give_the_causal_variants_mask_with_its_repair(causal_one, tiny_dir, causal_config, tmp_path):
    out = tmp_path / "two"
    _launch(2, ["erase", "--concepts", CAUSAL_CONCEPTS, "--model", str(tiny_dir), "--out", str(out),
                "--config", str(causal_config)])  # fmt: skip
    assert _bytes(out) == _bytes(causal_one)
    stats = _stats(out)
    assert stats["repair"]["rows"] == _stats(causal_one)["repair"]["rows"] and sum(stats["repair"]["rows"].values()) > 0
    assert stats["evidence_per_round"] == _stats(causal_one)["evidence_per_round"]  # each float kept its bits


@pytest.mark.slow
def test_two_processes_resume_the_causal_variant_from_its_first_round(causal_one, tiny_dir, causal_config, tmp_path):
    # an interrupted run: the first round is in OUT/cache, the second is not
    out = tmp_path / "two"
    shutil.copytree(causal_one / "cache", out / "cache")
    (last,) = (out / "cache").glob("causal-*-round1.safetensors")
    last.unlink()
    _launch(2, ["erase", "--concepts", CAUSAL_CONCEPTS, "--model", str(tiny_dir), "--out", str(out),
                "--config", str(causal_config)])  # fmt: skip
    assert _bytes(out) == _bytes(causal_one)
    assert [r["cached"] for r in _stats(out)["rounds"]] == [True, False]
