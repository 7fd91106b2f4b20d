"""The sanitizer on every log path: stdlib loggers (ours and third-party), tracebacks, structlog
JSON lines, uvicorn's access formatter, and problem+json bodies."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets

import pytest
import structlog
from uvicorn.logging import AccessFormatter

from tests.security.canaries import secret_in, shaped_secrets

from opsgate.errors import OpsgateError
from opsgate.problems import problem_body
from opsgate.security.logging import SanitizingFilter, configure_logging

KEY = "sk-ant-api03-" + secrets.token_urlsafe(40)
EMAIL = "ana.lopez@example.org"
REDACTION_TAG = re.compile(r"\[REDACTED:[a-z_]+:[0-9a-f]{6}\]")


@pytest.fixture
def json_logs() -> io.StringIO:
    """configure_logging, with the root handler's stream swapped for a buffer."""
    configure_logging("DEBUG")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[-1]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    logging.getLogger().removeHandler(handler)
    logging.setLogRecordFactory(logging.LogRecord)


def test_stdlib_message_args_and_traceback(json_logs: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("httpx")
    try:
        raise RuntimeError(f"upstream refused key {KEY}")
    except RuntimeError:
        log.exception("calling with password=%s for %s", "hunter2", EMAIL)
    text = json_logs.getvalue() + caplog.text
    assert "hunter2" not in text and KEY not in text and EMAIL not in text
    line = json.loads(json_logs.getvalue().splitlines()[-1])
    assert line["logger"] == "httpx" and line["level"] == "error"
    assert "RuntimeError: upstream refused key [REDACTED:anthropic:" in line["exception"]
    assert "[REDACTED:field:" in line["event"] and "[REDACTED:email:" in line["event"]


def test_structlog_event_dict(json_logs: io.StringIO) -> None:
    structlog.get_logger("opsgate.test").info(
        "login", user=EMAIL, headers={"Authorization": "Bearer abcdef123456"}, input_tokens=12
    )
    line = json.loads(json_logs.getvalue().splitlines()[-1])
    assert line["user"].startswith("[REDACTED:email:")
    assert line["headers"]["Authorization"].startswith("[REDACTED:field:")
    assert line["input_tokens"] == 12 and line["event"] == "login"


def test_uvicorn_access_record_keeps_its_arguments(json_logs: io.StringIO) -> None:
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/v1/x?key={KEY}", "1.1", 200), None,
    )  # fmt: skip
    SanitizingFilter().filter(record)
    line = AccessFormatter("%(request_line)s %(status_code)s", use_colors=False).format(record)
    assert KEY not in line and line.startswith("GET /v1/x?key=[REDACTED:") and line.endswith("200 OK")


def test_every_further_shape_is_redacted_whole_in_a_log_line_and_an_exception(
    json_logs: io.StringIO,
) -> None:
    planted = shaped_secrets()
    log = logging.getLogger("opsgate.test")
    for line, _, _ in planted.values():
        try:
            raise RuntimeError(f"upstream said: {line}")
        except RuntimeError:
            log.exception("request carried %s", line)
    text = json_logs.getvalue()
    untagged = REDACTION_TAG.sub("[REDACTED]", text)  # a tag's random hex can hold a tail's digits
    for name, (line, secret, _) in planted.items():
        value = secret_in(name, line, secret)
        assert value not in text and value[-4:] not in untagged, f"{name} reached the log"
    events = [json.loads(row)["event"] for row in text.splitlines()]
    assert events[0] == "request carried Tell Bob: the password is: " + events[0].rsplit(" ", 1)[1]
    assert events[0].endswith("]") and "[REDACTED:field:" in events[0]


def test_problem_body_never_echoes_a_secret() -> None:
    _, body = problem_body(OpsgateError(f"bad token: {KEY} for {EMAIL}"), "req-1")
    assert KEY not in body["detail"] and EMAIL not in body["detail"]
    assert body["code"] == "internal_error" and body["request_id"] == "req-1"


def test_an_unexpected_error_logs_its_redacted_traceback_not_only_its_type(json_logs: io.StringIO) -> None:
    def deep_inside() -> None:
        raise ValueError(f"could not use {KEY} for {EMAIL}")

    try:
        deep_inside()
    except ValueError as exc:
        status, body = problem_body(exc, "req-2")
    assert (status, body["code"]) == (500, "internal_error") and KEY not in json.dumps(body)
    line = json.loads(json_logs.getvalue().splitlines()[-1])
    assert (line["logger"], line["level"]) == ("opsgate.api", "error")
    assert line["event"] == "unhandled error in request req-2: ValueError"
    assert "in deep_inside" in line["exception"] and "test_redaction_logging.py" in line["exception"]
    assert "ValueError: could not use [REDACTED:anthropic:" in line["exception"]
    assert KEY not in json_logs.getvalue() and EMAIL not in json_logs.getvalue()


async def test_a_secret_the_store_reads_is_redacted_in_logs_whatever_its_shape(
    json_logs: io.StringIO, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from opsgate.clock import SystemClock
    from opsgate.ledger.writer import Ledger
    from opsgate.security.secrets import SecretStore
    from opsgate.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 's.db'}"
    upgrade(url)
    ledger = Ledger(make_engine(url), SystemClock())
    ledger.start()
    odd = "Pl41n W0rds " + secrets.token_hex(5)  # no key shape, no field name: no rule knows it
    try:
        store = SecretStore(ledger, SystemClock(), env={"PARTNER_WEBHOOK_TOKEN": odd})
        assert await store.get("PARTNER_WEBHOOK_TOKEN", actor="test", purpose="test") == odd
    finally:
        ledger.close()
    logging.getLogger("opsgate.test").warning("partner answered 500 for %s (retrying)", odd)
    text = json_logs.getvalue()
    assert odd not in text and "[REDACTED:secret:" in text and "(retrying)" in text
