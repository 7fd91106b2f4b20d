"""The ``opsgate`` command line (Typer): serve, sandbox, run, demo, users, token, ledger, db."""

from __future__ import annotations

import asyncio
import socket
import sys
import traceback
import uuid
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import orjson
import typer
from sqlalchemy.exc import DBAPIError
from typer.core import TyperGroup

from opsgate.clock import SystemClock
from opsgate.config import ConfigError, Settings, load_settings, setting_origin
from opsgate.errors import NotFound, OpsgateError
from opsgate.ledger.cli import ledger_app
from opsgate.metering.cli import budgets_app, costs_app
from opsgate.metering.prices import PriceBook
from opsgate.monitoring.cli import incidents_app, worker
from opsgate.numbers import cli_int
from opsgate.operations.cli import privacy_app
from opsgate.rehearsal.cli import rehearse
from opsgate.reports.cli import readiness, report_app
from opsgate.reports.config_check import config_app
from opsgate.rollout.cli import rollout_app, toggles_app, variants_app
from opsgate.rollout.variants import checked_variants
from opsgate.routing.effective import checked_routes
from opsgate.routing.policy import RouteConfigError
from opsgate.security.errors import KeyRingError
from opsgate.sandbox.faults import FaultProfile, FaultProfileError
from opsgate.security.cli import backup_app, keys_app, users_app
from opsgate.security.idp import idp_problems
from opsgate.security.secrets_cli import secrets_app
from opsgate.security.logging import configure_logging
from opsgate.security.sanitizer import configure_from_settings as configure_sanitizer
from opsgate.security.sanitizer import sanitize
from opsgate.security.errorline import fail
from opsgate.store.db import begin_write, connect_failure


class _Boundary(TyperGroup):
    """The root command: every command runs inside :meth:`invoke`, the one place a configuration
    failure becomes ``error: <one line>`` and exit 2: a :class:`ConfigError` from settings, the
    configuration file, the database URL or start-up (a provider key reference that cannot be
    resolved), a routing configuration that cannot be served, a database connection that fails,
    a :class:`KeyRingError` (a master key that is missing or does not unwrap the key ring).
    The gateway's start-up raises into it for serve, run, demo and rehearse alike
    (:func:`opsgate.app.open_app`). Any other exception prints its traceback through the
    sanitizer (no secret, no local variables) and exits 1."""

    def invoke(self, ctx: Any) -> Any:  # Typer's own click Context (typer._click, private)
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):  # usage errors, exits: Typer's
            raise
        except (ConfigError, KeyRingError) as exc:  # KeyRingError: a master key missing or not unwrapping the ring
            fail(str(exc))
        except RouteConfigError as exc:
            fail("; ".join(exc.problems))
        except DBAPIError as exc:  # settings loaded (the callback ran) before any database use
            failure = connect_failure(exc, Settings().database_url)
            if failure is None:
                _internal_error(exc)
            fail(str(failure))
        except Exception as exc:
            _internal_error(exc)


def _internal_error(exc: Exception) -> NoReturn:
    """A bug, not a configuration: the traceback (no local variables), sanitized, and exit 1."""
    sys.stderr.write(sanitize("".join(traceback.format_exception(exc))))
    raise typer.Exit(1) from None


app = typer.Typer(help="opsgate: a governed gateway for an app's AI operations.", no_args_is_help=True,
                  cls=_Boundary)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(ledger_app, name="ledger")
app.add_typer(db_app, name="db")
app.add_typer(budgets_app, name="budgets")
app.add_typer(costs_app, name="costs")
app.add_typer(toggles_app, name="toggles")
app.add_typer(rollout_app, name="rollout")
app.add_typer(variants_app, name="variants")
app.add_typer(incidents_app, name="incidents")
app.add_typer(keys_app, name="keys")
app.add_typer(backup_app, name="backup")
app.add_typer(secrets_app, name="secrets")
app.add_typer(report_app, name="report")
app.add_typer(privacy_app, name="privacy")
app.add_typer(config_app, name="config")
app.command("worker")(worker)
app.command("rehearse")(rehearse)
app.command("readiness")(readiness)

CLI_USER = "opsgate-cli"


@app.callback()
def main() -> None:
    """opsgate: a governed gateway for an app's AI operations."""
    settings = load_settings()  # a ConfigError ends the command here (_Boundary), before any work
    configure_sanitizer(settings)
    configure_logging(settings.log_level, json=not sys.stderr.isatty())


def _settings(sandbox: bool = False, faults: str | None = None) -> Settings:
    """The settings of a command that serves calls; a routing or variant configuration that cannot
    be served (unknown provider, missing price, unknown prompt version), or a setting only the
    gateway's start-up reads (:func:`_start_up_problems`), refuses here, one line per problem.
    ``--faults`` without the sandboxes (``--sandbox`` or ``OPSGATE_SANDBOX``) is refused: the
    providers would be the real ones."""
    settings = Settings()
    update: dict[str, object] = {}
    if sandbox:
        update["sandbox"] = True
    if faults is not None:
        update["sandbox_faults"] = faults
    settings = settings.model_copy(update=update) if update else settings
    if faults is not None and not settings.sandbox:
        fail("--faults needs --sandbox: without it the providers are the real ones")
    now = SystemClock().now
    prices = PriceBook.from_settings(settings, now)
    checked_variants(settings, checked_routes(settings, prices, now()), prices, now())
    if problems := _start_up_problems(settings):
        fail("; ".join(problems))
    return settings


def _start_up_problems(settings: Settings) -> list[str]:
    """Settings whose values only the gateway's start-up used to check, deep inside it, with a
    traceback: the sandboxes' fault profile, a latency seed outside a rehearsal, the identity
    provider's settings (:func:`~opsgate.security.idp.idp_problems`). Each problem names the
    setting."""
    problems = []
    if settings.sandbox:
        try:
            FaultProfile.parse(settings.sandbox_faults)
        except FaultProfileError as exc:
            problems.append(f"{setting_origin(('sandbox_faults',))}: {exc}")
    if settings.sandbox_latency_seed is not None:
        problems.append(f"{setting_origin(('sandbox_latency_seed',))}: is for rehearsals only "
                        "(`opsgate rehearse`, on its simulated clock)")
    return problems + idp_problems(settings)


def _fault_profile(profile: str | None) -> str | None:
    """The ``--faults`` option's check, as it is parsed: ``error: --faults: <what is wrong>`` and
    exit 2 for a profile :class:`~opsgate.sandbox.faults.FaultProfile` cannot parse."""
    if profile is not None:
        try:
            FaultProfile.parse(profile)
        except FaultProfileError as exc:
            fail(f"--faults: {exc}")
    return profile


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, parser=cli_int(0, 65535), help="TCP port."),
    sandbox: bool = typer.Option(False, "--sandbox", help="Serve providers from loopback sandboxes."),
    faults: str = typer.Option(None, callback=_fault_profile, help="Sandbox fault profile (with --sandbox)."),
    workers: int = typer.Option(1, parser=cli_int(1), help="Worker processes sharing the port (replicas)."),
    per_worker_limits: bool = typer.Option(
        False, "--per-worker-limits",
        help="With --workers N and no OPSGATE_REDIS_URL: accept that every worker counts the rate "
             "limits on its own (each limit is multiplied by N)."),
    worker_healthcheck_s: int = typer.Option(
        None, "--worker-healthcheck-s", parser=cli_int(1), show_default=False,
        help="With --workers N: seconds a worker may take to answer the supervisor's ping (its cold "
             "start included) before it is killed and replaced [default: 60]."),
) -> None:
    """Run the HTTP API (OpenAPI at /docs). With ``--workers N`` each worker is a full replica
    (own event loop, ledger writer and provider session) over the same database: worth it on
    PostgreSQL; on SQLite the single database writer serialises them. Rate limits set without
    ``OPSGATE_REDIS_URL`` would be counted per worker, so N > 1 workers refuse to start then,
    unless ``--per-worker-limits`` accepts it.

    The gateway starts (:func:`opsgate.app.open_app`) before the port accepts a connection and
    outside uvicorn's lifespan, so what start-up raises reaches this command's boundary: an
    unresolvable key reference, a database that refuses, a port that cannot be bound are one
    line and exit 2. With N workers the start-up runs once here first (then closes), since
    uvicorn's worker processes would each log their own traceback."""
    from opsgate.app import open_app
    from opsgate.localserver import serve as serve_app
    from opsgate.localserver import WORKER_HEALTHCHECK_S, serve_workers

    if workers == 1:
        settings = _settings(sandbox, faults)
        serve_app(partial(open_app, settings), _listen(host, port), freeze=True)
        return
    if sandbox or faults is not None:
        fail("--sandbox and --faults run in one process; start `opsgate sandbox --faults ...` and point the "
              "*_BASE_URL variables at it")
    settings = _settings()
    if _limits_set(settings) and not settings.redis_url and not per_worker_limits:
        fail(f"rate limits without OPSGATE_REDIS_URL would be counted per worker ({workers}x each limit); "
              "set OPSGATE_REDIS_URL or pass --per-worker-limits")
    sock = _listen(host, port)
    asyncio.run(_start_and_close(settings))
    if failed := serve_workers("opsgate.app:create_served_app", sock, workers, worker_healthcheck_s or WORKER_HEALTHCHECK_S):
        fail(f"worker process {', '.join(map(str, failed))} failed to start (its error is above)")


async def _start_and_close(settings: Settings) -> None:
    """Open the gateway's runtime and close it again: start-up's own check, raising what start-up
    raises (``opsgate serve --workers N`` before its workers start)."""
    from opsgate.runtime import start_runtime

    await (await start_runtime(settings)).close()


def _listen(host: str, port: int) -> socket.socket:
    """``host:port`` bound (:func:`opsgate.localserver.bind`), or one line and exit 2 when it cannot
    be (in use, not permitted, an unknown host)."""
    from opsgate.localserver import bind

    try:
        return bind(host, port)
    except OSError as exc:
        _listen_failed(host, port, exc)


def _listen_failed(host: str, port: int, exc: OSError) -> NoReturn:
    fail(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}")


def _limits_set(settings: Settings) -> bool:
    return any((settings.rate_limit_user_rpm, settings.rate_limit_user_tpm,
                settings.rate_limit_user_operation_rpm, settings.rate_limit_user_operation_tpm))


@app.command("sandbox")
def sandbox_cmd(
    host: str = typer.Option("127.0.0.1", help="Loopback interface to bind."),
    port: int = typer.Option(8100, parser=cli_int(0, 65535), help="TCP port."),
    faults: str = typer.Option("none", callback=_fault_profile,
                               help="Fault profile, e.g. flaky or outage:anthropic,slow:20ms."),
) -> None:
    """Serve the Anthropic, DeepSeek and Gemini sandboxes on one loopback port; a port that cannot
    be listened on (in use, not permitted, an unknown host) is one line and exit 2."""
    from opsgate.sandbox.server import run_sandbox_forever

    try:
        run_sandbox_forever(host, port, faults)
    except OSError as exc:
        _listen_failed(host, port, exc)


@app.command()
def run(
    operation: str = typer.Argument(..., help="Operation id, e.g. email-classify."),
    input: Path = typer.Option(..., "--input", exists=True, dir_okay=False, help="Input file."),
    user: str = typer.Option(CLI_USER, help="User id the call runs as."),
    sandbox: bool = typer.Option(False, "--sandbox", help="Use loopback provider sandboxes."),
    faults: str = typer.Option(None, callback=_fault_profile, help="Sandbox fault profile (with --sandbox)."),
) -> None:
    """Run one operation in-process through the full pipeline and print the result as JSON."""
    from opsgate.operations.io import input_from_file

    try:
        body = orjson.dumps(input_from_file(operation, input, None))
    except OpsgateError as exc:
        fail(f"{exc.code}: {exc.detail}", 1)
    settings = _settings(sandbox, faults)
    try:
        outcome, problem = asyncio.run(_run_once(settings, operation, body, user))
    except NotFound as exc:
        fail(exc.detail)
    if problem is not None:
        sys.stderr.buffer.write(orjson.dumps(problem, option=orjson.OPT_INDENT_2) + b"\n")
        fail(problem["code"], 1)
    sys.stdout.buffer.write(orjson.dumps(outcome, option=orjson.OPT_INDENT_2) + b"\n")


async def _run_once(settings: Settings, operation: str, body: bytes, user: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    from opsgate import tracing
    from opsgate.app import _outcome_body
    from opsgate.pipeline import Call
    from opsgate.problems import problem_body
    from opsgate.runtime import start_runtime
    from opsgate.security.users import get_role, seed_user

    runtime = await start_runtime(settings)
    try:
        # its own user is made once and kept as it is; any other user must exist (NotFound)
        role = seed_user(runtime.engine, runtime.clock, user) if user == CLI_USER else get_role(runtime.engine, user)
        token = runtime.tokens.issue(user, role)
        call = Call(operation, body, token, uuid.uuid4().hex)
        try:
            with tracing.call_span(operation, call.request_id):
                outcome = await runtime.gateway.govern(call)
            return _outcome_body(outcome), None
        except Exception as exc:  # reported as a problem document, like the API does
            return None, problem_body(exc, call.request_id)[1]
    finally:
        await runtime.close()


@app.command()
def demo(
    examples: Path = typer.Option(Path("examples"), help="Folder of example inputs, one per operation."),
    port: int = typer.Option(0, parser=cli_int(0, 65535), help="Port for the demo server (0 = any free port)."),
) -> None:
    """Serve opsgate on the sandboxes, call all nine operations over HTTP, verify the ledger."""
    from opsgate.demo import run_demo

    raise typer.Exit(run_demo(_settings(sandbox=True), examples, port))


@app.command()
def token(user_id: str = typer.Argument(..., help="An existing user's id.")) -> None:
    """Print a 1-hour access token for USER_ID, signed with the key the gateway verifies with
    (an ``op://`` reference in OPSGATE_JWT_SECRET resolved first, as at start-up)."""
    from opsgate.runtime import cli_services
    from opsgate.security.auth import TokenService
    from opsgate.security.users import get_role

    with cli_services() as services:
        try:
            role = get_role(services.engine, user_id)
        except OpsgateError as exc:
            fail(exc.detail, 1)
        print(TokenService(services.settings, services.clock).issue(user_id, role))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending Alembic migrations to OPSGATE_DATABASE_URL."""
    from opsgate.store.db import upgrade

    upgrade(Settings().database_url)
    print("database is at the latest migration")


@db_app.command("rls")
def db_rls(
    app_role: str = typer.Option(..., "--app-role", help="The non-owner role the gateway connects as."),
    admin_url: str | None = typer.Option(
        None, "--admin-url", help="A URL connecting as the tables' owner (default OPSGATE_DATABASE_URL)."
    ),
) -> None:
    """PostgreSQL: create or check the app role, grant it the tables, force row-level security
    on the user-owned ones (opsgate.security.rls.deploy_rls). Run after every `opsgate db upgrade`."""
    from sqlalchemy.exc import SQLAlchemyError

    from opsgate.security.rls import deploy_rls
    from opsgate.store.db import is_sqlite, make_engine, normalise_url

    url = normalise_url(admin_url or Settings().database_url)
    if is_sqlite(url):
        fail("row-level security needs PostgreSQL: SQLite has no roles or policies (one tenant, one file)")
    engine = make_engine(url)
    try:
        with begin_write(engine) as conn:
            done = deploy_rls(conn, app_role)
    except ValueError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"cannot install row-level security: {type(exc).__name__}: {getattr(exc, 'orig', exc)}", 1)
    finally:
        engine.dispose()
    print(f"app role {done.app_role}: {'created (set its password)' if done.role_created else 'exists, checked'}")
    for table, privileges in done.grants.items():
        print(f"granted {privileges} on {table}")
    print(f"row-level security enabled and forced, policies installed: {', '.join(done.forced)}")
    print(f"connect the gateway as {done.app_role} with OPSGATE_AUTO_MIGRATE=false")


if __name__ == "__main__":
    app()
