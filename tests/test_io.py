"""fia.io: atomic writes (the file appears whole, with an ordinary mode, nothing left behind) and /proc fields."""

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


def test_proc_field_bytes_reads_a_kb_field_and_says_none_otherwise(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  2048 kB\nVmRSS:\t  1536 kB\nBroken:\tlots\n")
    from fia.io import proc_field_bytes

    assert proc_field_bytes(status, "VmRSS") == 1536 * 1024
    assert proc_field_bytes(status, "VmPeak") == 2048 * 1024
    assert proc_field_bytes(status, "VmSwap") is None  # no such field
    assert proc_field_bytes(status, "Broken") is None  # not a number
    assert proc_field_bytes(tmp_path / "missing", "VmRSS") is None
