"""Run a suite: paired generation (sharded over processes), judging, metrics.

With ``accelerate launch`` every process renders and judges its own global
batches (batch ``b`` on process ``b % world``); the per-image records are
gathered and only the main process writes ``metrics.json`` and
``scores.jsonl``. Since each batch holds the same items whatever the number
of processes, the records -- and so the metrics -- equal a one-process run.
The output directory must be visible to every process (one machine, or a
shared file system).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
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
from fia.evaluate.suites import Suite


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
    metrics["generation"] = settings.to_dict()
    metrics["run"] = {k: v for k, v in (run_info or {}).items()}
    _write_scores(Path(out_dir), suite, by_variant)
    _write_json(Path(out_dir) / "metrics.json", metrics)
    metrics["_generated_now"] = made  # not written; informative for callers
    return metrics


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    os.replace(tmp, path)


def _write_scores(out_dir: Path, suite: Suite, records: dict[str, dict[str, dict]]) -> None:
    lines = []
    for it in suite.items:
        for variant in VARIANTS:
            rec = {k: v for k, v in records[variant][it.id].items() if not k.startswith("_")}
            lines.append(json.dumps({"id": it.id, "variant": variant, "prompt": it.prompt, "seed": it.seed, "group": it.group, "role": it.role, **rec}))
    tmp = out_dir / f"scores.jsonl.tmp{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out_dir / "scores.jsonl")
