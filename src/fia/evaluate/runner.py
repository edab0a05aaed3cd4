"""Run a suite: paired generation (sharded over processes), judging, metrics, report.

:func:`evaluate` is the one entry point (``fia evaluate`` and the report
after ``fia erase`` both call it); :func:`run_suite` is its measuring part.

With ``accelerate launch`` every process renders and judges its own global
batches (batch ``b`` on process ``b % world``); the per-image records are
gathered and only the main process writes ``metrics.json`` and
``scores.jsonl``. Since each batch holds the same items whatever the number
of processes, the records -- and so the metrics -- equal a one-process run.
The output directory must be visible to every process (one machine, or a
shared file system).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fia.evaluate.generate import (
    VARIANTS,
    Editor,
    GenerationSettings,
    ImageStore,
    batches,
    generate_paired,
    my_batches,
)
from fia.evaluate.stats import metric_intervals
from fia.evaluate.suites import Suite
from fia.io import atomic_write_text


class OneProcess:
    """The state of work this process does alone, whatever launched it (accelerate's ``PartialState`` interface).

    The report after ``fia erase`` is one: under ``accelerate launch`` only
    the erase's main process writes it, while the others have finished.
    """

    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        """No other process to wait for."""


def _state(state: Any = None) -> Any:
    if state is not None:
        return state
    from accelerate import PartialState

    return PartialState()


def run_suite(
    suite: Suite,
    base_pipe: Any,
    editor: Editor,
    out_dir: str | Path,
    settings: GenerationSettings,
    run_info: dict[str, Any] | None = None,
    state: Any = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Generate missing images, judge all, return the metrics (``None`` off the main process)."""
    state = _state(state)
    world, rank = state.num_processes, state.process_index
    store = ImageStore(out_dir)
    run = {"suite": suite.name, "judge": suite.judge.name, "generation": settings.to_dict(), **(run_info or {})}
    if state.is_main_process:
        store.write_index(run, suite.items, overwrite=overwrite)
    state.wait_for_everyone()

    all_batches = batches(suite.items, settings.batch_size)
    mine = my_batches(all_batches, rank, world)
    made = generate_paired(base_pipe, editor, all_batches, mine, store, settings, progress)

    records: list[tuple[str, str, dict]] = []
    for b in mine:
        batch = all_batches[b]
        for variant in VARIANTS:
            images = store.load(variant, batch)
            paths = [store.path(variant, it) for it in batch]
            for it, rec in zip(batch, suite.judge.score(images, batch, paths)):
                records.append((variant, it.id, rec))
    if world > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        made_all = gather_object([made])
        made = sum(made_all)
    if not state.is_main_process:
        return None

    by_variant: dict[str, dict[str, dict]] = {v: {} for v in VARIANTS}
    for variant, item_id, rec in records:
        by_variant[variant][item_id] = rec
    metrics = suite.summarize(suite.items, by_variant)
    metrics["n_items"] = len(suite.items)
    metrics["intervals"] = metric_intervals(metrics)
    metrics["generation"] = settings.to_dict()
    metrics["run"] = {k: v for k, v in (run_info or {}).items()}
    _write_scores(Path(out_dir), suite, by_variant)
    _write_json(Path(out_dir) / "metrics.json", metrics)
    metrics["_generated_now"] = made  # not written; informative for callers
    return metrics


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False))


def _write_scores(out_dir: Path, suite: Suite, records: dict[str, dict[str, dict]]) -> None:
    lines = []
    for it in suite.items:
        for variant in VARIANTS:
            rec = {k: v for k, v in records[variant][it.id].items() if not k.startswith("_")}
            lines.append(json.dumps({"id": it.id, "variant": variant, "prompt": it.prompt, "seed": it.seed, "group": it.group, "role": it.role, **rec}))
    atomic_write_text(out_dir / "scores.jsonl", "\n".join(lines) + "\n")


def evaluate(
    suite: Suite,
    base_pipe: Any,
    out_dir: str | Path,
    *,
    mask: Any = None,
    edited_pipe: Any = None,
    settings: GenerationSettings | None = None,
    run_info: dict[str, Any] | None = None,
    report: bool = True,
    concept_masks: Any = None,
    cache_dir: str | Path | None = None,
    prompts: Any = None,
    overwrite: bool = False,
    state: Any = None,
    progress: Any = None,
    compare: Sequence[tuple[str, dict[str, Any], Path]] = (),
    edited_label: str = "edited",
) -> tuple[dict[str, Any] | None, Path | None]:
    """Run ``suite`` on base vs edited (``mask`` on ``base_pipe`` or ``edited_pipe``).

    Writes ``OUT/metrics.json``, ``OUT/scores.jsonl``, the images and index
    and, unless ``report=False``, ``OUT/report.html`` with its PNGs. Returns
    ``(metrics, report_path)`` on the main process, ``(None, None)`` elsewhere.

    The overlap heatmap reads, from ``cache_dir``, the per-concept entries
    the erase run that made ``mask`` used; ``prompts`` (concept ->
    :class:`~fia.prompts.ConceptPrompts`) are that run's prompt sets when
    they came from prompt files rather than the task's templates.
    """
    # the report module loads matplotlib: only when a report is written
    from fia.evaluate.report import concept_masks_from_cache, write_report

    editor = Editor(mask=mask) if mask is not None else Editor(pipe=edited_pipe)
    settings = settings or GenerationSettings()
    metrics = run_suite(suite, base_pipe, editor, out_dir, settings, run_info, state, overwrite, progress)
    if metrics is None or not report:
        return metrics, None
    notes = []
    if mask is not None and _selected_jointly(mask):
        notes.append(
            "The causal variant selects weights in rounds over all concepts together, "
            "so there are no per-concept masks to overlap."
        )
    elif concept_masks is None and cache_dir is not None and Path(cache_dir).is_dir() and mask is not None:
        try:
            concept_masks = concept_masks_from_cache(cache_dir, mask, base_pipe, prompts)
        except Exception as exc:  # the heatmap is optional: say why it is missing
            notes.append(f"Could not read the per-concept cache in {cache_dir}: {exc}")
        else:
            missing = [c for c in getattr(mask, "concepts", []) if c not in concept_masks]
            if missing:
                notes.append(
                    f"The per-concept cache in {cache_dir} holds no entry made with this run's settings for: "
                    f"{', '.join(missing)}."
                )
    path = write_report(
        out_dir, metrics, suite, mask=mask, concept_masks=concept_masks, notes=notes,
        compare=compare, edited_label=edited_label,
    )  # fmt: skip
    return metrics, path


def mask_fingerprint(mask: Any) -> str:
    """A content hash of a mask (what makes stored edited images reusable)."""
    to_bytes = getattr(mask, "to_bytes", None)
    if callable(to_bytes):
        return "sha256:" + hashlib.sha256(to_bytes()).hexdigest()
    return f"object:{id(mask)}"


def _selected_jointly(mask: Any) -> bool:
    """Whether the mask's recorded settings are the causal variant's, which selects over all concepts at once."""
    from fia.config import FIACausalConfig, variant_config_type
    from fia.errors import FIAError

    record = getattr(mask, "config", None) or {}
    try:
        return issubclass(variant_config_type(record.get("variant", "paper")), FIACausalConfig)
    except FIAError:  # a variant this package does not know
        return False

