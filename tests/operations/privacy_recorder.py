"""A loopback stand-in between the gateway and its providers that records what they receive.

:func:`recorded_gateway` serves a real gateway (not in sandbox mode) whose three provider base URLs
point at a recorder. The recorder keeps every request body it gets and either forwards the request
to the provider sandboxes (real wire-format answers) or, when ``Recorder.answer`` is set, answers
an Anthropic Messages request itself with a ``tool_use`` block carrying ``answer(body)``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.gateways import Gateway, gateway_settings, running_gateway

from opsgate.localserver import serve_in_thread
from opsgate.sandbox.server import SandboxThread

_HOP = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}


@dataclass
class Recorder:
    """Request bodies received (``{"path", "body"}``) and the optional scripted answer."""

    upstream: str
    received: list[dict[str, Any]] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def texts(self) -> str:
        """Every string in every body received, one per line (prompt texts, schemas, model ids)."""
        return "\n".join(s for r in self.received for s in strings_in(r["body"]))

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        self.received.append({"path": request.url.path, "body": body})
        if self.answer is not None and request.url.path.startswith("/anthropic/"):
            return JSONResponse(_anthropic_message(body, self.answer(body)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = f"{self.upstream}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(url, content=raw, headers=headers)
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))


def strings_in(doc: Any) -> list[str]:
    """Every string value in a decoded JSON document."""
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in strings_in(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in strings_in(v)]
    return [doc] if isinstance(doc, str) else []


def prompt_of(body: dict[str, Any]) -> str:
    """The user prompt of an Anthropic Messages request body."""
    return body["messages"][0]["content"]


def _anthropic_message(body: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
        "model": body["model"], "stop_reason": "tool_use", "stop_sequence": None,
        "content": [{"type": "tool_use", "id": "toolu_" + secrets.token_hex(12),
                     "name": body["tool_choice"]["name"], "input": data}],
        "usage": {"input_tokens": 100, "output_tokens": 50},
    }  # fmt: skip


@contextmanager
def recorded_gateway(tmp_path: Path, **overrides: object) -> Iterator[tuple[Gateway, Recorder]]:
    """A gateway on a loopback port whose providers are reached through a :class:`Recorder`
    forwarding to the provider sandboxes; every operation is enabled for every user."""
    with SandboxThread() as sandbox:
        upstream = sandbox.base_urls["anthropic"].rsplit("/", 1)[0]
        recorder = Recorder(upstream)
        stand_in = serve_in_thread(Starlette(routes=[Route("/{path:path}", recorder.handle, methods=["POST"])]))
        try:
            settings = gateway_settings(
                tmp_path, sandbox=False,
                anthropic_base_url=f"{stand_in.base_url}/anthropic",
                deepseek_base_url=f"{stand_in.base_url}/deepseek",
                gemini_base_url=f"{stand_in.base_url}/gemini",
                anthropic_api_key="sk-ant-api03-" + secrets.token_urlsafe(64),  # pragma: allowlist secret
                deepseek_api_key="sk-" + secrets.token_hex(24),  # pragma: allowlist secret
                gemini_api_key="AIza" + secrets.token_urlsafe(26)[:35],  # pragma: allowlist secret
                **overrides,
            )  # fmt: skip
            with running_gateway(settings) as gateway:
                gateway.runtime.rollout.enable_for_sandbox()
                yield gateway, recorder
        finally:
            stand_in.stop()
