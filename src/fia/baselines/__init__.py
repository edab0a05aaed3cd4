"""The baseline methods, each with its typed config; :mod:`fia.registry` registers them.

Every method returns an :class:`fia.edit.Edit` and leaves the pipeline as it
found it; apply the edit with ``edit.apply_(pipe)`` and undo it with
``edit.restore_(pipe)``:

- ``conceptprune``: prunes FFN2 "skilled neurons"; a
  :class:`fia.mask.ConceptMask` (:mod:`fia.baselines.conceptprune`);
- ``uce``: closed-form edit of cross-attention keys/values; a
  :class:`fia.delta.WeightDelta` (:mod:`fia.baselines.uce`);
- ``speed``: closed-form edit of cross-attention keys/values confined to
  the null space of the retained concepts; a :class:`fia.delta.WeightDelta`
  (:mod:`fia.baselines.speed`);
- ``esd-x``: fine-tunes cross-attention with negative guidance; a
  :class:`fia.delta.WeightDelta` (:mod:`fia.baselines.esd`);
- ``random``: the control, a random mask with another mask's per-layer
  counts (:mod:`fia.baselines.random`).

Run one with ``fia.unlearn(pipe, concepts, method="uce", config=UCEConfig(...))``
(``fia unlearn --method NAME`` on the command line); ``fia.methods.methods()``
lists every registered method with its default config (the paper's
settings, see each module).
"""

from __future__ import annotations

from fia.baselines import conceptprune, esd, random, speed, uce
from fia.baselines.conceptprune import ConceptPruneConfig
from fia.baselines.esd import ESDConfig
from fia.baselines.random import RandomConfig
from fia.baselines.speed import SPEEDConfig
from fia.baselines.uce import UCEConfig

__all__ = [
    "ConceptPruneConfig", "ESDConfig", "RandomConfig", "SPEEDConfig", "UCEConfig",
    "conceptprune", "esd", "random", "speed", "uce",
]  # fmt: skip
