"""The evaluation report: ``report.html`` (self-contained) and PNG figures.

The page opens offline on its own: every image is embedded as a ``data:`` URI.
It holds

* a headline: how many images each figure rests on, the erased and kept
  rates with their 95 % intervals, and the kept concepts that lost most;
* the metrics and per-concept tables, every rate with its interval
  (:func:`fia.evaluate.stats.metric_intervals`); KID and FID only when the
  quality prompts have at least :data:`MIN_QUALITY_IMAGES` images (below
  that they say nothing, and a note says how to measure them);
* image grids as HTML tables, base (top row) vs edited (bottom row) images
  made with the same prompt and seed, their captions HTML text: the suite's
  grids (erased concepts, synonyms, quality prompts) and the kept concepts
  that changed most (:func:`largest_losses`).

Figures (matplotlib, Agg backend), each also written as a PNG next to the HTML:

* ``grid_<k>.png`` -- each grid of the page as one picture;
* ``layers.png`` -- the pruned share of every edited layer (needs the mask;
  embedded);
* ``overlap.png`` -- Jaccard similarity of the per-concept masks Q_c (needs
  the erase run's per-concept cache), with the concept-agnostic count
  (embedded);
* ``metrics_table.png`` -- the metrics table (the page has it as HTML).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fia.evaluate.generate import ImageStore  # noqa: E402
from fia.evaluate.metrics import jaccard_matrix  # noqa: E402
from fia.evaluate.stats import metric_intervals, wilson  # noqa: E402

MAX_COLUMNS = 8
# KID and FID of fewer quality images say nothing (KID's estimate swings
# around 0, FID is dominated by its bias), so they are left out below this
MIN_QUALITY_IMAGES = 500
# the quality figures that need MIN_QUALITY_IMAGES
SAMPLE_SIZE_FIGURES = ("fid", "kid", "kid_std", "kid_change", "kid_change_se", "fid_reference")
# kept concepts shown as grids: those that lost most
KEPT_GRIDS = 3
# the font size of every caption and table text (CSS px)
CAPTION_PX = 14


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.4g}" if abs(v) >= 10 else f"{v:.3f}"
    return html.escape(str(v))


def quality_too_small(metrics: Mapping[str, Any]) -> bool:
    """Whether the quality prompts have fewer than :data:`MIN_QUALITY_IMAGES` images (KID and FID are then left out)."""
    n = (metrics.get("quality") or {}).get("n_images")
    return isinstance(n, int) and n < MIN_QUALITY_IMAGES


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(metric, base, edited) rows: the summary, then quality; scalars fill 'edited'.

    KID and FID are left out when :func:`quality_too_small`.
    """
    rows: list[tuple[str, Any, Any]] = []
    sections = [("", metrics.get("summary", {})), ("quality: ", metrics.get("quality", {}))]
    small = quality_too_small(metrics)
    for prefix, section in sections:
        for key, val in section.items():
            if prefix and small and key in SAMPLE_SIZE_FIGURES:
                continue
            if isinstance(val, Mapping) and set(val) <= {"base", "edited"}:
                rows.append((prefix + key, val.get("base"), val.get("edited")))
            elif isinstance(val, (int, float)) or val is None:
                rows.append((prefix + key, None, val))
    return rows


def per_group_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    for key in ("per_class", "per_artist"):
        if key in metrics:
            table = metrics[key]
            rows = []
            for name, rec in table.items():
                base = rec.get("base", rec.get("clip", {}).get("base") if isinstance(rec.get("clip"), dict) else None)
                edit = rec.get("edited", rec.get("clip", {}).get("edited") if isinstance(rec.get("clip"), dict) else None)
                rows.append([name, rec.get("role", ""), rec.get("n", ""), base, edit, rec.get("fsr")])
            what = {"per_artist": "CLIP score", "per_class": "accuracy"}[key]
            if metrics.get("suite") == "explicit":
                what = "detections"
            return ["concept", "role", "images", f"{what} base", f"{what} edited", "FSR"], rows
    return [], []


# ------------------------------------------------------------------- figures
def grid_figure(store: ImageStore, items: Sequence[Any], title: str, path: Path) -> Path:
    cols = min(len(items), MAX_COLUMNS)
    same_prompt = len({it.prompt for it in items[:cols]}) == 1
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols + 0.8, 3.8 if same_prompt else 4.4), squeeze=False)
    for c, it in enumerate(items[:cols]):
        for r, variant in enumerate(("base", "edited")):
            ax = axes[r][c]
            ax.imshow(np.asarray(Image.open(store.path(variant, it)).convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                label = f"seed {it.seed}" if same_prompt else f"{_wrap(it.prompt)}\nseed {it.seed}"
                ax.set_title(label, fontsize=8)
            if c == 0:
                ax.set_ylabel(variant, fontsize=9)
    fig.suptitle(f"{title}\n{items[0].prompt[:90]}" if same_prompt else title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 18) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3])


def _is_rewrite(mask: Any) -> bool:
    """An edit that prunes nothing and carries rewritten rows (the rewrite variant)."""
    return bool(getattr(mask, "repaired", False)) and getattr(mask, "pruned", None) == 0


def layers_figure(mask: Any, path: Path) -> Path:
    """Per edited layer: the pruned share, or for an edit that prunes nothing (the rewrite) how far its rows moved."""
    names = [lm.name for lm in mask.layers]
    rewrite = _is_rewrite(mask)
    if rewrite:  # relative change of the carried rows, ||new - old|| / ||old||
        values = [
            100.0 * float((lm.row_values - lm.row_originals).norm() / lm.row_originals.norm().clamp_min(1e-12))
            if lm.rows is not None else 0.0
            for lm in mask.layers
        ]
    else:
        values = [100.0 * lm.pruned / lm.numel for lm in mask.layers]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 3.8))
    ax.bar(range(len(names)), values, color="#c0392b")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=70, ha="right", fontsize=8)
    if rewrite:
        ax.set_ylabel("relative change of the weights (%)")
        ax.set_title("rewritten layers: how far each moved (no weight pruned)", fontsize=9)
    else:
        ax.set_ylabel("pruned weights (%)")
        ax.set_title(f"pruned share per layer (total {100 * mask.pruned_share:.3f} %)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short(name: str) -> str:
    return name.replace("transformer_blocks", "tb").replace("attentions", "att").replace(".ff.net.2", ".ffn2")


def overlap_threshold(mask: Any, num_concepts: int) -> int:
    """``tau_ca`` for the overlap figure, with the alpha of the run that made ``mask``.

    The alpha comes from the mask's settings; without a mask (or one that
    does not record alpha) the method's default alpha is used.
    """
    from fia.config import FIAConfig
    from fia.core.fuse import concept_agnostic_threshold

    cfg = getattr(mask, "config", None)
    alpha = cfg["alpha"] if isinstance(cfg, Mapping) and cfg.get("alpha") is not None else FIAConfig.alpha
    return concept_agnostic_threshold(num_concepts, float(alpha))


def overlap_figure(
    concept_masks: Mapping[str, Mapping[str, torch.Tensor]], tau_ca: int | None, path: Path
) -> Path:
    """Jaccard of the per-concept masks, and how many concepts select each entry.

    Entries selected by at least ``tau_ca`` concepts are concept-agnostic (kept);
    those selected by fewer (but at least one) are concept-specific (pruned).
    """
    concepts = list(concept_masks)
    layers = sorted(set.intersection(*(set(m) for m in concept_masks.values())))
    flat = [torch.cat([concept_masks[c][l].bool().flatten() for l in layers]) for c in concepts]
    jac = np.array(jaccard_matrix(flat))
    n = len(concepts)
    tau = tau_ca if tau_ca is not None else overlap_threshold(None, n)
    counts = torch.stack(flat).sum(0)
    hist = [int((counts == k).sum()) for k in range(1, n + 1)]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(1.0 * n + 7.0, 0.8 * n + 2.4), gridspec_kw={"width_ratios": [1.3, 1]})
    im = ax.imshow(jac, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_xticklabels(concepts, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(concepts, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{jac[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if jac[i, j] < 0.6 else "k")
    fig.colorbar(im, ax=ax, label="Jaccard of Q_c", fraction=0.046)
    ax.set_title("overlap of the per-concept masks", fontsize=9)
    colors = ["#c0392b" if k < tau else "#7f8c8d" for k in range(1, n + 1)]
    ax2.bar(range(1, n + 1), hist, color=colors)
    ax2.set_xticks(range(1, n + 1))
    ax2.set_xlabel("concepts selecting the entry (s)")
    ax2.set_ylabel("entries")
    agnostic = sum(hist[tau - 1 :])
    ax2.set_title(f"red: concept-specific, pruned (s < {tau})\ngrey: concept-agnostic, kept ({agnostic} entries)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table_figure(rows: list[tuple[str, Any, Any]], path: Path, intervals: Mapping[str, Any] | None = None) -> Path:
    """The metrics table as a picture; rates with their intervals when ``intervals`` are given."""

    def cell(name: str, value: Any, variant: str) -> str:
        iv = _row_interval(intervals or {}, name, variant)
        return _fmt(value) + ("" if iv is None else f" [{iv['low']:.2f}, {iv['high']:.2f}]")

    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 0.8))
    ax.axis("off")
    cells = [[name, cell(name, b, "base"), cell(name, e, "edited")] for name, b, e in rows] or [["(no metrics)", "", ""]]
    table = ax.table(cellText=cells, colLabels=["metric", "base", "edited"], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------- per-concept masks
def concept_masks_from_cache(
    cache_dir: str | Path, mask: Any, pipe: Any, prompts: Mapping[str, Any] | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Q_c per concept and layer, recomputed from the sensitivities A that made ``mask``.

    Each concept's entry is the one its erase run used, found by the same key
    erase computes (:meth:`fia.cache.ConceptCache.entries`: the run's settings
    from the mask, ``pipe``'s scheduler, ``prompts`` when the run used prompt
    files), never an entry of another run in the same folder. A concept
    whose entry is missing or was made with other settings is left out.
    Q_c uses the run's r2 and selection rule for the concept.
    """
    from fia.cache import ConceptCache
    from fia.config import FIAConfig
    from fia.core.select import select_neurons

    config = FIAConfig.from_run(mask.config)
    cache = ConceptCache(cache_dir)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for concept, entry in cache.entries(pipe, mask, dict(prompts or {})).items():
        sens = cache.load_sensitivity(entry)  # None unless made with exactly this key
        if not sens:
            continue
        r2 = config.r2_for(concept)
        out[concept] = {layer: select_neurons(a.float(), r2, config.selection) for layer, a in sens.items()}
    return out


# ---------------------------------------------------------------------- HTML
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def intervals_of(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics' intervals (``metrics["intervals"]``, or computed from the metrics when they predate it)."""
    iv = metrics.get("intervals")
    return iv if isinstance(iv, Mapping) else metric_intervals(metrics)


def _row_interval(intervals: Mapping[str, Any], row: str, variant: str) -> Mapping[str, float] | None:
    section, key = ("quality", row[len("quality: ") :]) if row.startswith("quality: ") else ("summary", row)
    return (intervals.get(section, {}).get(key) or {}).get(variant)


def _ci(iv: Mapping[str, float] | None) -> str:
    """`` [low, high]`` of an interval, as HTML."""
    if iv is None:
        return ""
    return f" <span class='ci'>[{iv['low']:.2f}, {iv['high']:.2f}]</span>"


def _rate_cell(value: Any, iv: Mapping[str, float] | None) -> str:
    return f"<td>{_fmt(value)}{_ci(iv)}</td>"


def largest_losses(metrics: Mapping[str, Any], k: int = KEPT_GRIDS) -> list[tuple[str, float, float]]:
    """The ``k`` kept concepts whose accuracy fell most, as (concept, base, edited), largest loss first.

    Ties keep the suite's order. With fewer than ``k`` losses the list goes
    on with the kept concepts that did not change, then those that gained;
    it is empty without per-concept accuracies of kept concepts.
    """
    per = metrics.get("per_class") or {}
    kept = [
        (name, float(rec["base"]), float(rec["edited"]))
        for name, rec in per.items()
        if rec.get("role") == "preserve" and isinstance(rec.get("base"), (int, float)) and isinstance(rec.get("edited"), (int, float))
    ]
    return sorted(kept, key=lambda r: r[2] - r[1])[:k]


def _grid_html(store: ImageStore, items: Sequence[Any], title: str, anchor: str) -> str:
    """Base (top row) vs edited (bottom row) images as an HTML table, with HTML captions (prompt, seed)."""
    cols = list(items[:MAX_COLUMNS])
    same_prompt = len({it.prompt for it in cols}) == 1
    caption = html.escape(title) + (f": <q>{html.escape(cols[0].prompt)}</q>" if same_prompt else "")
    head = "".join(
        f"<th class='caption'>{'' if same_prompt else html.escape(it.prompt) + '<br>'}seed {it.seed}</th>" for it in cols
    )
    rows = []
    for variant in ("base", "edited"):
        cells = "".join(
            f"<td><img alt='{variant}, seed {it.seed}' src='{_data_uri(store.path(variant, it))}'></td>" for it in cols
        )
        rows.append(f"<tr><th class='caption variant'>{variant}</th>{cells}</tr>")
    return (
        f"<figure class='pairs' id='{html.escape(anchor)}'><figcaption class='caption'>{caption}</figcaption>"
        f"<table class='grid'><tr><th></th>{head}</tr>{''.join(rows)}</table></figure>"
    )


def _grids(
    out: Path, suite: Any, metrics: Mapping[str, Any], compare: Sequence[tuple[str, Mapping[str, Any], Path]]
) -> list[tuple[str, str]]:
    """The page's image grids as (section, HTML): section "suite" or "kept".

    The suite's grids first, then the kept concepts that lost most; each
    also as ``grid_<k>.png``, and each compared edit's grid beside it.
    """
    groups = [(title, key, "suite") for title, key in suite.grid_groups]
    losses = largest_losses(metrics)
    shown = {key for _, key, _ in groups}
    for name, b, e in losses:
        if f"preserve:{name}" not in shown:
            groups.append((f"kept: {name} ({b:.2f} -> {e:.2f})", f"preserve:{name}", "kept"))
    stores = [("", ImageStore(out))] + [(label, ImageStore(d)) for label, _, d in compare]
    grids: list[tuple[str, str]] = []
    for k, (gtitle, key, section) in enumerate(groups):
        role, group = key.split(":", 1)
        for label, store in stores:
            sel = [it for it in suite.items if it.role == role and it.group == group]
            sel = [it for it in sel if store.has("base", it) and store.has("edited", it)]
            if not sel:
                continue
            title = f"{label}: {gtitle}" if label else gtitle
            suffix = f"_{_slug(label)}" if label else ""
            grid_figure(store, sel, title, out / f"grid_{k}{suffix}.png")
            grids.append((section, _grid_html(store, sel, title, f"grid-{_slug(key)}{suffix.replace('_', '-')}")))
    return grids


def _headline(metrics: Mapping[str, Any], intervals: Mapping[str, Any], edited_label: str) -> list[str]:
    """Sentences on what the figures rest on and what they say: image counts, rates with intervals, largest losses."""
    per = metrics.get("per_class") or {}
    judge = html.escape(str(metrics.get("judge", "the judge")))
    out = []
    sizes = sorted({rec.get("n") for rec in per.values() if isinstance(rec.get("n"), int)})
    summary_iv = intervals.get("summary", {})

    def rate(key: str, variant: str) -> str:
        iv = (summary_iv.get(key) or {}).get(variant)
        return "–" if iv is None else f"{iv['value']:.2f}{_ci(iv)}"

    if sizes:
        each = f"{sizes[0]} images per concept" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]} images per concept"
        counts = []
        for key, what in (("forget_accuracy", "erased concepts"), ("preserve_accuracy", "kept concepts")):
            iv = (summary_iv.get(key) or {}).get("edited")
            if iv is not None:
                counts.append(f"{iv['n']} images of the {what}")
        out.append(
            f"Judged by the {judge} on <b>{each}</b> ({', '.join(counts)}), the same prompts and seeds for the base "
            f"and the {html.escape(edited_label)} model. Every rate comes with its 95 % Wilson interval in brackets: "
            f"with {sizes[0]} images, a concept read right every time may still be read right as rarely as "
            f"{wilson(sizes[0], sizes[0]).low:.2f} of the time, so differences inside the intervals are noise."
        )
        parts = []
        for key, what in (("forget_accuracy", "erased"), ("preserve_accuracy", "kept")):
            if key in summary_iv:
                parts.append(f"{what}: {rate(key, 'base')} -> {rate(key, 'edited')}")
        if parts:
            out.append("Accuracy, base -> " + html.escape(edited_label) + ": " + "; ".join(parts) + ".")
    elif metrics.get("n_items"):
        out.append(
            f"Judged by the {judge} on {int(metrics['n_items'])} images per model, the same prompts and seeds for the "
            "base and the edited model; every rate comes with its 95 % Wilson interval in brackets."
        )
    losses = largest_losses(metrics)
    lost = [(n, b, e) for n, b, e in losses if e < b]
    if losses and not lost:
        out.append("No kept concept lost accuracy; the grids below show the kept concepts that changed least.")
    elif lost:
        pc = intervals.get("per_concept", {})
        items = []
        for name, b, e in lost:
            iv = (pc.get(name, {}).get("accuracy") or {}).get("edited")
            items.append(f"<b>{html.escape(name)}</b> {b:.2f} -> {e:.2f}{_ci(iv)}")
        def overlap(name: str) -> bool:
            acc = pc.get(name, {}).get("accuracy") or {}
            b, e = acc.get("base"), acc.get("edited")
            return b is not None and e is not None and b["low"] <= e["high"]

        within = all(overlap(n) for n, _, _ in lost)
        out.append(
            "Largest losses among the kept concepts: " + ", ".join(items)
            + (" (base and edited intervals overlap for each: at this size, not told apart from noise)" if within else "")
            + "; their images are in the grids <a href='#kept'>below</a>."
        )
    return out


def quality_command(metrics: Mapping[str, Any]) -> str:
    """The ``fia evaluate`` command that measures KID and FID of the same edit on enough quality images."""
    from fia.shapeworld import DEFAULT_WORLD, SHIPPED_WORLD_FOLDERS

    suite = str(metrics.get("suite", "shapeworld-objects"))
    forget = ",".join(map(str, metrics.get("forget") or []))
    model = str((metrics.get("run") or {}).get("model", ""))
    world = f" --shapeworld {model}" if model in SHIPPED_WORLD_FOLDERS and model != DEFAULT_WORLD else ""
    concepts = f" --forget '{forget}'" if forget and suite != "shapeworld-attribute" else ""
    return (
        f"fia evaluate --suite {suite}{world} --mask MASK{concepts} "
        f"--quality-images {MIN_QUALITY_IMAGES} --out DIR"
    )


def _quality_note(metrics: Mapping[str, Any]) -> str | None:
    """Why KID and FID are not shown and how to get them, as HTML; None when they are shown or not measured."""
    if not quality_too_small(metrics):
        return None
    q = metrics.get("quality") or {}
    if not any(k in q for k in ("fid", "kid")):
        return None
    return (
        f"<b>Image quality</b> rests here on prompt fidelity and CLIP score of {int(q['n_images'])} images of "
        f"held-out prompts. KID and FID are left out: below about {MIN_QUALITY_IMAGES} images they say nothing "
        "(KID's estimate can even come out negative; both are still in metrics.json). To measure them, run "
        f"<code>{html.escape(quality_command(metrics))}</code> with MASK the mask file "
        "(OUT/mask.safetensors after fia erase); it takes a few minutes on a CPU."
    )


_CSS = (
    "body{font-family:sans-serif;font-size:16px;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}"
    ".ci{color:#555;white-space:nowrap}.note{color:#555}.headline{font-size:17px;line-height:1.5}"
    f".caption{{font-size:{CAPTION_PX}px}}"
    "figure.pairs{margin:1.5em 0}figure.pairs figcaption{font-weight:bold;margin-bottom:.3em}"
    "table.grid td,table.grid th{border:none;padding:2px;text-align:center;vertical-align:bottom}"
    "table.grid th.caption{font-weight:normal;width:100px}table.grid th.variant{text-align:right;vertical-align:middle}"
    "table.grid img{width:96px;height:96px;display:block}"
)


def _mask_figures(out: Path, mask: Any, concept_masks: Mapping[str, Mapping[str, torch.Tensor]] | None, notes: list[str]) -> list[tuple[str, Path]]:
    """The mask's figures (per-layer change, concept overlap); a note in ``notes`` for each one that cannot be drawn."""
    figures: list[tuple[str, Path]] = []
    if mask is not None and getattr(mask, "layers", None):
        title = "change per layer" if _is_rewrite(mask) else "pruned share per layer"
        figures.append((title, layers_figure(mask, out / "layers.png")))
    elif mask is not None:  # a weight delta: it adds to weights, it prunes none
        notes.append(
            f"The edit is a {getattr(mask, 'method', '')} weight delta: it prunes nothing, so there are no "
            "per-layer pruned shares."
        )
    else:
        notes.append("Per-layer pruned shares need the mask (run with --edit); not shown.")

    if concept_masks and len(concept_masks) >= 2:
        tau = overlap_threshold(mask, len(concept_masks))
        figures.append(("concept overlap", overlap_figure(concept_masks, tau, out / "overlap.png")))
    else:
        notes.append(
            "Concept-overlap heatmap skipped: it needs the per-concept cache (OUT/cache/*.safetensors) "
            "of an erase run with at least two concepts."
        )
    return figures


def _metrics_table(rows: Sequence[tuple], metrics: Mapping[str, Any], intervals: Mapping[str, Any], compare: Sequence[tuple], edited_label: str) -> str:
    """The metrics table: one row per metric, base, each compared edit and this edit, with intervals."""
    parts: list[str] = []
    others = [(label, {r[0]: r[2] for r in summary_rows(m)}, intervals_of(m)) for label, m, _ in compare]
    parts.append(
        "<h2>Metrics</h2><table id='metrics'><tr><th>metric</th><th>images</th><th>base</th>"
        + "".join(f"<th>{html.escape(label)}</th>" for label, _, _ in others)
        + f"<th>{html.escape(edited_label)}</th></tr>"
    )
    for mname, b, e in rows:
        ivb, ive = _row_interval(intervals, mname, "base"), _row_interval(intervals, mname, "edited")
        n = (ive or ivb or {}).get("n")
        if n is None and mname.startswith("quality: ") and mname not in ("quality: n_prompts", "quality: n_images"):
            n = (metrics.get("quality") or {}).get("n_images")  # CLIP score, KID, FID: no rates, but the same images
        cells = "".join(_rate_cell(o.get(mname), _row_interval(oiv, mname, "edited")) for _, o, oiv in others)
        parts.append(
            f"<tr><td>{html.escape(mname)}</td><td>{'' if n is None else int(n)}</td>"
            f"{_rate_cell(b, ivb)}{cells}{_rate_cell(e, ive)}</tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


def _image_sections(grids: Sequence[tuple[str, str]], figures: Sequence[tuple[str, Path]]) -> list[str]:
    """The image grids (the suite's, then the kept concepts that changed most) and the figures, as HTML parts."""
    parts: list[str] = []
    suite_grids = [g for section, g in grids if section == "suite"]
    kept_grids = [g for section, g in grids if section == "kept"]
    if suite_grids:
        parts.append("<h2>Images</h2><p>Each column: one prompt and seed, base model on top, edited below.</p>")
        parts.extend(suite_grids)
    if kept_grids:
        parts.append(
            "<h2 id='kept'>Kept concepts that changed most</h2>"
            "<p>The kept concepts whose accuracy fell most, with the same prompts and seeds for both models.</p>"
        )
        parts.extend(kept_grids)
    if figures:
        parts.append("<h2>Figures</h2>")
    for ftitle, path in figures:
        parts.append(f"<h3>{html.escape(ftitle)}</h3><img alt='{html.escape(ftitle)}' src='{_data_uri(path)}'>")
    return parts


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    suite: Any,
    mask: Any = None,
    concept_masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    notes: Sequence[str] = (),
    title: str | None = None,
    compare: Sequence[tuple[str, Mapping[str, Any], Path]] = (),
    edited_label: str = "edited",
) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir``; returns the HTML path.

    ``compare`` holds other edits measured on the same suite, prompts and
    seeds, as ``(label, metrics, their out_dir)``: each adds a column to the
    metrics tables and its image grids beside this edit's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = list(notes)
    intervals = intervals_of(metrics)
    quality_note = _quality_note(metrics)

    grids = _grids(out, suite, metrics, compare)

    figures = _mask_figures(out, mask, concept_masks, notes)

    rows = summary_rows(metrics)
    table_figure(rows, out / "metrics_table.png", intervals)

    head, group_rows = per_group_rows(metrics)
    name = title or f"FIA evaluation: {metrics.get('suite', suite.name)}"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(name)}</h1>",
    ]
    if metrics.get("forget"):
        parts.append(f"<p>Erased: <b>{html.escape(', '.join(map(str, metrics['forget'])))}</b>")
        if metrics.get("preserve"):
            parts.append(f"; kept: {html.escape(', '.join(map(str, metrics['preserve'])))}")
        parts.append("</p>")
    parts.append("<div id='headline'>" + "".join(f"<p class='headline'>{p}</p>" for p in _headline(metrics, intervals, edited_label)) + "</div>")
    if quality_note:
        parts.append(f"<p class='headline' id='quality-note'>{quality_note}</p>")
    parts.append(_metrics_table(rows, metrics, intervals, compare, edited_label))
    if group_rows:
        parts.append(_per_concept_table("Per concept", "per-concept", head, group_rows, intervals))
        for label, m, _ in compare:
            ohead, orows = per_group_rows(m)
            parts.append(_per_concept_table(f"Per concept, {label}", None, ohead, orows, intervals_of(m)))
    parts.extend(_image_sections(grids, figures))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    gen = metrics.get("generation", {})
    parts.append(f"<p class='note'>Generation: {html.escape(json.dumps(gen))}. Base and edited images share prompt and seed.</p>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# per-concept table columns whose cells get the concept's interval: column -> (figure, variant)
def _column_figure(column: str) -> tuple[str, str] | None:
    if column == "FSR":
        return ("fsr", "edited")
    if column.startswith("accuracy "):
        return ("accuracy", column.split(" ", 1)[1])
    return None


def _per_concept_table(
    title: str, anchor: str | None, head: Sequence[str], rows: Sequence[Sequence[Any]], intervals: Mapping[str, Any]
) -> str:
    per = intervals.get("per_concept", {})
    ident = f" id='{anchor}'" if anchor else ""
    out = [f"<h3>{html.escape(title)}</h3><table{ident}><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for column, v in zip(head, r):
            which = _column_figure(column)
            iv = (per.get(r[0], {}).get(which[0]) or {}).get(which[1]) if which else None
            cells.append(_rate_cell(v, iv) if v is not None else f"<td>{_fmt(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)
