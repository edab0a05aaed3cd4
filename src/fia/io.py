"""Atomic file writes: a reader never sees a half-written file or folder.

Every file the package writes (masks, weight deltas, cache entries, reports,
benchmark results) goes through these helpers: the bytes are written to a
temporary file in the destination's folder, flushed to disk, then moved into
place with ``os.replace``, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary open() would
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def proc_field_bytes(path: str | os.PathLike, field: str) -> int | None:
    """A ``kB`` field of a Linux ``/proc`` status file in bytes (``/proc/meminfo``'s ``MemAvailable``,
    ``/proc/self/status``'s ``VmRSS``), or ``None`` where the file or the field cannot be read."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Move the finished ``tmp_dir`` to ``out_dir``, replacing an older ``out_dir``."""
    out_dir = Path(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def temporary_sibling_dir(out_dir: str | os.PathLike) -> Path:
    """A new empty folder beside ``out_dir``, to be filled and then moved with :func:`replace_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
