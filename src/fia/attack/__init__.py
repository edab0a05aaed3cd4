"""The robustness audit: try to bring erased concepts back, as attackers and auditors do.

``run_attack(pipe, edit, concepts, probes, config, judge=...)`` runs the
probes ``paraphrase``, ``prompt-attack``, ``concept-vector``,
``textual-inversion``, ``completion`` and ``revival``
(:mod:`fia.attack.probes`) against an edited model (and, with
``ceiling=True`` or ``edit=None``, the unedited one) and reports each
probe's attack success rate with a Wilson interval
(:mod:`fia.attack.runner`). Budgets live in :class:`AttackConfig`; judges
in :mod:`fia.attack.judges`; the prompts in :mod:`fia.attack.texts`;
revival's data-free refill of pruned weights in :mod:`fia.attack.revival`.
"""

from fia.attack.config import MAX_INVERSION_STEPS, AttackConfig
from fia.attack.judges import ShapeWorldConceptJudge, judge_for_task
from fia.attack.model import completion_steps
from fia.attack.probes import PROBES, probe_names
from fia.attack.revival import REFILLS, refill, refilled
from fia.attack.runner import EDITED, UNEDITED, AttackPlan, AttackResult, ProbeResult, plan_attack, run_attack
from fia.attack.texts import ConceptTexts, model_texts, shapeworld_texts

__all__ = [
    "EDITED",
    "MAX_INVERSION_STEPS",
    "PROBES",
    "REFILLS",
    "UNEDITED",
    "AttackConfig",
    "AttackPlan",
    "AttackResult",
    "ConceptTexts",
    "ProbeResult",
    "ShapeWorldConceptJudge",
    "completion_steps",
    "judge_for_task",
    "model_texts",
    "plan_attack",
    "probe_names",
    "refill",
    "refilled",
    "run_attack",
    "shapeworld_texts",
]
