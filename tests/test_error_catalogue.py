"""The error catalogue: every OpsgateError lives in its domain's errors.py, each code names one
HTTP status, and the tree in opsgate/errors.py and the table in docs/architecture.md list exactly
the classes that exist."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import opsgate
from opsgate import errors
from opsgate.errors import OpsgateError

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
_TABLE_ROW = re.compile(r"^\| `(?P<code>[a-z_]+)` \| (?P<status>\d{3}) \|", re.M)
_TREE_ROW = re.compile(
    r"^ {4}(?P<branch>[│├└─ ]*)(?P<name>[A-Z]\w+) +(?P<code>[a-z_]+) +(?P<status>\d{3})  (?P<module>[\w.]+)$",
    re.M,
)


def _every_error_class() -> list[type[OpsgateError]]:
    """Import every opsgate module (migrations aside), then walk OpsgateError's subclasses."""
    for module in pkgutil.walk_packages(opsgate.__path__, "opsgate."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found, todo = [OpsgateError], [OpsgateError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


CLASSES = _every_error_class()


def test_every_error_lives_in_its_domains_errors_module() -> None:
    misplaced = sorted(
        f"{c.__module__}.{c.__qualname__}"
        for c in CLASSES
        if c.__module__ != "opsgate.errors" and not c.__module__.endswith(".errors")
    )
    assert misplaced == []


def test_each_code_names_one_status() -> None:
    statuses: dict[str, set[int]] = {}
    for c in CLASSES:
        statuses.setdefault(c.code, set()).add(c.status)
    assert {code: s for code, s in statuses.items() if len(s) > 1} == {}


def test_the_architecture_table_lists_every_code_with_its_status() -> None:
    table = {m["code"]: int(m["status"]) for m in _TABLE_ROW.finditer(ARCHITECTURE.read_text())}
    assert table == {c.code: c.status for c in CLASSES}


def test_the_docstring_tree_draws_every_class_with_its_parent_code_status_and_module() -> None:
    drawn, parents = {}, []  # parents[depth] is the last class drawn at that depth
    for m in _TREE_ROW.finditer(errors.__doc__ or ""):
        depth = len(m["branch"]) // 4
        del parents[depth:]
        parent = parents[-1] if parents else None
        drawn[m["name"]] = (parent, m["code"], int(m["status"]), m["module"])
        parents.append(m["name"])
    actual = {
        c.__name__: (
            c.__bases__[0].__name__ if c is not OpsgateError else None,
            c.code,
            c.status,
            c.__module__.removeprefix("opsgate."),
        )
        for c in CLASSES
    }
    assert drawn == actual
