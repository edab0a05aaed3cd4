"""Evaluation suites: which prompts to render, which judge, which numbers.

* :mod:`.base` -- the :class:`Suite` type every suite is, and shared helpers;
* :mod:`.seeds` -- the seeding rule that keeps evaluation splits disjoint;
* :mod:`.shapeworld` -- the three ShapeWorld suites (judge: the oracle);
* :mod:`.real` -- the real-model suites ``imagenette``, ``artists``,
  ``explicit`` and ``coco``, read from prompt files.
"""

from fia.evaluate.suites.base import Records, Suite
from fia.evaluate.suites.real import (
    REAL_SUITES,
    artists_suite,
    coco_suite,
    explicit_suite,
    imagenette_suite,
    prompt_files_for,
    read_prompt_list,
)
from fia.evaluate.suites.seeds import SPLIT_SEED_SPAN, split_seed
from fia.evaluate.suites.shapeworld import (
    SHAPEWORLD_SUITES,
    factor_cycle,
    shapeworld_reference_features,
    shapeworld_suite,
)

SUITES = SHAPEWORLD_SUITES + REAL_SUITES

__all__ = [
    "REAL_SUITES",
    "SHAPEWORLD_SUITES",
    "SPLIT_SEED_SPAN",
    "SUITES",
    "Records",
    "Suite",
    "artists_suite",
    "coco_suite",
    "explicit_suite",
    "factor_cycle",
    "imagenette_suite",
    "prompt_files_for",
    "read_prompt_list",
    "shapeworld_reference_features",
    "shapeworld_suite",
    "split_seed",
]
