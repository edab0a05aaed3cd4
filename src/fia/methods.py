"""``fia.unlearn``: every unlearning method under one name, one typed config, one contract.

The methods are registered in :mod:`fia.registry` with their config types:

* the FIA family: ``fia`` (:class:`fia.config.FIAConfig`), ``fia-causal``
  (:class:`fia.config.FIACausalConfig`), ``fia-rewrite``
  (:class:`fia.config.FIARewriteConfig`) and the ablations;
* the baselines of :mod:`fia.baselines`: ``conceptprune``, ``uce``,
  ``speed``, ``esd-x`` and the ``random`` control.

Contract (checked by the tests for every registered method):

* ``pipe`` is left exactly as it was found; the change is the returned
  :class:`fia.edit.Edit`, applied with ``edit.apply_(pipe)`` and undone with
  ``edit.restore_(pipe)``;
* ``concepts`` is a checked list of names; ``preserve`` names concepts to
  keep (methods without a preservation term ignore it, and say so in their
  docstring); ``prompts`` optionally maps a concept to its
  :class:`fia.prompts.ConceptPrompts`; ``progress`` is a
  :class:`fia.progress.Progress`; ``cache_dir`` (or None) is a folder
  where the method may keep results it can reuse in a later call (FIA's
  per-concept sensitivities); methods with nothing to reuse ignore it.

:func:`unlearn` is the one entry point (``fia unlearn --method NAME`` on the
command line, which runs :func:`plan`'s checks before loading the model);
:func:`methods` lists the methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fia.concepts import parse_concepts
from fia.errors import FIAError
from fia.registry import REGISTRY, Method

__all__ = ["Method", "Plan", "get_method", "methods", "plan", "unlearn"]


def methods() -> dict[str, Method]:
    """Every registered method, by name."""
    return dict(REGISTRY)


def get_method(name: str) -> Method:
    """The method registered as ``name``, or a clear error listing the known names."""
    if name not in REGISTRY:
        raise FIAError(f"unknown method {name!r}; use one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


@dataclass(frozen=True)
class Plan:
    """A checked request to unlearn: the method, its config and the concept names, ready to run."""

    method: Method
    config: Any
    concepts: list[str]
    preserve: list[str]

    def run(
        self, pipe: Any, *, prompts: Mapping[str, Any] | None = None, progress: Any = None, cache_dir: Any = None
    ) -> Any:
        """Run the method on ``pipe`` (left unchanged); returns its :class:`fia.edit.Edit`."""
        return self.method.run(
            pipe, self.concepts, self.config, preserve=self.preserve, prompts=dict(prompts or {}), progress=progress,
            cache_dir=cache_dir,
        )  # fmt: skip


def plan(
    concepts: str | Sequence[str],
    method: str = "fia",
    config: Any = None,
    *,
    preserve: str | Sequence[str] = (),
) -> Plan:
    """Check a request before any work: the method exists, the config is its type and valid, the names are sound.

    ``config=None`` takes the method's default (its paper settings).
    ``concepts`` and ``preserve`` are lists of names or comma-separated
    text; a concept may not be both erased and preserved.
    """
    m = get_method(method)
    if config is None:
        config = m.default_config()
    if not isinstance(config, m.config_type):
        raise FIAError(
            f"method {method!r} takes a {m.config_type.__name__}, got a {type(config).__name__}; "
            f"pass {m.config_type.__name__}(...) or leave config out for the paper's settings"
        )
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    names = parse_concepts(concepts)
    kept = parse_concepts(preserve, required=False)
    erased = {c.casefold() for c in names}
    overlap = [c for c in kept if c.casefold() in erased]
    if overlap:
        raise FIAError(f"{overlap} are both erased and preserved; remove them from one list")
    return Plan(m, config, names, kept)


def unlearn(
    pipe: Any,
    concepts: str | Sequence[str],
    method: str = "fia",
    config: Any = None,
    *,
    preserve: str | Sequence[str] = (),
    prompts: Mapping[str, Any] | None = None,
    progress: Any = None,
    cache_dir: Any = None,
) -> Any:
    """Erase ``concepts`` from ``pipe`` with the registered ``method``; returns its :class:`fia.edit.Edit`.

    ``pipe`` is not changed: apply the result with ``edit.apply_(pipe)``.
    ``config`` must be the method's config type (default: its paper
    settings). The inputs are checked by :func:`plan` before any work.
    """
    return plan(concepts, method, config, preserve=preserve).run(
        pipe, prompts=prompts, progress=progress, cache_dir=cache_dir
    )
