"""Evaluation: paired generation, judges, suites, metrics and the HTML report.

Where things live:

* :mod:`.generate` -- paired base/edited generation and the image store;
* :mod:`.suites` -- which prompts, which judge, which numbers (ShapeWorld and real models);
* :mod:`.judges` -- the oracle, ResNet, CLIP, NudeNet and feature judges;
* :mod:`.metrics` -- pure metric functions (Overall, FSR, Frechet distance, CLIP score);
* :mod:`.build` -- :func:`build_suite`, a suite by name with its judge loaded;
* :mod:`.runner` -- :func:`evaluate`: generate, judge, write metrics and the report;
* :mod:`.report` -- ``report.html`` and its figures;
* :mod:`.cli` -- ``fia evaluate``.

The report at the end of ``fia erase`` is :func:`fia.evaluate.after_erase.report_after_erase`.
"""

from fia.evaluate.build import build_suite
from fia.evaluate.generate import Editor, EvalItem, GenerationSettings, ImageStore
from fia.evaluate.metrics import frechet_distance, fsr, overall
from fia.evaluate.runner import evaluate, mask_fingerprint
from fia.evaluate.suites import SUITES, Suite, split_seed

__all__ = [
    "SUITES",
    "Editor",
    "EvalItem",
    "GenerationSettings",
    "ImageStore",
    "Suite",
    "build_suite",
    "evaluate",
    "frechet_distance",
    "fsr",
    "mask_fingerprint",
    "overall",
    "split_seed",
]
