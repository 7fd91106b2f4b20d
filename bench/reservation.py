"""How much a call reserves before it is admitted, against what it then costs (issue 16).

Every file of the shared data goes through its operations over HTTP, against the provider
sandboxes (whose token counts and usage agree with each other), with a global budget set so that
every call takes a reservation. Per operation: the ratio reserved ÷ actual cost, where *reserved*
is the intent's hold (the worst case of the first request at the first target's price, what
admission needs room for) and *actual* the call's metered cost. Goal: median <= 3x.

Run: ``./dev bench reservation`` (``OPSGATE_SHARED_DATA`` names another folder of the same kinds).
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import httpx
from sqlalchemy import select

from opsgate.app import create_app
from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.localserver import serve_in_thread
from opsgate.metering.budgets import set_budget
from opsgate.metering.models import ANY, budget_reservations
from opsgate.operations.io import input_from_file
from opsgate.security.auth import TokenService

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OPSGATE_SHARED_DATA") or REPO / "tests" / "data" / "shared")
PLAN = {
    "emails/*.eml": ["email-classify", "email-respond", "email-compose"],
    "calendars/*.ics": ["calendar-prep", "calendar-time"],
    "tasks/*.ics": ["task-prioritize", "task-breakdown"],
    "series/*.csv": ["analytics-summary", "analytics-anomaly"],
}
GOAL = 3.0


def _settings(tmp: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp / 'bench.db'}", jwt_secret=secrets.token_urlsafe(48),
                    master_key=secrets.token_urlsafe(32) + "=", sandbox=True, sandbox_faults="none")


def measure() -> dict[str, list[tuple[int, int]]]:
    """Per operation, (reserved, actual) micro-USD of every admitted call that succeeded."""
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(Path(tmp))
        app = create_app(settings)
        server = serve_in_thread(app)
        try:
            engine = app.state.runtime.engine
            set_budget(engine, SystemClock(), user_id=ANY, operation=ANY, period="day",
                       limit_micro_usd=10**12)
            token = TokenService(settings, SystemClock()).issue("bench", "user")
            with httpx.Client(base_url=server.base_url, timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                for pattern, ops in PLAN.items():
                    for path in sorted(DATA.glob(pattern)):
                        for op in ops:
                            _one(client, engine, op, path, found)
        finally:
            server.stop()
    return found


def _one(client: httpx.Client, engine, op: str, path: Path,  # type: ignore[no-untyped-def]
         found: dict[str, list[tuple[int, int]]]) -> None:
    try:
        body = input_from_file(op, path, None)
    except ValueError:
        return  # a file the operation documents it cannot take
    resp = client.post(f"/v1/operations/{op}", json=body)
    if resp.status_code != 200:
        return
    with engine.connect() as conn:
        reserved = conn.execute(select(budget_reservations.c.worst_micro_usd).where(
            budget_reservations.c.request_id == resp.json()["request_id"])).scalar_one()
    found[op].append((reserved, resp.json()["cost_micro_usd"]))


def main() -> None:
    found = measure()
    print(f"{'operation':<18} {'calls':>5} {'reserved µUSD':>14} {'actual µUSD':>12} "
          f"{'median ×':>9} {'max ×':>7}")
    worst_median = 0.0
    for op in sorted(found):
        pairs = found[op]
        ratios = [r / a for r, a in pairs]
        median = statistics.median(ratios)
        worst_median = max(worst_median, median)
        print(f"{op:<18} {len(pairs):>5} {statistics.median(r for r, _ in pairs):>14,.0f} "
              f"{statistics.median(a for _, a in pairs):>12,.0f} {median:>9.2f} {max(ratios):>7.2f}")
    verdict = "met" if worst_median <= GOAL else "NOT met"
    print(f"goal median <= {GOAL:g}x for every operation: {verdict} (largest median {worst_median:.2f}x)")


if __name__ == "__main__":
    main()
