"""OpenTelemetry traces: a loopback OTLP/HTTP receiver gets the export of a real gateway, decoded
with the OTLP protobuf definitions (opentelemetry-proto): the span tree (one span per pipeline
step under the caller's W3C trace, provider attempts as CLIENT spans under ``route``), the GenAI
attributes, and not one canary secret or piece of personal data in the exported bytes."""

from __future__ import annotations

import gzip
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tests.gateways import gateway_settings, running_gateway
from tests.security.canaries import CANARIES, EMAIL, KEYS, PASSWORD, compose

from opsgate import tracing

STEPS = ["authenticate", "authorize", "rate_limit", "validate", "minimise", "take_tokens", "reserve", "ledger_intent", "route",
         "record", "respond"]


@dataclass
class Receiver:
    """A loopback OTLP/HTTP collector: every POST body to ``/v1/traces`` (gunzipped)."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def spans(self) -> tuple[list[dict[str, Any]], list[Span]]:
        resources, spans = [], []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                resources.append(_attributes(rs.resource.attributes))
                spans += [s for ss in rs.scope_spans for s in ss.spans]
        return resources, spans


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            found.paths.append(self.path)
            found.bodies.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return sorted((s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id),
                  key=lambda s: s.start_time_unix_nano)


def test_tracing_exports_the_pipeline_over_otlp_without_canaries(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "opsgate-under-test")
    settings = gateway_settings(tmp_path, **KEYS)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    with running_gateway(settings) as gateway:
        runtime, client = gateway.runtime, gateway.client
        assert tracing.enabled()
        token = runtime.tokens.issue("alice", "user")
        headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{trace_id}-{caller_span}-01"}
        ok = client.post("/v1/operations/email-compose", json=compose(), headers=headers)
        runtime.sandbox.set_faults("outage:anthropic")
        fallback = client.post("/v1/operations/email-compose", json=compose("fallback"),
                               headers={"Authorization": f"Bearer {token}"})
        runtime.sandbox.set_faults("none")
        refused = client.post("/v1/operations/email-compose",
                              json={"instructions": 5, "to": [EMAIL], "password": PASSWORD},
                              headers={"Authorization": f"Bearer {token}"})
    assert not tracing.enabled()
    assert (ok.status_code, fallback.status_code, refused.status_code) == (200, 200, 422), ok.text
    assert set(receiver.paths) == {"/v1/traces"}
    resources, spans = receiver.spans()
    assert {r["service.name"] for r in resources} == {"opsgate-under-test"}

    roots = [s for s in spans if s.name == "POST /v1/operations/email-compose"]
    assert len(roots) == 3 and all(r.kind == Span.SPAN_KIND_SERVER for r in roots)
    first = next(r for r in roots if r.trace_id == bytes.fromhex(trace_id))
    assert first.parent_span_id == bytes.fromhex(caller_span)  # the caller's traceparent is honoured
    assert [s.name for s in _children(spans, first)] == STEPS
    assert _attributes(first.attributes)["http.response.status_code"] == 200
    assert _attributes(first.attributes)["opsgate.request_id"] == ok.json()["request_id"]
    route = next(s for s in _children(spans, first) if s.name == "route")
    record = next(s for s in _children(spans, first) if s.name == "record")
    assert [s.name for s in _children(spans, record)] == ["meter"]
    (call,) = _children(spans, route)
    served = ok.json()
    assert (call.name, call.kind) == (f"chat {served['model']}", Span.SPAN_KIND_CLIENT)
    gen_ai = _attributes(call.attributes)
    assert gen_ai["gen_ai.operation.name"] == "chat"
    assert gen_ai["gen_ai.system"] == {"anthropic": "anthropic", "deepseek": "deepseek",
                                       "gemini": "gcp.gemini"}[served["provider"]]
    assert gen_ai["gen_ai.request.model"] == gen_ai["gen_ai.response.model"] == served["model"]
    usage = served["usage"]
    assert gen_ai["gen_ai.usage.input_tokens"] == (usage["input_tokens"] + usage["cache_write_tokens"]
                                                   + usage["cache_write_1h_tokens"] + usage["cache_read_tokens"])
    assert gen_ai["gen_ai.usage.output_tokens"] == usage["output_tokens"] > 0
    assert gen_ai["gen_ai.response.finish_reasons"]

    second = next(r for r in roots if r.trace_id != first.trace_id and r.parent_span_id == b""
                  and _attributes(r.attributes)["opsgate.request_id"] == fallback.json()["request_id"])
    attempts = _children(spans, next(s for s in _children(spans, second) if s.name == "route"))
    failed = [_attributes(a.attributes) for a in attempts if a.status.code == Status.STATUS_CODE_ERROR]
    assert failed and all(f["gen_ai.system"] == "anthropic" and f["error.type"] for f in failed)
    assert _attributes(attempts[-1].attributes)["gen_ai.response.model"] == fallback.json()["model"]

    third = next(r for r in roots if _attributes(r.attributes)["http.response.status_code"] == 422)
    assert _attributes(third.attributes)["error.type"] == "invalid_input"
    assert third.status.code == Status.STATUS_CODE_UNSET  # a 4xx is the caller's, not a server error
    assert [s.name for s in _children(spans, third)] == STEPS[:4]

    exported = b"".join(receiver.bodies)
    leaked = [c for c in [*CANARIES, token, "reset password"] if c.encode() in exported]
    assert leaked == [], f"{len(leaked)} canaries reached the trace export"


def test_tracing_is_off_without_an_otlp_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    with running_gateway(gateway_settings(tmp_path)) as gateway:
        token = gateway.runtime.tokens.issue("alice", "user")
        answer = gateway.client.post("/v1/operations/email-compose", json=compose(),
                                     headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{'1' * 32}-{'2' * 16}-01"})
        assert answer.status_code == 200
        assert not tracing.enabled()


def test_a_call_made_in_process_is_one_trace_under_its_root(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``opsgate run`` governs without HTTP: its steps are children of one INTERNAL root span
    (they were ten root spans, one trace each, with no operation or request id)."""
    import asyncio

    from opsgate.cli import CLI_USER, _run_once

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    body = orjson.dumps(compose())
    outcome, problem = asyncio.run(_run_once(gateway_settings(tmp_path), "email-compose", body, CLI_USER))
    assert problem is None and outcome is not None
    _, spans = receiver.spans()
    (root,) = [s for s in spans if s.parent_span_id == b""]
    assert (root.name, root.kind) == ("govern email-compose", Span.SPAN_KIND_INTERNAL)
    assert _attributes(root.attributes) == {"opsgate.operation": "email-compose",
                                            "opsgate.request_id": outcome["request_id"]}
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert [s.name for s in _children(spans, root)] == STEPS[:-1]  # no HTTP answer to write
