"""Run the audit: every probe on every concept, judged, counted and written as it finishes.

The attack success rate of a probe on a concept is the share of its
attempts (images) that the judge reads as the concept, ``ASR = k / n``,
with its Wilson 95 % interval (:func:`fia.evaluate.stats.wilson`). Against
the edited model it says how often the erased concept comes back; against
the unedited model (the *ceiling*) how often the same probe draws it when
nothing was erased. An edit that holds has an edited ASR near 0 where the
ceiling is high.

Output folder (``out_dir``): ``attack.json`` (the run's settings and one
record per finished probe, concept and model) and ``report.md`` (the ASR
table and the attempts' PNG grids under ``images/``) are rewritten
atomically after every finished probe, so an interrupted attack keeps what
it finished, and a re-run with the same settings skips it.
"""

from __future__ import annotations

import functools
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from fia.attack.config import AttackConfig
from fia.attack.model import AttackModel
from fia.attack.probes import NEEDS_TARGETS, PROBES, ProbeContext
from fia.attack.texts import ConceptTexts, check_paraphrases, shapeworld_texts
from fia.errors import FIAError
from fia.evaluate.stats import Interval, wilson
from fia.io import atomic_write_bytes, atomic_write_text
from fia.progress import Progress, report

EDITED, UNEDITED = "edited", "unedited"
RESULT_FILE, REPORT_FILE = "attack.json", "report.md"
FORMAT_VERSION = 1

TextSource = Callable[[str], ConceptTexts]


# --------------------------------------------------------------------- results
@dataclass
class ProbeResult:
    """One probe on one concept against one model (``edited`` or ``unedited``)."""

    probe: str
    concept: str
    target: str
    attempts: int
    successes: int
    asr: Interval
    settings: list[dict[str, Any]]
    prompts: list[str]
    details: dict[str, Any]
    seconds: float
    grid: str | None = None
    # the judge's second opinion (another classifier of the same world), when it has one
    second: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "concept": self.concept,
            "target": self.target,
            "attempts": self.attempts,
            "successes": self.successes,
            "asr": self.asr.to_dict(),
            "settings": self.settings,
            "prompts": self.prompts,
            "details": self.details,
            "seconds": round(self.seconds, 3),
            "grid": self.grid,
        } | ({"second": self.second} if self.second is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        fields = dict(data)
        fields["asr"] = Interval(**fields["asr"])
        return cls(**fields)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target, self.probe, self.concept)


@dataclass
class AttackResult:
    """Every finished probe result of one audit, with the settings that made them."""

    run: dict[str, Any]
    results: list[ProbeResult] = field(default_factory=list)

    def get(self, probe: str, concept: str, target: str = EDITED) -> ProbeResult:
        for r in self.results:
            if r.key == (target, probe, concept):
                return r
        raise KeyError((probe, concept, target))

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "run": self.run, "results": [r.to_dict() for r in self.results]}

    def markdown(self) -> str:
        """The ASR table: one row per probe and concept, a column per model attacked."""
        targets = [t for t in (EDITED, UNEDITED) if any(r.target == t for r in self.results)]
        head = "| probe | concept | " + " | ".join(f"ASR {t} [95 % CI] (k/n)" for t in targets) + " |"
        lines = [head, "|---|---|" + "---|" * len(targets)]
        rows = list(dict.fromkeys((r.probe, r.concept) for r in self.results))
        for probe, concept in rows:
            cells = []
            for t in targets:
                try:
                    r = self.get(probe, concept, t)
                except KeyError:
                    cells.append("")
                    continue
                cell = f"{r.asr.value:.2f} [{r.asr.low:.2f}, {r.asr.high:.2f}] ({r.successes}/{r.attempts})"
                if r.second is not None:
                    cell += f"; {r.second['judge']} {r.second['asr']['value']:.2f} ({r.second['successes']}/{r.second['attempts']})"
                cells.append(cell)
            lines.append(f"| {probe} | {concept} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ------------------------------------------------------------------------ plan
def parse_probes(probes: str | Sequence[str]) -> list[str]:
    """``"paraphrase, completion"`` or a list -> checked probe names (unknown or repeated names refused)."""
    items = probes.split(",") if isinstance(probes, str) else list(probes)
    names = [str(p).strip() for p in items]
    if not names or any(not n for n in names):
        raise FIAError(f"empty probe name; use one or more of: {', '.join(PROBES)}")
    for n in names:
        if n not in PROBES:
            raise FIAError(f"unknown probe {n!r}; use one or more of: {', '.join(PROBES)}")
    if len(set(names)) != len(names):
        raise FIAError(f"a probe is listed twice in {', '.join(names)}; list each probe once")
    return names


def check_concepts(concepts: str | Sequence[str], edit: Any) -> list[str]:
    """Clean concept names; with an edit, each must be one it erased (case-insensitive), as the edit spells it."""
    from fia.concepts import parse_concepts

    names = parse_concepts(concepts)
    if edit is None:
        return names
    erased = {c.casefold(): c for c in edit.concepts}
    missing = [c for c in names if c.casefold() not in erased]
    if missing:
        raise FIAError(
            f"the edit did not erase {', '.join(map(repr, missing))} (it erased: {', '.join(edit.concepts)}); "
            "attack concepts the edit erased"
        )
    return [erased[c.casefold()] for c in names]


@dataclass(frozen=True)
class AttackPlan:
    """A checked audit: concepts, probes, budgets, prompts and judge; nothing loaded, nothing written."""

    concepts: list[str]
    probes: list[str]
    config: AttackConfig
    texts: dict[str, ConceptTexts]


def plan_attack(
    concepts: str | Sequence[str],
    probes: str | Sequence[str],
    config: AttackConfig,
    *,
    edit: Any = None,
    judge: Any,
    texts: TextSource | None = None,
) -> AttackPlan:
    """Check every input of :func:`run_attack` before any model runs; raises :class:`FIAError` on the first problem."""
    if not isinstance(config, AttackConfig):
        raise FIAError(f"the attack takes an AttackConfig, got a {type(config).__name__}; pass AttackConfig() or AttackConfig.quick()")
    config.validate()
    names = parse_probes(probes)
    chosen = check_concepts(concepts, edit)
    source = texts or functools.partial(shapeworld_texts, world=getattr(judge, "world", None))
    built = {}
    for c in chosen:
        judge.check(c)
        built[c] = source(c)
        check_paraphrases(built[c], names)
    return AttackPlan(chosen, names, config, built)


# ------------------------------------------------------------------ the run
def _run_key(plan: AttackPlan, edit: Any, targets: list[str], judge: Any) -> dict[str, Any]:
    """What decides the results: a re-run with the same key resumes, any other starts afresh."""
    return {
        "concepts": plan.concepts,
        "probes": plan.probes,
        "targets": targets,
        "config": plan.config.to_dict(),
        "judge": getattr(judge, "name", type(judge).__name__),
        **({"judge2": second.name} if (second := getattr(judge, "second", None)) is not None else {}),
        "edit": None if edit is None else {
            "method": edit.method,
            "concepts": list(edit.concepts),
            "fingerprint": getattr(edit, "fingerprint", ""),
            "sha256": _edit_hash(edit),
        },
    }


def _edit_hash(edit: Any) -> str:
    """sha256 of the edit's file bytes (two edits with the same method and concepts still differ here)."""
    import hashlib

    to_bytes = getattr(edit, "to_bytes", None)
    return hashlib.sha256(to_bytes()).hexdigest() if callable(to_bytes) else ""


def _grid_png(images: Tensor, groups: list[list[int]]) -> bytes:
    """One row per setting, one column per attempt (:func:`fia.models.image_grid`): PNG bytes."""
    from PIL import Image

    from fia.models import image_grid

    def pil(j: int) -> Image.Image:
        return Image.fromarray((images[j].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())

    buf = io.BytesIO()
    image_grid([[pil(j) for j in group] for group in groups]).save(buf, format="PNG")
    return buf.getvalue()


def _report_md(result: AttackResult) -> str:
    run = result.run
    edit = run.get("edit") or {}
    lines = [
        "# Robustness audit",
        "",
        f"Edit: {edit.get('method', 'none')} erasing {', '.join(edit.get('concepts', [])) or '-'}; "
        f"judge: {run['judge']}; probes: {', '.join(run['probes'])}.",
        "",
        "ASR is the share of a probe's attempts that the judge reads as the concept, with its Wilson 95 % interval; "
        "`unedited` is the same probe on the model before the edit (the ceiling).",
        "",
        result.markdown(),
        "",
    ]
    for r in result.results:
        lines.append(f"## {r.probe} / {r.concept} / {r.target}: {r.successes} of {r.attempts}")
        lines.append("")
        for s in r.settings:
            aside = " (reference, not counted in the ASR)" if s.get("counted") is False else ""
            lines.append(f"- {s['setting']}: {s['successes']} of {s['attempts']}{aside}")
        if r.grid:
            lines += ["", f"![{r.probe} {r.concept} {r.target}]({r.grid})"]
        lines.append("")
    return "\n".join(lines)


def _load_finished(out_dir: Path, key: dict[str, Any]) -> list[ProbeResult]:
    path = out_dir / RESULT_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if data.get("format_version") != FORMAT_VERSION or data.get("run") != key:
        return []  # other settings: start afresh (the file is replaced at the first finished probe)
    return [ProbeResult.from_dict(r) for r in data.get("results", [])]


def _write(out_dir: Path, result: AttackResult) -> None:
    atomic_write_text(out_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=1, sort_keys=True))
    atomic_write_text(out_dir / REPORT_FILE, _report_md(result))


def check_edit(pipe: Any, edit: Any) -> None:
    """Refuse an edit made for another model before any image is drawn."""
    check = getattr(edit, "check", None)
    if callable(check):
        check(pipe)
    else:  # any Edit: applying checks the model; undo at once
        edit.apply_(pipe)
        edit.restore_(pipe)


def _target_images(model: AttackModel, config: AttackConfig, texts_c: Any, todo: list) -> tuple[Any, tuple]:
    """The unedited model's concept images (latents, prompts) when a probe still to run needs them, else ``(None, ())``.

    They are drawn before the edit is applied.
    """
    if not any(p in NEEDS_TARGETS for _, p in todo):
        return None, ()
    prompts = tuple(texts_c.prompts[j % len(texts_c.prompts)] for j in range(config.target_seeds))
    return model.latents_of(prompts, [config.seed + j for j in range(config.target_seeds)]), prompts


def _run_probe(ctx: ProbeContext, judge: Any, name: str, concept: str, target: str, out: Path | None) -> Any:
    """One probe on one concept and model, judged; its image grid written under ``out`` when given."""
    t0 = time.perf_counter()
    drawn = PROBES[name](ctx)
    res = _judged(judge, name, concept, target, drawn, t0)
    if out is not None:
        res.grid = f"images/{target}/{name}/{_slug(concept)}.png"
        atomic_write_bytes(out / res.grid, _grid_png(drawn.images, drawn.groups))
    return res


def run_attack(
    pipe: Any,
    edit: Any,
    concepts: str | Sequence[str],
    probes: str | Sequence[str],
    config: AttackConfig | None = None,
    *,
    judge: Any,
    texts: TextSource | None = None,
    ceiling: bool = False,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> AttackResult:
    """Try to bring the erased ``concepts`` back with each of ``probes``; returns every probe's ASR.

    Args:
        pipe: the *unedited* base pipeline (SD 1.x/2.x-style). It is left as
            found: the edit is applied for the attack and restored in a
            ``finally``, also when the attack fails or is interrupted.
        edit: any :class:`fia.edit.Edit` made for ``pipe``, or ``None`` to
            attack the unedited model alone (the ceiling).
        concepts: names the edit erased (a list or ``"a, b"``).
        probes: names from :data:`fia.attack.probes.PROBES`.
        config: the budgets (default :class:`AttackConfig`; ``AttackConfig.quick()``
            for the smallest).
        judge: a :class:`fia.attack.judges.ConceptJudge`.
        texts: ``concept -> ConceptTexts`` (default: ShapeWorld's prompts;
            :func:`fia.attack.texts.model_texts` for real models).
        ceiling: with an edit, also run every probe against the unedited model.
        out_dir: folder for ``attack.json``, ``report.md`` and the image
            grids, written after each finished probe; a re-run with the same
            settings resumes.
        progress: :class:`fia.progress.Progress`, one unit per probe run.
    """
    config = AttackConfig() if config is None else config
    plan = plan_attack(concepts, probes, config, edit=edit, judge=judge, texts=texts)
    model = AttackModel(pipe, num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                        batch_size=config.batch_size)  # fmt: skip
    if edit is not None:
        check_edit(pipe, edit)
    targets = [EDITED] if edit is not None else [UNEDITED]
    if edit is not None and ceiling:
        targets.append(UNEDITED)
    key = _run_key(plan, edit, targets, judge)
    out = Path(out_dir) if out_dir is not None else None
    finished = {r.key: r for r in (_load_finished(out, key) if out is not None else [])}
    result = AttackResult(key, [])
    total = len(plan.concepts) * len(targets) * len(plan.probes)
    done = 0
    for concept in plan.concepts:
        texts_c = plan.texts[concept]
        todo = [(t, p) for t in targets for p in plan.probes if (t, p, concept) not in finished]
        target_latents, target_prompts = _target_images(model, config, texts_c, todo)
        for target in targets:
            applied = False
            try:
                for name in plan.probes:
                    key_c = (target, name, concept)
                    if key_c in finished:
                        result.results.append(finished[key_c])
                        done += 1
                        report(progress, done, total, f"{name} on {concept} ({target}): done before")
                        continue
                    if target == EDITED and not applied:
                        edit.apply_(pipe)
                        applied = True
                    report(progress, done, total, f"{name} on {concept} ({target})")
                    ctx = ProbeContext(model, config, texts_c, target_latents, target_prompts)
                    res = _run_probe(ctx, judge, name, concept, target, out)
                    result.results.append(res)
                    if out is not None:
                        _write(out, result)
                    done += 1
                    report(progress, done, total, f"{name} on {concept} ({target}): ASR {res.asr.value:.2f}")
            finally:
                if applied:
                    edit.restore_(pipe)
    if out is not None:
        _write(out, result)
    return result


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.strip().lower()) or "concept"


def _verdicts(judge: Any, drawn: Any, concept: str) -> list[bool]:
    """One verdict per image of ``drawn``; a judge that returns another number of them is refused."""
    verdicts = [bool(v) for v in judge(drawn.images, concept)]
    if len(verdicts) != len(drawn.images):
        raise FIAError(f"the judge returned {len(verdicts)} verdicts for {len(drawn.images)} images; it must return one per image")
    return verdicts


def _settings(drawn: Any, verdicts: list[bool]) -> tuple[list[dict[str, Any]], int, int]:
    """Per-setting counts, and ``(k, n)`` over the counted settings (a reference setting is shown, not counted)."""
    settings, k, n = [], 0, 0
    for i, (s, g) in enumerate(zip(drawn.settings, drawn.groups)):
        hits = sum(verdicts[j] for j in g)
        row = {"setting": s, "attempts": len(g), "successes": hits}
        if i in drawn.reference:
            row["counted"] = False
        else:
            k, n = k + hits, n + len(g)
        settings.append(row)
    return settings, k, n


def _judged(judge: Any, name: str, concept: str, target: str, drawn: Any, t0: float) -> ProbeResult:
    """A probe's attempts read by the judge and, when it has one, by its second judge (``judge.second``)."""
    verdicts = _verdicts(judge, drawn, concept)
    second = getattr(judge, "second", None)
    verdicts2 = _verdicts(second, drawn, concept) if second is not None else None
    res = _result(name, concept, target, drawn, verdicts, time.perf_counter() - t0)
    if verdicts2 is not None:
        res.second = _second_opinion(second, drawn, verdicts2)
    return res


def _result(name: str, concept: str, target: str, drawn: Any, verdicts: list[bool], seconds: float) -> ProbeResult:
    settings, k, n = _settings(drawn, verdicts)
    counted = [j for i, g in enumerate(drawn.groups) if i not in drawn.reference for j in g]
    prompts = [drawn.prompts[j] for j in counted] if drawn.reference else list(drawn.prompts)
    return ProbeResult(name, concept, target, n, k, wilson(k, n), settings, prompts, drawn.details, seconds)


def _second_opinion(judge: Any, drawn: Any, verdicts: list[bool]) -> dict[str, Any]:
    """The second judge's reading of the same attempts, counted as the first judge's."""
    settings, k, n = _settings(drawn, verdicts)
    return {"judge": judge.name, "attempts": n, "successes": k, "asr": wilson(k, n).to_dict(), "settings": settings}
