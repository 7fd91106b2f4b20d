"""How much a call reserves before it is admitted, against what it then costs (issue 16).

Every file of the shared data goes through its operations over HTTP, against the provider
sandboxes (whose token counts and usage agree with each other). Each (operation, file) is sent
twice:

1. under a global budget with room to spare: the intent holds the *byte bound* (the prompt's
   UTF-8 bytes as tokens, plus ``max_tokens``, at the first target's price);
2. by a fresh user whose daily budget is one micro-USD below that byte-bound hold, so the byte
   bound would refuse and admission asks the provider to count the prompt (issue 16, item 2):
   the call is admitted on the *exact* input count plus ``max_tokens``, or refused (402) when the
   gateway cannot count.

The e-mail drafts (email-respond, email-compose) go through once per requested ``length``
(:data:`~opsgate.operations.email.DRAFT_LIMITS`): ``email-compose`` is the default, ``medium``; the
lines ``email-compose short`` and ``email-compose long`` the others.

Per operation: the output cap (``max_tokens``, computed from the answer schema and the input, see
:mod:`opsgate.operations.caps`), the sandbox answer's output tokens, and the ratio reserved ÷
actual cost of the admitted call (the intent's hold against the call's metered cost) for both
reservations. Goal: median <= 3x on the admitted (exact-count) reservation.

The sandboxes answer the schema's *smallest* valid instance (one-word strings, one list item:
17-26 tokens), not an answer of the length a model writes, so ``actual`` is a floor. Two columns
say what the ratio needs instead of guessing a length: ``cap for 3×``, the median ``max_tokens``
at which the hold would be 3x the cost of the sandbox's answer, and ``3× from tok``, the median
answer length (output tokens) from which the call's hold is at most 3x its cost, to compare with
what a real answer of the operation holds.

Run: ``./dev bench reservation`` (``OPSGATE_SHARED_DATA`` names another folder of the same kinds).
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import Engine, func, select

from opsgate.app import create_app
from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.localserver import serve_in_thread
from opsgate.errors import OpsgateError
from opsgate.metering.budgets import set_budget
from opsgate.metering.models import ANY, budget_reservations
from opsgate.metering.prices import PriceBook
from opsgate.operations import get_operation
from opsgate.operations.base import prepare_input
from opsgate.operations.email import DRAFT_LIMITS
from opsgate.operations.io import input_from_file
from opsgate.routing.policy import default_policy
from opsgate.runtime import Runtime
from opsgate.security.auth import TokenService
from opsgate.store.models import ai_operation_log

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OPSGATE_SHARED_DATA") or REPO / "tests" / "data" / "shared")
PLAN = {
    "emails/*.eml": ["email-classify", "email-respond", "email-compose"],
    "calendars/*.ics": ["calendar-prep", "calendar-time"],
    "tasks/*.ics": ["task-prioritize", "task-breakdown"],
    "series/*.csv": ["analytics-summary", "analytics-anomaly"],
}
LENGTHS = {"email-respond", "email-compose"}
"""Operations measured at every draft length besides the default."""
DEFAULT_LENGTH = "medium"
GOAL = 3.0
ACTOR = "bench:reservation"
"""Who sets the bench's budgets (each change is ledgered as ``budget.set``)."""


def _settings(tmp: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp / 'bench.db'}", jwt_secret=secrets.token_urlsafe(48),
                    master_key=secrets.token_urlsafe(32) + "=", sandbox=True, sandbox_faults="none")


@dataclass(frozen=True)
class Row:
    """One (operation, file): its ``cap`` (max_tokens), the answer's ``output_tokens``, the byte-bound
    hold and cost of pass 1, and the hold and cost of pass 2 (``None``: refused, not counted)."""

    cap: int
    output_tokens: int
    bound: int
    bound_actual: int
    exact: int | None
    exact_actual: int | None


def measure() -> tuple[dict[str, list[Row]], Decimal]:
    """Per line (an operation, or a draft operation at another length), one :class:`Row` per file
    the operation took and answered; and the output
    price (µUSD per token) of the first target of the default chain, which every hold is priced at."""
    found: dict[str, list[Row]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(Path(tmp))
        first = default_policy(settings).chain[0]
        output_price = PriceBook.from_settings(settings, SystemClock().now).price_for(
            f"{first.provider}/{first.model}").output
        app = create_app(settings)
        server = serve_in_thread(app)
        try:
            runtime = app.state.runtime
            set_budget(runtime.ledger, SystemClock(), actor=ACTOR, user_id=ANY, operation=ANY, period="day",
                       limit_micro_usd=10**12)
            tokens = TokenService(settings, SystemClock())
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                for pattern, ops in PLAN.items():
                    for path in sorted(DATA.glob(pattern)):
                        for op in ops:
                            for line, options in _variants(op):
                                row = _one(client, runtime, tokens, op, path, options)
                                if row is not None:
                                    found[line].append(row)
        finally:
            server.stop()
    return found, output_price


def _variants(op: str) -> list[tuple[str, dict[str, str] | None]]:
    """``(line name, input options)`` of ``op``: its default input, and each other draft length."""
    if op not in LENGTHS:
        return [(op, None)]
    return [(op if length == DEFAULT_LENGTH else f"{op} {length}", {"length": length})
            for length in DRAFT_LIMITS]


def _one(client: httpx.Client, runtime: Runtime, tokens: TokenService, op: str, path: Path,
         options: dict[str, str] | None) -> Row | None:
    try:
        body = input_from_file(op, path, options)
        operation = get_operation(op)
        cap = prepare_input(operation, operation.Input.model_validate(body)).request.max_tokens
    except (ValueError, OpsgateError):
        return None  # a file the operation documents it cannot take
    first = _call(client, tokens.issue("bench", "user"), op, body)
    if first.status_code != 200:
        return None
    bound, output_tokens = _hold(runtime.engine, first.json()["request_id"])
    user = f"bench-{secrets.token_hex(6)}"
    set_budget(runtime.ledger, SystemClock(), actor=ACTOR, user_id=user, operation=ANY, period="day",
               limit_micro_usd=bound - 1)
    second = _call(client, tokens.issue(user, "user"), op, body)
    exact = _hold(runtime.engine, second.json()["request_id"])[0] if second.status_code == 200 else None
    return Row(cap, output_tokens, bound, first.json()["cost_micro_usd"], exact,
               second.json()["cost_micro_usd"] if exact is not None else None)


def _call(client: httpx.Client, token: str, op: str, body: dict[str, object]) -> httpx.Response:
    return client.post(f"/v1/operations/{op}", json=body, headers={"Authorization": f"Bearer {token}"})


def _hold(engine: Engine, request_id: str) -> tuple[int, int]:
    """The intent's hold (µUSD) and the call's output tokens."""
    with engine.connect() as conn:
        held = conn.execute(select(func.max(budget_reservations.c.worst_micro_usd)).where(
            budget_reservations.c.request_id == request_id)).scalar_one()  # one row per budget
        output = conn.execute(select(ai_operation_log.c.output_tokens).where(
            ai_operation_log.c.request_id == request_id)).scalar_one()
    return held, output


def main() -> None:
    found, output_price = measure()
    print(f"{'operation':<20} {'calls':>5} {'max_tokens':>12} {'answer tok':>10} {'bytes ×':>8} "
          f"{'reserved µUSD':>14} {'actual µUSD':>12} {'median ×':>9} {'max ×':>7} {'cap for 3×':>10} "
          f"{'3× from tok':>11}")
    medians = [_line(op, found[op], output_price) for op in sorted(found)]
    refused = sum(r.exact is None for rows in found.values() for r in rows)
    if refused:
        print(f"{refused} calls were refused below the byte bound (no exact token count); "
              "the ratios cover the admitted ones")
    worst = max(medians)
    verdict = "met" if worst <= GOAL else "NOT met"
    print(f"goal median <= {GOAL:g}x for every operation: {verdict} (largest median {worst:.2f}x)")
    print("actual: the sandboxes' answers, the schema's smallest valid instance (not a model's length); "
          "3× from tok: the answer length from which the median call holds at most 3x its cost")


def _line(op: str, rows: list[Row], output_price: Decimal) -> float:
    """Print ``op``'s line; return its median ratio on the exact count (infinite: none admitted).
    ``cap for 3×`` is the median ``max_tokens`` at which the call's hold would be 3x its cost;
    ``3× from tok`` the median answer length (output tokens) at which the hold is 3x the cost
    (the call's input cost plus that answer at the output price)."""
    caps = sorted(r.cap for r in rows)
    head = (f"{op:<20} {len(rows):>5} {f'{caps[0]:,}–{caps[-1]:,}':>12} "
            f"{max(r.output_tokens for r in rows):>10} "
            f"{statistics.median(r.bound / r.bound_actual for r in rows):>8.2f}")
    admitted = [(r.exact, r.exact_actual) for r in rows if r.exact is not None and r.exact_actual]
    goal_caps = [r.cap - (r.exact - GOAL * r.exact_actual) / float(output_price)
                 for r in rows if r.exact is not None and r.exact_actual]
    goal_answers = [max(0.0, (r.exact / GOAL - r.exact_actual) / float(output_price) + r.output_tokens)
                    for r in rows if r.exact is not None and r.exact_actual]
    if not admitted:
        print(f"{head} {'refused':>14}")
        return float("inf")
    ratios = [held / actual for held, actual in admitted]
    median = statistics.median(ratios)
    print(f"{head} {statistics.median(h for h, _ in admitted):>14,.0f} "
          f"{statistics.median(a for _, a in admitted):>12,.0f} {median:>9.2f} {max(ratios):>7.2f} "
          f"{statistics.median(goal_caps):>10,.0f} {statistics.median(goal_answers):>11,.0f}")
    return median


if __name__ == "__main__":
    main()
