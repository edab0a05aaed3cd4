"""The layering: import-linter's contracts hold, and docs/architecture.md names every import.

The contracts live in ``.importlinter``. The rooms table of
docs/architecture.md lists, per room, the rooms it imports; the test reads
the real import graph (imports inside functions included) and checks each
room imports nothing its row does not name, so the document cannot drift
from the code.
"""

from __future__ import annotations

import configparser
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fia

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / ".importlinter"
DOC = ROOT / "docs" / "architecture.md"
# the base rooms every room may import (the second row of the table says so)
BASE = {"fia.errors", "fia._version", "fia.io", "fia.progress"}


def _rooms() -> set[str]:
    """Every top-level module or package of ``fia`` (``fia.core``, ``fia.cli``, ...), ``__main__`` aside."""
    return {f"fia.{m.name}" for m in pkgutil.iter_modules(fia.__path__) if m.name != "__main__"}


def _contract_list(section: str, key: str) -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(CONTRACTS)
    return {line.strip() for line in parser[f"importlinter:contract:{section}"][key].splitlines() if line.strip()}


def _room_names(cell: str) -> set[str]:
    """``fia.x`` for every `x`, `x.py` or `x/` in backticks in a table cell."""
    return {"fia." + re.sub(r"(\.py|/)$", "", n) for n in re.findall(r"`([\w./]+)`", cell)}


def _doc_table() -> dict[str, set[str]]:
    """Room -> the rooms docs/architecture.md says it imports."""
    rows: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for room in _room_names(cells[0]):
                rows[room] = _room_names(cells[2])
    return rows


def _imports_by_room() -> dict[str, set[str]]:
    """Room -> the other rooms its modules import directly (lazy imports included), from the import graph."""
    import grimp

    graph = grimp.build_graph("fia", cache_dir=None)
    rooms = _rooms()

    def room(module: str) -> str | None:
        name = ".".join(module.split(".")[:2])
        return name if name in rooms else None

    out: dict[str, set[str]] = {r: set() for r in rooms}
    for module in graph.modules:
        source = room(module)
        if source is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = room(imported)
            if target is not None and target != source:
                out[source].add(target)
    return out


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    run = subprocess.run([exe, "--config", str(CONTRACTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "4 kept, 0 broken" in run.stdout


def test_the_core_contract_names_every_other_room():
    # a room added later is covered without anyone remembering to list it
    assert _contract_list("core-is-pure", "forbidden_modules") == _rooms() - {"fia.core"}


def test_the_rooms_table_has_a_row_for_every_room():
    assert set(_doc_table()) == _rooms()


def test_the_rooms_table_names_every_import_the_code_makes():
    table, actual = _doc_table(), _imports_by_room()
    missing = {room: sorted(actual[room] - table[room] - BASE) for room in table}
    assert not {room: extra for room, extra in missing.items() if extra}, (
        f"docs/architecture.md's rooms table misses these imports (room: rooms it imports): {missing}"
    )


def test_the_graph_check_sees_imports_inside_functions():
    # cli imports fia.bench only inside the bench command's function: the check must see it
    assert "fia.bench" in _imports_by_room()["fia.cli"]


def test_no_function_is_over_80_lines():
    import ast

    long = []
    for path in sorted((ROOT / "src" / "fia").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
