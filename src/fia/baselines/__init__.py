"""Baselines behind one interface: ``edit(pipe, concepts, config, *, preserve=(), progress=None)``.

Each method edits a diffusers pipeline in place, after which it is an
ordinary pipeline again:

- ``conceptprune``: prune FFN2 "skilled neurons" (:mod:`fia.baselines.conceptprune`);
- ``uce``: closed-form edit of cross-attention keys/values (:mod:`fia.baselines.uce`);
- ``esd-x``: fine-tune cross-attention with negative guidance (:mod:`fia.baselines.esd`);
- ``fia`` and its ablations ``fia-union``, ``fia-wanda``, ``fia-channel``,
  ``fia-layer`` (:mod:`fia.baselines.ablations`); the random control with
  FIA's per-layer counts is :func:`fia.baselines.ablations.random_edit`.

``METHODS`` maps a name to its ``edit`` function and ``CONFIGS`` to a
callable that returns its default config (the paper's settings, see each
module); ``progress`` is called as ``progress(done, total, message)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fia.baselines import conceptprune, esd, uce
from fia.baselines.random import RandomConfig, random_mask, random_mask_like
from fia.baselines.conceptprune import ConceptPruneConfig
from fia.baselines.esd import ESDConfig
from fia.baselines.uce import UCEConfig

METHODS: dict[str, Callable[..., Any]] = {
    "conceptprune": conceptprune.edit,
    "uce": uce.edit,
    "esd-x": esd.edit,
}

CONFIGS: dict[str, Callable[[], Any]] = {
    "conceptprune": ConceptPruneConfig,
    "uce": UCEConfig,
    "esd-x": ESDConfig,
}

__all__ = [
    "CONFIGS",
    "METHODS",
    "ConceptPruneConfig",
    "ESDConfig",
    "RandomConfig",
    "UCEConfig",
    "random_mask",
    "random_mask_like",
]
