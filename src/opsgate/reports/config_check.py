"""``opsgate config check``: every operation's effective route, and whether it can be served.

It lives with the reports because it reads both routing and metering (the price book), which are
independent layers."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from opsgate.clock import SystemClock
from opsgate.config import Settings, config_path
from opsgate.metering.prices import PriceBook
from opsgate.routing.effective import RouteView, config_problems, effective_routes
from opsgate.routing.policy import RouteConfigError
from opsgate.security.errorline import error

config_app = typer.Typer(help="The routing configuration (opsgate.toml).", no_args_is_help=True)
out = Console()


@config_app.command("check")
def check() -> None:
    """Print each operation's effective route (targets, key source, price per MTok in/out and
    its source, timeouts); exit 1 on any problem (unknown provider, missing key, missing price,
    and every ``op://`` reference start-up could not resolve, found by resolving it the way
    start-up does: :func:`opsgate.runtime.unresolvable_secrets`)."""
    from opsgate.runtime import unresolvable_secrets

    settings = Settings()
    clock = SystemClock()
    book = PriceBook.from_settings(settings, clock.now)
    path = config_path()
    out.print(f"config: {path} ({'read' if path.is_file() else 'absent: built-in defaults'})")
    problems = config_problems(settings, book, clock.now()) + unresolvable_secrets(settings, clock)
    try:
        views = effective_routes(settings, book, clock.now())
    except RouteConfigError:
        views = []
    if views:
        out.print(route_table(views))
    for line in problems:
        error(line, label="problem")
    if problems:
        raise typer.Exit(1)
    out.print(f"ok: {len(views)} operations routable")


def route_table(views: list[RouteView]) -> Table:
    """One row per operation: route, targets (key source, USD per MTok input/output and where the
    price comes from), per-attempt timeout, attempts per target, overall deadline."""
    table = Table(title="effective routes")
    for column in ("operation", "route", "targets", "timeout_s", "attempts", "total_s"):
        table.add_column(column, overflow="fold")
    for v in views:
        targets = "\n".join(
            f"{t.name}  key: {t.key_source}{'' if t.key_set else ' (unset)'}  "
            + (f"${t.price.price.input}/${t.price.price.output} per MTok ({t.price.source} "
               f"{t.price.version})" if t.price else "NO PRICE")
            for t in v.targets
        )
        p = v.policy
        table.add_row(v.operation, v.route, targets, f"{p.timeout_s:g}", str(p.max_attempts_per_target),
                      f"{p.total_timeout_s:g}" if p.total_timeout_s else "-")
    return table
