"""``opsgate budgets set|delete|show`` and ``opsgate costs reconcile`` (Typer apps ``budgets_app`` and
``costs_app``; registered in :mod:`opsgate.cli`)."""

from __future__ import annotations

import getpass
from decimal import Decimal
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Column, Table
from sqlalchemy import Engine

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.errors import OpsgateError
from opsgate.metering.models import ANY, SHADOW
from opsgate.security.errorline import error, fail

budgets_app = typer.Typer(help="Budgets: limits, spent and reserved (micro-USD).", no_args_is_help=True)
costs_app = typer.Typer(help="Cost accuracy against provider invoices.", no_args_is_help=True)
out = Console()
AMOUNT_NAMES = ("limit", "spent", "reserved", "left", "over by")


def _engine() -> Engine:
    from opsgate.store.db import open_database

    return open_database(Settings())


def _usd(micro: int) -> str:
    """Integer micro-USD shown as dollars, exactly (Decimal, no float)."""
    return f"${Decimal(micro).scaleb(-6):,.6f}"


USER_OPTION = typer.Option(None, "--user", help="Budget of this user (with --operation: of the pair).")
OPERATION_OPTION = typer.Option(None, "--operation", help="Budget of this operation.")
GLOBAL_OPTION = typer.Option(False, "--global", help="The global budget.")
SCOPE_OPTION = typer.Option(None, "--scope", help="shadow: the budget of variant rollouts' shadow calls.")
PERIOD_OPTION = typer.Option(..., "--period", help="day | month (UTC calendar periods).")


def _scope(user: str | None, operation: str | None, global_: bool, scope: str | None) -> tuple[str, str]:
    """``(user_id, operation)`` of the scope the options name (``*`` the wildcard); exit 2 unless
    exactly one of --global, --scope shadow, or --user and/or --operation is given."""
    if scope not in (None, "shadow"):
        fail("--scope takes one value: shadow")
    if [global_, bool(user or operation), scope is not None].count(True) != 1:
        fail("give --global, --scope shadow, or --user and/or --operation")
    return user or ANY, SHADOW if scope else operation or ANY


@budgets_app.command("set")
def budgets_set(
    user: str = USER_OPTION,
    operation: str = OPERATION_OPTION,
    global_: bool = GLOBAL_OPTION,
    scope: str = SCOPE_OPTION,
    period: str = PERIOD_OPTION,
    limit_usd: str = typer.Option(..., "--limit-usd", help="Limit in USD, e.g. 25.00."),
    on_exhausted: str = typer.Option(
        None, "--on-exhausted",
        help="refuse (402, the default for a new budget) | cheaper (serve the call degraded by the "
             "first cheaper target of its chain that fits). Unchanged when not given."),
) -> None:
    """Create or change a budget: --user U, --operation OP, both, --global, or --scope shadow.
    Written to the ledger (``budget.set``) as ``cli:<login>``, like the admin API. A --user with
    no ``users`` row is set (docs/budgets.md: a budget may precede the user) with a note on stderr,
    so a mistyped id is seen."""
    from opsgate.metering.budgets import set_budget, usd_to_micro
    from opsgate.runtime import cli_services

    user_id, operation_id = _scope(user, operation, global_, scope)
    try:
        with cli_services() as services:
            budget = set_budget(services.ledger, services.clock, actor=f"cli:{getpass.getuser()}",
                                user_id=user_id, operation=operation_id,
                                period=period, limit_micro_usd=usd_to_micro(limit_usd),
                                on_exhausted=on_exhausted)
            known = user_id == ANY or _has_user(services.engine, user_id)
    except OpsgateError as exc:
        fail(exc.detail)
    out.print(f"{budget.scope} {budget.period} budget: {_usd(budget.limit_micro_usd)}, "
              f"on exhausted: {budget.on_exhausted}")
    if not known:
        error(f"there is no user {user_id!r} yet; the budget applies to its calls once it exists (check the id "
              "if you meant an existing user)", label="note")


def _has_user(engine: Engine, user_id: str) -> bool:
    """Whether ``user_id`` has a row in ``users`` (a budget may name a user before it exists)."""
    from opsgate.errors import NotFound
    from opsgate.security.users import get_role

    try:
        get_role(engine, user_id)
    except NotFound:
        return False
    return True


@budgets_app.command("delete")
def budgets_delete(
    user: str = USER_OPTION,
    operation: str = OPERATION_OPTION,
    global_: bool = GLOBAL_OPTION,
    scope: str = SCOPE_OPTION,
    period: str = PERIOD_OPTION,
) -> None:
    """Delete a budget (the scope options as for set), with its counters. Written to the ledger
    (``budget.delete``) as ``cli:<login>``, like ``DELETE /v1/admin/budgets/{id}``. Refused (exit
    2) for no such budget, and while calls in flight hold reservations against it (reservations
    that expired are charged first, as ``budgets show`` does)."""
    from opsgate.metering.budgets import delete_budget, find_budget
    from opsgate.metering.reservations import expire_reservations
    from opsgate.runtime import cli_services

    user_id, operation_id = _scope(user, operation, global_, scope)
    try:
        with cli_services() as services:
            found = find_budget(services.engine, user_id, operation_id, period)
            expire_reservations(services.engine, services.clock)
            budget = delete_budget(services.ledger, actor=f"cli:{getpass.getuser()}", budget_id=found.id)
    except OpsgateError as exc:
        fail(exc.detail)
    out.print(f"deleted the {budget.scope} {budget.period} budget ({_usd(budget.limit_micro_usd)})")


@budgets_app.command("show")
def budgets_show() -> None:
    """List budgets with this period's spent, reserved and left amounts and the calls each refused
    and degraded today (UTC); expired reservations are charged first. ``left`` is never negative:
    a budget past its limit shows $0 left and an ``over by`` line (as the API's ``over_micro_usd``
    and the dashboard's Over by column). One row per budget, its
    amounts stacked, so amounts and scope are never cut at 80 columns (a long scope folds)."""
    from opsgate.metering.budgets import budget_statuses
    from opsgate.metering.reservations import expire_reservations

    engine, clock = _engine(), SystemClock()
    expired = expire_reservations(engine, clock)
    statuses = budget_statuses(engine, clock.now())
    if not statuses:
        out.print("no budgets configured (set one with `opsgate budgets set --global --period day "
                  "--limit-usd 50`)")
    amounts = [[_usd(m) for m in (s.budget.limit_micro_usd, s.spent_micro_usd, s.reserved_micro_usd,
                                  s.left_micro_usd, *([s.over_micro_usd] if s.over_micro_usd else []))]
               for s in statuses]
    widest = max((len(a) for row in amounts for a in row), default=0)
    table = Table(Column("scope", overflow="fold"), Column("period\n(since)", no_wrap=True),
                  Column("on\nexhausted", no_wrap=True), Column("", no_wrap=True),
                  Column("USD", justify="right", no_wrap=True, min_width=widest, overflow="fold"),
                  Column("today\n(UTC)", no_wrap=True))
    for s, usd in zip(statuses, amounts, strict=True):
        table.add_row(s.budget.scope, f"{s.budget.period}\n{s.period_start:%Y-%m-%d}",
                      s.budget.on_exhausted, "\n".join(AMOUNT_NAMES[:len(usd)]), "\n".join(usd),
                      f"refused {s.refused_today}\ndegraded {s.degraded_today}", end_section=True)
    if statuses:
        out.print(table)
    if expired:
        out.print(f"[yellow]{len(expired)} expired reservation(s) charged at their worst case[/yellow]")


@costs_app.command("reconcile")
def costs_reconcile(
    provider: str = typer.Option(..., "--provider", help="anthropic | deepseek | gemini"),
    invoice: Path = typer.Option(..., "--invoice", exists=True, dir_okay=False, help="Export file."),
) -> None:
    """Match a provider's usage/cost export against the operation log by UTC day and model.
    Exit 1 when any discrepancy exceeds 1 %, 2 when the file cannot be read."""
    from opsgate.metering.invoices import InvoiceFormatError, parse_invoice
    from opsgate.metering.reconcile import THRESHOLD_PCT, reconcile

    try:
        lines = parse_invoice(provider, invoice)
    except InvoiceFormatError as exc:
        fail(str(exc))
    report = reconcile(_engine(), SystemClock(), provider, invoice.name, lines)
    table = Table("day (UTC)", "model", "tracked", "invoiced", "difference", "accuracy")
    for r in report.rows:
        style = "red" if r.discrepant else ""
        table.add_row(r.day.isoformat(), r.model, _usd(r.tracked_micro_usd),
                      _usd(r.invoiced_micro_usd), _usd(r.difference_micro_usd),
                      f"{r.accuracy_pct} %", style=style)
    out.print(table)
    out.print(f"run {report.run_id}: {len(report.rows)} day/model rows; "
              f"threshold {THRESHOLD_PCT} %; {'DISCREPANCY' if report.discrepant else 'ok'}")
    raise typer.Exit(1 if report.discrepant else 0)
