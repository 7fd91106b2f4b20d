"""``opsgate incidents list|show|ack|resolve`` (Typer app :data:`incidents_app`) and the
``opsgate worker`` command (:func:`worker`), both registered by ``opsgate.cli``.

They act on ``OPSGATE_DATABASE_URL`` directly as ``cli:<login>``; every incident change is written
to the ledger and its notifications queued in the outbox (the worker sends them). Exit status: 0
done, 2 an error (printed, never a traceback).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager

import typer
from rich.console import Console
from rich.table import Table

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.errors import OpsgateError
from opsgate.monitoring.incidents import IncidentService
from opsgate.monitoring.worker import Worker
from opsgate.security.errorline import fail
from opsgate.security.operator_input import operator_text

incidents_app = typer.Typer(help="Incidents: list, show, acknowledge, resolve.", no_args_is_help=True)
out = Console()


@contextmanager
def _service() -> Iterator[IncidentService]:
    from opsgate.runtime import cli_services

    try:
        with cli_services() as services:
            yield services.incidents
    except OpsgateError as exc:
        fail(f"{exc.code}: {exc.detail}")


@incidents_app.command("list")
def incidents_list(state: str = typer.Option(None, help="open, acknowledged or resolved")) -> None:
    """Incidents, newest first."""
    with _service() as svc:
        table = Table("id", "severity", "state", "opened", "title")
        for i in svc.list(state):
            table.add_row(i["id"], i["severity"], i["state"], i["opened_at"], i["title"])
        out.print(table)


@incidents_app.command("show")
def incidents_show(incident_id: str) -> None:
    """One incident with its timeline and notifications, as JSON."""
    with _service() as svc:
        out.print_json(json.dumps(svc.show(incident_id)))


@incidents_app.command("ack")
def incidents_ack(incident_id: str) -> None:
    """Acknowledge an open incident (stops escalation)."""
    with _service() as svc:
        svc.acknowledge(incident_id, f"cli:{getpass.getuser()}")
        out.print(f"{incident_id} acknowledged")


@incidents_app.command("resolve")
def incidents_resolve(incident_id: str, note: str = typer.Option(..., "--note", help="Resolution note.")) -> None:
    """Resolve an incident with a note."""
    with _service() as svc:
        svc.resolve(incident_id, f"cli:{getpass.getuser()}", operator_text("--note", note, required=True))
        out.print(f"{incident_id} resolved")


def worker() -> None:
    """Run the periodic jobs (alert rules, canary evaluation, escalations, outbox) until SIGTERM/SIGINT;
    with several workers only the leader works."""
    from opsgate.providers.http import make_session
    from opsgate.runtime import open_services

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with AsyncExitStack() as stack:
            session = make_session()
            stack.push_async_callback(session.close)
            shared = await open_services(stack, Settings(), SystemClock(), session)
            await Worker(shared.settings, shared.engine, shared.ledger, shared.clock, session,
                         incidents=shared.incidents, rollout=shared.rollout).run(stop)

    asyncio.run(main())
