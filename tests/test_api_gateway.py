"""The gateway end to end: real HTTP into ``opsgate serve --sandbox``, real sandboxes, real SQLite."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import orjson
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select, text
from starlette.routing import Route
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway

from opsgate.app import create_app
from opsgate.ledger.verify import verify
from opsgate.operations import OPERATIONS
from opsgate.operations.io import input_from_file
from opsgate.store.models import ai_operation_log, ledger_entries

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(op_id: str) -> dict:
    return input_from_file(op_id, next(EXAMPLES.glob(f"{op_id}.*")), None)


def _log_rows(gateway) -> list[dict]:
    with gateway.runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(ai_operation_log))]


def _ledger_kinds(gateway) -> list[str]:
    """The kinds of the operation entries (start-up writes toggle entries before any request)."""
    with gateway.runtime.engine.connect() as conn:
        bodies = conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq)).scalars()
        kinds = [json.loads(b)["kind"] for b in bodies]
    return [k for k in kinds if k in ("intent", "result")]


def _assert_problem(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["code"] == code and body["status"] == status
    assert body["request_id"] and body["type"].endswith(code)
    return body


@pytest.mark.parametrize("op_id", sorted(OPERATIONS))
def test_each_operation_succeeds_and_is_metered_logged_and_ledgered(gateway, op_id):
    resp = gateway.post(op_id, _example(op_id))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    OPERATIONS[op_id].Output.model_validate(body["output"])
    assert (body["provider"], body["model"]) == ("anthropic", "claude-opus-5")  # issue 13: current default
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert body["cost_micro_usd"] > 0
    [row] = _log_rows(gateway)
    assert row["request_id"] == body["request_id"] == resp.headers["x-request-id"]
    assert (row["status"], row["operation"], row["user_id"]) == ("ok", op_id, "alice")
    assert row["cost_micro_usd"] == body["cost_micro_usd"]
    assert row["input_tokens"] == body["usage"]["input_tokens"]
    assert _ledger_kinds(gateway) == ["intent", "result"]
    assert "RateLimit" not in resp.headers and "RateLimit-Policy" not in resp.headers  # no limits


def test_every_counted_call_carries_the_ratelimit_fields_from_200_to_500_402_and_429(
        tmp_path, monkeypatch):
    from opsgate.clock import SystemClock
    from opsgate.metering.budgets import set_budget

    async def broken_route(*args, **kwargs):
        raise RuntimeError("a bug after admission")

    settings = gateway_settings(tmp_path, rate_limit_user_rpm=5, rate_limit_user_operation_rpm=3)
    policy = '"per-user";q=5;w=60, "per-user-operation";q=3;w=60'
    body = _example("email-classify")
    with running_gateway(settings) as gateway:
        started = time.monotonic()
        ok = gateway.post("email-classify", body)
        with monkeypatch.context() as patch:
            patch.setattr(gateway.runtime.gateway, "route", broken_route)
            bug = gateway.client.post(  # uvicorn closes the connection after an unhandled error's
                "/v1/operations/email-classify", json=body,  # 500: no later request may reuse it
                headers={"Authorization": f"Bearer {gateway.token()}", "Connection": "close"})
        set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="alice",
                   operation="*", period="day", limit_micro_usd=1)
        broke = gateway.post("email-classify", body)
        limited = gateway.post("email-classify", body)
        unknown = gateway.post("email-classify", body, token="not-a-jwt")
        earliest = 60 - (time.monotonic() - started)  # no reset can be sooner than this
    assert ok.status_code == 200, ok.text
    assert (ok.headers["RateLimit-Policy"], ok.headers["RateLimit"]) == (
        policy, '"per-user-operation";r=2;t=60')  # the only request logged: it leaves in 60 s
    _assert_problem(bug, 500, "internal_error")  # failed after it was counted: it carries them
    _assert_problem(broke, 402, "budget_exceeded")
    for counted, left in ((bug, 1), (broke, 0)):
        reset = int(counted.headers["RateLimit"].rpartition(";t=")[2])
        assert counted.headers["RateLimit"] == f'"per-user-operation";r={left};t={reset}'
        assert counted.headers["RateLimit-Policy"] == policy and earliest <= reset <= 60
    _assert_problem(limited, 429, "rate_limited")
    assert limited.headers["RateLimit-Policy"] == policy
    wait = limited.headers["Retry-After"]
    assert limited.headers["RateLimit"] == f'"per-user-operation";r=0;t={wait}'
    assert earliest <= int(wait) <= 60
    _assert_problem(unknown, 401, "unauthorized")  # never counted: no fields
    assert "RateLimit" not in unknown.headers and "RateLimit-Policy" not in unknown.headers


def test_log_and_ledger_hold_no_input_content(gateway):
    secret_line = "Project Nightingale budget is 4.2M"
    payload = _example("email-classify")
    payload["raw"] = payload["raw"].replace("\n\n", f"\n\n{secret_line}\n", 1)
    assert gateway.post("email-classify", payload).status_code == 200
    with gateway.runtime.engine.connect() as conn:
        dump = b"".join(conn.execute(select(ledger_entries.c.body)).scalars())
        log = repr(conn.execute(select(ai_operation_log)).all())
    assert b"Nightingale" not in dump and "Nightingale" not in log


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-jwt", "Basic YWxpY2U6cHc=", "Bearer"],
    ids=["missing", "malformed", "basic", "empty"],
)
def test_requests_without_a_valid_token_get_401_and_reach_no_provider(gateway, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = gateway.client.post("/v1/operations/email-classify", json=_example("email-classify"), headers=headers)
    _assert_problem(resp, 401, "unauthorized")
    assert gateway.stats()["anthropic"]["requests"] == 0
    assert _ledger_kinds(gateway) == []


def test_alg_none_token_is_refused(gateway):
    claims = json.loads(base64.urlsafe_b64decode(gateway.token().split(".")[1] + "=="))
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    forged = f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."
    _assert_problem(gateway.post("email-classify", _example("email-classify"), token=forged), 401, "unauthorized")


def test_expired_token_is_refused(gateway):
    from opsgate.clock import ManualClock
    from opsgate.security.auth import TokenService

    past = ManualClock()  # 2026-01-01, long before now
    old = TokenService(gateway.settings, past).issue("alice", "user")
    body = _assert_problem(gateway.post("email-classify", _example("email-classify"), token=old), 401, "unauthorized")
    assert "expired" in body["detail"]


def test_unknown_operation_is_a_404_problem(gateway):
    _assert_problem(gateway.post("email-summarise", {"raw": "x"}), 404, "not_found")


def test_invalid_input_is_422_without_echoing_values(gateway):
    key = "sk-ant-api03-" + "Q" * 40
    resp = gateway.post("task-prioritize", {"tasks": key})
    body = _assert_problem(resp, 422, "invalid_input")
    assert key not in resp.text and body["errors"]
    resp = gateway.client.post(
        "/v1/operations/email-classify",
        content=b"{not json",
        headers={"Authorization": f"Bearer {gateway.token()}", "Content-Type": "application/json"},
    )
    _assert_problem(resp, 422, "invalid_input")
    assert gateway.stats()["anthropic"]["requests"] == 0 and _ledger_kinds(gateway) == []


@pytest.mark.parametrize("sender", ["José Müller", '"José Müller"', "Anna-Lena Öz"])
@pytest.mark.parametrize("op_id", ["email-classify", "email-respond"])
def test_a_raw_utf8_display_name_is_read_not_a_500(gateway, op_id, sender):
    """RFC 6532 allows raw UTF-8 in headers; the parser left it as lone surrogates and the
    worst-case token bound's strict encode raised (500 internal_error)."""
    raw = f"From: {sender} <jose@example.com>\nTo: bob@example.com\nSubject: hi\n\nHello, {sender} here\n"
    resp = gateway.post(op_id, {"raw": raw})
    assert resp.status_code == 200, resp.text
    OPERATIONS[op_id].Output.model_validate(resp.json()["output"])
    [row] = _log_rows(gateway)
    assert row["status"] == "ok"


def test_failing_ledger_write_refuses_with_503_and_calls_no_provider(gateway):
    from opsgate.clock import SystemClock
    from opsgate.metering.budgets import set_budget
    from opsgate.metering.models import budget_counters, budget_reservations

    set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="*", operation="*", period="day",
               limit_micro_usd=10_000_000)
    with gateway.runtime.engine.begin() as conn:
        conn.execute(text(
            "CREATE TRIGGER ledger_down BEFORE INSERT ON ledger_entries "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        ))
    resp = gateway.post("email-classify", _example("email-classify"))
    body = _assert_problem(resp, 503, "audit_unavailable")
    assert "disk" not in body["detail"]
    assert sum(s["requests"] for s in gateway.stats().values()) == 0
    assert _log_rows(gateway) == []
    with gateway.runtime.engine.connect() as conn:  # the reservation rolled back with the intent
        assert conn.execute(select(budget_counters.c.reserved_micro_usd)).scalars().all() in ([], [0])
        assert conn.execute(select(budget_reservations)).all() == []


def test_a_served_call_whose_result_the_store_refuses_is_answered_and_readyz_says_not_ready(gateway):
    """tester-crash F3/F6: the store refuses the result write (a trigger stands in for a full
    disk) after the provider answered: the answer still goes out (it was served and billed),
    marked ``Opsgate-Record: pending``; /readyz answers 503 until the pending result is written."""
    import asyncio

    gw = gateway.runtime.gateway
    gw._record_retry_delays_s = (0.0,)  # the in-call retry without its back-off
    assert gateway.client.get("/readyz").status_code == 200
    with gateway.runtime.engine.begin() as conn:
        conn.execute(text(
            "CREATE TRIGGER log_down BEFORE INSERT ON ai_operation_log "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        ))
    resp = gateway.post("email-classify", _example("email-classify"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["Opsgate-Record"] == "pending"
    OPERATIONS["email-classify"].Output.model_validate(resp.json()["output"])
    assert _ledger_kinds(gateway) == ["intent"] and _log_rows(gateway) == []
    body = _assert_problem(gateway.client.get("/readyz"), 503, "not_ready")
    assert "1 call result(s)" in body["detail"] and "disk" not in body["detail"]

    with gateway.runtime.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER log_down"))
    flush = asyncio.run_coroutine_threadsafe(gw.flush_pending(), gw._retrier.get_loop())
    assert flush.result(30) == 0
    assert _ledger_kinds(gateway) == ["intent", "result"]
    [row] = _log_rows(gateway)
    assert (row["request_id"], row["status"], row["cost_micro_usd"]) == (
        resp.headers["X-Request-ID"], "ok", resp.json()["cost_micro_usd"])
    assert gateway.client.get("/readyz").json() == {"status": "ready"}


def test_flaky_provider_is_retried_after_its_retry_after(gateway):
    gateway.sandbox.set_faults("flaky")
    statuses = [gateway.post("email-classify", _example("email-classify")).status_code for _ in range(6)]
    assert statuses == [200] * 6
    stats = gateway.stats()["anthropic"]
    failures = sum(n for s, n in stats["statuses"].items() if s != "200")
    assert failures >= 1 and stats["statuses"]["200"] == 6
    assert gateway.stats()["deepseek"]["requests"] == 0  # retried in place, no fallback
    rows = _log_rows(gateway)
    assert sum(r["attempts"] for r in rows) == 6 + failures


def test_outage_falls_back_to_the_next_provider(gateway):
    gateway.sandbox.set_faults("outage:anthropic")
    resp = gateway.post("email-classify", _example("email-classify"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["provider"] == "deepseek"
    assert gateway.stats()["anthropic"]["statuses"] == {"529": 3}
    [row] = _log_rows(gateway)
    assert (row["provider"], row["attempts"]) == ("deepseek", 4)


def test_rate_limited_provider_falls_back(gateway):
    gateway.sandbox.set_faults("ratelimit:anthropic")
    resp = gateway.post("email-classify", _example("email-classify"))
    assert resp.status_code == 200 and resp.json()["provider"] == "deepseek"
    assert set(gateway.stats()["anthropic"]["statuses"]) == {"429"}


def test_refusal_is_a_typed_error_without_fallback(gateway):
    gateway.sandbox.set_faults("safety-blocked")
    body = _assert_problem(gateway.post("email-classify", _example("email-classify")), 422, "content_filtered")
    assert "127.0.0.1" not in json.dumps(body)
    stats = gateway.stats()
    assert stats["anthropic"]["requests"] == 1 and stats["deepseek"]["requests"] == 0
    [row] = _log_rows(gateway)
    assert (row["status"], row["error_code"]) == ("error", "content_filtered")
    assert _ledger_kinds(gateway) == ["intent", "result"]


def test_malformed_answers_everywhere_give_a_typed_error_and_no_raw_body(gateway):
    gateway.sandbox.set_faults("malformed")
    resp = gateway.post("email-classify", _example("email-classify"))
    assert resp.status_code in (502, 503), resp.text
    body = resp.json()
    assert body["code"] in ("provider_bad_response", "provider_unavailable")
    assert "Traceback" not in resp.text and "127.0.0.1" not in resp.text


def test_breaker_opens_then_half_opens_after_the_cooldown(gateway):
    import time

    gateway.sandbox.set_faults("outage:anthropic")
    threshold = gateway.settings.breaker_failure_threshold
    for _ in range(3):  # 3 attempts per call reach anthropic until the breaker opens
        assert gateway.post("email-classify", _example("email-classify")).json()["provider"] == "deepseek"
    reached = gateway.stats()["anthropic"]["requests"]
    assert reached == threshold  # the breaker opened at the threshold, further attempts were skipped
    assert gateway.post("email-classify", _example("email-classify")).json()["provider"] == "deepseek"
    assert gateway.stats()["anthropic"]["requests"] == reached  # open: not called
    time.sleep(gateway.settings.breaker_cooldown_s + 0.2)
    gateway.sandbox.set_faults("none")
    resp = gateway.post("email-classify", _example("email-classify"))
    assert resp.json()["provider"] == "anthropic"  # half-open trial succeeded, breaker closed
    assert gateway.stats()["anthropic"]["requests"] == reached + 1


def test_invalid_model_output_gets_one_repair_then_a_typed_error(gateway, monkeypatch):
    from opsgate.providers.base import Completion

    calls = []
    router = gateway.runtime.gateway.router
    original = router.complete

    async def bad_json(request, policy, admit=None):
        routed = await original(request, policy, admit)
        calls.append(request.user)
        object.__setattr__(routed, "completion", Completion(**{
            **{f: getattr(routed.completion, f) for f in routed.completion.__dataclass_fields__},
            "data": {"unexpected": True},
        }))
        return routed

    monkeypatch.setattr(router, "complete", bad_json)
    resp = gateway.post("email-classify", _example("email-classify"))
    _assert_problem(resp, 502, "provider_bad_response")
    assert len(calls) == 2 and "did not match the required JSON schema" in calls[1]
    [row] = _log_rows(gateway)
    assert row["cost_micro_usd"] > 0  # both paid completions are metered


def test_probes_and_openapi(gateway):
    assert gateway.client.get("/healthz").json() == {"status": "ok"}
    assert gateway.client.get("/readyz").json() == {"status": "ready"}
    spec = gateway.client.get("/openapi.json").json()
    for op_id in OPERATIONS:
        post = spec["paths"][f"/v1/operations/{op_id}"]["post"]
        assert "requestBody" in post
    assert gateway.client.get("/docs").status_code == 200


def test_operation_calls_skip_fastapis_request_handler():
    # the first route of each operation path is a plain Starlette route (no dependency solving
    # per call); the APIRoute after it only documents the operation (test_probes_and_openapi)
    routes = create_app().router.routes
    for op_id in OPERATIONS:
        served = [r for r in routes if getattr(r, "path", None) == f"/v1/operations/{op_id}"]
        assert [type(r) for r in served] == [Route, APIRoute]


def test_ledger_verifies_after_mixed_traffic(gateway):
    for faults in ("none", "safety-blocked", "flaky"):
        gateway.sandbox.set_faults(faults)
        gateway.post("email-classify", _example("email-classify"))
    report = verify(gateway.runtime.engine)
    assert report.ok and _ledger_kinds(gateway) == ["intent", "result"] * 3


def test_problem_never_carries_provider_keys(gateway):
    gateway.sandbox.set_faults("outage:anthropic,outage:deepseek,outage:gemini")
    resp = gateway.post("email-classify", _example("email-classify"))
    body = _assert_problem(resp, 503, "provider_unavailable")
    settings = gateway.runtime.settings
    for key in (settings.anthropic_api_key, settings.deepseek_api_key, settings.gemini_api_key):
        assert key.get_secret_value() not in resp.text
    assert "127.0.0.1" not in orjson.dumps(body).decode()


def test_health_is_answered_while_a_calendar_is_being_expanded(gateway, monkeypatch):
    """Tester A F1: a calendar's expansion ran on the event loop and /healthz waited 41 s for it.
    The expansion here is held until /healthz has answered: off the loop, /healthz answers first;
    on the loop it cannot (the hold gives up after HOLD_S, and the order is reversed)."""
    from concurrent.futures import ThreadPoolExecutor
    import threading

    import httpx
    from opsgate.operations import calendar
    from tests.operations.test_ops_calendar_bounds import SECONDLY

    hold_s = 30
    started, answered, order = threading.Event(), threading.Event(), []
    expand = calendar.event_instances

    def held(*args):
        started.set()
        answered.wait(hold_s)
        order.append("expansion")
        return expand(*args)

    monkeypatch.setattr(calendar, "event_instances", held)
    with ThreadPoolExecutor(1) as pool:
        attack = pool.submit(gateway.post, "calendar-prep", {"ics": SECONDLY})
        assert started.wait(hold_s)
        health = httpx.get(f"{gateway.base_url}/healthz", timeout=2 * hold_s)
        order.append("healthz")
        answered.set()
        refused = attack.result()
    assert order == ["healthz", "expansion"]
    assert health.status_code == 200
    assert "make more than" in _assert_problem(refused, 422, "invalid_input")["detail"]
