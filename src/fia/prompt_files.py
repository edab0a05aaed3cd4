"""Prompt files: the user's (one prompt per line) and the public prompt sets shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fia.errors import FIAError


def read_prompt_file(path: str | Path, *, kind: str = "prompt") -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FIAError(f"{kind} file {str(p)!r} does not exist; pass an existing text file with one prompt per line")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FIAError(f"cannot read {kind} file {str(p)!r} ({exc}); pass a UTF-8 text file") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise FIAError(f"{kind} file {str(p)!r} has no prompts; write one prompt per line")
    return prompts


# The public prompt sets of the paper's evaluations ship inside the package
# (fia/prompt_sets/, provenance and licence in its README.md), so that the
# real-model suites and their tests need no files from outside the install.
SUITE_PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "imagenette": ("imagenette.csv",),
    "artists": (
        "test_Van_Gogh.csv", "test_Monet.csv", "test_Pablo_Picasso.csv",
        "test_Leonardo_Da_Vinci.csv", "test_Salvador_Dali.csv",
    ),
    "explicit": ("Nudity_ring-a-bell.csv",),
    "coco": ("coco_prompts.txt",),
}  # fmt: skip


def shipped_prompt_set(name: str) -> Path:
    """The path of a shipped prompt file, e.g. ``shipped_prompt_set("imagenette.csv")``."""
    known = sorted({f for files in SUITE_PROMPT_SETS.values() for f in files})
    if name not in known:
        raise FIAError(f"no shipped prompt set {name!r}; use one of: {', '.join(known)}")
    return Path(str(resources.files("fia") / "prompt_sets" / name))
