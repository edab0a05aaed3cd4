"""Presets and settings files: from a task's preset, a named preset, a YAML file and flags to one typed config.

Presets (``fia/configs/<task>.yaml``, shipped inside the package) hold the
hyperparameters of the paper's Table 8 (and ShapeWorld's tuned ones, for
every variant); :func:`resolve_config` layers a preset, a named preset, a
user YAML file and explicit overrides, then builds the config of the variant
they name (:func:`fia.config.config_for_variant`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from fia.config import PRESETS, REFERENCE_SETTINGS, config_for_variant, sampler_defaults, variant_config_type
from fia.defaults import DEFAULT_TASK
from fia.errors import FIAError
from fia.tasks import TASKS


def preset_path(task: str) -> Path:
    """The packaged YAML preset of ``task`` (``fia/configs/<task>.yaml``)."""
    if task not in TASKS:
        raise FIAError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    return Path(str(resources.files("fia") / "configs" / f"{task}.yaml"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of settings (unknown keys are refused later)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FIAError(f"config file {str(p)!r} does not exist; pass a YAML file such as src/fia/configs/object.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FIAError(f"config file {str(p)!r} is not valid YAML ({first}); fix it or drop --config") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FIAError(f"config file {str(p)!r} must be a YAML mapping of settings (key: value)")
    return data


def load_preset(task: str) -> dict[str, Any]:
    """The preset settings of ``task`` as a dict of settings (every variant's).

    The schedule (steps, guidance) is the task's
    (:func:`fia.config.sampler_defaults`, the source a bare config reads
    too) unless the preset file names one; on ShapeWorld it is always the
    world's, and ``saliency_steps`` is kept within it.
    """
    data = read_config_file(preset_path(task))
    data["task"] = task
    defaults = sampler_defaults(task)
    if task == "shapeworld":
        data.update(defaults)
        data["saliency_steps"] = min(int(data.get("saliency_steps", 10)), data["num_inference_steps"])
    for key, value in defaults.items():
        data.setdefault(key, value)
    return data


def named_preset(name: str, task: str) -> dict[str, Any]:
    """The settings a named preset lays over ``task``'s preset.

    ``reference``: the public reference code's (:data:`fia.config.REFERENCE_SETTINGS`)
    at the task's schedule and guidance (:func:`fia.config.sampler_defaults`).
    """
    if name not in PRESETS:
        raise FIAError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}")
    data = dict(REFERENCE_SETTINGS) | sampler_defaults(task)
    data["saliency_steps"] = min(data["saliency_steps"], data["num_inference_steps"])
    return data


# settings only one variant takes: a preset's value does not follow another variant
_VARIANT_BLOCKS = ("repair", "stop_evidence", "rewrite")


def resolve_config(
    task: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    default_task: str = DEFAULT_TASK,
    preset: str | None = None,
) -> Any:
    """Preset of the task < named preset < YAML file < explicit overrides (``None`` values skipped).

    The task is, in order: ``task``, the file's ``task``, ``default_task``.
    ``preset`` names a preset of :data:`fia.config.PRESETS` (``reference``:
    the public reference code's settings, see :func:`named_preset`). The
    result is the config type of the ``variant`` the settings name
    (:class:`fia.config.FIAConfig` for ``paper``, the default).
    """
    file_data = read_config_file(config_file) if config_file is not None else {}
    chosen = task or file_data.get("task") or default_task
    if chosen not in TASKS:
        raise FIAError(f"unknown task {chosen!r}; use one of: {', '.join(TASKS)}")
    data = load_preset(chosen)
    if preset is not None:
        data.update(named_preset(preset, chosen))
    explicit = dict(file_data) | {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(explicit)
    data["task"] = chosen
    variant = data.pop("variant", "paper")
    own = {f.name for f in dataclasses.fields(variant_config_type(variant))}
    for key in _VARIANT_BLOCKS:
        if key not in own and key not in explicit:
            data.pop(key, None)
    try:
        return config_for_variant(variant, data)
    except TypeError as exc:  # wrong value types in YAML
        raise FIAError(f"bad settings ({exc}); check the config file") from exc


def reference_config(task: str = DEFAULT_TASK, **changes: Any) -> Any:
    """The public reference code's settings for ``task``: the way to reproduce its masks.

    The task's preset (``fia/configs/<task>.yaml``) with
    :data:`fia.config.REFERENCE_SETTINGS` (the paper variant, the Wanda
    reduction with unit-length token rows, both rows of the guided batch, 10
    scored steps) and the task's schedule and guidance
    (:func:`fia.config.sampler_defaults`); ``changes`` (e.g.
    ``world="shapeworld"``) come last. The same settings as
    ``fia erase --preset reference --task TASK``; also ``fia.reference_config``.
    """
    return resolve_config(task, overrides=changes, preset="reference")

