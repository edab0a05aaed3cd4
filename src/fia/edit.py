"""The edit contract: what every unlearning method returns, and how a saved edit is read back.

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
    with edit.applied(pipe):    # applied for the block, restored after it (also on an error)
        ...

and so are the rules (:mod:`fia.edit_base`): ``apply_`` refuses a model
the edit was not made for and leaves one that already carries it as it
is; ``restore_`` refuses a model that does not carry it, and otherwise
writes back the original values stored in the edit, so a copy loaded from
the file undoes an edit that another object applied.

Files are safetensors with a JSON header (method, concepts, settings,
package version, model fingerprint); :func:`load_edit` reads the header
and returns the right class. Both classes store themselves through
:class:`EditFile` (:func:`pack` / :func:`unpack`: sorted JSON, a content
hash of the tensors, atomic writes), so their files behave alike.

The modules stack without cycles: :mod:`fia.weights` and
:mod:`fia.edit_base` at the bottom, :mod:`fia.mask` and :mod:`fia.delta`
on them, this module on top. The names below are re-exported here, so
``from fia.edit import Edit, EditFile, pack`` keeps working.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fia.delta import WeightDelta
from fia.edit_base import Edit, EditFile, content_hash, pack, save_edited_pipeline, unpack
from fia.errors import FIAError
from fia.mask import ConceptMask

__all__ = [
    "Edit",
    "EditFile",
    "content_hash",
    "edit_format",
    "load_edit",
    "pack",
    "save_edited_pipeline",
    "unpack",
]

# every kind of edit file, by the ``format`` its header names
EDIT_CLASSES: dict[str, type[EditFile]] = {cls.FORMAT: cls for cls in (ConceptMask, WeightDelta)}


def edit_format(path: str | os.PathLike) -> str:
    """The ``format`` field of a saved edit's header (``fia-mask`` or ``fia-delta``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FIAError(
            f"edit file {str(path)!r} does not exist; give the path of a saved mask or delta (.safetensors) "
            "that fia erase or fia unlearn wrote"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise FIAError(
            f"{str(path)!r} is truncated or not a FIA mask or weight delta ({exc}); give a mask or delta saved by "
            "fia, or re-run fia erase or fia unlearn to write it again"
        ) from None
    for key in (cls.HEADER_KEY for cls in EDIT_CLASSES.values()):
        if key in meta:
            try:
                return str(json.loads(meta[key]).get("format", ""))
            except (ValueError, AttributeError):
                break
    raise FIAError(
        f"{str(path)!r} holds no fia edit header; give a mask or delta saved by fia, or re-run fia erase or "
        "fia unlearn to write it again"
    )


def load_edit(path: str | os.PathLike) -> Edit:
    """Load a saved edit of any kind (mask or weight delta)."""
    kind = edit_format(path)
    cls = EDIT_CLASSES.get(kind)
    if cls is None:
        raise FIAError(f"{str(path)!r} holds an edit of unknown format {kind!r}; upgrade forget-it-all to read it")
    return cls.load(path)
