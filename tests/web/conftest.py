"""A dashboard over a rehearsed database, and a real headless Chromium driving it.

``dashboard`` (package scope): a short ``bad-release`` rehearsal (6 simulated hours: canary, error
spike, automatic rollback, incident) fills a SQLite file; then ``opsgate serve`` (sandboxes on,
plain-HTTP cookies) runs on it with a :class:`ManualClock` stopped at the rehearsal's end, checkpoints
every 100 entries into an anchor directory, with three users (admin, operator, user), a daily
budget, an invoice reconciliation and a ledger verification on record; then the user makes three
``email-classify`` calls under a ``cheaper`` budget of her own that Claude never fits: two are
served degraded (by DeepSeek), the third, after her limit is lowered, is refused.

``browser``: Debian's ``/usr/bin/chromium`` through Playwright; a missing binary is a failure, not
a skip (CI installs it with ``apt-get install -y chromium``). The helpers the tests drive it
with are in :mod:`tests.web.browsing`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import select
from tests.budgets import ADMIN
from tests.gateways import Gateway, running_gateway
from tests.paths import EXAMPLES
from tests.web.browsing import USERS, Dashboard

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.metering.budgets import set_budget
from opsgate.metering.invoices import InvoiceLine
from opsgate.metering.reconcile import Reconciliation, reconcile
from opsgate.monitoring.worker import Worker
from opsgate.rehearsal.driver import START, RehearsalConfig, rehearse
from opsgate.runtime import Runtime
from opsgate.security.users import add_user, set_password
from opsgate.store.models import ai_operation_log

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REHEARSAL_HOURS = 6


def _invoice_lines(runtime: Runtime, provider: str) -> list[InvoiceLine]:
    """The provider's tracked spend per (day, model), the first line 2 % higher: a discrepancy."""
    log = ai_operation_log.c
    spend: dict[tuple[Any, str], int] = defaultdict(int)
    with runtime.engine.connect() as conn:
        for at, model, cost in conn.execute(select(log.created_at, log.model, log.cost_micro_usd)
                                            .where(log.provider == provider)):
            spend[(at.date(), model)] += cost
    lines = [InvoiceLine(day, model, Decimal(cost)) for (day, model), cost in sorted(spend.items())]
    first = lines[0]
    lines[0] = InvoiceLine(first.day, first.model, first.cost_micro_usd * Decimal("1.02"))
    return lines


def _prepare(runtime: Runtime, clock: ManualClock) -> tuple[dict[str, str], Reconciliation]:
    passwords = {}
    for user, role in USERS.items():
        add_user(runtime.engine, clock, user, role)
        passwords[user] = secrets.token_urlsafe(18)
        set_password(runtime.engine, user, passwords[user])
    for period, limit in (("day", 5_000_000), ("month", 50_000_000)):
        set_budget(runtime.ledger, clock, actor=ADMIN, user_id="*", operation="*", period=period,
                   limit_micro_usd=limit)
    run = reconcile(runtime.engine, clock, "anthropic", "anthropic-cost-report.csv",
                    _invoice_lines(runtime, "anthropic"))
    worker = Worker(runtime.settings, runtime.engine, runtime.ledger, clock, runtime.session, worker_id="test")
    assert worker.verify_ledger() is True
    return passwords, run


def _degrade(gateway: Gateway, clock: ManualClock) -> list[dict[str, Any]]:
    """Three calls by ursula under her cheaper daily budget of $0.002 (DeepSeek's worst case for
    this input is ~$0.00075, Claude's ~$0.027): two served degraded, then with the limit lowered to
    what she spent plus $0.0001 a third refused. Returns the two answers."""
    runtime = gateway.runtime
    token = runtime.tokens.issue("ursula", "user")
    admin = {"Authorization": f"Bearer {runtime.tokens.issue('ada', 'admin')}"}
    toggle = "/v1/admin/toggles/email-classify"
    before = gateway.client.get(toggle, headers=admin).json()
    fields = ("enabled", "rollout_percentage", "opt_in_required", "kill_switch")
    opened = gateway.client.put(toggle, headers=admin, json={
        "enabled": True, "rollout_percentage": 100, "opt_in_required": False, "kill_switch": False,
        "reason": "dashboard tests: ursula's degraded calls"})  # the rehearsal rolled it back
    assert opened.status_code == 200, opened.text
    body = {"raw": (EXAMPLES / "email-classify.eml").read_text()}
    set_budget(runtime.ledger, clock, actor=ADMIN, user_id="ursula", operation="*", period="day",
               limit_micro_usd=2_000, on_exhausted="cheaper")
    served = [gateway.post("email-classify", body, token=token) for _ in range(2)]
    assert [r.status_code for r in served] == [200, 200], served[0].text
    spent = sum(r.json()["cost_micro_usd"] for r in served)
    set_budget(runtime.ledger, clock, actor=ADMIN, user_id="ursula", operation="*", period="day",
               limit_micro_usd=spent + 100)
    refused = gateway.post("email-classify", body, token=token)
    assert refused.status_code == 402, refused.text
    restored = gateway.client.put(toggle, headers=admin, json={
        **{f: before[f] for f in fields}, "reason": "dashboard tests: as the rehearsal left it"})
    assert restored.status_code == 200, restored.text
    return [r.json() for r in served]


@pytest.fixture(scope="package")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp / 'opsgate.db'}"
    config = RehearsalConfig(hours=REHEARSAL_HOURS, users=1000, scenario="bad-release", database_url=url)
    with ThreadPoolExecutor(1) as pool:  # its own event loop, whatever runs in this thread (Playwright)
        report = pool.submit(lambda: asyncio.run(rehearse(config))).result()
    assert report["rehearsal"]["rollout"]["state"] == "rolled_back"
    settings = Settings(
        database_url=url, sandbox=True, sandbox_faults="none", jwt_secret=secrets.token_urlsafe(48),
        master_key_file=tmp / "master-key", ledger_signing_key_file=tmp / "ledger.key",
        ledger_anchor_dir=tmp / "anchors", ledger_checkpoint_every=100, worker_lock_file=tmp / "worker.lock",
        session_cookie_secure=False, breaker_cooldown_s=1.0, provider_timeout_s=5.0,
    )
    clock = ManualClock(START + timedelta(hours=REHEARSAL_HOURS))
    with running_gateway(settings, clock, timeout_s=30) as gateway:
        passwords, run = _prepare(gateway.runtime, clock)
        degraded = _degrade(gateway, clock)
        yield Dashboard(gateway.base_url, gateway.runtime, passwords, run, gateway.client,
                        tmp / "anchors", report, degraded)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: apt-get install -y chromium"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
