"""``opsgate ledger ...``: verify, prove, consistency, checkpoint, recover, guard, keygen.

Exit status: 0 ok; 1 tampering found (``verify`` printed ``FAIL ...``; a stored value of the
wrong type met by ``prove`` / ``consistency``) or a proof that does not verify; 2 configuration or I/O errors (no database, no key, unreadable anchor, unknown size).
Settings come from ``OPSGATE_*`` (``opsgate.config.Settings``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.ledger.anchors import DirectoryAnchor
from opsgate.ledger.checkpoint import Verifier, write_key_file
from opsgate.ledger.errors import LedgerError, LedgerRolledBack, ProofError, StoredValueError
from opsgate.ledger.guards import OWNER_ROLE, guard_postgres
from opsgate.ledger.proofs import (
    consistency_proof,
    inclusion_proof,
    verify_consistency_against,
    verify_inclusion_against,
)
from opsgate.ledger.recovery import DEFAULT_OLDER_THAN_S
from opsgate.ledger.scheduled import (
    Checkpointer,
    accept_rollback,
    anchors_for,
    signer_for,
    verify_configured,
)
from opsgate.ledger.service import checkpoint_of_size, latest_checkpoint, leaf_hashes
from opsgate.ledger.verify import format_summary, verify
from opsgate.ledger.writer import Ledger
from opsgate.numbers import cli_float, cli_int
from opsgate.security.errorline import fail
from opsgate.store.db import begin_write, make_engine, normalise_url

ledger_app = typer.Typer(
    help="Verify, prove and checkpoint the tamper-evident ledger.", no_args_is_help=True
)


def _engine(settings: Settings) -> Engine:
    try:
        return make_engine(settings.database_url)
    except (SQLAlchemyError, OSError) as exc:
        fail(f"cannot open the database: {type(exc).__name__}")


@ledger_app.command("verify")
def verify_cmd(
    anchors: Annotated[
        Path | None, typer.Option("--anchors", help="Directory anchor to check against (default: OPSGATE_LEDGER_ANCHOR_DIR).")
    ] = None,
    discord: bool = typer.Option(False, "--discord", help="Require the Discord anchor (exit 2 when it is not "
                                 "configured); it is read from its channel whenever it is configured."),
    vkey: str = typer.Option(None, "--verifier-key", help="Verifier key (default: from key file)."),
) -> None:
    """Recompute every entry, link, leaf and signed checkpoint; compare every configured anchor,
    read from the anchor itself (the configured directory unless --anchors names another, and the
    Discord channel). Prints ``OK ...`` (exit 0) or ``FAIL seq=N reason=...`` (exit 1)."""
    settings = Settings()
    if discord and (settings.ledger_discord_webhook_url is None or settings.ledger_discord_bot_token is None):
        fail("--discord needs OPSGATE_LEDGER_DISCORD_WEBHOOK_URL and OPSGATE_LEDGER_DISCORD_BOT_TOKEN")
    try:
        engine = _engine(settings)
        report = verify_configured(settings, engine, anchor_dir=anchors,
                                   verifier=Verifier(vkey) if vkey is not None else None)
    except (LedgerError, OSError, ValueError) as exc:
        fail(f"cannot verify: {type(exc).__name__}: {exc}")
    print(format_summary(report))
    raise typer.Exit(0 if report.ok else 1)


@ledger_app.command("prove")
def prove_cmd(seq: int = typer.Argument(..., parser=cli_int(0), help="Entry sequence number (= leaf index).")) -> None:
    """Print an RFC 9162 inclusion proof of entry SEQ against the latest signed checkpoint (JSON)."""
    settings = Settings()
    engine = _engine(settings)
    try:
        verifier = signer_for(settings, create=False).verifier()
        latest = latest_checkpoint(engine)
        if latest is None or not 0 <= seq < latest.size:
            fail(
                f"entry {seq} is not covered by a signed checkpoint (run `opsgate ledger checkpoint`)"
            )
        leaves = leaf_hashes(engine, latest.size)
        proof = inclusion_proof(leaves, seq, latest.size)
        verify_inclusion_against(leaves[seq], proof, latest.note, verifier)
    except ProofError as exc:
        fail(f"proof does not verify: {exc.detail}", 1)
    except StoredValueError as exc:
        fail(f"the ledger was tampered with: {exc.detail}", 1)
    except (LedgerError, OSError, SQLAlchemyError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    _print({"leaf_hash": _b64(leaves[seq]), **proof.to_json(), "checkpoint": latest.note.decode()})


@ledger_app.command("consistency")
def consistency_cmd(old: int = typer.Argument(..., parser=cli_int(0)), new: int = typer.Argument(..., parser=cli_int(0))) -> None:
    """Print an RFC 9162 consistency proof between two signed checkpoints' sizes (JSON)."""
    settings = Settings()
    engine = _engine(settings)
    try:
        verifier = signer_for(settings, create=False).verifier()
        old_cp, new_cp = checkpoint_of_size(engine, old), checkpoint_of_size(engine, new)
        if old_cp is None or new_cp is None:
            fail(f"no signed checkpoint of size {old if old_cp is None else new}")
        proof = consistency_proof(leaf_hashes(engine, new), old, new)
        verify_consistency_against(proof, old_cp.note, new_cp.note, verifier)
    except ProofError as exc:
        fail(f"proof does not verify: {exc.detail}", 1)
    except StoredValueError as exc:
        fail(f"the ledger was tampered with: {exc.detail}", 1)
    except (LedgerError, OSError, SQLAlchemyError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    _print(
        {
            **proof.to_json(),
            "old_checkpoint": old_cp.note.decode(),
            "new_checkpoint": new_cp.note.decode(),
        }
    )


@ledger_app.command("checkpoint")
def checkpoint_cmd() -> None:
    """Verify the whole log against its stored checkpoints (exit 1, nothing signed, when it does
    not verify: a signature must never look like an endorsement of a damaged log), then sign a
    checkpoint of it and post pending checkpoints to every anchor."""
    settings = Settings()
    engine = _engine(settings)
    try:
        signer = signer_for(settings, create=engine.dialect.name == "sqlite")
        report = verify(engine, verifier=signer.verifier())
        if not report.ok:
            fail(f"refusing to sign over a log that does not verify: {format_summary(report)}", 1)
        made = asyncio.run(_checkpoint(settings, engine, signer))
    except (LedgerRolledBack, StoredValueError) as exc:
        fail(str(exc), 1)
    except (LedgerError, OSError, SQLAlchemyError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    latest = latest_checkpoint(engine)
    state = "signed" if made is not None else "unchanged"
    print(f"checkpoint {state}: size={latest.size if latest else 0}")
    if settings.ledger_anchor_dir is not None and latest is not None:
        held = DirectoryAnchor(Path(settings.ledger_anchor_dir)).anchored_size()
        if held < latest.size:
            fail(f"the directory anchor holds {held} entries, behind the latest checkpoint ({latest.size}): "
                  f"anchoring is stuck (check ledger_anchor_state)", 1)


async def _checkpoint(settings: Settings, engine: Engine, signer: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        checkpointer = Checkpointer(
            engine, signer, settings.ledger_origin, SystemClock(), anchors_for(settings, session)
        )
        return await checkpointer.run_once(force=True)


@ledger_app.command("accept-rollback")
def accept_rollback_cmd(
    reason: str = typer.Option(..., "--reason", help="Why the lost entries are accepted (ledgered)."),
    actor: str = typer.Option(..., "--actor", help="Who accepts it (ledgered)."),
) -> None:
    """After a restore left the log behind its anchors: ledger the anchored size that is lost,
    record the rollback in each anchor (the directory archives its larger checkpoints, Discord gets
    a marker message) and let signing resume."""
    settings = Settings()
    if settings.ledger_anchor_dir is None and settings.ledger_discord_webhook_url is None:
        fail("no anchor is configured (OPSGATE_LEDGER_ANCHOR_DIR, OPSGATE_LEDGER_DISCORD_WEBHOOK_URL)")
    engine = _engine(settings)
    clock = SystemClock()
    try:
        with Ledger(engine, clock) as ledger:
            anchored, size = asyncio.run(_accept_rollback(settings, engine, ledger, clock, reason, actor))
    except (LedgerError, OSError, SQLAlchemyError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    print(f"rollback accepted: anchored size {anchored} lost {anchored - size} entries; the log has {size}")


async def _accept_rollback(settings: Settings, engine: Engine, ledger: Ledger, clock: SystemClock,
                           reason: str, actor: str) -> tuple[int, int]:
    async with aiohttp.ClientSession() as session:
        return await accept_rollback(engine, ledger, anchors_for(settings, session), clock, reason, actor)


@ledger_app.command("recover")
def recover_cmd(
    older_than: float = typer.Option(
        DEFAULT_OLDER_THAN_S, parser=cli_float(0), help="Only intents older than this (s)."
    ),
) -> None:
    """Append an ``interrupted`` result for every intent left open by a crash, releasing its
    budget reservation (charged its worst case) in the same transaction."""
    from opsgate.runtime import recover_interrupted  # the adapter's one upward import

    settings = Settings()
    engine = _engine(settings)
    clock = SystemClock()
    try:
        with Ledger(engine, clock) as ledger:
            closed = asyncio.run(recover_interrupted(engine, ledger, clock, older_than))
    except (LedgerError, SQLAlchemyError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    print(f"recovered {len(closed)} interrupted operation(s)")
    for request_id in closed:
        print(request_id)


@ledger_app.command("guard")
def guard_cmd(
    admin_url: str = typer.Option(..., help="PostgreSQL URL of a superuser or the tables' owner."),
    app_role: str = typer.Option(
        None, help="The application's role (default: the user in OPSGATE_DATABASE_URL)."
    ),
    owner_role: str = typer.Option(OWNER_ROLE, help="The role that will own the ledger tables."),
) -> None:
    """PostgreSQL: hand the ledger tables to a separate owner; leave the app INSERT and SELECT."""
    from sqlalchemy.engine import make_url

    settings = Settings()
    role = app_role or make_url(normalise_url(settings.database_url)).username
    if not role or not normalise_url(admin_url).startswith("postgresql"):
        fail("guard needs a PostgreSQL --admin-url and an app role")
    engine = create_engine(normalise_url(admin_url))
    try:
        with begin_write(engine) as conn:
            for statement in guard_postgres(conn, role, owner_role):
                print(statement)
    except (SQLAlchemyError, ValueError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


@ledger_app.command("keygen")
def keygen_cmd() -> None:
    """Create the Ed25519 signing key file (mode 0600); print the verifier key to publish."""
    settings = Settings()
    try:
        signer = write_key_file(Path(settings.ledger_signing_key_file), settings.ledger_origin)
    except (OSError, LedgerError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    print(signer.verifier_key())


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
