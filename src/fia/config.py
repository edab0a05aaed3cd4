"""Typed settings of an erase run: one frozen config type per FIA variant (paper Table 8 defaults).

* :class:`FIAConfig`: the paper's FIA (Eq. 1-8) and its ablations;
* :class:`FIACausalConfig`: the causal variant (:mod:`fia.causal`), with the
  closed-form repair as its :class:`RepairConfig` block;
* :class:`FIARewriteConfig`: the rewrite variant (:mod:`fia.rewrite`), with
  its :class:`RewriteConfig` block.

``fia.erase(pipe, concepts, config)`` picks the implementation from the
config's type. The three share :class:`FIASettings` (task, world, seed,
targets, schedule and guidance); each has its own ``validate()``, which
rejects out-of-range values before any heavy work starts. Build one in
Python, load it from a YAML preset (``fia/configs/*.yaml``, :mod:`fia.presets`)
or let the CLI fill it from flags. :func:`config_for_variant` is the one
place that maps a variant's name (``--variant``, a preset's ``variant:``, a
saved mask's settings) to its type; :func:`recorded_settings` is what a mask
records of a config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fia.defaults import DEFAULT_TASK, SD_SAMPLER
from fia.errors import FIAError
from fia.tasks import TASKS, get_task

SALIENCY_KINDS = ("energy", "wanda")
CFG_ROWS = ("cond", "both")
TARGET_KINDS = ("ffn2", "ffn1", "attn_kv")
VARIANTS = ("paper", "causal", "rewrite")
SELECTIONS = ("both", "channel", "layer")
FUSIONS = ("fia", "union")


def sampler_defaults(task: str) -> dict[str, Any]:
    """The schedule and guidance of ``task``: ``{"num_inference_steps", "guidance_scale"}``.

    The one source of these defaults for the Python API and the CLI: a
    config that leaves them out and the task presets of
    :func:`fia.presets.load_preset` both read the task's
    (:attr:`fia.tasks.Task.sampler`): ShapeWorld samples at its model's own
    settings (the settings its quality gate is measured at), every other
    task at Stable Diffusion's (:data:`fia.defaults.SD_SAMPLER`).
    """
    sampler = get_task(task).sampler if task in TASKS else SD_SAMPLER
    return sampler.as_dict()


# What the public reference code (github.com/kaiyuan02415/Forget-It-All,
# commit 4904518) does, as FIAConfig settings; the named preset "reference"
# (fia.presets.reference_config, fia erase --preset reference) lays them over the task's
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
        balance_rounds: reweightings of the kept groups (each kept kind, the
            object-less scenes, ...), so that no kept kind absorbs the change
            alone (:mod:`fia.core.balance`; 0: one solve on the pooled kept
            prompts). Recorded in a mask only when not 0.
        steps: sampler steps of the pass that reads the kept and concept
            prompts' layer inputs (``None``: the schedule's own,
            ``num_inference_steps``). Fewer steps walk the same trajectory
            more coarsely and cost proportionally less. Recorded in a mask
            only when set.
    """

    NAME: ClassVar[str] = "repair"
    concept_weight: float = 1.0
    damping: float = 0.01
    keep_prompts_per_concept: int = 4
    concept_prompts_per_concept: int = 12
    every_round: bool = False
    balance_rounds: int = 0
    steps: int | None = None

    def validate(self) -> "RepairConfig":
        for name in ("concept_weight", "damping"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and math.isfinite(value)):
                raise FIAError(f"repair.{name} must be a finite number >= 0, got {value!r}")
        if not self.damping > 0:
            raise FIAError(f"repair.damping must be > 0 (it keeps the system solvable), got {self.damping!r}; e.g. 0.01")
        for name in ("keep_prompts_per_concept", "concept_prompts_per_concept"):
            check_positive_int(f"repair.{name}", getattr(self, name))
        check_nonnegative_int("repair.balance_rounds", self.balance_rounds, "e.g. 6")
        if self.steps is not None:
            check_positive_int("repair.steps", self.steps)
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
        concept_trajectory: also pair each concept prompt with its scene
            along the concept's own trajectory (where the concept is being
            drawn), not only the scene's.
        negative_guidance: ``eta`` >= 0: the concept's target is its
            scene's output pushed away from the concept's,
            ``w x_t - eta (w x_c - w x_r)`` (0: the scene's output).
        anchored_guidance: ``beta`` in [0, 1]: what negative guidance pushes
            away from. The reference ``x_r = (1 - beta) x_t + beta x_a`` mixes
            the scene's input ``x_t`` with ``x_a``, the same prompt with a kept
            concept in the erased one's place, at the same latents. With
            ``beta = 1`` the push removes what the concept adds over another
            kept kind, not what any object adds over an empty scene (0: the
            scene, the push of ESD).
        anchored_below: whose push ``anchored_guidance`` anchors. ``None``:
            every erased concept's. A number ``r``: only a concept whose anchors
            move the edited layers' outputs less than ``r`` times as much as
            its own prompts do (``E|W (x_a - x_t)|^2 < r E|W (x_c - x_t)|^2``
            over its prompts, summed over the layers). A concept that moves
            them no more than the kind put in its place is not told apart from
            it by their difference, and pushes away from its scene instead.
        keep_guided: hold each kept prompt's *guided* layer input
            ``x_u + s (x_c - x_u)`` (``s`` the guidance scale), the mix the
            sampler steps with, instead of its unconditional and conditional
            rows one by one. What the prompt's text adds, ``x_c - x_u``,
            reaches the image multiplied by ``s``, so it weighs ``s^2`` as
            much in the kept term: the edit spares what makes a kept kind
            that kind rather than what every prompt shares (its scale then
            asks for a larger ``concept_weight``).
        steps: sampler steps of the passes that read the kept and concept
            prompts' layer inputs (``None``: the schedule's own,
            ``num_inference_steps``). Fewer steps walk the same trajectories
            more coarsely; the passes' cost falls in proportion. Recorded in
            a mask only when set.
        push_off_rank: how many output directions of each layer negative
            guidance's push leaves alone: those that the kept kinds the edit
            moves most add over object-less scenes (0: the whole push). A
            concept that shares features with kept kinds (star's strokes
            with arrow's) is then pushed off what is its own, and still
            pulled to its scene (:func:`fia.core.rewrite.kept_feature_projector`).
            Needs kept prompts grouped by kind with object-less scenes
            (ShapeWorld's). Recorded in a mask only when set.
        push_off_kinds: how many kept kinds span those directions: the ones
            whose layer outputs a first solve, with the whole push, moves
            most. Recorded in a mask only when set.
    """

    NAME: ClassVar[str] = "rewrite"
    concept_weight: float = 0.3
    damping: float = 0.03
    balance_rounds: int = 5
    keep_prompts_per_kind: int = 4
    concept_prompts_per_concept: int = 24
    concept_trajectory: bool = False
    negative_guidance: float = 0.0
    anchored_guidance: float = 0.0
    anchored_below: float | None = None
    keep_guided: bool = False
    steps: int | None = None
    push_off_rank: int = 0
    push_off_kinds: int = 4

    def validate(self) -> "RewriteConfig":
        check_nonnegative("rewrite.concept_weight", self.concept_weight)
        check_nonnegative("rewrite.negative_guidance", self.negative_guidance)
        check_nonnegative("rewrite.anchored_guidance", self.anchored_guidance)
        if self.anchored_guidance > 1:
            raise FIAError(f"rewrite.anchored_guidance is a share between 0 and 1, got {self.anchored_guidance!r}; e.g. 1")
        if self.anchored_below is not None:
            check_nonnegative("rewrite.anchored_below", self.anchored_below)
        for name in ("concept_trajectory", "keep_guided"):
            if not isinstance(getattr(self, name), bool):
                raise FIAError(f"rewrite.{name} must be true or false, got {getattr(self, name)!r}")
        check_nonnegative("rewrite.damping", self.damping)
        if not self.damping > 0:
            raise FIAError(f"rewrite.damping must be > 0 (it keeps the system solvable), got {self.damping!r}; e.g. 0.03")
        check_nonnegative_int("rewrite.balance_rounds", self.balance_rounds, "e.g. 5")
        for name in ("keep_prompts_per_kind", "concept_prompts_per_concept"):
            check_positive_int(f"rewrite.{name}", getattr(self, name))
        if self.steps is not None:
            check_positive_int("rewrite.steps", self.steps)
        check_nonnegative_int("rewrite.push_off_rank", self.push_off_rank, "0 for the whole push")
        check_positive_int("rewrite.push_off_kinds", self.push_off_kinds)
        return self




@dataclass(frozen=True)
class FIASettings:
    """What every FIA variant's config holds: the task and its world, the seed, the edited layers, the sampler.

    Attributes:
        task: prompt templates to use (``object``, ``style``, ``explicit``,
            ``shapeworld``); see :mod:`fia.tasks`.
        world: ShapeWorld only: the vocabulary of the model being edited
            (``shapeworld`` or ``shapeworld2``, see :mod:`fia.shapeworld.vocab`);
            ``None``, the model's own, read from its tokenizer when the erase
            starts (:meth:`fia.shapeworld.task.ShapeWorldTask.settle`).
        seed: base seed; paired concept/base prompts share ``seed + k``.
        batch_size: prompts per sampler batch; ``None`` lets the variant
            choose (the paper's: all prompts of a concept in one batch; the
            causal variant's: micro-batches of 16; the rewrite's: 32 kept
            and 16 paired prompts, or 64 and 48 on latents of at most 16
            px a side, :func:`fia.rewrite.default_batches`). Memory and
            speed only: the sums are the same, so it is not recorded in the
            mask (the rewrite's solve reads the sums, so its edit agrees to
            float rounding).
        targets: which linears are scored and edited (``ffn2`` as in the
            paper; ``ffn1`` and ``attn_kv`` for the layer ablation).
        num_inference_steps: length of the sampler schedule; left out
            (``None``), the task's (:func:`sampler_defaults`: 50, on
            ShapeWorld the world's 25), as the CLI's presets resolve it.
        guidance_scale: classifier-free guidance; left out, the task's (7.5,
            on ShapeWorld the world's 5.0).
    """

    VARIANT: ClassVar[str] = ""  # the variant's name: --variant, and "variant" in a mask's settings

    task: str = DEFAULT_TASK
    world: str | None = None
    seed: int = 0
    batch_size: int | None = None
    targets: Literal["ffn2", "ffn1", "attn_kv"] = "ffn2"
    num_inference_steps: int | None = None  # None: the task's, filled in on construction
    guidance_scale: float | None = None  # None: the task's, filled in on construction

    def __post_init__(self) -> None:
        # the task's schedule and guidance where they are left out: the same
        # values the CLI's preset gives for the task (fia.presets.load_preset)
        if self.num_inference_steps is None or self.guidance_scale is None:
            defaults = sampler_defaults(self.task)
            if self.num_inference_steps is None:
                object.__setattr__(self, "num_inference_steps", defaults["num_inference_steps"])
            if self.guidance_scale is None:
                object.__setattr__(self, "guidance_scale", defaults["guidance_scale"])

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, as a saved mask records them (:func:`recorded_settings`)."""
        return recorded_settings(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """A checked config from a mapping of this type's fields (unknown keys are refused)."""
        check_known_fields(cls, data)
        return cls(**data).validate()

    @classmethod
    def from_run(cls, data: Mapping[str, Any] | None) -> Any:
        """This type's config of a finished run from its recorded settings (e.g. ``mask.config``).

        Keys that are not this type's fields (another variant's settings, an
        older run's extras) are left out; :func:`config_from_record` picks
        the type the record names.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in (data or {}).items() if k in known}
        if kept.get("task", DEFAULT_TASK) != "shapeworld" and kept.get("world") == _V1_WORLD_OFF_SHAPEWORLD:
            kept["world"] = None  # format v1's stand-in: the other tasks read no world (recorded_settings)
        return cls.from_dict(kept)

    def replace(self, **changes: Any) -> Any:
        """A checked copy with ``changes``; a setting this variant does not take is refused by name."""
        foreign = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        for key in foreign:
            if key in _BLOCK_OWNERS:
                raise FIAError(_BLOCK_OWNERS[key][1])
        if foreign:
            raise FIAError(
                f"{', '.join(foreign)} is no setting of the {self.VARIANT} variant ({type(self).__name__}); "
                f"use another variant's config (fia.config.VARIANT_CONFIGS) or drop it"
            )
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> Any:
        """Raise :class:`FIAError` naming the first bad value and its fix; returns the config."""
        if self.task not in TASKS:
            raise FIAError(f"unknown task {self.task!r}; use one of: {', '.join(TASKS)}")
        get_task(self.task).check_world(self.world)
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise FIAError(f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise FIAError(f"batch_size must be a positive integer or omitted, got {self.batch_size!r}")
        if not (self.guidance_scale >= 0 and math.isfinite(self.guidance_scale)):
            raise FIAError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale!r}")
        if self.targets not in TARGET_KINDS:
            raise FIAError(f"unknown targets {self.targets!r}; use one of: {', '.join(TARGET_KINDS)}")
        return self


@dataclass(frozen=True)
class FIAConfig(FIASettings):
    """Hyperparameters of the paper's Forget-It-All (Eq. 1-8); the shared ones are :class:`FIASettings`'.

    Attributes:
        r1: temporal sparsity of Eq. 3: per step, the top ``r1`` share of the
            layer's saliency counts as "persistent".
        r2: spatial sparsity of Eq. 4-6 (channel and layer top-k).
        alpha: concept-agnostic share of Eq. 7; ``tau_ca = max(2, ceil(alpha*C))``.
        r1_overrides / r2_overrides: per-concept values that replace r1 / r2.
        saliency_steps: denoising steps whose activations feed the saliency;
            the sampler stops after them.
        saliency: ``energy`` (paper Eq. 1) or ``wanda`` (|W| * ||X_j|| after
            scaling every token's row of X to unit length, the public
            reference code's reduction), for comparison.
        cfg_rows: which rows of a prompt's guided run form N in Eq. 1:
            ``cond`` (the text-conditioned half) or ``both`` halves.
        eps: the epsilon of Eq. 1's cosine denominator.
        selection: ``both`` levels of Eq. 6 (channel and layer top-k), or one
            level only for the ablations: ``channel`` (Eq. 4) or ``layer`` (Eq. 5).
        fusion: ``fia`` (Eq. 7-8, concept-agnostic neurons kept) or ``union``
            (the ablation: every selected neuron pruned).
    """

    VARIANT: ClassVar[str] = "paper"

    r1: float = 0.05
    r2: float = 0.01
    alpha: float = 0.6
    r1_overrides: dict[str, float] = field(default_factory=dict)
    r2_overrides: dict[str, float] = field(default_factory=dict)
    saliency_steps: int = 10
    saliency: Literal["energy", "wanda"] = "energy"
    cfg_rows: Literal["cond", "both"] = "cond"
    eps: float = 1e-8
    selection: Literal["both", "channel", "layer"] = "both"
    fusion: Literal["fia", "union"] = "fia"

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

    def validate(self) -> "FIAConfig":
        super().validate()
        for name in ("r1", "r2", "alpha"):
            check_fraction(name, getattr(self, name))
        for name in ("r1_overrides", "r2_overrides"):
            for concept, value in getattr(self, name).items():
                check_fraction(f"{name}[{concept!r}]", value)
        if not isinstance(self.saliency_steps, int) or self.saliency_steps < 1:
            raise FIAError(f"saliency_steps must be a positive integer, got {self.saliency_steps!r}")
        if self.saliency_steps > self.num_inference_steps:
            raise FIAError(
                f"saliency steps ({self.saliency_steps}) exceed the schedule's "
                f"{self.num_inference_steps} steps; lower --saliency-steps or raise --steps"
            )
        for name, value, known in (
            ("saliency", self.saliency, SALIENCY_KINDS), ("cfg_rows", self.cfg_rows, CFG_ROWS),
            ("selection", self.selection, SELECTIONS), ("fusion", self.fusion, FUSIONS),
        ):  # fmt: skip
            if value not in known:
                raise FIAError(f"unknown {name} {value!r}; use one of: {', '.join(known)}")
        if not (self.eps > 0):
            raise FIAError(f"eps must be > 0, got {self.eps!r}")
        return self


@dataclass(frozen=True)
class AnchoredSettings(FIASettings):
    """What the causal and rewrite variants add to :class:`FIASettings`: the concepts that must stay.

    Attributes:
        anchors: concepts that must stay; empty means the task's default
            (ShapeWorld: every kind not erased; other tasks: the base prompts).
            ShapeWorld's rewrite keeps every kind not erased in any case: there
            the anchors only narrow the causal variant's, and are refused when
            they name an erased concept.
    """

    ANCHOR_KEEPER: ClassVar[str] = ""  # what keeps the anchors' outputs, named when a concept is erased and kept

    anchors: list[str] = field(default_factory=list)

    def validate(self) -> Any:
        super().validate()
        if any(not isinstance(a, str) or not a.strip() for a in self.anchors):
            raise FIAError(f"anchors must be concept names, got {self.anchors!r}")
        return self

    def check_concepts(self, names: list[str]) -> None:
        """An edit that keeps the anchors cannot erase one of them too: :class:`FIAError` naming the concepts that are both."""
        both = sorted({c.casefold() for c in names} & {a.casefold() for a in self.anchors})
        if both:
            raise FIAError(
                f"{', '.join(both)} is both erased and an anchor; {self.ANCHOR_KEEPER} cannot keep and erase "
                "the same concept: drop it from --anchors"
            )


@dataclass(frozen=True)
class FIACausalConfig(AnchoredSettings):
    """Settings of FIA's causal variant (:mod:`fia.causal`): weights scored by the model's own evidence.

    Attributes:
        alpha: concept-agnostic share of Eq. 7 in each round's fusion.
        budget: share of all target weights pruned per concept.
        rounds: the budget is spent in this many rounds, re-scoring on the
            edited model after each.
        anchor_weight: lambda of the anchor penalty; a weight's score drops by
            lambda times the evidence it carries for the anchors.
        rescore_anchors: score the anchors again on the edited model every
            round (``True``), or once, on the unedited model, for every round
            (``False``: a round then costs only its concepts' gradients; the
            anchors are what must stay as the unedited model draws them).
        score_steps: length of the sampler schedule whose final images are
            scored (the whole schedule runs, with gradients).
        contrasts: how many other prompts each scored prompt is contrasted
            with in the evidence (see :mod:`fia.causal`).
        concept_prompts_per_concept / anchor_prompts: how many prompts are
            sampled per concept and for the anchors.
        evidence_timesteps: the noise levels (shares of the training
            schedule) at which the evidence compares denoising errors.
        stop_evidence: the adaptive budget. A concept stops taking weights
            once its evidence (mean over its prompts, on the edited model)
            falls to this share of its first round's; ``None`` spends every
            round's budget.
        repair: the closed-form repair of the pruned rows
            (:class:`RepairConfig`), or ``None`` for pruning alone. Recorded
            in a mask only when set, so masks without it keep their bytes.
    """

    VARIANT: ClassVar[str] = "causal"
    ANCHOR_KEEPER: ClassVar[str] = "the repair"

    alpha: float = 0.6
    budget: float = 0.0075
    rounds: int = 8
    anchor_weight: float = 2.0
    rescore_anchors: bool = True
    score_steps: int = 10
    contrasts: int = 3
    concept_prompts_per_concept: int = 24
    anchor_prompts: int = 48
    evidence_timesteps: tuple[float, ...] = (0.3, 0.5, 0.7)
    stop_evidence: float | None = None
    repair: RepairConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        ts = self.evidence_timesteps
        if isinstance(ts, (list, tuple)) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in ts):
            object.__setattr__(self, "evidence_timesteps", tuple(float(t) for t in ts))
        object.__setattr__(self, "repair", RepairConfig.from_value(self.repair))

    def validate(self) -> "FIACausalConfig":
        super().validate()
        check_fraction("alpha", self.alpha)
        check_fraction("budget", self.budget)
        for name in ("rounds", "score_steps", "contrasts", "concept_prompts_per_concept", "anchor_prompts"):
            check_positive_int(name, getattr(self, name))
        if not (isinstance(self.anchor_weight, (int, float)) and self.anchor_weight >= 0 and math.isfinite(self.anchor_weight)):
            raise FIAError(f"anchor_weight must be a finite number >= 0, got {self.anchor_weight!r}")
        if not isinstance(self.rescore_anchors, bool):
            raise FIAError(f"rescore_anchors must be true or false, got {self.rescore_anchors!r}")
        ts = self.evidence_timesteps
        if not isinstance(ts, tuple) or not ts or any(not isinstance(t, float) or not (0 < t < 1) for t in ts):
            raise FIAError(
                f"evidence_timesteps must be shares of the schedule in (0, 1), got {self.evidence_timesteps!r}; "
                "e.g. [0.3, 0.5, 0.7]"
            )
        if self.stop_evidence is not None:
            check_fraction("stop_evidence", self.stop_evidence)
        if self.repair is not None:
            self.repair.validate()
        return self

    def check_concepts(self, names: list[str]) -> None:
        """Only the repair keeps the anchors' outputs; the pruning alone merely scores against them."""
        if self.repair is not None:
            super().check_concepts(names)


@dataclass(frozen=True)
class FIARewriteConfig(AnchoredSettings):
    """Settings of FIA's rewrite variant (:mod:`fia.rewrite`): no pruning, a closed-form rewrite of FFN2.

    Attributes:
        rewrite: the rewrite's settings (:class:`RewriteConfig`).
    """

    VARIANT: ClassVar[str] = "rewrite"
    ANCHOR_KEEPER: ClassVar[str] = "the rewrite"

    rewrite: RewriteConfig = field(default_factory=RewriteConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "rewrite", RewriteConfig.from_value(self.rewrite) or RewriteConfig())

    def validate(self) -> "FIARewriteConfig":
        super().validate()
        self.rewrite.validate()
        return self


# ------------------------------------------------------------------ variants
VARIANT_CONFIGS: dict[str, type[FIASettings]] = {cls.VARIANT: cls for cls in (FIAConfig, FIACausalConfig, FIARewriteConfig)}

# the nested blocks a variant owns, and how a config of another variant refuses them
_BLOCK_OWNERS = {
    "repair": ("causal", "the repair follows the causal variant's mask; drop repair or use --variant causal"),
    "rewrite": ("rewrite", "rewrite settings belong to --variant rewrite; drop them or use --variant rewrite"),
}


def variant_config_type(variant: str) -> type[FIASettings]:
    """The config type of the FIA variant called ``variant`` (``paper``, ``causal``, ``rewrite``)."""
    if variant not in VARIANT_CONFIGS:
        raise FIAError(f"unknown variant {variant!r}; use one of: {', '.join(VARIANTS)}")
    return VARIANT_CONFIGS[variant]


def setting_names() -> set[str]:
    """Every setting any FIA variant takes, and ``variant`` itself: the keys a preset or YAML file may hold."""
    return {f.name for cls in VARIANT_CONFIGS.values() for f in dataclasses.fields(cls)} | {"variant"}


def config_for_variant(variant: str, settings: Mapping[str, Any]) -> Any:
    """``variant``'s checked config from a mapping of settings of any FIA variant (a preset, a YAML file, flags).

    A key no variant takes is refused. A setting of another variant only is
    left out (a preset names every variant's), except the nested ``repair``
    and ``rewrite`` blocks when set: they are refused, since the run would
    silently go without them.
    """
    cls = variant_config_type(variant)
    unknown = sorted(set(settings) - setting_names())
    if unknown:
        raise FIAError(f"unknown setting(s) {', '.join(unknown)}; use only: {', '.join(sorted(setting_names()))}")
    own = {f.name for f in dataclasses.fields(cls)}
    for key, (owner, message) in _BLOCK_OWNERS.items():
        if owner != variant and settings.get(key) not in (None, False):
            raise FIAError(message)
    return cls.from_dict({k: v for k, v in settings.items() if k in own})


def as_variant(config: FIASettings, cls: type[FIASettings], **changes: Any) -> Any:
    """A ``cls`` config with the settings ``config`` shares with it (task, world, seed, ...) and ``changes``."""
    shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(config)}
    return cls(**({name: getattr(config, name) for name in shared} | changes)).validate()


def config_from_record(data: Mapping[str, Any] | None) -> Any:
    """The config of a finished run from its recorded settings (a mask's ``config``), of the variant they name."""
    data = dict(data or {})
    return variant_config_type(data.get("variant", "paper")).from_run(data)


# Format v1 of the settings a mask records (its header's "config"; also the
# causal cache's round key): the flat dict of one config type that held every
# variant's fields before each variant had its own type. Masks keep that
# layout, so a mask made with the same settings keeps its bytes, and every
# reader of a mask's settings (fia inspect, fia evaluate, config_from_record)
# reads old and new masks alike. A field the config's type does not have is
# recorded at the value it had there; "world", which only the ShapeWorld task
# reads, was recorded as "shapeworld" on the other tasks.
_V1_OTHER_VARIANTS_FIELDS: dict[str, Any] = {
    "r1": 0.05, "r2": 0.01, "alpha": 0.6, "r1_overrides": {}, "r2_overrides": {}, "saliency_steps": 10,
    "saliency": "energy", "cfg_rows": "cond", "eps": 1e-8, "selection": "both", "fusion": "fia",
    "budget": 0.0075, "rounds": 8, "anchor_weight": 2.0, "score_steps": 10, "contrasts": 3,
    "concept_prompts_per_concept": 24, "anchor_prompts": 48, "evidence_timesteps": [0.3, 0.5, 0.7], "anchors": [],
}  # fmt: skip
_V1_WORLD_OFF_SHAPEWORLD = "shapeworld"
# fields that joined a block after masks were first made, with the value that means "as before": a block
# records them only when set otherwise (an unbalanced repair, statistics along the whole schedule)
_BLOCK_FIELDS_RECORDED_WHEN_SET: dict[str, tuple[tuple[str, Any], ...]] = {
    "repair": (("balance_rounds", 0), ("steps", None)),
    "rewrite": (("steps", None), ("push_off_rank", 0), ("push_off_kinds", 4)),
}


def recorded_settings(config: FIASettings) -> dict[str, Any]:
    """The settings a mask records of ``config``, as JSON-ready values (format v1, see above).

    The optional blocks (``repair``, ``stop_evidence``) are recorded only
    when set, and ``rescore_anchors`` only when false, so a run without them
    records what it always did.
    """
    data = dict(_V1_OTHER_VARIANTS_FIELDS)
    data.update(dataclasses.asdict(config))  # nested blocks become dicts
    data["variant"] = config.VARIANT
    # batch_size splits the prompts into micro-batches for memory and speed; the
    # gradients and statistics are the same sums, and on the shipped worlds the
    # masks are the same bytes (tests/erase/test_batching.py), so a batched run
    # records what the unbatched one does and shares its cache entries
    data["batch_size"] = None
    if data.get("world") is None and config.task != "shapeworld":
        data["world"] = _V1_WORLD_OFF_SHAPEWORLD
    data["evidence_timesteps"] = list(data["evidence_timesteps"])
    data["anchors"] = list(data["anchors"])
    for key in ("repair", "stop_evidence"):
        if data.get(key) is None:
            data.pop(key, None)
    if data.get("rescore_anchors") is True:
        data.pop("rescore_anchors")  # anchors scored every round, as masks without the field were made
    for block, fields in _BLOCK_FIELDS_RECORDED_WHEN_SET.items():
        if isinstance(data.get(block), dict):
            for key, unset in fields:
                if data[block].get(key) == unset:
                    data[block].pop(key, None)
    return data


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


def check_nonnegative_int(name: str, value: Any, hint: str = "") -> None:
    """Raise :class:`FIAError` unless ``value`` is an integer >= 0 (not a bool); ``hint`` ends the message."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FIAError(f"{name} must be an integer >= 0, got {value!r}" + (f"; {hint}" if hint else ""))


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
