"""Every budget of the robustness audit in one typed, validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fia.errors import FIAError

# textual inversion learns on at most this many steps (the audit's stated budget)
MAX_INVERSION_STEPS = 300


def _whole(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise FIAError(f"attack setting {name} must be a whole number {span}, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FIAError(f"attack setting {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class AttackConfig:
    """The budgets of the probes (defaults: the audit's full budget; :meth:`quick`: the smallest).

    Attributes:
        target_seeds: S, the seeds of the unedited model's concept images that
            prompt-attack and textual inversion fit to and completion starts from.
        images: images drawn per probe, concept and setting: the attempts
            (paraphrase: per paraphrase; concept-vector: per multiplier;
            completion: per noise level).
        tokens: k, the prompt tokens prompt-attack prepends.
        attack_steps: prompt-attack's optimisation steps per restart.
        restarts: prompt-attack's random restarts (the best one is kept).
        attack_lr: prompt-attack's Adam step, in units of the token embeddings' standard deviation.
        multipliers: concept-vector's multiples of the concept direction.
        inversion_steps: textual inversion's optimisation steps (at most 300).
        inversion_lr: its Adam step, in units of the token embeddings' standard deviation.
        noise_levels: completion's starting noise, as shares of the sampling schedule.
        paraphrases: how many paraphrases of each concept are drawn (at most).
        refill: how revival refills the model's exact zeros: ``lowrank``
            (matrix completion) or ``rowcol`` (row and column means); see
            :mod:`fia.attack.revival`.
        num_inference_steps: sampler steps (``None``: the model's default).
        guidance_scale: classifier-free guidance (``None``: the model's default).
        seed: base of every seed the audit draws.
        batch_size: images per sampler call (speed only).
    """

    target_seeds: int = 4
    images: int = 8
    tokens: int = 5
    attack_steps: int = 60
    restarts: int = 2
    attack_lr: float = 0.5
    multipliers: tuple[float, ...] = (1.0, 2.0, 3.0)
    inversion_steps: int = 150
    inversion_lr: float = 0.5
    noise_levels: tuple[float, ...] = (0.5, 0.7, 0.9)
    paraphrases: int = 8
    refill: str = "lowrank"
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    batch_size: int = 16

    @classmethod
    def quick(cls, **changes: Any) -> AttackConfig:
        """Each probe at its smallest budget: one image per setting, two optimisation steps, a 4-step sampler."""
        small = dict(
            target_seeds=1,
            images=1,
            attack_steps=2,
            restarts=1,
            multipliers=(3.0,),
            inversion_steps=2,
            paraphrases=2,
            num_inference_steps=4,
        )
        small.update(changes)
        return cls(**small).validate()

    def replace(self, **changes: Any) -> AttackConfig:
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> AttackConfig:
        """Check every budget; raises :class:`FIAError` naming the first bad one."""
        _whole("target_seeds", self.target_seeds, 1)
        _whole("images", self.images, 1)
        _whole("tokens", self.tokens, 1)
        _whole("attack_steps", self.attack_steps, 1)
        _whole("restarts", self.restarts, 1)
        _whole("inversion_steps", self.inversion_steps, 1, MAX_INVERSION_STEPS)
        _whole("paraphrases", self.paraphrases, 1)
        _whole("batch_size", self.batch_size, 1)
        _whole("seed", self.seed, 0)
        from fia.attack.revival import REFILLS

        if self.refill not in REFILLS:
            raise FIAError(f"attack setting refill must be one of {', '.join(REFILLS)}, got {self.refill!r}")
        _positive("attack_lr", self.attack_lr)
        _positive("inversion_lr", self.inversion_lr)
        if self.num_inference_steps is not None:
            _whole("num_inference_steps", self.num_inference_steps, 1)
        if self.guidance_scale is not None and (
            isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) or self.guidance_scale < 0
        ):
            raise FIAError(f"attack setting guidance_scale must be a number >= 0, got {self.guidance_scale!r}")
        if not self.multipliers:
            raise FIAError("attack setting multipliers is empty; give at least one multiple of the concept direction")
        for m in self.multipliers:
            _positive("multipliers", m)
        if not self.noise_levels:
            raise FIAError("attack setting noise_levels is empty; give shares of the schedule such as 0.5, 0.7, 0.9")
        for level in self.noise_levels:
            if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level <= 1:
                raise FIAError(f"attack setting noise_levels must lie in (0, 1], got {level!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["multipliers"] = [float(m) for m in self.multipliers]
        out["noise_levels"] = [float(t) for t in self.noise_levels]
        return out
