"""What every edit kind shares: the :class:`Edit` contract, one file format, one set of apply/restore rules.

:class:`EditFile` is the base of :class:`fia.mask.ConceptMask` and
:class:`fia.delta.WeightDelta`. It stores an edit as one safetensors file
(:func:`pack` / :func:`unpack`: sorted JSON, a content hash of the
tensors, atomic writes), and it owns the rules of :meth:`EditFile.apply_`
and :meth:`EditFile.restore_`, so that every kind follows them alike:

* ``apply_`` checks that the model is the one the edit was made for (as it
  was, or already carrying the edit, which it then leaves as it is: applying
  twice is applying once);
* ``restore_`` refuses a model that does not carry the edit (never applied,
  or changed since), and otherwise writes back the original values the
  file stores, so any copy of the edit -- the object that applied it or one
  loaded from its file -- undoes it bit for bit;
* ``with edit.applied(pipe): ...`` applies for the block and restores
  afterwards, also when the block raises; it refuses a model that already
  carries the edit, since leaving the block would undo an apply_ made
  outside it.

"Carries the edit" is read from the weights themselves: every entry the
edit changes holds exactly the value ``apply_`` writes there. An edit
that changes nothing in a model (e.g. an empty mask) may be applied and
restored there freely. The originals are written in the model's dtype,
so the restore is bit-exact for the model the edit was made from and for
a copy of it cast to a narrower dtype (a float16 copy of a float32 model);
a model in a wider dtype than the edit was made in gets the edit's
narrower originals back.

This module sits below :mod:`fia.mask` and :mod:`fia.delta`;
:mod:`fia.edit` sits above both and reads any edit file back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from fia.errors import FIAError
from fia.io import atomic_write_bytes, replace_dir, temporary_sibling_dir


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
        """Undo :meth:`apply_` exactly (any copy of the edit can); returns ``pipe``."""
        ...

    def applied(self, pipe: Any) -> AbstractContextManager[Any]:
        """``with edit.applied(pipe): ...``: applied inside the block, restored after it (also on an exception)."""
        ...

    def save(self, path: str | os.PathLike) -> Path:
        """Write the edit as one safetensors file, atomically."""
        ...

    def summary(self) -> str:
        """Human-readable description: method, concepts, settings, size."""
        ...


# ------------------------------------------------------------ file format
def content_hash(tensors: Mapping[str, Any]) -> str:
    """sha256 over each tensor's name, dtype, shape and raw bytes, in name order (the file's integrity check)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(json.dumps(list(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pack(tensors: Mapping[str, Any], header_key: str, meta: Mapping[str, Any]) -> bytes:
    """The bytes of an edit file: ``tensors`` and, under ``header_key``, ``meta`` plus the tensors' content hash.

    The JSON is written with sorted keys and holds no times or paths, so the
    same edit always gives the same bytes.
    """
    from safetensors.torch import save

    header = {**meta, "content_sha256": content_hash(tensors)}
    return save(dict(tensors), metadata={header_key: json.dumps(header, sort_keys=True)})


def unpack(data: bytes, header_key: str, fmt: str, format_version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, tensors)`` of :func:`pack`'s bytes, checked: ``format`` is ``fmt`` and the content hash matches.

    A damaged or foreign file raises ``ValueError`` (or any parsing error);
    a file of a newer format version raises :class:`FIAError` asking for an upgrade.
    """
    from safetensors.torch import load

    if len(data) < 8:
        raise ValueError("too short")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = json.loads(header["__metadata__"][header_key])
    if meta.get("format") != fmt:
        raise ValueError(f"not a {fmt} file")
    if int(meta.get("format_version", 0)) > format_version:
        raise FIAError(
            f"this file uses {fmt} format version {meta['format_version']}, newer than this package "
            f"understands ({format_version}); upgrade forget-it-all"
        )
    tensors = load(data)
    if content_hash(tensors) != meta.get("content_sha256"):
        raise ValueError("content hash mismatch")
    return meta, tensors


# how the entries an edit changes stand in a model (EditFile._state)
APPLIED = "applied"  # they hold what apply_ writes
UNEDITED = "unedited"  # they hold the originals the edit stores
CHANGED = "changed"  # neither: changed after apply_, or not the weights the edit was made from
NO_OP = "no-op"  # the edit writes the originals themselves: applying changes nothing here
UNKNOWN = "unknown"  # the edit stores no originals to compare with (older weight delta files)


class EditFile(ABC):
    """Storage and apply/restore rules shared by the edit classes.

    One safetensors file, written atomically, compared by its bytes. A
    subclass names its header (``HEADER_KEY``, ``FORMAT``,
    ``FORMAT_VERSION``), how messages call its files (``KIND``,
    ``FILE_NAME``, ``COMMAND``), and provides ``_tensors()``,
    ``metadata()`` and the classmethod ``from_bytes(data)``. For the
    rules it provides :meth:`check` (is this the right model?),
    :meth:`_entries` (what the edited entries hold now, applied and
    undone) and :meth:`_write`. A dataclass subclass must pass
    ``eq=False`` so that it keeps this ``__eq__``.
    """

    HEADER_KEY: str
    FORMAT: str
    FORMAT_VERSION: int
    KIND: str
    FILE_NAME: str
    COMMAND: str

    # every edit records where it comes from under these attribute names
    version: str
    method: str
    concepts: list[str]
    config: dict[str, Any]
    dtype: str
    fingerprint: str

    def provenance(self) -> dict[str, Any]:
        """The header fields every edit file has: format, method, concepts, settings, versions, model."""
        return {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "fia_version": self.version,
            "method": self.method,
            "concepts": self.concepts,
            "config": self.config,
            "dtype": self.dtype,
            "fingerprint": self.fingerprint,
        }

    @abstractmethod
    def _tensors(self) -> dict[str, Any]:
        """The tensors the file stores, by name."""

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """The JSON header: :meth:`provenance` plus the class's own fields."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes) -> Any:
        """The edit stored in ``data`` (the bytes of :meth:`to_bytes`)."""

    @classmethod
    def unpack(cls, data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        """:func:`unpack` with this class's header."""
        return unpack(data, cls.HEADER_KEY, cls.FORMAT, cls.FORMAT_VERSION)

    def to_bytes(self) -> bytes:
        """The file's bytes (the same for the same edit)."""
        return pack(self._tensors(), self.HEADER_KEY, self.metadata())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the edit to ``path`` atomically (temporary file + rename)."""
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Read an edit file; a missing, truncated or foreign file raises :class:`FIAError`."""
        path = Path(path)
        if not path.is_file():
            raise FIAError(f"{cls.KIND} file {str(path)!r} does not exist; pass the {cls.FILE_NAME} that {cls.COMMAND} wrote")
        try:
            return cls.from_bytes(path.read_bytes())
        except FIAError:
            raise
        except Exception as exc:
            raise FIAError(f"{cls.KIND} file {str(path)!r} is truncated or not a FIA {cls.KIND}; re-run {cls.COMMAND}") from exc

    # --------------------------------------------------- apply and restore
    @abstractmethod
    def check(self, target: Any) -> dict[str, Tensor]:
        """The weights of ``target`` (pipeline or denoiser) the edit changes, by name.

        Raises :class:`FIAError` unless ``target`` is the model the edit was
        made for, whether it carries the edit or not.
        """

    @abstractmethod
    def _entries(self, weights: Mapping[str, Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(now, applied, original)`` for each group of entries the edit changes.

        ``now`` is what the entries hold, ``applied`` what :meth:`apply_`
        writes there, ``original`` what :meth:`restore_` writes back; all in
        the weight's dtype and on its device, so they compare exactly.
        """

    @abstractmethod
    def _write(self, weights: Mapping[str, Tensor], applied: bool) -> None:
        """Write the applied values (``applied=True``) or the originals into ``weights``."""

    def _cannot_restore(self) -> str:
        """Why :meth:`restore_` cannot work from this edit at all ('' when it can)."""
        return ""

    def _state(self, weights: Mapping[str, Tensor]) -> str:
        """How the edited entries of ``weights`` stand: ``APPLIED``, ``UNEDITED``, ``CHANGED`` or ``NO_OP``."""
        holds_applied = holds_original = no_op = True
        for now, applied, original in self._entries(weights):
            holds_applied = holds_applied and torch.equal(now, applied)
            holds_original = holds_original and torch.equal(now, original)
            no_op = no_op and torch.equal(applied, original)
        if no_op:
            return NO_OP
        if holds_applied:
            return APPLIED
        return UNEDITED if holds_original else CHANGED

    def _name(self) -> str:
        return f"{self.method} {self.KIND}"

    @torch.no_grad()
    def apply_(self, target: Any) -> Any:
        """Edit ``target``'s weights in place; returns ``target``.

        Refused (:class:`FIAError`, ``target`` left alone) for a model the
        edit was not made for; a model that already carries the edit is left
        as it is.
        """
        weights = self.check(target)
        if self._state(weights) != APPLIED:
            self._write(weights, applied=True)
        return target

    @torch.no_grad()
    def restore_(self, target: Any) -> Any:
        """Put back, bit for bit, the weights :meth:`apply_` replaced in ``target``; returns ``target``.

        Works from any copy of the edit (e.g. one loaded from its file).
        Refused (:class:`FIAError`, ``target`` left alone) for a model that
        does not carry the edit.
        """
        why_not = self._cannot_restore()
        if why_not:
            raise FIAError(why_not)
        weights = self.check(target)
        state = self._state(weights)
        if state == UNEDITED:
            raise FIAError(
                f"this {self._name()} is not applied to this model, so there is nothing to restore; "
                "call restore_ on the model that apply_ edited"
            )
        if state == CHANGED:
            raise FIAError(
                f"this model does not hold the weights this {self._name()} leaves (they were changed after apply_, "
                "e.g. by another edit); undo the later change first, or reload the model"
            )
        self._write(weights, applied=False)
        return target

    @contextmanager
    def applied(self, target: Any) -> Iterator[Any]:
        """``with edit.applied(pipe): ...``: the edit is applied inside the block and restored after it.

        The restore runs also when the block raises; the block's exception
        then propagates. A model that already carries the edit is refused:
        the restore at the end would undo an apply_ made outside the block.
        """
        if self._state(self.check(target)) == APPLIED:
            raise FIAError(
                f"this {self._name()} is already applied to this model, and leaving the with block would undo "
                "that; use the model as it is, or restore_ it before the with block"
            )
        self.apply_(target)
        try:
            yield target
        finally:
            self.restore_(target)

    # ------------------------------------------------------------------ text
    @abstractmethod
    def summary(self) -> str:
        """Human-readable description: method, concepts, settings, size."""

    def __str__(self) -> str:
        return self.summary()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment] - mutable, compared by content


def save_edited_pipeline(pipe: Any, edit: EditFile, out_dir: str | os.PathLike) -> Path:
    """Apply ``edit`` (a mask or a weight delta) to ``pipe`` in place and save it as an ordinary diffusers folder.

    The folder loads with ``DiffusionPipeline.from_pretrained`` (or the
    pipeline's own class). It is written to a temporary sibling folder and
    renamed into place, so ``out_dir`` never holds a half-written pipeline.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FIAError(f"{str(out_dir)!r} exists and is not a folder; choose another --out")
    edit.apply_(pipe)
    tmp = temporary_sibling_dir(out_dir)
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
