"""opsgate beside a peer gateway: the Portkey OSS gateway and opsgate in front of one upstream.

One run, one process tree, one client (aiohttp, no SDK, the same session code for every path,
see ``overhead.measure``): a fixed-answer OpenAI-compatible upstream on loopback, then

- ``direct``    the upstream itself;
- ``portkey``   the Portkey OSS gateway (``@portkey-ai/gateway``, pinned, Node; installed with npm
                into ``~/.cache/opsgate-bench/portkey``, never into the repository), forwarding to
                the upstream as a custom OpenAI host — no governance at all;
- ``opsgate``   ``opsgate serve`` with the ledger and ai_operation_log on, budgets and rate limits
                off, routing the operation to the upstream through a configured OpenAI-compatible
                provider (docs/providers.md);
- ``governed``  the same with ``--governance`` as in ``bench/overhead.py``: three applicable day
                budgets and four rate limits, all too high to refuse.

Every path answers the same chat completion (a schema-valid answer for the operation); the gateways
send the upstream what opsgate's adapter sends. For concurrency 1 and 32 it prints p50/p99 latency,
the p50 each gateway adds to the direct call, and operations per second; last, exactly::

    governed/portkey: throughput_c32=X.XX added_p50_c1=Y.YY

(governed ops/s at c=32 over Portkey's; governed added p50 at c=1 over Portkey's). Absolute numbers
move with whatever else runs on the machine; the ratios are measured side by side in one run.

    ./dev bench peers [--requests 2000] [--operation email-compose] [--synchronous NORMAL]
                      [--database-url postgresql+psycopg://...] [--workers 2]

``--workers`` above 1 needs ``OPSGATE_REDIS_URL`` (the rate limits are shared through Redis); give
``--database-url`` a fresh database.

Never run by CI or by a test (a unit test covers :func:`ratio_line` and :func:`upstream_answer`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from overhead import (BENCH_USER, REPO, free_port, measure, prepare_gateway, start_gateway,
                      wait_http)

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.operations import get_operation
from opsgate.operations.io import input_from_file
from opsgate.providers.base import CompletionRequest
from opsgate.providers.openai_compat import chat_payload
from opsgate.sandbox.instance import instance_for
from opsgate.sandbox.synth import count_tokens
from opsgate.security.auth import TokenService

PORTKEY_VERSION = "1.15.2"
"""``@portkey-ai/gateway`` on npm, read 2026-12-04 (its ``latest`` tag, published 2026-08-23)."""
PORTKEY_DIR = Path.home() / ".cache" / "opsgate-bench" / "portkey"
PROVIDER, MODEL = "bench-upstream", "fixed-answer"
PATHS = ("direct", "portkey", "opsgate", "governed")


def upstream_answer(request: CompletionRequest, model: str) -> bytes:
    """The upstream's one answer: an OpenAI ``chat.completion`` whose content is a schema-valid
    instance of ``request.json_schema`` (what opsgate's sandboxes synthesise), with usage counted
    by the sandboxes' rule (UTF-8 bytes / 4)."""
    if request.json_schema is None:
        raise ValueError("the bench operation must ask for a JSON schema")
    content = json.dumps(instance_for(request.json_schema))
    prompt, completion = count_tokens(request.system + request.user), count_tokens(content)
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_796_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    })


def _serve_upstream(port: int, answer: bytes) -> None:
    """The fixed-answer upstream (a child process): ``POST /v1/chat/completions`` reads the body
    and answers ``answer``; ``GET /`` answers 200 for the readiness wait."""

    async def complete(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_get("/", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def ratio_line(cells: dict[tuple[int, str], dict[str, float]]) -> str:
    """The final line from ``cells[(concurrency, path)] = {"p50", "p99", "rps"}``: governed ops/s
    at c=32 over Portkey's, and governed added p50 at c=1 (over ``direct``) over Portkey's."""
    throughput = cells[(32, "governed")]["rps"] / cells[(32, "portkey")]["rps"]
    direct = cells[(1, "direct")]["p50"]
    added = (cells[(1, "governed")]["p50"] - direct) / (cells[(1, "portkey")]["p50"] - direct)
    return f"governed/portkey: throughput_c32={throughput:.2f} added_p50_c1={added:.2f}"


def workers_refusal(workers: int, environ: Mapping[str, str]) -> str | None:
    """Why the governed gateway could not start with ``workers`` processes, or ``None``: its rate
    limits are shared through Redis (``opsgate serve --workers N`` refuses them without), so
    ``OPSGATE_REDIS_URL`` must be set -- said at once instead of after the 240 s start-up wait."""
    if workers > 1 and not environ.get("OPSGATE_REDIS_URL"):
        return (f"--workers {workers}: the governed gateway's rate limits need Redis; set "
                "OPSGATE_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    return None


def install_portkey() -> Path:
    """``@portkey-ai/gateway@PORTKEY_VERSION`` under :data:`PORTKEY_DIR` (npm, once); returns its
    ``build/start-server.js``. SystemExit when node or npm is missing or the install fails."""
    package = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway"
    manifest = package / "package.json"
    if not (shutil.which("node") and shutil.which("npm")):
        raise SystemExit("Portkey needs node and npm (as root: apt-get install -y nodejs npm)")
    if not manifest.exists() or json.loads(manifest.read_text())["version"] != PORTKEY_VERSION:
        print(f"installing @portkey-ai/gateway@{PORTKEY_VERSION} into {PORTKEY_DIR}", file=sys.stderr)
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund",
                        f"@portkey-ai/gateway@{PORTKEY_VERSION}"],
                       check=True, stdout=subprocess.DEVNULL)
    return package / "build" / "start-server.js"


def _config(upstream_port: int, operation: str) -> str:
    """opsgate.toml: the upstream as a named OpenAI-compatible provider serving ``operation``."""
    return (f'[providers.{PROVIDER}]\nkind = "openai-compatible"\n'
            f'base_url = "http://127.0.0.1:{upstream_port}/v1"\n\n'
            f'[routes.{operation}]\nchain = ["{PROVIDER}/{MODEL}"]\n\n'
            f'[prices."{PROVIDER}/{MODEL}"]\ninput = "1"\noutput = "2"\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell (after a warm-up)")
    parser.add_argument("--operation", default="email-compose")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"],
                        default=os.environ.get("OPSGATE_LEDGER_SYNCHRONOUS", "FULL").upper(),
                        help="SQLite synchronous mode of both gateways' ledger commits "
                             "(default: $OPSGATE_LEDGER_SYNCHRONOUS, else FULL)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the governed gateway")
    parser.add_argument("--database-url",
                        help="the governed gateway's database (default: a fresh SQLite file); "
                             "the ungoverned one always gets a fresh SQLite file")
    args = parser.parse_args()
    if (refusal := workers_refusal(args.workers, os.environ)) is not None:
        raise SystemExit(refusal)

    op = get_operation(args.operation)
    payload = input_from_file(op.id, next((REPO / "examples").glob(f"{op.id}.*")), None)
    request = op.prepare(op.Input.model_validate(payload)).request
    start_server = install_portkey()
    ports = {name: free_port() for name in ("upstream", *PATHS[1:])}
    envs = _gateway_envs(args, ports["upstream"], op.id)
    upstream = multiprocessing.get_context("fork").Process(
        target=_serve_upstream, args=(ports["upstream"], upstream_answer(request, MODEL)), daemon=True)
    upstream.start()
    procs = [
        subprocess.Popen(["node", str(start_server), f"--port={ports['portkey']}", "--headless"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        start_gateway(envs["opsgate"], ports["opsgate"], 1),
        start_gateway(envs["governed"], ports["governed"], args.workers),
    ]
    try:
        wait_http(f"http://127.0.0.1:{ports['upstream']}/")
        wait_http(f"http://127.0.0.1:{ports['portkey']}/")
        for path in PATHS[2:]:  # several workers starting on a loaded machine take their time
            wait_http(f"http://127.0.0.1:{ports[path]}/healthz", timeout_s=240)
        jwt_secret = envs["governed"]["OPSGATE_JWT_SECRET"]
        _run(args, _targets(ports, op.id, payload, request, jwt_secret))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        upstream.terminate()
        upstream.join(10)


def _gateway_envs(args: argparse.Namespace, upstream_port: int, operation: str) -> dict[str, dict[str, str]]:
    """The environment of each opsgate path (one config, one JWT secret, a database each), with
    its database prepared by ``overhead.prepare_gateway``."""
    tmp = Path(tempfile.mkdtemp(prefix="opsgate-peers-"))
    (tmp / "opsgate.toml").write_text(_config(upstream_port, operation))
    common = {**os.environ, "OPSGATE_CONFIG": str(tmp / "opsgate.toml"),
              "OPSGATE_JWT_SECRET": secrets.token_urlsafe(48),
              "OPSGATE_LEDGER_SYNCHRONOUS": args.synchronous}
    envs = {path: {**common, "OPSGATE_DATABASE_URL": f"sqlite:///{tmp / f'{path}.db'}"}
            for path in PATHS[2:]}
    if args.database_url:
        envs["governed"]["OPSGATE_DATABASE_URL"] = args.database_url
    for path, env in envs.items():
        prepare_gateway(env, operation, governance=path == "governed")
    return envs


def _run(args: argparse.Namespace, targets: dict[str, tuple[str, bytes, dict[str, str]]]) -> None:
    """Measure every path at c=1, then at c=32; print the table and, last, :func:`ratio_line`."""
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    database = args.database_url.split(":")[0] if args.database_url else "SQLite"
    print(f"peers: {args.operation}, {args.requests} requests per cell after a warm-up; "
          f"Portkey {PORTKEY_VERSION} (node {node}); opsgate ledger + ai_operation_log on "
          f"(synchronous={args.synchronous}); governed: 3 budgets + 4 rate limits, {database}, "
          f"{args.workers} worker(s)")
    print(f"{'conc':>4} {'path':>9} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'ops/s':>8}")
    cells: dict[tuple[int, str], dict[str, float]] = {}
    for concurrency in (1, 32):
        for path in PATHS:
            r = cells[(concurrency, path)] = asyncio.run(
                measure(*targets[path], args.requests, concurrency))
            added = r["p50"] - cells[(concurrency, "direct")]["p50"]
            print(f"{concurrency:>4} {path:>9} {r['p50']:>8.3f} {r['p99']:>8.3f} {added:>10.3f} "
                  f"{r['rps']:>8.0f}", flush=True)
    print(ratio_line(cells))


def _targets(
    ports: dict[str, int], operation: str, payload: Any, request: CompletionRequest, jwt_secret: str
) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """(url, body, headers) of each path: the chat completion opsgate's adapter would send, to the
    upstream and through Portkey; the operation's input, with a user token, to both gateways."""
    chat = orjson.dumps(chat_payload(request, MODEL, "json_schema"))
    json_type = {"content-type": "application/json"}
    token = TokenService(Settings(jwt_secret=jwt_secret), SystemClock()).issue(BENCH_USER, "user")
    gateway = {**json_type, "Authorization": f"Bearer {token}"}
    return {
        "direct": (f"http://127.0.0.1:{ports['upstream']}/v1/chat/completions", chat, json_type),
        "portkey": (f"http://127.0.0.1:{ports['portkey']}/v1/chat/completions", chat,
                    {**json_type, "Authorization": "Bearer sk-bench-unused",  # pragma: allowlist secret
                     "x-portkey-provider": "openai",
                     "x-portkey-custom-host": f"http://127.0.0.1:{ports['upstream']}/v1"}),
        **{path: (f"http://127.0.0.1:{ports[path]}/v1/operations/{operation}",
                  orjson.dumps(payload), gateway) for path in ("opsgate", "governed")},
    }


if __name__ == "__main__":
    main()
