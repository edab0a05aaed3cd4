"""forget-it-all: training-free multi-concept erasure for diffusion models.

Quick use::

    import fia
    mask = fia.erase(pipe, ["golf ball", "church"], fia.FIAConfig(r2=0.007))  # the config's type picks the variant
    mask.apply_(pipe)                       # zero the pruned FFN2 weights in place
    mask.save("out/mask.safetensors")
    mask = fia.ConceptMask.load("out/mask.safetensors")

Heavy modules (torch, diffusers) load on first use, so ``import fia`` is light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fia._version import __version__
from fia.config import FIACausalConfig, FIAConfig, FIARewriteConfig, RepairConfig, RewriteConfig
from fia.errors import FIAError
from fia.tasks import register_task

__all__ = [
    "ConceptMask",
    "FIACausalConfig",
    "FIAConfig",
    "FIARewriteConfig",
    "FIAError",
    "__version__",
    "erase",
    "load_edit",
    "load_pipeline",
    "plan_erase",
    "reference_config",
    "RepairConfig",
    "RewriteConfig",
    "unlearn",
]

if TYPE_CHECKING:  # pragma: no cover
    from fia.edit import load_edit
    from fia.engine import erase, plan_erase
    from fia.mask import ConceptMask
    from fia.methods import unlearn
    from fia.models import load_pipeline
    from fia.presets import reference_config



def _shapeworld_task(world: str | None) -> Any:
    # The composition root wires the toy world's task in; the method layer
    # only knows the Task interface (fia.tasks), and shapeworld/ loads on first use.
    from fia.shapeworld.task import task_in

    return task_in(world)


register_task("shapeworld", _shapeworld_task)

_LAZY = {
    "ConceptMask": "fia.mask",
    "erase": "fia.engine",
    "plan_erase": "fia.engine",
    "reference_config": "fia.presets",
    "load_edit": "fia.edit",
    "load_pipeline": "fia.models",
    "unlearn": "fia.methods",
}


def __getattr__(name: str) -> Any:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        try:  # submodules, e.g. fia.targets, without an explicit import
            return importlib.import_module(f"fia.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fia.{name}":
                raise
            raise AttributeError(f"module 'fia' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
