"""The command line's error lines: every ``opsgate`` command prints an error -- an exception's
message, a value the operator typed, a path, a URL -- through :func:`error` or :func:`fail`, so
it reaches the terminal through the one sanitizer (:func:`opsgate.security.sanitizer.sanitize`:
provider-key shapes, tokens, URL credentials and every held secret redacted) as plain text, never
as Rich markup (``[bold]`` in a value is printed, a redaction token ``[REDACTED:secret:…]`` is not
an emoji code)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from opsgate.security.sanitizer import sanitize

err = Console(stderr=True, emoji=False)


def error(message: str, label: str = "error") -> None:
    """``<label>: <message>`` on one line on stderr (``label`` in red on a terminal), ``message``
    sanitized and escaped; long lines are not wrapped."""
    err.print(f"[red]{escape(label)}:[/red] {escape(sanitize(message))}", soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """:func:`error`, then exit with ``code`` (2: configuration or input; 1: a check that failed)."""
    error(message)
    raise typer.Exit(code)
