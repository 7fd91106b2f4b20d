"""Two gateways on one database with per-process rate limits (no Redis) admit every limit twice
(tester-crash F5). Each gateway's provider status rows are its heartbeat (written at start and
every ``provider_status_interval_s``, deleted on a graceful shutdown); a gateway that starts while
another is live with such limits logs a warning, and ``opsgate readiness`` fails its rate-limit
item. Neither refuses: a rolling restart runs two gateways for a while."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert
from tests.gateways import gateway_settings

from opsgate.clock import ManualClock, SystemClock
from opsgate.config import Settings
from opsgate.monitoring.models import provider_status
from opsgate.monitoring.providers import live_instances, shared_database_limits_problem
from opsgate.reports.readiness import Context, limits_configured
from opsgate.runtime import start_runtime
from opsgate.store.db import make_engine, upgrade

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    return make_engine(url)


def _beat(engine: Engine, instance: str, at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(insert(provider_status), [
            {"instance": instance, "provider": p, "state": "closed", "unavailable_since": None, "updated_at": at}
            for p in ("anthropic", "gemini")])


def test_another_live_gateway_with_per_process_limits_is_reported(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    limited = Settings(_env_file=None, rate_limit_user_rpm=10, provider_status_interval_s=15.0)
    _beat(engine, "host-a:101:1", NOW - timedelta(seconds=44))  # 3 x 15 s: still live
    _beat(engine, "host-b:202:2", NOW - timedelta(seconds=46))  # stopped without withdrawing
    assert live_instances(engine, NOW, 45) == {"host-a:101:1": NOW - timedelta(seconds=44)}
    assert shared_database_limits_problem(limited, engine, NOW, exclude="host-c:303:3") == (
        "2 gateways are live on this database (host-a:101:1, host-c:303:3) and the rate limits are "
        "counted per process without OPSGATE_REDIS_URL: each gateway admits each limit, 2x in all; "
        "set OPSGATE_REDIS_URL to share them")
    assert shared_database_limits_problem(limited, engine, NOW) is None  # readiness: one gateway is fine
    shared = limited.model_copy(update={"redis_url": "redis://127.0.0.1:6379/0"})
    assert shared_database_limits_problem(shared, engine, NOW, exclude="host-c:303:3") is None
    unlimited = Settings(_env_file=None, provider_status_interval_s=15.0)
    assert shared_database_limits_problem(unlimited, engine, NOW, exclude="host-c:303:3") is None
    engine.dispose()


def test_readiness_fails_the_rate_limit_item_when_two_gateways_count_on_their_own(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    settings = Settings(_env_file=None, rate_limit_user_rpm=10, provider_status_interval_s=15.0)
    ctx = Context(settings, engine, ManualClock(NOW), tmp_path)
    _beat(engine, "host-a:101:1", NOW - timedelta(seconds=5))
    ok, evidence = limits_configured(ctx)
    assert (ok, evidence) == (False, "rate limits {'rate_limit_user_rpm': 10}; 0 budget(s)")  # no budget
    _beat(engine, "host-b:202:2", NOW - timedelta(seconds=5))
    ok, evidence = limits_configured(ctx)
    assert not ok
    assert evidence == ("rate limits {'rate_limit_user_rpm': 10}; 0 budget(s); 2 gateways are live on this "
                        "database (host-a:101:1, host-b:202:2) and the rate limits are counted per process "
                        "without OPSGATE_REDIS_URL: each gateway admits each limit, 2x in all; set "
                        "OPSGATE_REDIS_URL to share them")
    engine.dispose()


async def test_a_gateway_started_beside_a_live_one_warns_once_and_still_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway_settings(tmp_path, rate_limit_user_rpm=10)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    _beat(engine, "other-host:4242:1", SystemClock().now())
    with caplog.at_level(logging.WARNING, logger="opsgate"):
        runtime = await start_runtime(settings)
    try:
        warnings = [r.getMessage() for r in caplog.records if "gateways are live on this database" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].startswith("rate limits: 2 gateways are live on this database (")
        assert "other-host:4242:1" in warnings[0]
    finally:
        await runtime.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opsgate"):  # alone (the other one is gone): no word
        with engine.begin() as conn:
            conn.execute(provider_status.delete())
        runtime = await start_runtime(settings)
        await runtime.close()
    engine.dispose()
    assert not [r for r in caplog.records if "gateways are live" in r.getMessage()]
