"""CLI of the reports (registered by :mod:`opsgate.cli`):

``opsgate report security [--date YYYY-MM-DD] [--format md|html|json] [--output PATH]``
    the daily security report (default: today so far, UTC) on stdout or into PATH.
``opsgate readiness [--json] [--backup PATH] [--rehearsal PATH] [--root DIR]``
    the pre-production audit; exit 0 ready, 1 a blocking item failed, 2 usage or I/O errors.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.ledger.errors import LedgerError
from opsgate.monitoring.evidence import project_root
from opsgate.rehearsal.report import criteria_table
from opsgate.reports.readiness import DEPLOYMENT_CHECKLIST, Audit, Context, run_readiness
from opsgate.reports.render import FORMATS, render
from opsgate.reports.security import build_security_report
from opsgate.security.errorline import fail
from opsgate.store.db import open_database

report_app = typer.Typer(help="Operator reports.", no_args_is_help=True)
out, err = Console(), Console(stderr=True)
MARKS = {"pass": "[x]", "fail": "[ ]", "n/a": "[ ] n/a", "manual": "[ ] manual"}


def _engine(settings: Settings) -> Engine:
    try:
        return open_database(settings)
    except (SQLAlchemyError, OSError) as exc:
        fail(f"cannot open the database: {type(exc).__name__}")


@report_app.callback()
def report() -> None:
    """Operator reports."""


@report_app.command("security")
def security(
    day: str | None = typer.Option(None, "--date", help="UTC day YYYY-MM-DD (default: today)."),
    fmt: str = typer.Option("md", "--format", help="md, html or json."),
    output: Path | None = typer.Option(None, "--output", help="Write here instead of stdout."),
) -> None:
    """The daily security report: auth failures, secret accesses, keys, ledger, incidents,
    redactions and weak settings, from the database and the ledger."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}", param_hint="--format")
    try:
        chosen = date.fromisoformat(day) if day else datetime.now(UTC).date()
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint="--date") from None
    settings = Settings()
    try:
        text = render(
            build_security_report(_engine(settings), settings, chosen, SystemClock().now()), fmt
        )
    except (LedgerError, SQLAlchemyError) as exc:
        fail(f"cannot read the database: {type(exc).__name__}")
    if output is None:
        print(text, end="")
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or type(exc).__name__}")
        err.print(f"report written to {output}")


def readiness(
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON."),
    backup: Path | None = typer.Option(
        None, "--backup", exists=True, dir_okay=False, help="Latest backup to verify."
    ),
    rehearsal: Path | None = typer.Option(
        None,
        "--rehearsal",
        exists=True,
        dir_okay=False,
        help="JSON report of `opsgate rehearse --report`: its calls stand in for the health window.",
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="Project directory holding docs/runbooks and the last test run's artifacts/ "
        "(default: the checkout).",
    ),
) -> None:
    """Run the seed's pre-production security audit (its seven headings) and deployment checklist
    (pre-deployment, deployment day, post-deployment), every line once, against the running
    configuration and database, then print the seed's success criteria with their evidence;
    exit 1 when a blocking item fails."""
    settings = Settings()
    ctx = Context(
        settings, _engine(settings), SystemClock(), root or project_root(), backup, rehearsal
    )
    audit = asyncio.run(run_readiness(ctx))
    if as_json:
        print(json.dumps(audit.to_dict(), indent=2))
    else:
        _print(audit)
    raise typer.Exit(0 if audit.ready else 1)


def _print(audit: Audit) -> None:
    section = None
    for item in audit.items:
        if item.section != section:
            section = item.section
            part = "Deployment checklist" if section in DEPLOYMENT_CHECKLIST else "Security audit"
            out.print(f"\n[bold]{part}: {escape(section)}[/bold]")
        mark = MARKS[item.status]
        colour = {"pass": "green", "fail": "red" if item.blocking else "yellow"}.get(
            item.status, "dim"
        )
        out.print(
            f"[{colour}]{escape(mark)}[/{colour}] {escape(item.title)}: {escape(item.evidence)}"
        )
    out.print(criteria_table(audit.criteria))
    failed = [i.title for i in audit.items if i.blocking and i.status == "fail"]
    out.print(
        "[green]READY[/green]"
        if audit.ready
        else f"[red]NOT READY[/red]: {len(failed)} blocking item(s) failed"
    )
