"""Run an ASGI app with uvicorn: in a background thread on a loopback port (demo, rehearsal, tests,
benchmarks) or in the calling thread (``opsgate serve``).

Both take an *opener*, a coroutine function returning the app once its start-up is done
(:func:`opsgate.app.open_app` opens the gateway's runtime), and run it in the loop that will serve,
before uvicorn accepts a connection. What the opener raises propagates to the caller of
:func:`serve` or :func:`serve_in_thread` as itself, so a command line reports it like any other
error (:mod:`opsgate.cli`: a :class:`~opsgate.config.ConfigError` is one line and exit 2). A
start-up left to uvicorn's lifespan is reported by uvicorn instead: the traceback logged, exit 3,
and in the thread, only "the local server did not start".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

Opener = Callable[[], Awaitable[ASGIApp]]
"""A coroutine function returning the app to serve, its start-up done."""


@dataclass
class LocalServer:
    """A running server: ``base_url`` like ``http://127.0.0.1:PORT``; ``stop()`` shuts it down."""

    server: uvicorn.Server
    thread: threading.Thread
    base_url: str

    @property
    def app(self) -> ASGIApp:
        """The app served, as given or as opened."""
        return cast(ASGIApp, self.server.config.app)

    def stop(self, timeout_s: float = 30) -> None:
        """Ask uvicorn to exit (running the app's lifespan shutdown) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout_s)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon; port 0: any free one),
    ``SO_REUSEADDR`` and inheritable as uvicorn binds its own, for :func:`serve` or uvicorn's
    worker processes to listen on. ``OSError`` (``socket.gaierror`` for an unknown host) when it
    cannot be bound: in use, not permitted."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Container objects allocated (net of those freed) between two young collections in a serving
process; Python's default is 700 (``gc.get_threshold()``)."""


def freeze_heap() -> None:
    """Tune the garbage collector of a process that serves until it exits, once it has started
    (Python's ``gc`` module docs): collect, move every object alive into the permanent generation
    (:func:`gc.freeze`: the imported modules, settings, price data and caches held for the whole
    life of the process are never traversed again) and let :data:`YOUNG_COLLECTION_THRESHOLD`
    allocations pass between young collections, so most of a call's short-lived containers are
    freed by reference counting before a collection ever looks at them.

    Measured on a governed call at concurrency 32 (8,000 calls, gc callbacks, issue 21): collections
    took 92 µs per call, a full one ~77 ms of the event loop at once (~211,000 objects); after,
    ~1 µs per call and no full collection. Objects frozen are never collected, so never call this
    in a process that builds many apps (tests, :func:`serve_in_thread`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def serve(open_app: Opener, sock: socket.socket,
          started: Callable[[uvicorn.Server], None] | None = None, *, freeze: bool = False) -> None:
    """Open the app (``await open_app()``), then serve it on the bound ``sock`` with uvicorn (log
    level warning, the app's lifespan run by uvicorn), in the event loop ``uvicorn.run`` would
    choose (uvloop when installed), until uvicorn is asked to exit (SIGINT or SIGTERM when this
    is the main thread, or ``should_exit``); an interrupt ends it quietly, as ``uvicorn.run``
    does. What opening raises propagates from here before any connection is accepted.
    ``started`` receives the uvicorn server before it starts (to stop it from another thread);
    ``freeze``: :func:`freeze_heap` once the app is open (a process that serves until it exits)."""
    config = uvicorn.Config(cast(ASGIApp, None), log_level="warning", lifespan="on")  # its app once open

    async def main() -> None:
        config.app = await open_app()
        if freeze:
            freeze_heap()
        server = uvicorn.Server(config)
        if started is not None:
            started(server)
        await server.serve(sockets=[sock])

    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        pass


WORKER_HEALTHCHECK_S = 60
"""How long uvicorn's supervisor waits by default for a worker process to answer its ping before
it kills and replaces it (uvicorn's default is 5 s; ``opsgate serve --worker-healthcheck-s``). A
worker answers only once its interpreter has imported the gateway: ``import opsgate.cli`` took
8.6 s at load 9 on a 2-core machine, and with 5 s every worker was killed before it could serve,
again and again."""

log = logging.getLogger("opsgate")


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, saying at warning level (the level ``opsgate serve`` logs at) when it
    replaces a worker: uvicorn logs "Child process [...] died" at info, which was hidden, so
    workers killed and restarted forever left an empty log (tester-ops F6)."""

    def keep_subprocess_alive(self) -> None:
        before = [process.pid for process in self.processes]
        super().keep_subprocess_alive()
        for old, process in zip(before, self.processes, strict=True):
            if process.pid != old:
                log.warning("worker process %s died or did not answer the health check within %d s; "
                            "started worker process %s in its place (opsgate serve --worker-healthcheck-s)",
                            old, self.config.timeout_worker_healthcheck, process.pid)


def serve_workers(factory: str, sock: socket.socket, workers: int,
                  healthcheck_s: int = WORKER_HEALTHCHECK_S) -> list[int]:
    """Serve the app that ``factory`` (``"module:function"``) builds in each of ``workers``
    uvicorn worker processes sharing the bound ``sock`` (uvicorn's supervisor: a worker that dies
    or does not answer its ping within ``healthcheck_s`` seconds is replaced, with a warning
    logged; SIGINT/SIGTERM stop them all), until they stop. Returns the process ids of the
    workers that failed to start (exit status 3, uvicorn's start-up failure, which also stops the
    others); each logged its own error."""
    supervisor = _Supervisor(uvicorn.Config(factory, factory=True, workers=workers, log_level="warning",
                                            timeout_worker_healthcheck=healthcheck_s), sockets=[sock])
    supervisor.run()
    return [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE and p.pid is not None]


def serve_in_thread(app: ASGIApp | None = None, port: int = 0, start_timeout_s: float = 30, *,
                    open_app: Opener | None = None) -> LocalServer:
    """Bind 127.0.0.1:``port`` (0 = any free port) and :func:`serve` there in a daemon thread:
    ``app`` as it is, or the app ``open_app`` opens in the thread's event loop; wait until it
    serves.

    What ``open_app`` raises is raised here. ``RuntimeError`` when the server does not start
    within ``start_timeout_s`` seconds or stops before serving (e.g. the lifespan of an ``app``
    passed as it is failed).
    """
    if (app is None) == (open_app is None):
        raise TypeError("give app or open_app, not both")
    opener = open_app or _opened(app)  # type: ignore[arg-type]  # app is set when open_app is not
    sock = bind("127.0.0.1", port)
    servers: list[uvicorn.Server] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve(opener, sock, servers.append)
        except BaseException as exc:  # reported to the caller below, or dropped once it served
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not (servers and servers[0].started):
        if failure and not servers:
            raise failure[0]
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local server did not start")
        time.sleep(0.02)
    return LocalServer(servers[0], thread, f"http://127.0.0.1:{sock.getsockname()[1]}")


def _opened(app: ASGIApp) -> Opener:
    async def opener() -> ASGIApp:
        return app

    return opener
