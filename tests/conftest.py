"""Fixtures shared by the rooms of the tests: tiny saved pipelines, small prompt files, one torch thread.

Helpers that are not fixtures (``small_config``, ``load_tiny``,
``cli_refuses``) live in :mod:`tests.helpers`; the evaluation stand-ins in
:mod:`tests.standins`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# the helpers' asserts report their operands like a test's own
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers import BASE_LINES, CONCEPT_LINES, save_tiny  # noqa: E402 - after the registration above


@pytest.fixture(scope="session")
def prompt_files(tmp_path_factory) -> tuple[Path, Path]:
    """A concept prompt file (a comment, blank lines, two contexts) and its base prompt file."""
    d = tmp_path_factory.mktemp("prompts")
    c, b = d / "concept.txt", d / "base.txt"
    c.write_text(CONCEPT_LINES)
    b.write_text(BASE_LINES)
    return c, b


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random SD pipeline saved with save_pretrained (never modified)."""
    d = tmp_path_factory.mktemp("tiny-sd") / "pipe"
    save_tiny(d, seed=0)
    return d


@pytest.fixture(scope="session")
def other_dir(tmp_path_factory) -> Path:
    """Same architecture, other random weights: a different model."""
    d = tmp_path_factory.mktemp("tiny-sd-other") / "pipe"
    save_tiny(d, seed=1)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores).

    A module that runs tiny models opts in for all its tests with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
