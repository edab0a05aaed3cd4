"""``accelerate launch`` with 2 CPU processes gives the 1-process results.

On a machine without GPUs ``accelerate launch --multi_gpu --num_processes 2``
starts two processes through torchrun and ``fia evaluate`` joins them over
gloo on the CPU (``--cpu`` alone would need mpirun for several processes).

Prompts are sharded by global batch (batch b on process b % 2); the main
process gathers the records and writes metrics.json. The test compares
metrics.json, scores.jsonl and every image with a one-process run.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fia.prompt_files import shipped_prompt_set
from tests.standins import resnet_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from fia.targets import denoiser, find_targets
    from fia.testing import tiny_sd_pipeline

    root = tmp_path_factory.mktemp("acc")
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(root / "base")
    with torch.no_grad():
        for t in find_targets(denoiser(pipe), "ffn2"):
            t.module.weight.mul_(0.5)
    pipe.save_pretrained(root / "edited")
    return root, resnet_folder(root / "resnet")


def _args(root, resnet, out):
    return [
        "--suite", "imagenette", "--model", str(root / "base"), "--edited", str(root / "edited"),
        "--prompts", str(shipped_prompt_set("imagenette.csv")), "--classifier", str(resnet),
        "--forget", "church", "--preserve", "tench", "--max-prompts", "3",
        "--steps", "2", "--batch-size", "2", "--out", str(out), "--no-report", "--device", "cpu",
    ]  # fmt: skip


def _mounted() -> bool:
    """Whether the main ``fia`` command has mounted ``fia evaluate``."""
    try:
        from fia.cli import app as main_app
    except Exception:
        return False
    return any((c.name or getattr(c.callback, "__name__", "")) == "evaluate" for c in main_app.registered_commands)


@pytest.mark.slow
def test_two_processes_match_one(models, tmp_path):
    if shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")):
        pytest.skip("the accelerate launcher is not installed")
    root, resnet = models
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one, two = tmp_path / "one", tmp_path / "two"
    from typer.testing import CliRunner

    from fia.evaluate.cli import app

    torch.set_num_threads(1)
    r1 = CliRunner().invoke(app, _args(root, resnet, one))  # one process, in this one
    assert r1.exit_code == 0, (r1.output, r1.exception)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    module = ["-m", "fia", "evaluate"] if _mounted() else ["-m", "fia.evaluate.cli"]
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", *module, *_args(root, resnet, two)]  # fmt: skip
    r2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "on 2 process(es)" in r2.stderr
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1 == m2
    assert (one / "scores.jsonl").read_text() == (two / "scores.jsonl").read_text()
    files = sorted(p.relative_to(one) for p in (one / "images").rglob("*.png"))
    assert len(files) == 12
    assert files == sorted(p.relative_to(two) for p in (two / "images").rglob("*.png"))
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
