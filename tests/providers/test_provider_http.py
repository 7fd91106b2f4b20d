"""The shared HTTP exchange: base-URL policy, TLS floor, transport error mapping, body decoding."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime

import aiohttp
import pytest
from multidict import CIMultiDict

from opsgate.providers.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidRequest,
    MalformedResponse,
    Overloaded,
    ProviderTimeout,
    ServerError,
)
from opsgate.providers.http import (
    check_base_url,
    decode_json,
    error_class,
    error_detail,
    make_session,
    post_json,
    require_key,
    retry_after_seconds,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com"),
        ("https://api.deepseek.com/", "https://api.deepseek.com"),
        ("https://gateway.example.org:8443/v1/", "https://gateway.example.org:8443/v1"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.8.9.10:11434/v1", "http://127.8.9.10:11434/v1"),
        ("http://localhost:8000/v1", "http://localhost:8000/v1"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_check_base_url_accepts_https_and_loopback_http(url: str, expected: str) -> None:
    assert check_base_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com", "plain http"),
        ("http://10.0.0.5:8000", "plain http"),
        ("http://127.0.0.1.nip.io", "plain http"),
        ("ftp://api.anthropic.com", "https://"),
        ("api.anthropic.com", "https://"),
        ("https://user:pw@api.anthropic.com", "credentials"),
        ("https://generativelanguage.googleapis.com?key=abc", "query"),
    ],
)
def test_check_base_url_rejects_with_a_clear_config_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_base_url(url)


async def test_session_requires_tls_1_2_or_later() -> None:
    session = make_session()
    try:
        context = session.connector._ssl  # type: ignore[union-attr]
        assert isinstance(context, ssl.SSLContext)
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        assert session.connector.limit == 256  # type: ignore[union-attr]
    finally:
        await session.close()


async def test_post_json_returns_status_headers_body_and_latency(upstream, session) -> None:
    upstream.reply(529, {"type": "error"}, headers={"request-id": "req_1"}, delay_s=0.05)
    reply = await post_json(
        session, "p", f"{upstream.base_url}/x", headers={"h": "v"}, payload={"a": 1}, timeout_s=5
    )
    assert reply.status == 529
    assert reply.headers["request-id"] == "req_1"
    assert reply.body == b'{"type":"error"}'
    assert 50.0 <= reply.latency_ms < 5000.0
    assert upstream.requests[0].headers["Content-Type"] == "application/json"
    assert upstream.requests[0].body == {"a": 1}


async def test_slow_answer_is_a_provider_timeout(upstream, session) -> None:
    upstream.reply(200, {"ok": True}, delay_s=1.0)
    with pytest.raises(ProviderTimeout) as info:
        await post_json(
            session, "p", f"{upstream.base_url}/x", headers={}, payload={}, timeout_s=0.2
        )
    assert info.value.retryable is True
    assert info.value.detail == "no complete answer within 0.2 s"


async def test_endless_keep_alive_lines_still_time_out(upstream, session) -> None:
    upstream.reply(200, {"ok": True}, lead=[b"\n"] * 20, lead_interval_s=0.05)
    with pytest.raises(ProviderTimeout):
        await post_json(
            session, "p", f"{upstream.base_url}/x", headers={}, payload={}, timeout_s=0.3
        )


async def test_connection_refused_is_connection_failed(session, assert_safe_detail) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionFailed) as info:
        await post_json(
            session, "p", f"http://127.0.0.1:{port}/x", headers={}, payload={}, timeout_s=2
        )
    assert info.value.http_status is None
    assert info.value.detail.startswith("transport failure (")
    assert_safe_detail(info.value, str(port))


async def test_cut_body_is_connection_failed(upstream, session) -> None:
    upstream.reply(200, {"content": "x" * 500}, cut_after=40)
    with pytest.raises(ConnectionFailed):
        await post_json(session, "p", f"{upstream.base_url}/x", headers={}, payload={}, timeout_s=2)


async def test_tls_failure_is_connection_failed(session, assert_safe_detail) -> None:
    async def plain_http(reader, writer) -> None:  # a non-TLS listener answering a TLS hello
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionFailed) as info:
            await post_json(
                session, "p", f"https://127.0.0.1:{port}/x", headers={}, payload={}, timeout_s=2
            )
        assert_safe_detail(info.value, str(port))
    finally:
        server.close()
        await server.wait_closed()


def test_decode_json_strips_leading_blank_lines() -> None:
    assert decode_json("p", b'\n\n  \r\n{"id": 1}\n') == {"id": 1}


def test_decode_json_rejects_html() -> None:
    with pytest.raises(MalformedResponse) as info:
        decode_json("p", b"<html>Bad gateway</html>", http_status=200)
    assert info.value.detail == "response body is not JSON"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "17"}, 17.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"Retry-After": "Sun, 01 Mar 2026 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Sun, 01 Mar 2026 11:59:00 GMT"}, 0.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds_reads_seconds_dates_and_ms(headers, expected) -> None:
    assert retry_after_seconds(CIMultiDict(headers), NOW) == expected


def test_require_key_names_the_missing_variable() -> None:
    assert require_key("anthropic", "k", "ANTHROPIC_API_KEY") == "k"
    with pytest.raises(AuthenticationFailed, match="^ANTHROPIC_API_KEY is not set$"):
        require_key("anthropic", None, "ANTHROPIC_API_KEY")


def test_error_class_defaults_and_detail_sanitising() -> None:
    table = {503: Overloaded}
    assert error_class(table, 503) is Overloaded
    assert error_class(table, 502) is ServerError
    assert error_class(table, 418) is InvalidRequest
    assert error_class(table, 408) is ServerError  # the provider gave up waiting: retried, falls back
    assert error_class(table, 408)("x", http_status=408).timed_out
    assert error_detail(529, "overloaded_error") == "HTTP 529 overloaded_error"
    assert error_detail(500, "see https://evil.example/x?key=1") == "HTTP 500"
    assert error_detail(500, None) == "HTTP 500"


async def test_a_queued_request_cancelled_after_its_wake_up_hands_the_connection_on(
    upstream,
) -> None:
    """One connection per host: A holds it, B and C queue for it. A's answer frees it and wakes B;
    B is cancelled (its timeout, as a token count's) before it runs. C must get the connection;
    stock aiohttp drops that wake-up, and C waits for the free connection until its own timeout
    (in the gateway a degraded call can so wait out its 60 s behind token counts cut at 2 s)."""
    queued = asyncio.Event()
    waiting: list[object] = []

    async def on_queued(*_: object) -> None:
        waiting.append(None)
        if len(waiting) == 2:
            queued.set()

    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(on_queued)
    session = make_session(limit_per_host=1, trace_configs=[trace])
    release_a = asyncio.Event()
    upstream.reply(200, {"call": "A"}, wait_for=release_a)
    upstream.reply(200, {"call": "C"})

    async def post() -> bytes:
        reply = await post_json(session, "p", f"{upstream.base_url}/x", headers={}, payload={},
                                timeout_s=60)
        return reply.body

    async def a_then_cancel_b() -> bytes:
        body = await post()
        b.cancel()  # B was woken by A's release and has not run yet
        return body

    try:
        a = asyncio.create_task(a_then_cancel_b())
        b = asyncio.create_task(post())
        c = asyncio.create_task(post())
        await queued.wait()
        release_a.set()
        assert await a == b'{"call":"A"}'
        with pytest.raises(asyncio.CancelledError):
            await b
        assert await asyncio.wait_for(c, 30) == b'{"call":"C"}'
        assert len(upstream.requests) == 2  # B never reached the upstream: it left the queue
    finally:
        await session.close()
