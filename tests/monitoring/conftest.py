"""Fixtures: a migrated SQLite database, a ledger, a manual clock, loopback receivers and a worker
whose channels all point at them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import Engine
from tests.monitoring.monitoring_receivers import HttpReceiver, SmtpReceiver
from tests.monitoring.worker_env import DISCORD, PAGERDUTY, Env

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine, upgrade


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    url = f"sqlite:///{tmp_path / 'mon.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


@pytest.fixture
async def env(tmp_path: Path, db: tuple[str, Engine]) -> AsyncIterator[Env]:
    url, engine = db
    clock = ManualClock()
    ledger = Ledger(engine, clock)
    ledger.start()
    http = HttpReceiver()
    await http.start()
    smtp = SmtpReceiver()
    port = smtp.start()
    sid = "AC" + secrets.token_hex(16)
    settings = Settings(
        database_url=url, auto_migrate=False, worker_lock_file=tmp_path / "worker.lock",
        discord_webhook_url=http.base_url + DISCORD, pagerduty_url=http.base_url + PAGERDUTY,
        pagerduty_routing_key=secrets.token_hex(16), twilio_base_url=http.base_url,
        twilio_account_sid=sid, twilio_auth_token=secrets.token_hex(16), twilio_from="+15005550006",
        sms_to=["+15005550001"], smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
        email_from="opsgate@example.test", email_to=["oncall@example.test"],
        admin_email_to=["admin@example.test"], admin_sms_to=["+15005550009"],
    )
    http.ok = {PAGERDUTY: 202, f"/2010-04-01/Accounts/{sid}/Messages.json": 201}
    session = aiohttp.ClientSession()
    try:
        yield Env(settings, engine, ledger, clock, http, smtp, session, sid)
    finally:
        await session.close()
        await http.stop()
        smtp.stop()
        ledger.close()
