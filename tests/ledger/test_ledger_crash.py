"""kill -9 of a real ``opsgate serve`` mid-request: no broken chain, the intent is reported as
incomplete (not tampering), recovery appends ``interrupted``, and verify is clean again."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import select
from tests.gateways import serve_process

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.ledger.checkpoint import load_key_file
from opsgate.ledger.verify import verify
from opsgate.operations.io import input_from_file
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries

REPO = Path(__file__).resolve().parents[2]
OP = "email-classify"
LEDGER_CLI = [sys.executable, "-m", "opsgate.cli", "ledger"]


def _kinds(engine) -> list[dict]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [
            json.loads(b)
            for b in conn.execute(
                select(ledger_entries.c.body).order_by(ledger_entries.c.seq)
            ).scalars()
        ]


def test_kill_9_mid_request_then_recover(tmp_path: Path) -> None:
    url_db = f"sqlite:///{tmp_path / 'opsgate.db'}"
    upgrade(url_db)
    secret = secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "OPSGATE_DATABASE_URL": url_db,
        "OPSGATE_JWT_SECRET": secret,
        "OPSGATE_JWT_SECRET_FILE": str(tmp_path / "jwt"),
        "OPSGATE_LEDGER_SIGNING_KEY_FILE": str(tmp_path / "ledger.key"),
        "OPSGATE_LEDGER_ANCHOR_DIR": str(tmp_path / "anchors"),
        "OPSGATE_LEDGER_CHECKPOINT_INTERVAL_S": "0.2",
    }
    token = TokenService(Settings(jwt_secret=secret), SystemClock()).issue("crash-user", "user")
    body = input_from_file(OP, next((REPO / "examples").glob(f"{OP}.*")), None)
    engine = make_engine(url_db)

    proc, base = serve_process(env, tmp_path, "slow:30s")
    sent = threading.Thread(target=_post, args=(base, token, body), daemon=True)
    sent.start()
    deadline = time.monotonic() + 30
    while not any(e["kind"] == "intent" for e in _kinds(engine)):
        assert time.monotonic() < deadline, "no intent was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-request: the provider call is still sleeping
    proc.wait(10)

    report = verify(engine)
    assert report.ok and report.incomplete_intents == 1  # incomplete, not tampering
    assert [e["kind"] for e in _kinds(engine)][-1] == "intent"

    proc, base = serve_process(env, tmp_path, "none")  # restart: the chain continues
    try:
        recovered = subprocess.run(
            [*LEDGER_CLI, "recover", "--older-than", "0"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert recovered.returncode == 0, recovered.stderr
        assert recovered.stdout.startswith("recovered 1 interrupted operation(s)")
        last = _kinds(engine)[-1]
        assert (last["kind"], last["status"], last["error_code"]) == (
            "result",
            "interrupted",
            "interrupted",
        )
        time.sleep(1.5)  # the restarted server's checkpointer signs and anchors the log
    finally:
        proc.terminate()
        proc.wait(30)
    verifier = load_key_file(tmp_path / "ledger.key").verifier()
    report = verify(engine, verifier=verifier)
    assert report.ok and report.incomplete_intents == 0 and report.checkpoints >= 1
    cli = subprocess.run(
        [*LEDGER_CLI, "verify", "--anchors", str(tmp_path / "anchors")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.startswith(f"OK entries={report.entries} ")
    assert "incomplete=0" in cli.stdout and "anchored=" in cli.stdout
    engine.dispose()


def _post(base: str, token: str, body: dict) -> None:
    try:
        httpx.post(
            f"{base}/v1/operations/{OP}",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError:
        pass  # the server was killed under the request: that is the point
