"""The readiness audit: its probes against real code paths, loopback receivers and a scratch DB."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from opsgate.clock import ManualClock, SystemClock
from opsgate.config import Settings
from opsgate.monitoring.escalation import Contacts
from opsgate.monitoring.worker import build_notifiers
from opsgate.providers.http import make_session
from opsgate.rehearsal.receivers import DISCORD_PATH, PAGERDUTY_PATH, AlertReceiver
from opsgate.reports import live, probes
from opsgate.reports.daily import queue_daily_security_report
from opsgate.reports.readiness import FAIL, MANUAL, NA, PASS, Context, run_readiness
from opsgate.store.db import make_engine, upgrade


@pytest.fixture
def engine(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def root_logging():  # type: ignore[no-untyped-def]
    root, factory = logging.getLogger(), logging.getLogRecordFactory()
    saved = list(root.handlers)
    logging.setLogRecordFactory(logging.LogRecord)  # plain logging, whatever ran before
    yield root
    root.handlers[:] = saved
    logging.setLogRecordFactory(factory)


def test_sanitizer_canary_fails_on_plain_logging_and_passes_with_the_sanitizer(
    root_logging,
) -> None:  # type: ignore[no-untyped-def]
    from opsgate.security.logging import configure_logging

    root_logging.handlers[:] = [logging.StreamHandler()]
    ok, evidence = probes.sanitizer_canary()
    assert not ok and "in clear" in evidence
    configure_logging("INFO")
    ok, evidence = probes.sanitizer_canary()
    assert ok, evidence


async def test_active_probes_pass_on_the_real_code() -> None:
    settings = Settings(_env_file=None)
    assert probes.encrypted_cache()[0]
    assert (await probes.pre_access_logging(SystemClock()))[0]
    assert probes.refresh_rotation(settings) == (True, probes.refresh_rotation(settings)[1])
    ok, evidence = await live.provider_errors_sanitised(settings, SystemClock())
    assert ok, evidence
    assert "code=provider_unavailable" in evidence


def test_jwt_expiry_reads_the_issued_token(tmp_path: Path) -> None:
    secret = SecretStr("k" * 40)
    assert probes.jwt_expiry(Settings(jwt_secret=secret, _env_file=None), SystemClock())[0]
    ok, evidence = probes.jwt_expiry(
        Settings(jwt_secret=secret, access_token_ttl_s=7200, _env_file=None), SystemClock()
    )
    assert not ok and "7200 s" in evidence


async def test_alert_channels_send_a_test_to_each(tmp_path: Path) -> None:
    receiver = AlertReceiver()
    await receiver.start()
    try:
        settings = Settings(
            discord_webhook_url=SecretStr(receiver.base_url + DISCORD_PATH),
            pagerduty_routing_key=SecretStr("R" * 32),
            pagerduty_url=receiver.base_url + PAGERDUTY_PATH,
            _env_file=None,
        )
        ok, evidence = await live.alert_channels(settings, SystemClock())
    finally:
        await receiver.stop()
    assert ok, evidence
    assert receiver.counts == {"discord": 1, "pagerduty": 2}  # PagerDuty: trigger, then resolve
    assert not (await live.alert_channels(Settings(_env_file=None), SystemClock()))[0]


async def test_audit_lists_items_and_fails_on_a_blocking_item(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "docs" / "runbooks").mkdir(parents=True)
    settings = Settings(cors_origins=["http://app.example"], _env_file=None)
    ctx = Context(settings, engine, ManualClock(datetime(2026, 11, 30, tzinfo=UTC)), tmp_path)
    audit = await run_readiness(
        ctx,
        only={
            "cors_not_wildcard",
            "csrf_on",
            "rls_forced",
            "migrations_current",
            "runbooks_present",
            "backup_verified",
        },
    )
    status = {i.key: i.status for i in audit.items}
    assert status == {
        "rls_forced": NA,
        "cors_not_wildcard": FAIL,
        "csrf_on": PASS,
        "backup_verified": FAIL,
        "migrations_current": PASS,
        "runbooks_present": FAIL,
        "discord_operations": MANUAL,
        "code_review": MANUAL,
        "benchmarks_met": MANUAL,
        "migration_staging": MANUAL,
        "team_trained": MANUAL,
        "support_team": MANUAL,
        "team_debriefing": MANUAL,
    }
    assert not audit.ready
    criteria = {c["criterion"]: c for c in audit.criteria}
    assert (
        criteria["Error Rate"]["status"] == "n/a"
        and criteria["Hash Chain Integrity"]["actual"] == "not checked"
    )


async def test_daily_report_is_queued_once_for_the_team_channels(engine) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        discord_webhook_url=SecretStr("https://discord.example/api/webhooks/1/x"),
        pagerduty_routing_key=SecretStr("R" * 32),
        _env_file=None,
    )
    session = make_session()
    try:
        notifiers = build_notifiers(settings, session)
        contacts = Contacts.from_settings(settings, frozenset(notifiers))
        clock = ManualClock(datetime(2026, 11, 30, 0, 5, tzinfo=UTC))
        first = queue_daily_security_report(engine, settings, clock, notifiers, contacts)
        again = queue_daily_security_report(engine, settings, clock, notifiers, contacts)
    finally:
        await session.close()
    from sqlalchemy import select

    from opsgate.monitoring.models import outbox

    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.channel, outbox.c.notify_key)).all()
    assert first >= 1 and again == 0
    assert {r.channel for r in rows} == {"discord"}  # never the paging channel
    assert all(r.notify_key.startswith("security-report:2026-11-29") for r in rows)


async def test_fallback_item_runs_the_config_check(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(datetime(2026, 12, 4, 12, tzinfo=UTC))
    good = Settings(sandbox=True, _env_file=None)
    audit = await run_readiness(Context(good, engine, clock, tmp_path), only={"fallback_providers"})
    item = next(i for i in audit.items if i.key == "fallback_providers")
    assert item.status == PASS and "`opsgate config check` ok" in item.evidence
    bad = Settings(
        sandbox=True,
        providers={"local-vllm": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        routes={"email-classify": {"chain": ["local-vllm/qwen3-8b", "deepseek/deepseek-flash"]}},
        _env_file=None,
    )
    audit = await run_readiness(Context(bad, engine, clock, tmp_path), only={"fallback_providers"})
    item = next(i for i in audit.items if i.key == "fallback_providers")
    assert item.status == FAIL
    assert "config check: route 'email-classify', target 'local-vllm/qwen3-8b': no price" in item.evidence
