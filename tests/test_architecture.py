"""docs/architecture.md matches the code: every module it lists exists and holds the names it
says, and every call in its contracts resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
PACKAGE = "napari_mtmsd"
NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _module(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


def _resolve(modules: list, dotted: str) -> bool:
    """``dotted`` is an attribute (chain) of one of ``modules``, a submodule of one, or a module
    of the package."""
    for base in [*modules, importlib.import_module(PACKAGE)]:
        obj = base
        for part in dotted.split("."):
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except (ImportError, AttributeError):
                break
        else:
            return True
    return False


def _table_rows() -> list[tuple[list[str], list[str]]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = line.split("|")
        if len(cells) < 4 or not cells[1].strip().startswith("`"):
            continue
        modules = re.findall(r"`([^`]+)`", cells[1])
        names = [n for n in re.findall(r"`([^`]+)`", cells[2]) if NAME.match(n)]
        rows.append(([m.removesuffix(".py").rstrip("/") for m in modules], names))
    return rows


@pytest.mark.parametrize("modules, names", _table_rows(), ids=lambda v: str(v)[:40])
def test_module_table(modules, names):
    """Each name is in the row's modules, or in what another name of the row is (a method of
    its class, a name in its submodule)."""
    bases = [_module(m) for m in modules]
    missing = list(names)
    while True:
        found = [n for n in missing if _resolve(bases, n)]
        if not found:
            break
        bases += [_get(bases, n) for n in found]
        missing = [n for n in missing if n not in found]
    assert not missing, f"{modules}: {missing} not found"


def _get(bases: list, dotted: str):
    for base in [*bases, importlib.import_module(PACKAGE)]:
        obj = base
        try:
            for part in dotted.split("."):
                obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(
                    f"{obj.__name__}.{part}"
                )
        except (ImportError, AttributeError):
            continue
        return obj
    raise LookupError(dotted)


def _contract_calls() -> list[tuple[str, str]]:
    """(module, dotted name) of each call written at the start of a contract line."""
    calls, module, owner = [], None, None
    in_code = False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            in_code = line.startswith("```python")
            continue
        if not in_code:
            continue
        if line.startswith("# "):
            module = line[2:].split()[0].removesuffix(".py")
            continue
        first = re.match(r"^([A-Za-z_][\w.]*)\(", line)
        if first:
            owner = first.group(1).split(".")[0]
            calls.append((module, first.group(1)))
        for extra in re.findall(r"/ (\.?[A-Za-z_][\w.]*)\(", line):
            calls.append((module, owner + extra if extra.startswith(".") else extra))
        method = re.match(r"^\s+\.([A-Za-z_]\w*)\(", line)
        if method and owner:
            calls.append((module, f"{owner}.{method.group(1)}"))
    return calls


def test_contracts_resolve():
    calls = _contract_calls()
    assert len(calls) > 40
    missing = [f"{m}: {n}" for m, n in calls if not _resolve([_module(m)], n)]
    assert not missing, missing
