"""The pure parts of ``bench/peers.py`` (the bench itself never runs in a test): the fixed answer
of its upstream, read by opsgate's own OpenAI-compatible adapter, and its final ratio line."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import aiohttp
import orjson
import pytest
from aiohttp import web

from opsgate.operations import get_operation
from opsgate.operations.io import input_from_file
from opsgate.providers.openai_compat import OpenAICompatProvider
from opsgate.sandbox.synth import count_tokens
from tests.paths import EXAMPLES, REPO


@pytest.fixture
def peers() -> Iterator[ModuleType]:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        yield importlib.import_module("peers")
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_the_ratio_line_divides_governed_by_portkey(peers: ModuleType) -> None:
    cells = {
        (1, "direct"): {"p50": 0.5, "p99": 0.9, "rps": 1800.0},
        (1, "portkey"): {"p50": 1.5, "p99": 3.0, "rps": 600.0},
        (1, "governed"): {"p50": 2.0, "p99": 4.0, "rps": 450.0},
        (32, "portkey"): {"p50": 28.0, "p99": 60.0, "rps": 1142.0},
        (32, "governed"): {"p50": 40.0, "p99": 90.0, "rps": 571.0},
    }
    assert peers.ratio_line(cells) == "governed/portkey: throughput_c32=0.50 added_p50_c1=1.50"


@pytest.mark.parametrize("operation", ["email-compose", "email-classify"])
async def test_the_upstream_answer_is_a_valid_answer_for_the_operation(
    peers: ModuleType, operation: str, unused_tcp_port: int
) -> None:
    op = get_operation(operation)
    example = next(EXAMPLES.glob(f"{op.id}.*"))
    prepared = op.prepare(op.Input.model_validate(input_from_file(op.id, example, None)))
    request = prepared.request
    answer = peers.upstream_answer(request, peers.MODEL)

    async def complete(_: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{unused_tcp_port}/v1"
            provider = OpenAICompatProvider(peers.PROVIDER, session, base, None, key_required=False)
            completion = await provider.complete(request, peers.MODEL, 10)
    finally:
        await runner.cleanup()
    assert completion.served_model == peers.MODEL
    assert completion.data == orjson.loads(orjson.loads(answer)["choices"][0]["message"]["content"])
    assert completion.usage.output_tokens == count_tokens(completion.text)
    output = op.finish(prepared, op.answer_model(prepared).model_validate(completion.data))  # what govern does
    assert isinstance(output, op.Output)


def test_several_workers_need_redis_for_the_governed_rate_limits(peers: ModuleType) -> None:
    assert "OPSGATE_REDIS_URL" in peers.workers_refusal(2, {})
    assert peers.workers_refusal(2, {"OPSGATE_REDIS_URL": "redis://127.0.0.1:6379/0"}) is None
    assert peers.workers_refusal(1, {}) is None
