"""Typed settings of one erase run (paper Table 8 defaults).

:class:`FIAConfig` is the single place that names every knob of the method.
It is a plain dataclass: build it in Python, load it from a YAML preset
(``fia/configs/*.yaml``) or let the CLI fill it from flags; :meth:`FIAConfig.validate`
rejects out-of-range values before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fia.errors import FIAError

TASKS = ("object", "style", "explicit", "shapeworld")
SALIENCY_KINDS = ("energy", "wanda")
CFG_ROWS = ("cond", "both")
TARGET_KINDS = ("ffn2", "ffn1", "attn_kv")
VARIANTS = ("paper", "causal", "rewrite")
SELECTIONS = ("both", "channel", "layer")
FUSIONS = ("fia", "union")

# The schedule and guidance FIA samples at on a real model: the paper's (the
# first ``saliency_steps`` of 50 steps at guidance 7.5, method page section 3).
PAPER_SAMPLER = {"num_inference_steps": 50, "guidance_scale": 7.5}


def sampler_defaults(task: str) -> dict[str, Any]:
    """The schedule and guidance of ``task``: ``{"num_inference_steps", "guidance_scale"}``.

    The one source of these defaults for the Python API and the CLI: a
    :class:`FIAConfig` that leaves them out and the task presets of
    :func:`fia.prompts.load_preset` both read it. ShapeWorld samples at its
    model's own settings (:data:`fia.shapeworld.GENERATION_DEFAULTS`, the
    settings its quality gate is measured at); every other task at the
    paper's (:data:`PAPER_SAMPLER`).
    """
    if task == "shapeworld":
        from fia.shapeworld import GENERATION_DEFAULTS

        return {
            "num_inference_steps": int(GENERATION_DEFAULTS["num_inference_steps"]),
            "guidance_scale": float(GENERATION_DEFAULTS["guidance_scale"]),
        }
    return dict(PAPER_SAMPLER)


# What the public reference code (github.com/kaiyuan02415/Forget-It-All,
# commit 4904518) does, as FIAConfig settings; the named preset "reference"
# (FIAConfig.reference, fia erase --preset reference) lays them over the task's
# preset together with the task's schedule and guidance (sampler_defaults).
# The code scores Eq. 1 as |W_ij| * ||X_j|| after scaling every token's row of
# X to unit length ("wanda"), over every row of the guided batch, both the
# unconditional and the conditional half ("both"), on the first 10 steps; it
# has no per-concept r1 (r1_overrides empty). Method page, section 10.
REFERENCE_SETTINGS: dict[str, Any] = {
    "variant": "paper",
    "saliency": "wanda",
    "cfg_rows": "both",
    "targets": "ffn2",
    "selection": "both",
    "fusion": "fia",
    "saliency_steps": 10,
    "r1_overrides": {},
}
PRESETS = ("reference",)


class _SettingsBlock:
    """What the variants' nested settings (``repair:``, ``rewrite:``) share: JSON form and reading a YAML value."""

    NAME: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_value(cls, value: Any) -> Any:
        """``None``/``False`` (not set), ``True`` (the defaults), a mapping of fields, or an instance."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            check_known_fields(cls, value)
            return cls(**value)
        raise FIAError(f"{cls.NAME} must be true, false or a mapping of its settings, got {value!r}")


@dataclass(frozen=True)
class RepairConfig(_SettingsBlock):
    """Settings of the closed-form repair after pruning (:mod:`fia.core.repair`, :mod:`fia.repair`).

    Attributes:
        concept_weight: ``lambda``: how strongly the concept's prompts are held
            at their masked outputs while the kept prompts' outputs are restored.
        damping: ``delta``, a share of the mean diagonal of the system.
        keep_prompts_per_concept: ShapeWorld: prompts per kept kind (other
            tasks: the anchor prompts); object-less, styled and burning
            scenes are added.
        concept_prompts_per_concept: prompts per erased concept: its name,
            synonyms, bare word and compositional prompts.
        every_round: refit the repair after every round of pruning, so the
            next round scores the repaired model (default: once, after the
            last; every round without anchors kept less on the tuning split).
    """

    NAME: ClassVar[str] = "repair"
    concept_weight: float = 1.0
    damping: float = 0.01
    keep_prompts_per_concept: int = 4
    concept_prompts_per_concept: int = 12
    every_round: bool = False

    def validate(self) -> "RepairConfig":
        for name in ("concept_weight", "damping"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and math.isfinite(value)):
                raise FIAError(f"repair.{name} must be a finite number >= 0, got {value!r}")
        if not self.damping > 0:
            raise FIAError(f"repair.damping must be > 0 (it keeps the system solvable), got {self.damping!r}; e.g. 0.01")
        for name in ("keep_prompts_per_concept", "concept_prompts_per_concept"):
            check_positive_int(f"repair.{name}", getattr(self, name))
        return self



@dataclass(frozen=True)
class RewriteConfig(_SettingsBlock):
    """Settings of the closed-form rewrite (:mod:`fia.core.rewrite`, :mod:`fia.rewrite`): ``--variant rewrite``.

    Attributes:
        concept_weight: ``lambda``: how strongly the concept's prompts are
            pulled to their scenes' outputs against the kept prompts'.
        damping: ``delta``, a share of the mean diagonal of the system.
        balance_rounds: reweightings of the kept groups, so that no kept
            kind absorbs the change alone (0: one plain solve).
        keep_prompts_per_kind: ShapeWorld: prompts per kept kind (other
            tasks: anchor prompts per anchor); object-less, styled and
            burning scenes are added.
        concept_prompts_per_concept: prompts per erased concept: its name,
            synonyms, bare word and compositional prompts, each paired with
            its scene.
    """

    NAME: ClassVar[str] = "rewrite"
    concept_weight: float = 0.3
    damping: float = 0.03
    balance_rounds: int = 5
    keep_prompts_per_kind: int = 4
    concept_prompts_per_concept: int = 24

    def validate(self) -> "RewriteConfig":
        check_nonnegative("rewrite.concept_weight", self.concept_weight)
        check_nonnegative("rewrite.damping", self.damping)
        if not self.damping > 0:
            raise FIAError(f"rewrite.damping must be > 0 (it keeps the system solvable), got {self.damping!r}; e.g. 0.03")
        if not isinstance(self.balance_rounds, int) or isinstance(self.balance_rounds, bool) or self.balance_rounds < 0:
            raise FIAError(f"rewrite.balance_rounds must be a whole number >= 0, got {self.balance_rounds!r}")
        for name in ("keep_prompts_per_kind", "concept_prompts_per_concept"):
            check_positive_int(f"rewrite.{name}", getattr(self, name))
        return self



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
        num_inference_steps: length of the schedule those steps belong to;
            left out (``None``), the task's (:func:`sampler_defaults`: 50,
            on ShapeWorld the world's 25), as the CLI's presets resolve it.
        guidance_scale: classifier-free guidance used while collecting; left
            out, the task's (7.5, on ShapeWorld the world's 5.0).
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
        selection: paper variant: ``both`` levels of Eq. 6 (channel and
            layer top-k), or one level only for the ablations: ``channel``
            (Eq. 4) or ``layer`` (Eq. 5).
        fusion: paper variant: ``fia`` (Eq. 7-8, concept-agnostic neurons
            kept) or ``union`` (the ablation: every selected neuron pruned).
        variant: ``paper`` (Eq. 1-8, the paper's FIA), ``causal`` (the
            classifier-free causal variant of :mod:`fia.causal`: weights are
            scored by their first-order effect on the model's own evidence
            for the concept in images it samples, not by activation
            contrast) or ``rewrite`` (no pruning: the closed-form rewrite of
            :mod:`fia.rewrite`, settings in ``rewrite``). The fields from
            ``budget`` to ``repair`` belong to the causal variant; the
            others ignore them.
        budget: causal: share of all target weights pruned per concept.
        rounds: causal: the budget is spent in this many rounds, re-scoring
            on the edited model after each.
        anchor_weight: causal: lambda of the anchor penalty; a weight's
            score drops by lambda times the evidence it carries for concepts
            that must stay (the anchors).
        score_steps: causal: length of the sampler schedule whose final
            images are scored (the whole schedule runs, with gradients).
        contrasts: causal: how many other prompts each scored prompt is
            contrasted with in the evidence (see :mod:`fia.causal`).
        concept_prompts_per_concept / anchor_prompts: causal: how many
            prompts are sampled per concept and for the anchors.
        evidence_timesteps: causal: the noise levels (shares of the training
            schedule) at which the evidence compares denoising errors.
        anchors: causal: concepts that must stay; empty means the task's
            default (ShapeWorld: every shape not erased).
        stop_evidence: causal: the adaptive budget. A concept stops taking
            weights once its evidence (mean over its prompts, on the edited
            model) falls to this share of its first round's; ``None`` spends
            every round's budget.
        repair: causal: the closed-form repair of the pruned rows
            (:class:`RepairConfig`), or ``None`` for pruning alone. Recorded
            in a mask only when set, so masks without it keep their bytes.
        rewrite: the rewrite variant's settings (:class:`RewriteConfig`);
            filled with the defaults when ``variant`` is ``rewrite``.
        world: ShapeWorld only: the vocabulary of the model being edited
            (``shapeworld`` or ``shapeworld2``, see
            :mod:`fia.shapeworld.vocab`); its object kinds are the contrasts
            and default anchors of the causal variant.
    """

    task: str = "object"
    r1: float = 0.05
    r2: float = 0.01
    alpha: float = 0.6
    r1_overrides: dict[str, float] = field(default_factory=dict)
    r2_overrides: dict[str, float] = field(default_factory=dict)
    saliency_steps: int = 10
    num_inference_steps: int | None = None  # None: the task's, filled in on construction
    guidance_scale: float | None = None  # None: the task's, filled in on construction
    seed: int = 0
    batch_size: int | None = None
    saliency: Literal["energy", "wanda"] = "energy"
    cfg_rows: Literal["cond", "both"] = "cond"
    targets: Literal["ffn2", "ffn1", "attn_kv"] = "ffn2"
    eps: float = 1e-8
    selection: Literal["both", "channel", "layer"] = "both"
    fusion: Literal["fia", "union"] = "fia"
    world: str = "shapeworld"
    variant: Literal["paper", "causal", "rewrite"] = "paper"
    budget: float = 0.0075
    rounds: int = 8
    anchor_weight: float = 2.0
    score_steps: int = 10
    contrasts: int = 3
    concept_prompts_per_concept: int = 24
    anchor_prompts: int = 48
    evidence_timesteps: tuple[float, ...] = (0.3, 0.5, 0.7)
    anchors: list[str] = field(default_factory=list)
    repair: RepairConfig | None = None
    stop_evidence: float | None = None
    rewrite: RewriteConfig | None = None

    def __post_init__(self) -> None:
        # the task's schedule and guidance where they are left out: the same
        # values the CLI's preset gives for the task (fia.prompts.load_preset)
        if self.num_inference_steps is None or self.guidance_scale is None:
            defaults = sampler_defaults(self.task)
            if self.num_inference_steps is None:
                self.num_inference_steps = defaults["num_inference_steps"]
            if self.guidance_scale is None:
                self.guidance_scale = defaults["guidance_scale"]

    @classmethod
    def reference(cls, task: str = "object", **changes: Any) -> "FIAConfig":
        """The public reference code's settings for ``task``: the way to reproduce its masks.

        The task's preset (``fia/configs/<task>.yaml``) with :data:`REFERENCE_SETTINGS`
        (the paper variant, the Wanda reduction with unit-length token rows,
        both rows of the guided batch, 10 scored steps) and the task's
        schedule and guidance (:func:`sampler_defaults`); ``changes`` (e.g.
        ``world="shapeworld"``) come last. The same settings as
        ``fia erase --preset reference --task TASK``.
        """
        from fia.prompts import resolve_config

        return resolve_config(task, overrides=changes, preset="reference")

    # ------------------------------------------------------------------ helpers
    def r1_for(self, concept: str) -> float:
        """``r1`` for ``concept``: its override if it has one (names match case-insensitively)."""
        return concept_value(self.r1_overrides, concept, self.r1)

    def r2_for(self, concept: str) -> float:
        """``r2`` for ``concept``: its override if it has one (names match case-insensitively)."""
        return concept_value(self.r2_overrides, concept, self.r2)

    def concept_agnostic_threshold(self, num_concepts: int) -> int:
        """Eq. 7's ``tau_ca = max(2, ceil(alpha * C))``, exactly as the fusion computes it."""
        from fia.core.fuse import concept_agnostic_threshold

        return concept_agnostic_threshold(num_concepts, self.alpha)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples as lists), as a saved mask records them."""
        data = dataclasses.asdict(self)
        data["evidence_timesteps"] = list(data["evidence_timesteps"])
        for key in ("repair", "stop_evidence", "rewrite"):
            if data[key] is None:
                del data[key]  # a run without them records what it always did
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FIAConfig":
        check_known_fields(cls, data)
        cfg = cls(**data)
        cfg.validate()
        return cfg

    @classmethod
    def from_run(cls, data: dict[str, Any] | None) -> "FIAConfig":
        """The config of a finished run from its recorded settings (e.g. ``mask.config``).

        Keys that are not settings (an older run's extras) are left out.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in (data or {}).items() if k in known})

    def replace(self, **changes: Any) -> "FIAConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> "FIAConfig":
        """Raise :class:`FIAError` naming the first bad value and its fix."""
        if self.task not in TASKS:
            raise FIAError(f"unknown task {self.task!r}; use one of: {', '.join(TASKS)}")
        from fia.shapeworld.vocab import WORLDS

        if self.world not in WORLDS:
            raise FIAError(f"unknown world {self.world!r}; use one of: {', '.join(WORLDS)}")
        for name in ("r1", "r2", "alpha"):
            check_fraction(name, getattr(self, name))
        for name in ("r1_overrides", "r2_overrides"):
            for concept, value in getattr(self, name).items():
                check_fraction(f"{name}[{concept!r}]", value)
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
        if self.selection not in SELECTIONS:
            raise FIAError(f"unknown selection {self.selection!r}; use one of: {', '.join(SELECTIONS)}")
        if self.fusion not in FUSIONS:
            raise FIAError(f"unknown fusion {self.fusion!r}; use one of: {', '.join(FUSIONS)}")
        if self.variant not in VARIANTS:
            raise FIAError(f"unknown variant {self.variant!r}; use one of: {', '.join(VARIANTS)}")
        check_fraction("budget", self.budget)
        for name in ("rounds", "score_steps", "contrasts", "concept_prompts_per_concept", "anchor_prompts"):
            check_positive_int(name, getattr(self, name))
        if not (isinstance(self.anchor_weight, (int, float)) and self.anchor_weight >= 0 and math.isfinite(self.anchor_weight)):
            raise FIAError(f"anchor_weight must be a finite number >= 0, got {self.anchor_weight!r}")
        ts = tuple(self.evidence_timesteps)
        if not ts or any(not isinstance(t, (int, float)) or not (0 < t < 1) for t in ts):
            raise FIAError(
                f"evidence_timesteps must be shares of the schedule in (0, 1), got {self.evidence_timesteps!r}; "
                "e.g. [0.3, 0.5, 0.7]"
            )
        self.evidence_timesteps = tuple(float(t) for t in ts)
        if any(not isinstance(a, str) or not a.strip() for a in self.anchors):
            raise FIAError(f"anchors must be concept names, got {self.anchors!r}")
        if self.stop_evidence is not None:
            check_fraction("stop_evidence", self.stop_evidence)
        self.repair = RepairConfig.from_value(self.repair)
        if self.repair is not None:
            self.repair.validate()
            if self.variant != "causal":
                raise FIAError("the repair follows the causal variant's mask; drop repair or use --variant causal")
        self.rewrite = RewriteConfig.from_value(self.rewrite)
        if self.variant == "rewrite" and self.rewrite is None:
            self.rewrite = RewriteConfig()
        if self.rewrite is not None:
            self.rewrite.validate()
            if self.variant != "rewrite":
                raise FIAError("rewrite settings belong to --variant rewrite; drop them or use --variant rewrite")
        return self


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise :class:`FIAError` unless ``value`` is a share in (0, 1] (or [0, 1] with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (0 <= value <= 1) if allow_zero else (0 < value <= 1)
    if not ok:
        low = "[0" if allow_zero else "(0"
        raise FIAError(f"{name} must lie in {low}, 1], got {value!r}; e.g. 0.01 for 1 %")


def check_positive_int(name: str, value: Any) -> None:
    """Raise :class:`FIAError` unless ``value`` is an integer >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FIAError(f"{name} must be a positive integer, got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
    """Raise :class:`FIAError` unless ``value`` is a finite number >= 0 (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value >= 0) or value == float("inf"):
        raise FIAError(f"{name} must be a finite number >= 0, got {value!r}")


def check_known_fields(config_type: type, data: Mapping[str, Any]) -> None:
    """Raise :class:`FIAError` naming the keys of ``data`` that are not fields of the dataclass ``config_type``."""
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise FIAError(f"unknown setting(s) {', '.join(unknown)}; use only: {', '.join(sorted(known))}")


def concept_value(overrides: Mapping[str, float], concept: str, default: float) -> float:
    """A per-concept override (``r1_overrides`` / ``r2_overrides``), matched case-insensitively."""
    if concept in overrides:
        return overrides[concept]
    key = " ".join(concept.split()).casefold()
    for name, value in overrides.items():
        if " ".join(name.split()).casefold() == key:
            return value
    return default
