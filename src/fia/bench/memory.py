"""Resident memory of this process: the benchmarks' memory figures (Linux /proc, else the peak)."""

from __future__ import annotations

import platform
import resource
import threading

from fia.io import proc_field_bytes


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to the peak)."""
    now = proc_field_bytes("/proc/self/status", "VmRSS")
    return now if now is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (getrusage; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if platform.system() == "Darwin" else 1024)


class PeakRSS:
    """Peak resident set size while the block runs, sampled every 10 ms (Linux /proc)."""

    def __init__(self) -> None:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6
