"""Run an ASGI app with uvicorn on a loopback port in a background thread (demo, tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


@dataclass
class LocalServer:
    """A running server: ``base_url`` like ``http://127.0.0.1:PORT``; ``stop()`` shuts it down."""

    server: uvicorn.Server
    thread: threading.Thread
    base_url: str

    def stop(self, timeout_s: float = 30) -> None:
        """Ask uvicorn to exit (running the app's lifespan shutdown) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout_s)


def serve_in_thread(app: ASGIApp, port: int = 0, start_timeout_s: float = 30) -> LocalServer:
    """Bind 127.0.0.1:``port`` (0 = any free port), start uvicorn there and wait until it serves.

    Raises ``RuntimeError`` when the server does not start within ``start_timeout_s`` seconds
    (e.g. the lifespan failed).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local server did not start")
        time.sleep(0.02)
    return LocalServer(server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}")
