"""Real-model suites: prompt files (CSV or one prompt a line) and real judges.

* ``imagenette`` -- ResNet-50 accuracy on erased and kept classes, Overall.
* ``artists`` -- CLIP score to the prompt and FSR, per artist.
* ``explicit`` -- NudeNet detections on explicit prompts (I2P, Ring-A-Bell).
* ``coco`` -- CLIP score and FID on COCO captions.

Prompt files give their own seeds (``evaluation_seed``) where they have them;
the public sets ship with the package (:data:`fia.prompt_files.SUITE_PROMPT_SETS`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fia.concepts import parse_concepts
from fia.errors import FIAError
from fia.evaluate.generate import VARIANTS, EvalItem
from fia.evaluate.metrics import frechet_distance, fsr, mean
from fia.evaluate.suites.base import (
    Records,
    Suite,
    accuracy_summary,
    mean_per_variant,
    number_items,
)

REAL_SUITES = ("imagenette", "artists", "explicit", "coco")


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return list(csv.DictReader(io.StringIO(text)))


def prompt_files_for(suite: str, prompts: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The prompt files a real-model suite reads: ``prompts`` if given, else the shipped set.

    Without ``--prompts`` the suite uses the paper's public prompt set that
    ships inside the package (:data:`fia.prompt_files.SUITE_PROMPT_SETS`); the
    artists suite then reads all five artists' files.
    """
    from fia.prompt_files import SUITE_PROMPT_SETS, shipped_prompt_set

    files = [prompts] if isinstance(prompts, (str, Path)) else list(prompts or [])
    if not files and suite in SUITE_PROMPT_SETS:
        files = [shipped_prompt_set(name) for name in SUITE_PROMPT_SETS[suite]]
    return [Path(f) for f in files]


def _need_prompts(path: str | Path | None, suite: str) -> Path:
    if path is None:
        raise FIAError(f"the {suite} suite needs a prompt file; pass it with --prompts FILE")
    p = Path(path)
    if not p.is_file():
        raise FIAError(f"--prompts {p} does not exist; pass an existing prompt file")
    return p


def imagenette_suite(
    judge: Any,
    prompts: str | Path | None,
    forget: Sequence[str] | str | None,
    preserve: Sequence[str] | str | None = None,
    images_per_prompt: int = 1,
    max_prompts: int | None = None,
) -> Suite:
    """Rows of an imagenette.csv (case_number, prompt, class, evaluation_seed)."""
    from fia.evaluate.judges import ResNetJudge

    path = _need_prompts(prompts, "imagenette")
    rows = _read_csv_rows(path)
    if not rows or not {"prompt", "class", "evaluation_seed"} <= set(rows[0]):
        raise FIAError(f"{path} lacks the columns prompt, class, evaluation_seed; pass an imagenette.csv")
    classes = list(dict.fromkeys(r["class"] for r in rows))
    by_lower = {c.lower(): c for c in classes}
    forget_l = [by_lower.get(c.lower(), c) for c in parse_concepts(forget, required=False)]
    if not forget_l:
        raise FIAError("the imagenette suite needs the erased classes; pass --forget 'church, golf ball'")
    for c in forget_l:
        if c not in classes:
            raise FIAError(f"class {c!r} is not in {path.name}; use one of: {', '.join(classes)}")
    preserve_l = [by_lower.get(c.lower(), c) for c in parse_concepts(preserve, required=False)] or [c for c in classes if c not in forget_l]
    items = []
    for cls in forget_l + preserve_l:
        cls_rows = [r for r in rows if r["class"] == cls][: max_prompts or None]
        cid = ResNetJudge.class_id(cls)
        for r in cls_rows:
            for j in range(images_per_prompt):
                items.append(
                    EvalItem(
                        id="",
                        prompt=r["prompt"],
                        seed=int(r["evaluation_seed"]) + j,
                        group=cls,
                        role="forget" if cls in forget_l else "preserve",
                        meta={"class_id": cid},
                    )
                )
    items = number_items(items)

    def summarize(items: list[EvalItem], records: Records) -> dict[str, Any]:
        per_class = {}
        for cls in forget_l + preserve_l:
            sel = [it for it in items if it.group == cls]
            per_class[cls] = {
                "role": sel[0].role,
                "class_id": sel[0].meta["class_id"],
                "n": len(sel),
                **mean_per_variant(records, sel, lambda r, it_id=sel[0].meta["class_id"]: float(r["pred_id"] == it_id)),
            }
        return {
            "suite": "imagenette",
            "judge": judge.name,
            "forget": forget_l,
            "preserve": preserve_l,
            "per_class": per_class,
            "summary": accuracy_summary(per_class, forget_l, preserve_l),
        }

    grids = [(f"erased: {c}", f"forget:{c}") for c in forget_l]
    if preserve_l:
        grids.append((f"kept: {preserve_l[0]}", f"preserve:{preserve_l[0]}"))
    return Suite("imagenette", items, judge, summarize, forget_l, preserve_l, grids)


def _artist_matches(concept: str, artist: str) -> bool:
    c, a = concept.lower().split(), artist.lower().split()
    return any(a[i : i + len(c)] == c for i in range(len(a) - len(c) + 1))


def artists_suite(
    judge: Any,
    prompts: Sequence[str | Path] | str | Path | None,
    forget: Sequence[str] | str | None,
    images_per_prompt: int = 1,
    max_prompts: int | None = None,
) -> Suite:
    """Rows of test_<Artist>.csv files; CLIP score to the prompt and FSR."""
    files = [prompts] if isinstance(prompts, (str, Path)) or prompts is None else list(prompts)
    forget_l = parse_concepts(forget, required=False)
    if not forget_l:
        raise FIAError("the artists suite needs the erased artists; pass --forget 'Van Gogh'")
    items = []
    for f in files:
        path = _need_prompts(f, "artists")
        rows = _read_csv_rows(path)
        col = "artists" if rows and "artists" in rows[0] else "artist"
        if not rows or not {"prompt", "evaluation_seed", col} <= set(rows[0]):
            raise FIAError(f"{path} lacks the columns prompt, evaluation_seed, artist(s); pass a test_<Artist>.csv")
        for r in rows[: max_prompts or None]:
            artist = r[col].strip()
            role = "forget" if any(_artist_matches(c, artist) for c in forget_l) else "preserve"
            guidance = float(r["evaluation_guidance"]) if r.get("evaluation_guidance") else None
            for j in range(images_per_prompt):
                items.append(EvalItem("", r["prompt"], int(r["evaluation_seed"]) + j, artist, role, guidance))
    items = number_items(items)
    artists = list(dict.fromkeys(it.group for it in items))
    unmatched = [c for c in forget_l if not any(_artist_matches(c, a) for a in artists)]
    if unmatched:
        raise FIAError(f"no prompt file names the artist(s) {', '.join(unmatched)}; add their test_<Artist>.csv with --prompts")

    def summarize(items: list[EvalItem], records: Records) -> dict[str, Any]:
        per = {}
        for a in artists:
            sel = [it for it in items if it.group == a]
            base = [records["base"][it.id]["clip"] for it in sel]
            edit = [records["edited"][it.id]["clip"] for it in sel]
            per[a] = {"role": sel[0].role, "n": len(sel), "clip": {"base": mean(base), "edited": mean(edit)}, "fsr": fsr(base, edit)}
        erased = [a for a in artists if per[a]["role"] == "forget"]
        kept = [a for a in artists if per[a]["role"] == "preserve"]
        return {
            "suite": "artists",
            "judge": judge.name,
            "forget": forget_l,
            "per_artist": per,
            "summary": {
                "clip_a": {v: mean(per[a]["clip"][v] for a in erased) for v in VARIANTS},
                "fsr": mean(per[a]["fsr"] for a in erased),
                "clip_preserve": {v: mean(per[a]["clip"][v] for a in kept) for v in VARIANTS},
                "fsr_preserve": mean(per[a]["fsr"] for a in kept),
            },
        }

    grids = [(f"{'erased' if any(_artist_matches(c, a) for c in forget_l) else 'kept'}: {a}", f"{'forget' if any(_artist_matches(c, a) for c in forget_l) else 'preserve'}:{a}") for a in artists]
    return Suite("artists", items, judge, summarize, forget_l, [], grids)


def read_prompt_list(path: Path) -> list[dict[str, str]]:
    """A CSV with a ``prompt`` column (I2P), or one prompt a line (Ring-A-Bell, COCO)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if path.suffix.lower() == ".csv" and "prompt" in [h.strip().lower() for h in next(csv.reader([first]), [])]:
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k.strip().lower(): (v or "") for k, v in r.items() if k} for r in rows if (r.get("prompt") or "").strip()]
    return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]


def _list_items(path: Path, seed: int, images_per_prompt: int, max_prompts: int | None, group: str) -> list[EvalItem]:
    items = []
    for n, r in enumerate(read_prompt_list(path)[: max_prompts or None]):
        s = int(float(r["evaluation_seed"])) if r.get("evaluation_seed", "").strip() else seed + n
        g = float(r["evaluation_guidance"]) if r.get("evaluation_guidance", "").strip() else None
        for j in range(images_per_prompt):
            items.append(EvalItem("", r["prompt"].strip(), s + j, group, "target", g))
    return number_items(items)


def explicit_suite(judge: Any, prompts: str | Path | None, seed: int = 0, images_per_prompt: int = 1, max_prompts: int | None = None) -> Suite:
    """Prompts of an I2P CSV or a one-prompt-a-line file; NudeNet detections on base vs edited images."""
    from fia.evaluate.judges import NUDENET_CLASSES

    path = _need_prompts(prompts, "explicit")
    items = _list_items(path, seed, images_per_prompt, max_prompts, "explicit")

    def summarize(items: list[EvalItem], records: Records) -> dict[str, Any]:
        per_class = {c: {v: sum(records[v][it.id]["detections"].get(c, 0) for it in items) for v in VARIANTS} for c in NUDENET_CLASSES}
        return {
            "suite": "explicit",
            "judge": judge.name,
            "prompts": path.name,
            "n_images": len(items),
            "threshold": 0.6,
            "per_class": per_class,
            "summary": {
                "detections": {v: sum(records[v][it.id]["n_detections"] for it in items) for v in VARIANTS},
                "flagged_share": mean_per_variant(records, items, lambda r: float(r["n_detections"] > 0)),
            },
        }

    return Suite("explicit", items, judge, summarize, ["explicit"], [], [("explicit prompts", "target:explicit")])


def coco_suite(
    judge: Any,
    prompts: str | Path | None,
    seed: int = 0,
    images_per_prompt: int = 1,
    max_prompts: int | None = None,
    reference: Callable[[], torch.Tensor] | None = None,
    feature_name: str = "CLIP image embeddings",
) -> Suite:
    """COCO captions: CLIP score, and the FID of the edited to the base images (and to ``reference`` if given)."""
    path = _need_prompts(prompts, "coco")
    items = _list_items(path, seed, images_per_prompt, max_prompts, "coco")

    def summarize(items: list[EvalItem], records: Records) -> dict[str, Any]:
        feats = {v: torch.tensor([records[v][it.id]["_features"] for it in items], dtype=torch.float64) for v in VARIANTS}
        out: dict[str, Any] = {
            "suite": "coco",
            "judge": judge.name,
            "n_images": len(items),
            "fid_features": feature_name,
            "summary": {"clip_score": mean_per_variant(records, items, lambda r: r["clip"])},
        }
        if len(items) >= 2:
            out["summary"]["fid_edited_vs_base"] = frechet_distance(feats["edited"], feats["base"])
            ref = reference() if reference is not None else None
            if ref is not None:
                out["summary"]["fid"] = {v: frechet_distance(feats[v], ref) for v in VARIANTS}
        return out

    return Suite("coco", items, judge, summarize, [], [], [("COCO prompts", "target:coco")])
