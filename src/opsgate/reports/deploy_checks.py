"""Checks for the seed's deployment checklist (pre-deployment, deployment day, post-deployment;
docs/seed-phase8.md). Each takes the audit's :class:`~opsgate.reports.readiness.Context` and
returns ``(ok, evidence)``; None means not applicable yet.

The post-deployment lines follow the newest rollout's decision history (``rollout_decisions``)
against the seed's durations: 24 h at 5 %, 12 h at 25 %, 24 h at 100 %.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from opsgate.monitoring.evidence import JUNIT, EvidenceError, read_test_run

if TYPE_CHECKING:
    from opsgate.reports.readiness import Context

Result = tuple[bool | None, str]
MIN_TESTS = 490
BACKUP_MAX_AGE = timedelta(hours=24)
ERROR_RATE_DEPLOY_PCT = 1.0
LATENCY_TARGET_MS = 2000.0
SEED_STAGE_HOURS = (24, 12, 24)
"""Hours the seed's checklist watches each stage: canary 5 %, 25 %, 100 %."""


# pre-deployment ------------------------------------------------------------------------------
def tests_passing(ctx: Context) -> Result:
    """The last ``./dev test`` run: every test passed, and at least the seed's 490 ran."""
    try:
        run = read_test_run(ctx.root / "artifacts" / JUNIT)
    except EvidenceError as exc:
        return False, str(exc)
    ok = run.passed == run.total >= MIN_TESTS
    return ok, (f"{run.passed} of {run.total} passed ({run.failures} failed, {run.errors} errors, "
                f"{run.skipped} skipped) in {run.path}, finished {run.finished_at:%Y-%m-%dT%H:%M:%SZ}"
                + ("" if run.total >= MIN_TESTS else f"; fewer than {MIN_TESTS} tests ran"))


def runbook(name: str, command: str) -> Any:
    """A check that ``docs/runbooks/<name>.md`` exists and quotes ``command``."""

    def check(ctx: Context) -> Result:
        path = ctx.root / "docs" / "runbooks" / f"{name}.md"
        if not path.is_file():
            return False, f"no {path}"
        if command not in path.read_text(encoding="utf-8"):
            return False, f"{path} does not quote `{command}`"
        return True, f"{path} quotes `{command}`"

    return check


# deployment day ------------------------------------------------------------------------------
def backup_taken(ctx: Context) -> Result:
    """The backup given with ``--backup`` was written within the last 24 hours."""
    if ctx.backup is None:
        return False, "no backup given: `opsgate backup create FILE`, then --backup FILE"
    written = datetime.fromtimestamp(ctx.backup.stat().st_mtime, UTC)
    age = ctx.clock.now() - written
    return age <= BACKUP_MAX_AGE, f"{ctx.backup.name} written {written:%Y-%m-%dT%H:%M:%SZ} ({age.total_seconds() / 3600:.1f} h ago)"


def dashboards_active(ctx: Context) -> Result:
    """The app built from these settings serves the dashboard and the Prometheus endpoint."""
    from opsgate.app import create_app

    app = create_app(ctx.settings, ctx.clock)
    paths = {getattr(r, "path", "") for r in app.routes}
    wanted = ("/dashboard", "/dashboard/criteria", "/metrics", "/v1/health")
    missing = [p for p in wanted if p not in paths]
    if missing:
        return False, f"not served: {', '.join(missing)}"
    return True, f"served by `opsgate serve`: {', '.join(wanted)}"


def health_checks(ctx: Context) -> Result:
    """The seed's HealthMetrics now: budgets enforced, no failed ledger verification on record,
    every provider available."""
    from opsgate.monitoring.health import compute_health

    h = compute_health(ctx.engine, ctx.clock.now(), ctx.settings.health_window_s)
    down = sorted(p for p, v in h.providerAvailability.items() if not v.available)
    bad = (["budget enforcement failed"] if not h.budgetEnforcement else []) + (
        ["the latest ledger verification failed"] if h.hashChainIntegrity is False else []) + (
        [f"unavailable: {', '.join(down)}"] if down else [])
    return not bad, "; ".join(bad) or (
        f"budgets enforced, ledger integrity {h.hashChainIntegrity}, providers "
        f"{', '.join(h.providerAvailability) or 'none called yet'} available (GET /v1/health)")


def window_error_rate(ctx: Context) -> Result:
    """The error rate of the health window is below the seed's deployment-day 1 %."""
    from opsgate.monitoring.health import compute_health

    h = compute_health(ctx.engine, ctx.clock.now(), ctx.settings.health_window_s)
    if not h.operationCount:
        return None, f"no operation calls in the last {ctx.settings.health_window_s} s"
    return h.errorRate < ERROR_RATE_DEPLOY_PCT, f"{h.errorRate:.2f} % of {h.operationCount} calls (target < 1 %)"


def window_latency(ctx: Context) -> Result:
    """The p99 latency of the health window is below 2 s."""
    from opsgate.monitoring.health import compute_health

    h = compute_health(ctx.engine, ctx.clock.now(), ctx.settings.health_window_s)
    if h.p99Latency is None:
        return None, f"no operation calls in the last {ctx.settings.health_window_s} s"
    return h.p99Latency < LATENCY_TARGET_MS, f"p99 {h.p99Latency:.1f} ms, average {h.averageLatency} ms (target < 2 s)"


# the rollout's stages ------------------------------------------------------------------------
def stage_times(ctx: Context) -> dict[str, Any] | None:
    """The newest rollout: ``{"id", "state", "started", "promoted": [time of each promotion]}``."""
    from opsgate.rollout.models import rollout_decisions, rollouts

    with ctx.engine.connect() as conn:
        row = conn.execute(select(rollouts.c.id, rollouts.c.state, rollouts.c.created_at)
                           .order_by(rollouts.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        promoted = conn.execute(select(rollout_decisions.c.at).where(
            rollout_decisions.c.rollout_id == row.id, rollout_decisions.c.action == "promote")
            .order_by(rollout_decisions.c.id)).scalars().all()
    return {"id": row.id, "state": row.state, "started": row.created_at,
            "promoted": list(promoted)}


def canary_started(ctx: Context) -> Result:
    """A rollout was started (its first stage is the seed's 5 % canary)."""
    s = stage_times(ctx)
    if s is None:
        return False, "no rollout started: `opsgate rollout start OPERATION`"
    return True, f"rollout {s['id']} started {s['started']:%Y-%m-%dT%H:%MZ}, now {s['state']}"


def reached(stage: int, percent: int) -> Any:
    """A check that the newest rollout was promoted to ``stage`` (``percent`` %) and not rolled back."""

    def check(ctx: Context) -> Result:
        s = stage_times(ctx)
        if s is None:
            return None, "no rollout started yet"
        if s["state"] in ("rolling_back", "rolled_back", "escalated"):
            return False, f"rollout {s['id']} is {s['state']}"
        if len(s["promoted"]) < stage:
            return False, f"rollout {s['id']} has not reached {percent} % yet ({s['state']})"
        return True, f"rollout {s['id']} promoted to {percent} % at {s['promoted'][stage - 1]:%Y-%m-%dT%H:%MZ}"

    return check


def watched(stage: int) -> Any:
    """A check that stage ``stage`` of the newest rollout was watched the seed's hours."""
    hours = SEED_STAGE_HOURS[stage]

    def check(ctx: Context) -> Result:
        s = stage_times(ctx)
        if s is None:
            return None, "no rollout started yet"
        starts = [s["started"], *s["promoted"]]
        if len(starts) <= stage:
            return False, f"rollout {s['id']} has not reached this stage"
        end = starts[stage + 1] if len(starts) > stage + 1 else ctx.clock.now()
        watched_h = (end - starts[stage]).total_seconds() / 3600
        return watched_h >= hours, f"stage watched {watched_h:.1f} h of the seed's {hours} h (rollout {s['id']})"

    return check


def final_verification(ctx: Context) -> Result:
    """No P1 or P2 incident is open and the ledger verifies."""
    from sqlalchemy import func

    from opsgate.monitoring.models import incidents
    from opsgate.reports.seed_checks import verified

    with ctx.engine.connect() as conn:
        open_ = conn.execute(select(func.count()).where(
            incidents.c.state != "resolved", incidents.c.severity.in_(("P1", "P2")))).scalar()
    report = verified(ctx)
    bad = ([f"{open_} P1/P2 incident(s) open"] if open_ else []) + ([] if report.ok else ["the ledger does not verify"])
    return not bad, "; ".join(bad) or f"no P1/P2 incident open; ledger verifies ({report.entries} entries)"
