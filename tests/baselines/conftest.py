"""Fixtures of the baselines' tests: a tiny random SD pipeline, and a fresh copy of it per test."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="module")
def base_pipe():
    from fia.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


@pytest.fixture
def pipe(base_pipe):
    """A copy of the tiny pipeline that a test may change."""
    return copy.deepcopy(base_pipe)
