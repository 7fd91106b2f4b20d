"""Secret canary: a gateway with generated keys of each provider's shape meets provider 429/503,
validation and auth errors and a crash; afterwards no key, password, email address or phone
number from the inputs appears in any log line, response, ledger entry or database row."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect, select, text
from tests.gateways import gateway_settings, running_gateway
from tests.security.canaries import CANARIES, EMAIL, KEYS, PASSWORD, compose

from opsgate.security.logging import configure_logging


def scannable(resp: httpx.Response) -> str:
    """A response as text, without a successful operation's ``output``: an email-compose answer
    is addressed to the recipient its caller asked for; that is the product, not a leak."""
    body = resp.json()
    if resp.status_code == 200:
        body.pop("output")
    return repr(body) + repr(dict(resp.headers))


def dump_database(engine) -> str:  # type: ignore[no-untyped-def]
    out = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            out += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    return "\n".join(out)


def test_no_canary_leaves_the_gateway(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    configure_logging("DEBUG")
    stream = io.StringIO()
    logging.getLogger().handlers[-1].setStream(stream)  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG)
    settings = gateway_settings(tmp_path, **KEYS)
    responses: list[httpx.Response] = []
    with running_gateway(settings) as gateway:
        runtime, client = gateway.runtime, gateway.client
        from opsgate.security.auth import TokenService
        from opsgate.clock import SystemClock

        token = TokenService(settings, SystemClock()).issue("alice", "user")
        auth = {"Authorization": f"Bearer {token}"}

        def post(body: object, headers: dict | None = None) -> None:
            responses.append(client.post("/v1/operations/email-compose", json=body, headers=headers or auth))

        post(compose())
        runtime.sandbox.set_faults("ratelimit:anthropic")
        post(compose("rate limited"))
        runtime.sandbox.set_faults("outage:anthropic,outage:deepseek,outage:gemini")
        post(compose("outage"))
        runtime.sandbox.set_faults("none")
        post({"instructions": 5, "to": [EMAIL], "password": PASSWORD, "api_key": KEYS["anthropic_api_key"]})
        post(compose(), {"Authorization": f"Bearer {KEYS['deepseek_api_key']}"})
        post(compose(), {"Authorization": f"Basic {PASSWORD}"})

        gateway_cls = type(runtime.gateway)

        async def crash(self, call):  # type: ignore[no-untyped-def]
            raise RuntimeError(f"crash with {KEYS['gemini_api_key']} for {EMAIL} password={PASSWORD}")

        monkeypatch.setattr(gateway_cls, "govern", crash)
        post(compose("crash"))
        logging.getLogger("opsgate.test").exception("while holding %s", KEYS["anthropic_api_key"], exc_info=RuntimeError(EMAIL))
    statuses = [r.status_code for r in responses]
    assert statuses[0] == 200 and statuses[3] == 422 and statuses[-1] == 500
    assert {401} <= set(statuses) and (503 in statuses or 429 in statuses or statuses[2] >= 500)
    everything = "\n".join(
        [stream.getvalue(), caplog.text, *[scannable(r) for r in responses],
         dump_database(runtime.engine)]
    )  # fmt: skip
    assert "[REDACTED:" in stream.getvalue()  # the crash was logged, redacted
    leaked = [c for c in CANARIES if c in everything]
    assert leaked == [], f"leaked {len(leaked)} canaries"
    logging.getLogger().removeHandler(logging.getLogger().handlers[-1])
    logging.setLogRecordFactory(logging.LogRecord)
