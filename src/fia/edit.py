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
and returns the right class. Both classes store themselves through
:class:`EditFile` (:func:`pack` / :func:`unpack`: sorted JSON, a content
hash of the tensors, atomic writes), so their files behave alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
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


# ------------------------------------------------------------ file format
def content_hash(tensors: Mapping[str, Any]) -> str:
    """sha256 over each tensor's name, dtype, shape and raw bytes, in name order (the file's integrity check)."""
    import torch

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


class EditFile(ABC):
    """Storage shared by the edit classes: one safetensors file, written atomically, compared by its bytes.

    A subclass names its header (``HEADER_KEY``, ``FORMAT``,
    ``FORMAT_VERSION``), how messages call its files (``KIND``,
    ``FILE_NAME``, ``COMMAND``), and provides ``_tensors()``,
    ``metadata()`` and the classmethod ``from_bytes(data)``. A dataclass
    subclass must pass ``eq=False`` so that it keeps this ``__eq__``.
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
        from fia.io import atomic_write_bytes

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
