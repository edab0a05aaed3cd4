"""The edit contract: what every unlearning method returns.

An :class:`Edit` is a compact, reversible change to a pipeline's denoiser,
kept apart from the model (as a PEFT adapter is):

* :class:`fia.mask.ConceptMask` prunes weights (FIA, its variants,
  ConceptPrune, the random control);
* :class:`fia.delta.WeightDelta` adds to weights (UCE's closed form and
  ESD-x's fine-tuning of the cross-attention).

The lifecycle is the same for both::

    edit = fia.unlearn(pipe, ["circle"], method="uce")   # pipe is unchanged
    edit.apply_(pipe)       # in place; checks the edit was made for this model
    ...                     # generate, evaluate
    edit.restore_(pipe)     # bit-exact original weights back
    edit.save("uce.safetensors"); edit = fia.load_edit("uce.safetensors")

Files are safetensors with a JSON header (method, concepts, settings,
package version, model fingerprint); :func:`load_edit` reads the header
and returns the right class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fia.errors import FIAError


@runtime_checkable
class Edit(Protocol):
    """A reversible, shippable change to a pipeline's denoiser."""

    @property
    def method(self) -> str:
        """The registered name of the method that made it (``fia``, ``uce``, ...)."""
        ...

    @property
    def concepts(self) -> list[str]:
        """The concepts it erases."""
        ...

    def apply_(self, pipe: Any) -> Any:
        """Change ``pipe``'s weights in place (after checking it is the right model); returns ``pipe``."""
        ...

    def restore_(self, pipe: Any) -> Any:
        """Undo :meth:`apply_` exactly; returns ``pipe``."""
        ...

    def save(self, path: str | os.PathLike) -> Path:
        """Write the edit as one safetensors file, atomically."""
        ...

    def summary(self) -> str:
        """Human-readable description: method, concepts, settings, size."""
        ...


def edit_format(path: str | os.PathLike) -> str:
    """The ``format`` field of a saved edit's header (``fia-mask`` or ``fia-delta``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FIAError(f"edit file {str(path)!r} does not exist; give the path of a saved mask or delta (.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise FIAError(
            f"{str(path)!r} is truncated or not a FIA mask or weight delta ({exc}); give a mask or delta saved by fia"
        ) from None
    for key in ("fia", "fia-delta"):
        if key in meta:
            try:
                return str(json.loads(meta[key]).get("format", ""))
            except (ValueError, AttributeError):
                break
    raise FIAError(f"{str(path)!r} holds no fia edit header; give a mask or delta saved by fia")


def load_edit(path: str | os.PathLike) -> Edit:
    """Load a saved edit of any kind (mask or weight delta)."""
    kind = edit_format(path)
    if kind == "fia-mask":
        from fia.mask import ConceptMask

        return ConceptMask.load(path)
    if kind == "fia-delta":
        from fia.delta import WeightDelta

        return WeightDelta.load(path)
    raise FIAError(f"{str(path)!r} holds an edit of unknown format {kind!r}; upgrade forget-it-all to read it")
