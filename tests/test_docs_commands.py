"""Every ``opsgate …`` command quoted in README.md and docs/**/*.md exists in the CLI.

A command is taken from fenced code blocks (also after ``$(``, ``|``, ``;`` or ``&&``) and from
inline code spans. Its subcommand path must resolve in :data:`opsgate.cli.app`, ``--help`` on that
path must exit 0, and every long option it uses must be one the command declares. So the docs
cannot drift from the CLI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from opsgate.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(opsgate [^`]+)`")
IN_BLOCK = re.compile(r"(?:^|\$\(|[|;]|&&)\s*(opsgate\s[^)|;&#\n]*)", re.MULTILINE)


def quoted_commands(text: str) -> list[str]:
    """Every ``opsgate …`` command in ``text``'s code blocks and inline code spans."""
    found = [m.strip() for block in FENCE.findall(text) for m in IN_BLOCK.findall(block)]
    prose = FENCE.sub("", text)
    found += [m.split("|")[0].strip() for m in INLINE.findall(prose)]
    return found


def command_path(root: Any, words: list[str]) -> tuple[list[str], Any]:
    """The subcommand names at the start of ``words`` and the (click) command they lead to;
    groups are told apart by their ``commands`` (Typer vendors its own click)."""
    path: list[str] = []
    command = root
    for word in words:
        if word not in getattr(command, "commands", {}):
            break
        command = command.commands[word]
        path.append(word)
    return path, command


CASES = [
    (doc.relative_to(ROOT).as_posix(), cmd)
    for doc in DOCS
    for cmd in quoted_commands(doc.read_text("utf-8"))
]


def test_the_docs_quote_commands() -> None:
    assert len(CASES) >= 40
    assert {doc for doc, _ in CASES} >= {
        f"docs/runbooks/{n}.md"
        for n in ("deployment", "incident", "monitoring", "rollback", "recovery")
    }


def test_extraction_finds_nested_and_inline_commands() -> None:
    text = "Run `opsgate ledger verify` then:\n```sh\nTOKEN=$(opsgate token alice)\nx | opsgate db upgrade\n```\n"
    assert quoted_commands(text) == [
        "opsgate token alice",
        "opsgate db upgrade",
        "opsgate ledger verify",
    ]


@pytest.mark.parametrize(("doc", "command"), CASES, ids=[f"{d}: {c}" for d, c in CASES])
def test_quoted_command_parses(doc: str, command: str) -> None:
    words = shlex.split(command)[1:]
    root = typer.main.get_command(app)
    path, target = command_path(root, words)
    assert path, f"{doc}: `{command}` names no opsgate subcommand"
    rest = words[len(path) :]
    assert not (hasattr(target, "commands") and rest), (
        f"{doc}: `{command}` names no command of its group"
    )
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    declared = {o for p in target.params for o in (*p.opts, *p.secondary_opts)}
    used = {w.split("=", 1)[0] for w in rest if w.startswith("--")}
    assert used <= declared, f"{doc}: `{command}` uses unknown option(s) {sorted(used - declared)}"
