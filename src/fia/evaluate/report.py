"""The evaluation report: ``report.html`` (self-contained) and PNG figures.

Figures (matplotlib, Agg backend), each also written as a PNG next to the HTML
and embedded in it as a ``data:`` URI so the page opens offline on its own:

* ``grid_<k>.png`` -- for each concept, base (top row) vs edited (bottom row)
  images made with the same prompt and seed;
* ``layers.png`` -- the pruned share of every edited layer (needs the mask);
* ``overlap.png`` -- Jaccard similarity of the per-concept masks Q_c (needs
  the erase run's per-concept cache), with the concept-agnostic count;
* ``metrics_table.png`` -- the summary table (also an HTML table).
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

MAX_COLUMNS = 8


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.4g}" if abs(v) >= 10 else f"{v:.3f}"
    return html.escape(str(v))


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(metric, base, edited) rows: the summary, then quality; scalars fill 'edited'."""
    rows: list[tuple[str, Any, Any]] = []
    sections = [("", metrics.get("summary", {})), ("quality: ", metrics.get("quality", {}))]
    for prefix, section in sections:
        for key, val in section.items():
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
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols + 0.8, 3.6 if same_prompt else 4.0), squeeze=False)
    for c, it in enumerate(items[:cols]):
        for r, variant in enumerate(("base", "edited")):
            ax = axes[r][c]
            ax.imshow(np.asarray(Image.open(store.path(variant, it)).convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                label = f"seed {it.seed}" if same_prompt else f"{_wrap(it.prompt)}\nseed {it.seed}"
                ax.set_title(label, fontsize=6)
            if c == 0:
                ax.set_ylabel(variant, fontsize=9)
    fig.suptitle(f"{title}\n{items[0].prompt[:90]}" if same_prompt else title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 18) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3])


def layers_figure(mask: Any, path: Path) -> Path:
    names = [lm.name for lm in mask.layers]
    shares = [100.0 * lm.pruned / lm.numel for lm in mask.layers]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 3.8))
    ax.bar(range(len(names)), shares, color="#c0392b")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=70, ha="right", fontsize=6)
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


def table_figure(rows: list[tuple[str, Any, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(rows) + 0.8))
    ax.axis("off")
    cells = [[name, _fmt(b), _fmt(e)] for name, b, e in rows] or [["(no metrics)", "", ""]]
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
    store = ImageStore(out)
    notes = list(notes)
    figures: list[tuple[str, Path]] = []

    for k, (gtitle, key) in enumerate(suite.grid_groups):
        role, group = key.split(":", 1)
        sel = [it for it in suite.items if it.role == role and it.group == group]
        sel = [it for it in sel if store.has("base", it) and store.has("edited", it)]
        if sel:
            figures.append((gtitle, grid_figure(store, sel, gtitle, out / f"grid_{k}.png")))
        for label, _, other_dir in compare:
            other = ImageStore(other_dir)
            osel = [it for it in suite.items if it.role == role and it.group == group]
            osel = [it for it in osel if other.has("base", it) and other.has("edited", it)]
            if osel:
                otitle = f"{label}: {gtitle}"
                figures.append((otitle, grid_figure(other, osel, otitle, out / f"grid_{k}_{_slug(label)}.png")))

    if mask is not None and getattr(mask, "layers", None):
        figures.append(("pruned share per layer", layers_figure(mask, out / "layers.png")))
    else:
        notes.append("Per-layer pruned shares need the mask (run with --mask); not shown.")

    if concept_masks and len(concept_masks) >= 2:
        tau = overlap_threshold(mask, len(concept_masks))
        figures.append(("concept overlap", overlap_figure(concept_masks, tau, out / "overlap.png")))
    else:
        notes.append(
            "Concept-overlap heatmap skipped: it needs the per-concept cache (OUT/cache/*.safetensors) "
            "of an erase run with at least two concepts."
        )

    rows = summary_rows(metrics)
    figures.append(("metrics table", table_figure(rows, out / "metrics_table.png")))

    head, group_rows = per_group_rows(metrics)
    name = title or f"FIA evaluation: {metrics.get('suite', suite.name)}"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}"
        ".note{color:#555}</style></head><body>",
        f"<h1>{html.escape(name)}</h1>",
    ]
    if metrics.get("forget"):
        parts.append(f"<p>Erased: <b>{html.escape(', '.join(map(str, metrics['forget'])))}</b>")
        if metrics.get("preserve"):
            parts.append(f"; kept: {html.escape(', '.join(map(str, metrics['preserve'])))}")
        parts.append("</p>")
    others = [(label, {r[0]: r[2] for r in summary_rows(m)}) for label, m, _ in compare]
    parts.append(
        "<h2>Metrics</h2><table id='metrics'><tr><th>metric</th><th>base</th>"
        + "".join(f"<th>{html.escape(label)}</th>" for label, _ in others)
        + f"<th>{html.escape(edited_label)}</th></tr>"
    )
    for mname, b, e in rows:
        cells = "".join(f"<td>{_fmt(o.get(mname))}</td>" for _, o in others)
        parts.append(f"<tr><td>{html.escape(mname)}</td><td>{_fmt(b)}</td>{cells}<td>{_fmt(e)}</td></tr>")
    parts.append("</table>")
    if group_rows:
        parts.append("<h3>Per concept</h3><table id='per-concept'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for r in group_rows:
            parts.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>")
        parts.append("</table>")
        for label, m, _ in compare:
            ohead, orows = per_group_rows(m)
            parts.append(f"<h3>Per concept, {html.escape(label)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in ohead) + "</tr>")
            for r in orows:
                parts.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>")
            parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for ftitle, path in figures:
        parts.append(f"<h3>{html.escape(ftitle)}</h3><img alt='{html.escape(ftitle)}' src='{_data_uri(path)}'>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    gen = metrics.get("generation", {})
    parts.append(f"<p class='note'>Generation: {html.escape(json.dumps(gen))}. Base and edited images share prompt and seed.</p>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
