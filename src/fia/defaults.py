"""The defaults every command and API call shares, each written once.

* :data:`SD_SAMPLER`: Stable Diffusion's schedule and guidance (50 steps at
  guidance 7.5), the paper's (method page, section 3) and what a real model
  samples at when nothing else is said. ShapeWorld's own settings live with
  its model (:data:`fia.shapeworld.GENERATION_DEFAULTS`).
* :data:`DEFAULT_TASK` and :func:`default_task`: which prompt task an erase
  uses when none is named.

Nothing here imports anything heavy, so any module may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

# An erase on a model that is not a ShapeWorld world uses the object task's
# templates and preset (paper Table 8); on a ShapeWorld world, its own task.
DEFAULT_TASK = "object"
SHAPEWORLD_TASK = "shapeworld"


@dataclass(frozen=True)
class SamplerDefaults:
    """A task's sampler settings: the schedule length and the classifier-free guidance."""

    num_inference_steps: int
    guidance_scale: float

    def as_dict(self) -> dict[str, int | float]:
        return {"num_inference_steps": int(self.num_inference_steps), "guidance_scale": float(self.guidance_scale)}


SD_SAMPLER = SamplerDefaults(num_inference_steps=50, guidance_scale=7.5)


def default_task(on_shapeworld: bool) -> str:
    """The task of an erase that names none: ShapeWorld's on a ShapeWorld world, else :data:`DEFAULT_TASK`."""
    return SHAPEWORLD_TASK if on_shapeworld else DEFAULT_TASK
