"""What every suite shares: the :class:`Suite` type and the helpers its summary uses.

A suite holds its items (prompt, seed, group, role), its judge and a
``summarize(items, records)`` that turns the per-image records of the base and
the edited model into the suite's metrics (``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fia.evaluate.generate import VARIANTS, EvalItem
from fia.evaluate.metrics import mean, overall

# The judge's record of every image: variant ("base" or "edited") -> item id -> record
Records = dict[str, dict[str, dict[str, Any]]]


@dataclass
class Suite:
    """One evaluation: items to render with both models, a judge, and how to summarise its records."""

    name: str
    items: list[EvalItem]
    judge: Any
    summarize: Callable[[list[EvalItem], Records], dict[str, Any]]
    forget: list[str] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)
    # groups shown as base-vs-edited grids in the report (erased concepts first)
    grid_groups: list[tuple[str, str]] = field(default_factory=list)  # (title, role:group)


def number_items(items: list[EvalItem]) -> list[EvalItem]:
    """Give the items their ids in order ("00000", "00001", ...); the ids name the image files."""
    for n, it in enumerate(items):
        it.id = f"{n:05d}"
    return items


def mean_per_variant(
    records: Records, items: list[EvalItem], score: Callable[[dict], float]
) -> dict[str, float | None]:
    """The mean of ``score(record)`` over ``items``, for the base and the edited model."""
    return {v: mean(score(records[v][it.id]) for it in items) for v in VARIANTS}


def accuracy_summary(per_class: dict[str, dict[str, Any]], forget: list[str], preserve: list[str]) -> dict:
    """Mean accuracy on the erased and the kept classes, and the paper's Overall of the two."""
    out: dict[str, dict[str, float | None]] = {"forget_accuracy": {}, "preserve_accuracy": {}, "overall": {}}
    for v in VARIANTS:
        f = mean(per_class[c][v] for c in forget if c in per_class)
        p = mean(per_class[c][v] for c in preserve if c in per_class)
        out["forget_accuracy"][v] = f
        out["preserve_accuracy"][v] = p
        out["overall"][v] = overall(p, f)
    return out
