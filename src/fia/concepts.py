"""Concept lists: the one parser every command and API call reads names with."""

from __future__ import annotations

from collections.abc import Sequence

EXAMPLE = "'golf ball, church'"


def parse_concepts(concepts: str | Sequence[str] | None, *, required: bool = True) -> list[str]:
    """``"a, b, c"`` or ``["a", "b"]`` -> a clean list of names, in order.

    Runs of spaces inside a name become one space. A blank name (``"a,,b"``,
    a trailing comma) and a name listed twice (case-insensitively) are
    refused with :class:`~fia.errors.FIAError`. An empty list is refused
    too, unless ``required`` is false (an optional list such as the concepts
    to keep), when ``None``, ``""`` and ``[]`` give ``[]``.
    """
    from fia.errors import FIAError

    if not required and (concepts is None or (isinstance(concepts, str) and not concepts.strip()) or len(concepts) == 0):
        return []
    if concepts is None:
        raise FIAError(f"no concepts given; pass e.g. --concepts {EXAMPLE}")
    items = concepts.split(",") if isinstance(concepts, str) else list(concepts)
    out: list[str] = []
    seen: set[str] = set()
    for raw in items:
        if not isinstance(raw, str):
            raise FIAError(f"concept names must be strings, got {raw!r}")
        name = " ".join(raw.split())
        if not name:
            raise FIAError(f"empty concept name in the list; pass e.g. --concepts {EXAMPLE}")
        if name.casefold() in seen:
            raise FIAError(f"concept {name!r} is listed twice; list each concept once")
        seen.add(name.casefold())
        out.append(name)
    if not out:
        raise FIAError(f"no concepts given; pass e.g. --concepts {EXAMPLE}")
    return out
