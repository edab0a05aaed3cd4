"""Atomic writes: the file appears whole, with an ordinary mode, and nothing is left behind."""

from __future__ import annotations


def test_atomic_writes_leave_no_temporary_file_and_an_ordinary_mode(tmp_path):
    """A written file has the mode open() would give it (not mkstemp's private 0600) and no temporary remains."""
    import os
    import stat

    from fia.io import atomic_write_text

    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "{}\n")
    atomic_write_text(path, "[]\n")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "[]\n" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
