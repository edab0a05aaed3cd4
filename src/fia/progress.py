"""The one progress protocol of the package: ``progress(done, total, message)``.

Every long-running library function (erasing, collecting activations, the
baselines, evaluation, the benchmark) takes ``progress: Progress | None``
and calls it as work advances: ``done`` of ``total`` units are finished and
``message`` says what is being done. Library code never prints; the CLI
turns the calls into a rich progress bar with :func:`rich_bar`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Progress(Protocol):
    """``progress(done, total, message)``: ``done`` of ``total`` units are finished."""

    def __call__(self, done: int, total: int, message: str) -> None: ...


def report(progress: Progress | None, done: int, total: int, message: str) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(int(done), int(total), message)


@contextmanager
def rich_bar(description: str, console: Any = None, *, transient: bool = False) -> Iterator[Progress]:
    """A rich progress bar, as a :class:`Progress` (the CLI's display)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
    )
    with RichProgress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(description, total=None, message="")

        def update(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=max(int(total), 1), message=message)

        yield update
