"""``opsgate secrets check``: where each secret comes from, how old it is, and which break the policy.

Checked by default: the provider keys (``ANTHROPIC_API_KEY``, ``DEEPSEEK_API_KEY``,
``GEMINI_API_KEY``, and each named endpoint's ``api_key_env`` variable) and, during a rotation
window, their ``<NAME>_PREVIOUS`` keys; more names may be given as arguments. Sources and ages come from :meth:`SecretStore.info` over the process
environment: ``env:NAME`` dated by ``<NAME>_ROTATED_AT`` (ISO 8601), or an ``op://`` reference
dated by the 1Password item's ``updatedAt`` (resolved through Connect, ledgered as a
``secret_access`` by ``opsgate-cli``).

A secret is a warning when it is older than ``OPSGATE_SECRET_MAX_AGE_DAYS`` (or ``--max-age-days``),
when its age is unknown (no ``_ROTATED_AT``), or when its reference cannot be resolved. Unset
secrets are listed, not warned about. Values are never printed.

Exit codes: 0 no warning (or warnings without ``--strict``), 1 a warning with ``--strict``,
2 the database (ledger) cannot be opened.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import timedelta
from typing import Annotated

import aiohttp
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from opsgate.clock import SystemClock
from opsgate.config import ENV_NAME, Settings
from opsgate.errors import OpsgateError
from opsgate.ledger.writer import Ledger
from opsgate.numbers import cli_int
from opsgate.security.errorline import fail
from opsgate.security.secrets import SecretInfo, SecretStore, connect_from_env, provider_key_names
from opsgate.store.db import make_engine, upgrade

CLI_ACTOR = "opsgate-cli"
secrets_app = typer.Typer(help="Secrets: sources, ages and the rotation policy.", no_args_is_help=True)
out = Console()


@secrets_app.callback()
def secrets() -> None:
    """Secrets: sources, ages and the rotation policy."""


@secrets_app.command("check")
def check(
    names: Annotated[list[str] | None, typer.Argument(help="More secret (variable) names to check.")] = None,
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any secret has a warning."),
    max_age_days: int = typer.Option(None, parser=cli_int(1), help="Policy age (default OPSGATE_SECRET_MAX_AGE_DAYS)."),
) -> None:
    """Report each secret's source and age; warn when one is older than the policy."""
    if not_names := [n for n in names or [] if not re.fullmatch(ENV_NAME, n)]:  # e.g. a key pasted for its name
        fail(f"not an environment variable name: {', '.join(not_names)}")
    settings = Settings()
    policy = timedelta(days=max_age_days or settings.secret_max_age_days)
    defaults = default_names(settings)
    checked = defaults + [n for n in names or [] if n not in defaults]
    try:
        if settings.auto_migrate:
            upgrade(settings.database_url)
        ledger = Ledger(make_engine(settings.database_url), SystemClock())
    except (SQLAlchemyError, OSError) as exc:
        fail(f"cannot open the database: {type(exc).__name__}")
    with ledger:
        rows = asyncio.run(_inspect(ledger, checked, policy))
    out.print(_table(rows, policy))
    warnings = sum(1 for _, _, warned in rows if warned)
    out.print(f"{warnings} warning(s); policy: at most {policy.days} days")
    if strict and warnings:
        raise typer.Exit(1)


def default_names(settings: Settings) -> list[str]:
    """The provider keys -- the built-in providers' and each named endpoint's ``api_key_env``
    (:func:`~opsgate.security.secrets.provider_key_names`) -- and each one's ``_PREVIOUS`` key
    while it is set (rotation window)."""
    names = provider_key_names(settings)
    return names + [f"{n}_PREVIOUS" for n in names if os.environ.get(f"{n}_PREVIOUS")]


async def _inspect(ledger: Ledger, names: list[str], policy: timedelta) -> list[tuple[SecretInfo, str, bool]]:
    """``(info, status, warned)`` per name, in order."""
    async with aiohttp.ClientSession() as session:
        store = SecretStore(ledger, SystemClock(), connect=connect_from_env(session))
        rows = []
        for name in names:
            try:
                info = await store.info(name, actor=CLI_ACTOR)
            except OpsgateError as exc:  # messages name the reference, never a value
                rows.append((SecretInfo(name, os.environ[name], None), exc.detail, True))
                continue
            except ValueError:
                rows.append((SecretInfo(name, f"env:{name}", None), f"{name}_ROTATED_AT is not ISO 8601", True))
                continue
            rows.append((info, *verdict(info, policy)))
        return rows


def verdict(info: SecretInfo, policy: timedelta) -> tuple[str, bool]:
    """``(status, warned)`` of one secret under ``policy``."""
    if info.source == "unset":
        return "not set", False
    if info.age is None:
        return f"age unknown (set {info.name}_ROTATED_AT)", True
    if info.age > policy:
        return f"older than {policy.days} days: rotate", True
    return "ok", False


def _table(rows: list[tuple[SecretInfo, str, bool]], policy: timedelta) -> Table:
    table = Table("secret", "source", "age (days)", "status", title=f"secrets (policy {policy.days} days)")
    for info, status, warned in rows:
        age = str(info.age.days) if info.age is not None else "-"
        table.add_row(info.name, info.source, age, f"[yellow]{status}[/yellow]" if warned else status)
    return table
