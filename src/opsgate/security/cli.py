"""CLI of the security domain (Typer apps mounted by :mod:`opsgate.cli`):

``opsgate users add USER_ID [--role R] [--password] [--email E]``  (password read from a hidden prompt;
                             without --role an existing user keeps its role)
``opsgate keys status``      key versions, their ages, rows using each, rotation due or not
``opsgate keys rotate``      add a data key version (the current one from now on)
``opsgate keys reencrypt``   move every encrypted value to the current key (progress bar), then
                             retire the keys no row uses; a value that does not decrypt is
                             named (table, row, column), left as it is, and the exit code is 1
``opsgate keys metrics-token [--rotate]``  the /metrics scrape token file (mode 0600)
``opsgate backup create PATH | verify PATH | restore PATH [--target URL]``

Exit codes: 0 done, 1 a check failed (verify), 2 usage or I/O errors.
"""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress as Bar
from rich.progress import TaskID
from rich.table import Table
from sqlalchemy import Engine

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.errors import OpsgateError
from opsgate.numbers import cli_int
from opsgate.security.errorline import error, fail
from opsgate.security.service import SecurityServices, build_security
from opsgate.store.db import open_database

users_app = typer.Typer(help="Manage users, roles, passwords and email addresses.", no_args_is_help=True)
keys_app = typer.Typer(help="Field encryption keys: status, rotation, re-encryption; the /metrics scrape token.",
                        no_args_is_help=True)
backup_app = typer.Typer(help="Encrypted backups: create, verify, restore.", no_args_is_help=True)
out = Console()


def _engine(settings: Settings) -> Engine:
    return open_database(settings)


def _services(settings: Settings, engine: Engine) -> SecurityServices:
    return build_security(settings, SystemClock(), engine)


@users_app.callback()
def users() -> None:
    """Manage users, roles, passwords and email addresses."""


@users_app.command("add")
def users_add(
    user_id: str = typer.Argument(..., help="The user's id."),
    role: str | None = typer.Option(
        None, help="user | operator | admin. A new user: user when not given; an existing user's "
                   "role is kept when not given."),
    password: bool = typer.Option(False, "--password", help="Set a password (asked twice, hidden)."),
    email: str | None = typer.Option(None, help="Email address (stored encrypted)."),
) -> None:
    """Create a user (or change an existing user's role with --role), optionally with a password
    and email. A role is written to the ledger (``user.role_set``) as ``cli:<login>`` and a change
    revokes the user's refresh tokens and dashboard sessions, like the admin API (one
    :func:`set_role`); so does a new password for an existing user (and with them every access
    token of those logins). The password and the email are checked before anything is written."""
    from opsgate.runtime import cli_services
    from opsgate.security.passwords import check_password
    from opsgate.security.users import (
        check_email,
        find_by_email,
        set_email,
        set_password,
        set_role,
    )

    settings = Settings()
    secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None
    try:
        if secret is not None:
            check_password(secret)
        address = None if email is None else check_email(email)
        with cli_services(settings) as services:
            engine = services.engine
            security = _services(settings, engine)
            if address is not None and find_by_email(engine, security.cipher, address) not in (None, user_id):
                raise ValueError("another user has this email address")
            kept = _role_of(engine, user_id) if role is None else None
            created = kept is None and set_role(services.ledger, security.refresh, user_id, role or "user",
                                                f"cli:{getpass.getuser()}", services.clock.now()) is None
            if secret is not None:
                set_password(engine, user_id, secret)
                if not created:  # a password change ends every login of the user, access tokens included
                    security.refresh.revoke_user(user_id)
            if address is not None:
                set_email(engine, security.cipher, user_id, address)
    except (ValueError, OpsgateError) as exc:
        fail(str(exc))
    out.print(f"{'created' if created else 'updated'} {user_id} ({kept or role or 'user'})")


def _role_of(engine: Engine, user_id: str) -> str | None:
    """The role of ``user_id``, or None when there is no such user."""
    from opsgate.errors import NotFound
    from opsgate.security.users import get_role

    try:
        return get_role(engine, user_id)
    except NotFound:
        return None


@keys_app.command("status")
def keys_status() -> None:
    """Show every key version: purpose, age in days, values using it, rotation policy."""
    from opsgate.security.reencrypt import keys_in_use

    settings = Settings()
    engine = _engine(settings)
    try:
        ring = _services(settings, engine).keyring
        current, _ = ring.current()
    except OpsgateError as exc:  # a master key that is missing or does not unwrap the ring
        fail(exc.detail)
    used = keys_in_use(engine)
    table = Table("key", "purpose", "created (UTC)", "age (days)", "values", "state")
    for v in ring.versions():
        age = ring.age_s(v.key_id) / 86400
        state = "retired" if v.retired_at else ("current" if v.key_id == current else ("active" if v.purpose == "data" else "index"))
        table.add_row(str(v.key_id), v.purpose, v.created_at.isoformat(timespec="seconds"), f"{age:.1f}",
                      str(used.get(v.key_id, 0)) if v.purpose == "data" else "-", state)
    out.print(table)
    if ring.age_s(current) > settings.key_rotation_days * 86400:
        out.print(f"[yellow]rotation due:[/yellow] the current key is older than {settings.key_rotation_days} days; "
                  "run `opsgate keys rotate` then `opsgate keys reencrypt`")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new data key version; new values are encrypted with it at once. Written to the
    ledger (``key.rotate``, key ids only) as ``cli:<login>``."""
    from opsgate.runtime import cli_services

    settings = Settings()
    try:
        with cli_services(settings) as services:
            ring = _services(settings, services.engine).keyring
            key_id = ring.rotate(services.ledger, f"cli:{getpass.getuser()}")
    except OpsgateError as exc:
        fail(exc.detail)
    out.print(f"data key {key_id} is now current; run `opsgate keys reencrypt` to move old values")


@keys_app.command("reencrypt")
def keys_reencrypt(batch_size: int = typer.Option(500, parser=cli_int(1), help="Rows per transaction.")) -> None:
    """Re-encrypt old values under the current key, then retire keys no value uses. Each batch and
    each retirement is written to the ledger (``key.reencrypt``, ``key.retire``: key ids and
    counts) as ``cli:<login>``, in the transaction of its change. Each value that does not decrypt
    is printed (table, row, column, why) and left as it is, the rest still move, and the exit code
    is 1; the key such a value names is not retired."""
    from opsgate.runtime import cli_services
    from opsgate.security.reencrypt import Progress, reencrypt, retire_unused

    settings = Settings()
    actor = f"cli:{getpass.getuser()}"
    try:
        with cli_services(settings) as services, Bar(console=out) as bar:
            security = _services(settings, services.engine)
            tasks: dict[str, TaskID] = {}

            def progress(p: Progress) -> None:
                task = tasks.setdefault(p.column, bar.add_task(p.column, total=p.total))
                bar.update(task, completed=p.scanned)

            done = reencrypt(services.engine, security.cipher, security.keyring, services.ledger, actor,
                             batch_size=batch_size, progress=progress)
            retired = retire_unused(services.engine, security.keyring, services.ledger, actor)
    except OpsgateError as exc:
        fail(exc.detail)
    for bad in done.undecryptable:
        error(str(bad), label="undecryptable")
    out.print(f"moved {done.moved} values; retired keys: {', '.join(map(str, retired)) or 'none'}")
    if done.undecryptable:
        fail(f"{len(done.undecryptable)} values do not decrypt and were left as they are; the keys they name "
             "stay until they are repaired or cleared", 1)


@keys_app.command("metrics-token")
def keys_metrics_token(
    rotate: bool = typer.Option(False, "--rotate", help="Replace an existing token (scrapers must re-read it)."),
) -> None:
    """Create the /metrics scrape token file (mode 0600) at OPSGATE_METRICS_TOKEN_FILE
    (default .opsgate/metrics-token). The token itself is never printed."""
    from opsgate.security import metrics_token

    configured = Settings().metrics_token_file
    path = configured or metrics_token.DEFAULT_PATH
    try:
        created = metrics_token.create(path, rotate=rotate)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")
    if not created:
        out.print(f"kept the existing token in {path} (--rotate replaces it)")
    else:
        out.print(f"{'rotated' if rotate else 'created'} the scrape token in {path} (mode 0600)")
    if configured is None:
        out.print(f"set OPSGATE_METRICS_TOKEN_FILE={path.resolve()} for opsgate serve")


@backup_app.command("create")
def backup_create(path: Path = typer.Argument(..., help="Where to write the encrypted backup.")) -> None:
    """Back up the database (SQLite online backup or pg_dump), encrypted with AES-256-GCM."""
    from opsgate.security.backup import create
    from opsgate.security.errors import BackupError

    try:
        size = create(Settings(), path)
    except (BackupError, OSError) as exc:
        fail(str(exc))
    out.print(f"wrote {path} ({size} bytes before encryption)")


@backup_app.command("verify")
def backup_verify(path: Path = typer.Argument(..., help="An encrypted backup.")) -> None:
    """Decrypt, restore into a scratch database and verify the ledger. Exit 1 when it fails."""
    from opsgate.ledger.verify import format_summary
    from opsgate.security.backup import verify_backup
    from opsgate.security.errors import BackupError

    try:
        found = verify_backup(Settings(), path)
    except (BackupError, OSError) as exc:
        fail(str(exc))
    out.print(f"{found.kind} backup, {found.size} bytes: {format_summary(found.report)}")
    raise typer.Exit(0 if found.report.ok else 1)


@backup_app.command("restore")
def backup_restore(
    path: Path = typer.Argument(..., help="An encrypted backup."),
    target: str | None = typer.Option(None, help="Database URL to restore into (default: OPSGATE_DATABASE_URL)."),
) -> None:
    """Restore a backup into the target database (stop the gateway first). When the restored
    ledger is behind one of its anchors (each read from the anchor itself), it raises the P1
    "Ledger verification failed" incident at once (notifications queued for the worker) and exits
    1: checkpoints stay unsigned until ``opsgate ledger accept-rollback``. Exit 2 when the
    anchors cannot be read."""
    from opsgate.ledger.errors import AnchorError, LedgerRolledBack
    from opsgate.ledger.scheduled import check_configured
    from opsgate.runtime import cli_services
    from opsgate.security.backup import restore
    from opsgate.security.errors import BackupError
    from opsgate.store.db import make_engine

    settings = Settings()
    url = target or settings.database_url
    try:
        restore(settings, path, url)
    except (BackupError, OSError) as exc:
        fail(str(exc))
    out.print(f"restored {path} into the database")
    restored = settings.model_copy(update={"database_url": url})
    engine = make_engine(url)
    try:
        asyncio.run(check_configured(restored, engine))
    except AnchorError as exc:
        fail(f"the restored ledger could not be compared with its anchors: {exc}")
    except LedgerRolledBack as exc:
        detail = (f"rolled_back at seq {exc.log_size}: backup restore left the ledger behind its anchor "
                  f"({exc.anchored_size} > {exc.log_size} entries)")
        with cli_services(restored) as services:
            incident = services.incidents.ledger_failed(detail)
        fail(f"the restored ledger is behind its anchor ({exc.anchored_size} > {exc.log_size} entries), "
              f"P1 incident {incident or 'already open'}: {exc}", 1)
    finally:
        engine.dispose()
