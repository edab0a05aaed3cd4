"""The localisation diagnostic side by side: one column per (world, concept) record.

    python benchmarks/ffn_localisation_table.py results/ffn_localisation_*_*.json [--out results/ffn_localisation.md]

Each record is the JSON that ``ffn_localisation.py --out`` writes. A cell is
the concept's accuracy read by the oracle / the second judge, and in brackets
the same two judges' mean accuracy on the world's other kinds; masks are
matched by their label and their place in the record (the paper's rows name
the r2 whose pruned share came closest, which can differ between worlds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fia.io import atomic_write_text


def _cell(row: dict) -> str:
    o, j = row["oracle"], row.get("judge2", {})
    return f"{o['concept']:.2f} / {j.get('concept', float('nan')):.2f} ({o['others']:.2f} / {j.get('others', float('nan')):.2f})"


def _generic(label: str) -> str:
    # "paper FIA (r2 0.01)" -> "paper FIA": the r2 differs between worlds, the sparsity is the row's
    return "paper FIA" if label.startswith("paper FIA") else label


def table(records: list[dict]) -> str:
    heads = []
    for r in records:
        share = r.get("concept_share_of_scenes")
        tail = f", {100 * share:.1f} % of scenes" if share is not None else ""
        heads.append(f"{r.get('world', 'shapeworld')}: {r['concept']}{tail}")
    lines = ["| mask | pruned | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(records)]
    for i, row in enumerate(records[0]["rows"]):
        label = _generic(row["mask"])
        shares = {f"{100 * r['rows'][i]['pruned_share']:.2f} %" if r["rows"][i]["pruned_share"] is not None else "-" for r in records}
        cells = []
        for r in records:
            other = r["rows"][i]
            if _generic(other["mask"]) != label:
                raise SystemExit(f"the records' rows differ at {i}: {row['mask']!r} and {other['mask']!r}")
            cells.append(_cell(other))
        lines.append(f"| {label} | {' / '.join(sorted(shares))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    records = [json.loads(p.read_text()) for p in args.records]
    text = (
        "Concept accuracy, oracle / second judge (in brackets: mean accuracy on the world's other kinds, "
        "same judges), held-out colour/place pairs, seeds from 7,000.\n\n" + table(records)
    )
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
