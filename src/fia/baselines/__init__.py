"""Baselines behind one interface: ``edit(pipe, concepts, config, *, preserve=(), progress=None)``.

Each method edits a diffusers pipeline in place, after which it is an
ordinary pipeline again:

- ``conceptprune``: prune FFN2 "skilled neurons" (:mod:`fia.baselines.conceptprune`);
- ``uce``: closed-form edit of cross-attention keys/values (:mod:`fia.baselines.uce`);
- ``esd-x``: fine-tune cross-attention with negative guidance (:mod:`fia.baselines.esd`).

``METHODS`` maps a name to its ``edit`` function and ``CONFIGS`` to its
config dataclass, whose defaults are the paper's settings (see each module).
"""

from __future__ import annotations

from collections.abc import Callable

from fia.baselines import conceptprune, esd, uce
from fia.baselines.conceptprune import ConceptPruneConfig
from fia.baselines.esd import ESDConfig
from fia.baselines.uce import UCEConfig

METHODS: dict[str, Callable[..., object]] = {
    "conceptprune": conceptprune.edit,
    "uce": uce.edit,
    "esd-x": esd.edit,
}

CONFIGS: dict[str, type] = {
    "conceptprune": ConceptPruneConfig,
    "uce": UCEConfig,
    "esd-x": ESDConfig,
}

__all__ = ["METHODS", "CONFIGS", "ConceptPruneConfig", "UCEConfig", "ESDConfig"]
