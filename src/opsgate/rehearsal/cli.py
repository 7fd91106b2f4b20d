"""The ``opsgate rehearse`` command (registered by :mod:`opsgate.cli`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from opsgate.monitoring.evidence import artifacts_dir
from opsgate.numbers import cli_float, cli_int
from opsgate.rehearsal.driver import DEFAULT_EXAMPLES, RehearsalConfig
from opsgate.rehearsal.driver import rehearse as run_rehearsal
from opsgate.rehearsal.report import criteria, render, scenario_passed, write_json
from opsgate.rehearsal.scenarios import SCENARIOS


def rehearse(
    hours: float = typer.Option(48, parser=cli_float(1), help="Simulated hours (the seed's plan is scaled to fit)."),
    users: int = typer.Option(10_000, parser=cli_int(10), help="Synthetic users."),
    scenario: str = typer.Option("healthy", help=f"One of: {', '.join(SCENARIOS)}."),
    seed: int = typer.Option(0, parser=cli_int(), help="Random seed: the same seed gives the same report."),
    report: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    database_url: str | None = typer.Option(None, help="Database (default: SQLite in a temporary directory)."),
    examples: Annotated[Path, typer.Option(help="Directory with one example input per operation.")] = DEFAULT_EXAMPLES,
) -> None:
    """Replay the seed's 48-hour canary plan (5 % -> 25 % -> 100 %) on a compressed clock against the
    sandboxes; print the scenario's checks, the success criteria (with the last `./dev test` run's
    reports) and the decision timeline. Exit 1 if a scenario check fails."""
    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"expected one of {', '.join(SCENARIOS)}", param_hint="--scenario")
    config = RehearsalConfig(hours=hours, users=users, scenario=scenario, seed=seed,
                             database_url=database_url, examples=examples)
    console = Console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f} %"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"rehearsal {scenario}, {hours:g} simulated hours", total=1.0)
        result = asyncio.run(run_rehearsal(config, lambda done: progress.update(task, completed=done)))
    artifacts = artifacts_dir()
    render(result, console, artifacts)
    if report is not None:
        result["success_criteria"] = criteria(result, artifacts, f"rehearsal {report}")
        write_json(result, report)
        console.print(f"report written to {report}")
    if not scenario_passed(result):
        raise typer.Exit(1)
