"""The one HTTP exchange every provider adapter shares: session, base-URL policy, POST, body decoding.

Adapters call :func:`post_json` and get an :class:`HttpReply` (status, headers, raw body, latency) or
a transport error already mapped to :mod:`opsgate.providers.errors`. Nothing here puts a key, a host,
a URL or a provider's raw body into an error ``detail``: those details reach clients.
"""

from __future__ import annotations

import ipaddress
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDictProxy
from yarl import URL

from opsgate.providers.base import Usage
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    InvalidRequest,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ServerError,
    SpendCapReached,
)

#: Largest response body an adapter reads (bytes); bigger bodies are a MalformedResponse.
MAX_BODY_BYTES = 8 * 1024 * 1024

_USER_AGENT = "opsgate/0.1 (+aiohttp)"
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def make_session(*, limit: int = 256, limit_per_host: int = 64,
                 trace_configs: list[aiohttp.TraceConfig] | None = None) -> aiohttp.ClientSession:
    """Create the process's single provider session (call it inside the running event loop).

    TLS uses the system trust store with TLS 1.2 as the minimum version; the pool keeps at most
    ``limit`` connections, ``limit_per_host`` per provider host, and caches DNS for 5 minutes.
    JSON bodies sent with ``json=`` are serialised with orjson. No session-wide timeout: each call
    passes its own (see :func:`post_json`). ``trace_configs`` (aiohttp request traces) see every
    request, e.g. a rehearsal's :func:`opsgate.sandbox.latency.spending_trace`. The caller closes
    the session at shutdown.
    """
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    connector = _HandOnConnector(
        ssl=context,
        limit=limit,
        limit_per_host=limit_per_host,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        headers={"User-Agent": _USER_AGENT},
        raise_for_status=False,
        trace_configs=trace_configs,
    )


class _HandOnConnector(aiohttp.TCPConnector):
    """aiohttp's connector, except that a request whose ``connect`` ends in an exception (its
    timeout cancelling it while it queues for a connection) wakes the next queued request.

    aiohttp wakes one queued request per freed connection. When that request is cancelled after
    the wake-up and before it runs, aiohttp drops the wake-up: the requests queued behind it wait
    for a connection that is free until a later release, or until their own timeout when none
    comes (``tests/providers/test_provider_http.py`` plays the sequence). On a busy event loop,
    token counts cut by their 2 s timeout can so leave provider requests waiting out their
    whole timeout. Waking the next request again is harmless when nothing was dropped: aiohttp
    wakes one only while the limits leave a connection free, and a woken request that finds
    none queues again at the front.
    """

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        try:
            return await super().connect(req, traces, timeout)
        except BaseException:
            self._release_waiter()
            raise


def check_base_url(url: str) -> str:
    """Validate a provider base URL and return it without a trailing slash.

    Accepts ``https://host[:port][/path]``, and ``http://`` only for loopback hosts (127.0.0.0/8,
    ``::1``, ``localhost``) such as local sandboxes, vLLM or Ollama. Credentials, query strings and
    fragments are refused (a key must never ride in a URL). Raises ``ValueError`` naming the rule
    that failed; this is a configuration error reported at start-up, never to API clients. The
    message repeats at most the URL's scheme, host, port and path (:func:`_shown`): never its
    user info, query or fragment, where a key would ride, nor a text that is no absolute URL.
    """
    try:
        parsed = URL(url.strip())
    except (ValueError, TypeError):
        raise ValueError("provider base URL is not a URL") from None
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError("provider base URL must be an absolute https:// URL (https://host[:port][/path])")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError(f"provider base URL {_shown(parsed)} must not contain credentials")
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"provider base URL {_shown(parsed)} must not have a query or fragment")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        raise ValueError(
            f"provider base URL {_shown(parsed)} uses plain http for a non-loopback host; use https"
        )
    return str(parsed).rstrip("/")


def _shown(url: URL) -> str:
    """What an error may repeat of an absolute URL: ``'scheme://host[:port]/path'``, without its
    user info, query and fragment."""
    return repr(str(url.with_user(None).with_query(None).with_fragment(None)))


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is loopback (127.0.0.0/8, ``::1``, ``localhost``)."""
    host = URL(url.strip()).host
    return host is not None and _is_loopback(host)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_key(provider: str, api_key: str | None, key_env: str) -> str:
    """Return ``api_key``, or raise :class:`AuthenticationFailed` ("<KEY_ENV> is not set")."""
    if not api_key:
        raise AuthenticationFailed(provider, f"{key_env} is not set")
    return api_key


@dataclass(frozen=True, slots=True)
class HttpReply:
    """One completed HTTP exchange: status, response headers, raw body bytes and the wall time
    from sending the request to having read the whole body, in milliseconds."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    latency_ms: float


async def post_json(
    session: aiohttp.ClientSession,
    provider: str,
    url: str,
    *,
    headers: Mapping[str, str],
    payload: Mapping[str, Any],
    timeout_s: float,
) -> HttpReply:
    """POST ``payload`` as orjson-encoded JSON and read the whole answer within ``timeout_s`` seconds.

    Any HTTP status is returned, not raised. Raises :class:`ProviderTimeout` when the exchange
    (connect, send, headers and body) does not finish in time, :class:`ConnectionFailed` on
    refused/reset connections, DNS and TLS failures or a cut body (with ``http_status`` set when
    the headers had arrived: the provider answered, and may bill), and :class:`MalformedResponse`
    when the body exceeds :data:`MAX_BODY_BYTES`. Details name only the failure class.
    """
    data = orjson.dumps(payload)
    send_headers = {**headers, "Content-Type": "application/json", "Accept": "application/json"}
    started = time.perf_counter()
    try:
        async with session.post(
            url,
            data=data,
            headers=send_headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            try:
                body = await _read_body(provider, response)
            except aiohttp.ClientError as exc:  # cut after the headers: the provider answered
                raise ConnectionFailed(provider, f"answer cut ({type(exc).__name__})",
                                       http_status=response.status) from exc
            latency_ms = (time.perf_counter() - started) * 1000.0
            return HttpReply(response.status, response.headers, body, latency_ms)
    except TimeoutError as exc:
        raise ProviderTimeout(provider, f"no complete answer within {timeout_s:g} s") from exc
    except aiohttp.ClientError as exc:
        raise ConnectionFailed(provider, f"transport failure ({type(exc).__name__})") from exc


async def _read_body(provider: str, response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise MalformedResponse(
                provider, "response body too large", http_status=response.status
            )
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(provider: str, body: bytes, *, http_status: int | None = None) -> Any:
    """Parse a JSON body, tolerating leading/trailing whitespace and blank keep-alive lines
    (DeepSeek sends empty lines while a non-streaming answer is pending).

    Raises :class:`MalformedResponse` when the body is not JSON."""
    try:
        return orjson.loads(body.strip())
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(
            provider, "response body is not JSON", http_status=http_status
        ) from exc


def decode_object(provider: str, body: bytes) -> dict[str, Any]:
    """Like :func:`decode_json` for a 2xx body that must be a JSON object."""
    value = decode_json(provider, body, http_status=200)
    if not isinstance(value, dict):
        raise MalformedResponse(provider, "response body is not a JSON object", http_status=200)
    return value


def reported_usage(body: bytes, key: str, parse: Callable[[Any], Usage]) -> Usage | None:
    """The usage object ``key`` of a 200 JSON ``body`` read with the adapter's ``parse``, for an
    answer that could not be used but may have been billed; ``None`` when the body is not JSON or
    carries no readable usage (the metering then charges the attempt's worst case)."""
    try:
        value = orjson.loads(body.strip())
        return parse(value[key]) if isinstance(value, dict) and key in value else None
    except (orjson.JSONDecodeError, ProviderError):
        return None


def reported_model(body: bytes, key: str) -> str | None:
    """The model a 200 JSON ``body`` names under ``key`` (``model``; Gemini ``modelVersion``), for
    an answer that could not be used but may have been billed at that model's price; ``None``
    when the body is not a JSON object or the value is no non-empty string. The router checks
    the text before anything records it (:func:`opsgate.routing.served.checked_model_id`)."""
    try:
        value = orjson.loads(body.strip())
    except orjson.JSONDecodeError:
        return None
    return optional_str(value.get(key)) if isinstance(value, dict) else None


def safe_token(value: object) -> str | None:
    """Return ``value`` if it is a short identifier-like string (a provider error type such as
    ``overloaded_error`` or ``RESOURCE_EXHAUSTED``) that is safe to echo, else ``None``."""
    if isinstance(value, str) and _SAFE_TOKEN.fullmatch(value):
        return value
    return None


def token_count(
    provider: str, usage: Mapping[str, Any], key: str, *, required: bool = False
) -> int:
    """Read a non-negative integer token count ``usage[key]``; absent or ``null`` counts as 0
    unless ``required``. Raises :class:`MalformedResponse` for any other shape."""
    value = usage.get(key)
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedResponse(
            provider, f"usage field {key} is missing or invalid", http_status=200
        )
    return value


def optional_token_count(provider: str, usage: Mapping[str, Any], key: str) -> int | None:
    """``usage[key]`` read as :func:`token_count` does, ``None`` when absent or ``null`` (a
    breakdown the caller then derives from the totals instead of reading it as 0)."""
    return None if usage.get(key) is None else token_count(provider, usage, key)


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """The wait a response asks for, in seconds, or ``None``.

    Reads ``retry-after-ms`` (milliseconds, OpenAI-style) first, then ``Retry-After`` as
    delta-seconds or an HTTP-date (RFC 9110 §10.2.3) relative to ``now``. Negative waits become 0.
    """
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000.0, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def error_class(table: Mapping[int, type[ProviderError]], status: int) -> type[ProviderError]:
    """The error class for a non-2xx ``status`` from a provider's ``table``; statuses the table
    does not name map to :class:`ServerError` (5xx, and 408 Request Timeout: the provider gave up
    waiting, which says nothing against the request) or :class:`InvalidRequest` (anything else)."""
    if status in table:
        return table[status]
    return ServerError if status >= 500 or status == 408 else InvalidRequest


def error_detail(status: int, error_type: object) -> str:
    """A client-safe detail: ``"HTTP 529 overloaded_error"`` (the type only if :func:`safe_token`)."""
    token = safe_token(error_type)
    return f"HTTP {status} {token}" if token else f"HTTP {status}"


_REJECTION_NOTES: Mapping[type[ProviderError], str] = {
    ContentFiltered: "the provider refused the content (content policy)",
    ContextLengthExceeded: "the prompt exceeds the model's context window",
    AuthenticationFailed: "the provider refused our key or account",
    BillingFailed: "the provider refused for billing reasons",
    SpendCapReached: "the provider account's usage limit is reached",
}


def rejected(cls: type[ProviderError], detail: str) -> tuple[type[ProviderError], str]:
    """``cls`` (a key of :data:`_REJECTION_NOTES`: a refusal, or an account-level failure, read
    from a 4xx body whose status alone says "bad request") and ``detail`` with what it means
    appended, e.g. ``"HTTP 400 invalid_request_error: the prompt exceeds the model's context
    window"``; the provider's own message stays out."""
    return cls, f"{detail}: {_REJECTION_NOTES[cls]}"


def error_body(body: bytes) -> dict[str, Any]:
    """Best-effort parse of an error body: the JSON object, or ``{}`` when it is anything else
    (an HTML page from a proxy, an empty body)."""
    try:
        value = orjson.loads(body.strip())
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def optional_str(value: object) -> str | None:
    """``value`` if it is a non-empty string (e.g. a request id read from a body), else ``None``."""
    return value if isinstance(value, str) and value else None


_THINK_BLOCK = re.compile(r"\A\s*<think>.*?</think>", re.S)
_FENCED = re.compile(r"\A```[ \t]*(?:json)?[ \t]*\r?\n(?P<body>.*)\r?\n[ \t]*```\Z", re.S | re.I)


def unwrap_answer(text: str) -> str:
    """An OpenAI-compatible answer's text without the two wrappers models put around a JSON
    answer, in this order: one leading ``<think>…</think>`` reasoning block (Qwen3 and
    DeepSeek-R1 style models on vLLM or Ollama without a reasoning parser emit it before the
    answer), then one fenced code block around the whole rest (a line ```` ```json ```` or
    ```` ``` ````, the answer, a closing ```` ``` ```` line; CommonMark "Fenced code blocks").
    Anything else is returned stripped and unchanged: the text is never searched for JSON, so
    an answer with prose around it, an unclosed think block or two fences stays a bad response
    for :func:`answer_object`."""
    think = _THINK_BLOCK.match(text)
    rest = text[think.end():] if think else text
    rest = rest.strip()
    fenced = _FENCED.match(rest)
    return fenced["body"].strip() if fenced else rest


def answer_object(provider: str, text: str, request_id: str | None) -> dict[str, Any]:
    """Parse an answer's text that must be one JSON object (surrounding whitespace allowed).

    Raises :class:`MalformedResponse` when it is not valid JSON or not an object (e.g. cut off
    by ``max_tokens``). The object is not validated against any schema here."""
    try:
        data = orjson.loads(text.strip())
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(
            provider,
            "the answer is not valid JSON",
            http_status=200,
            provider_request_id=request_id,
        ) from exc
    if not isinstance(data, dict):
        raise MalformedResponse(
            provider,
            "the answer is not a JSON object",
            http_status=200,
            provider_request_id=request_id,
        )
    return data


def as_object(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object (dict), else ``{}`` (for optional nested objects)."""
    return value if isinstance(value, dict) else {}
