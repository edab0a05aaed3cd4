"""Typed settings of one erase run (paper Table 8 defaults).

:class:`FIAConfig` is the single place that names every knob of the method.
It is a plain dataclass: build it in Python, load it from a YAML preset
(``configs/*.yaml``) or let the CLI fill it from flags; :meth:`FIAConfig.validate`
rejects out-of-range values before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from fia.errors import FIAError

TASKS = ("object", "style", "explicit", "shapeworld")
SALIENCY_KINDS = ("energy", "wanda")
CFG_ROWS = ("cond", "both")
TARGET_KINDS = ("ffn2", "ffn1", "attn_kv")


@dataclass
class FIAConfig:
    """Hyperparameters of Forget-It-All.

    Attributes:
        task: prompt templates to use (``object``, ``style``, ``explicit``,
            ``shapeworld``); see :mod:`fia.prompts`.
        r1: temporal sparsity of Eq. 3: per step, the top ``r1`` share of the
            layer's saliency counts as "persistent".
        r2: spatial sparsity of Eq. 4-6 (channel and layer top-k).
        alpha: concept-agnostic share of Eq. 7; ``tau_ca = max(2, ceil(alpha*C))``.
        r1_overrides / r2_overrides: per-concept values that replace r1 / r2.
        saliency_steps: denoising steps whose activations feed the saliency;
            the sampler stops after them.
        num_inference_steps: length of the schedule those steps belong to.
        guidance_scale: classifier-free guidance used while collecting.
        seed: base seed; paired concept/base prompts share ``seed + k``.
        batch_size: prompts per sampler batch; ``None`` puts all prompts of a
            concept in one batch (bounded memory, see the README).
        saliency: ``energy`` (paper Eq. 1) or ``wanda`` (|W| * ||X_j|| after
            scaling every token's row of X to unit length, the public
            reference code's reduction), for comparison.
        cfg_rows: which rows of a prompt's guided run form N in Eq. 1:
            ``cond`` (the text-conditioned half) or ``both`` halves.
        targets: which linears are scored and pruned (``ffn2`` as in the
            paper; ``ffn1`` and ``attn_kv`` for the layer ablation).
        eps: the epsilon of Eq. 1's cosine denominator.
    """

    task: str = "object"
    r1: float = 0.05
    r2: float = 0.01
    alpha: float = 0.6
    r1_overrides: dict[str, float] = field(default_factory=dict)
    r2_overrides: dict[str, float] = field(default_factory=dict)
    saliency_steps: int = 10
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    batch_size: int | None = None
    saliency: Literal["energy", "wanda"] = "energy"
    cfg_rows: Literal["cond", "both"] = "cond"
    targets: Literal["ffn2", "ffn1", "attn_kv"] = "ffn2"
    eps: float = 1e-8

    # ------------------------------------------------------------------ helpers
    def r1_for(self, concept: str) -> float:
        return self.r1_overrides.get(concept, self.r1)

    def r2_for(self, concept: str) -> float:
        return self.r2_overrides.get(concept, self.r2)

    def concept_agnostic_threshold(self, num_concepts: int) -> int:
        """Eq. 7's ``tau_ca = max(2, ceil(alpha * C))``, exactly as the fusion computes it."""
        from fia.core.fuse import concept_agnostic_threshold

        return concept_agnostic_threshold(num_concepts, self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FIAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FIAError(
                f"unknown setting(s) {', '.join(unknown)}; "
                f"use only: {', '.join(sorted(known))}"
            )
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> "FIAConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> "FIAConfig":
        """Raise :class:`FIAError` naming the first bad value and its fix."""
        if self.task not in TASKS:
            raise FIAError(f"unknown task {self.task!r}; use one of: {', '.join(TASKS)}")
        for name in ("r1", "r2", "alpha"):
            _check_fraction(name, getattr(self, name))
        for name in ("r1_overrides", "r2_overrides"):
            for concept, value in getattr(self, name).items():
                _check_fraction(f"{name}[{concept!r}]", value)
        if not isinstance(self.saliency_steps, int) or self.saliency_steps < 1:
            raise FIAError(f"saliency_steps must be a positive integer, got {self.saliency_steps!r}")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise FIAError(
                f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}"
            )
        if self.saliency_steps > self.num_inference_steps:
            raise FIAError(
                f"saliency steps ({self.saliency_steps}) exceed the schedule's "
                f"{self.num_inference_steps} steps; lower --saliency-steps or raise --steps"
            )
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise FIAError(f"batch_size must be a positive integer or omitted, got {self.batch_size!r}")
        if not (self.guidance_scale >= 0 and math.isfinite(self.guidance_scale)):
            raise FIAError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale!r}")
        if self.saliency not in SALIENCY_KINDS:
            raise FIAError(f"unknown saliency {self.saliency!r}; use one of: {', '.join(SALIENCY_KINDS)}")
        if self.cfg_rows not in CFG_ROWS:
            raise FIAError(f"unknown cfg_rows {self.cfg_rows!r}; use one of: {', '.join(CFG_ROWS)}")
        if self.targets not in TARGET_KINDS:
            raise FIAError(f"unknown targets {self.targets!r}; use one of: {', '.join(TARGET_KINDS)}")
        if not (self.eps > 0):
            raise FIAError(f"eps must be > 0, got {self.eps!r}")
        return self


def _check_fraction(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 < value <= 1):
        raise FIAError(f"{name} must lie in (0, 1], got {value!r}; e.g. 0.01 for 1 %")
