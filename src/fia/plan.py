"""Plan an erase run: check every input before any work and build the paper variant's prompts.

As a diffusers pipeline runs ``check_inputs`` before any work,
:func:`plan_erase` checks the concept names, the settings and the prompt
files and builds each concept's paired prompts (:meth:`fia.tasks.Task.concept_prompts`).
It is cheap and touches no model; the CLI calls it before loading one, and
:func:`fia.erase` runs the plan it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fia.concepts import parse_concepts
from fia.config import AnchoredSettings, FIAConfig, FIASettings
from fia.errors import FIAError
from fia.prompts import ConceptPrompts
from fia.tasks import build_prompts


@dataclass(frozen=True)
class ErasePlan:
    """A checked erase run: the concepts, the settings and (paper variant) each concept's prompts."""

    concepts: list[str]
    config: Any  # a config of an FIA variant: FIAConfig, FIACausalConfig or FIARewriteConfig
    prompts: dict[str, ConceptPrompts]


def plan_erase(
    concepts: str | Sequence[str],
    config: FIASettings | None = None,
    *,
    concept_prompts: str | Path | None = None,
    base_prompts: str | Path | None = None,
    prompts: Mapping[str, ConceptPrompts] | None = None,
) -> ErasePlan:
    """Check an erase run's inputs and build its prompts; raises :class:`FIAError` naming the problem.

    ``config`` defaults to ``FIAConfig()`` (the paper's FIA on the object
    task). ``prompts`` gives ready :class:`ConceptPrompts` for some or all
    concepts; the others come from the task's templates, or from the prompt
    files ``concept_prompts`` / ``base_prompts`` (paper variant only: the
    causal and rewrite variants build their own prompts).
    """
    config = config if config is not None else FIAConfig()
    if not isinstance(config, FIASettings):
        raise FIAError(
            f"fia.erase takes the settings of an FIA variant (FIAConfig, FIACausalConfig, FIARewriteConfig), "
            f"got a {type(config).__name__}; run other methods with fia.unlearn(pipe, concepts, method=...)"
        )
    config = config.validate()
    names = parse_concepts(concepts)
    if isinstance(config, AnchoredSettings):  # the variants that build their own prompts
        if concept_prompts is not None or base_prompts is not None:
            raise FIAError(
                f"prompt files apply to --variant paper; the {config.VARIANT} variant builds its own "
                "prompts (name concepts to keep with --anchors)"
            )
        config.check_concepts(names)
        return ErasePlan(names, config, {})
    given = dict(prompts or {})
    built = {c: given.get(c) or build_prompts(c, config, concept_prompts, base_prompts) for c in names}
    return ErasePlan(names, config, built)
