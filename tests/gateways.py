"""Running gateways for tests: settings with the provider sandboxes on, a real ``opsgate serve``
app on a loopback port in this process (:func:`running_gateway`), and ``opsgate serve --sandbox``
subprocesses (:func:`serve_process`, :func:`gateway_processes`) that share one database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from opsgate.app import create_app
from opsgate.clock import Clock, SystemClock
from opsgate.config import Settings
from opsgate.localserver import serve_in_thread
from opsgate.runtime import Runtime
from opsgate.security.auth import TokenService
from opsgate.security.models import users
from opsgate.security.users import add_user

SANDBOXED = {
    "sandbox": True,
    "sandbox_faults": "none",
    "breaker_cooldown_s": 1.0,
    "max_retry_wait_s": 5.0,
    "provider_timeout_s": 5.0,
}
"""What :func:`gateway_settings` adds to :func:`opsgate.testing.gateway_settings`: the in-process
provider sandboxes without faults, and short waits."""


@dataclass
class Gateway:
    """A running gateway: ``client`` is an httpx client on its base URL; ``runtime`` its internals."""

    settings: Settings
    runtime: Runtime
    client: httpx.Client

    def token(self, user_id: str = "alice", role: str = "user") -> str:
        """An access token; for an operator or admin, the user's ``users`` row is set to that
        role first (test set-up outside the ledger: a local token's privileged role counts only
        as far as its row allows, :func:`opsgate.security.users.current_principal`)."""
        if role != "user":
            try:
                add_user(self.runtime.engine, SystemClock(), user_id, role)
            except ValueError:  # the user exists with another role
                with self.runtime.engine.begin() as conn:
                    conn.execute(update(users).where(users.c.user_id == user_id).values(role=role))
        return TokenService(self.settings, SystemClock()).issue(user_id, role)

    def post(self, operation: str, body: object, *, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return self.client.post(f"/v1/operations/{operation}", json=body, headers=headers)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return str(self.client.base_url).rstrip("/")

    @property
    def sandbox(self):  # type: ignore[no-untyped-def]
        return self.runtime.sandbox

    def stats(self) -> dict[str, dict]:
        """Requests that reached each provider sandbox: ``{provider: {"requests", "statuses"}}``."""
        return self.runtime.sandbox.stats()["providers"]


def gateway_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test gateway: its own SQLite file and generated JWT and master keys
    (:func:`opsgate.testing.gateway_settings`), sandboxes on (:data:`SANDBOXED`); ``overrides``
    replace any field."""
    from opsgate import testing  # here, not at the top: pytest loads it as a plugin (assert rewriting)

    return testing.gateway_settings(tmp_path, **{**SANDBOXED, **overrides})


@contextmanager
def running_gateway(settings: Settings, clock: Clock | None = None, *, timeout_s: float = 60) -> Iterator[Gateway]:
    """``create_app(settings, clock)`` served on a loopback port in a thread, with an httpx client
    on it (``timeout_s`` per request); the server stops on exit."""
    app = create_app(settings, clock)
    server = serve_in_thread(app)
    try:
        with httpx.Client(base_url=server.base_url, timeout=timeout_s) as client:
            yield Gateway(settings, app.state.runtime, client)
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(env: dict[str, str], workdir: Path, faults: str = "none") -> tuple[subprocess.Popen, str]:
    """Start ``opsgate serve --sandbox --faults faults`` on a free port with ``env`` (OPSGATE_*
    settings, over this process's environment) in ``workdir``; return the process and its base
    URL once ``/readyz`` answers 200. ``AssertionError`` when it exits first, ``RuntimeError``
    when it is not ready within 180 s (the process is killed either way)."""
    proc, url = _start(env, workdir, faults)
    try:
        _wait_ready(url, proc)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, url


@contextmanager
def gateway_processes(n: int, env: dict[str, str], workdir: Path, faults: str = "none") -> Iterator[list[str]]:
    """Start ``n`` gateway processes as :func:`serve_process` does (all at once, then wait for
    each); yield their base URLs; terminate them on exit."""
    procs, urls = [], []
    try:
        for _ in range(n):
            proc, url = _start(env, workdir, faults)
            procs.append(proc)
            urls.append(url)
        for url, proc in zip(urls, procs, strict=True):
            _wait_ready(url, proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def _start(env: dict[str, str], workdir: Path, faults: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "opsgate.cli", "serve", "--sandbox", "--faults", faults, "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gateway exited"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}/readyz did not answer 200 in {timeout_s:.0f} s")


def stand_in_servers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stand in for ``opsgate serve``'s servers: :func:`opsgate.localserver.serve` and
    ``serve_workers`` record the number of workers each call would have started (1 for one
    process) and serve nothing; the port is not bound. Start-up's own checks still run
    (``--workers N`` starts and closes the runtime once)."""
    started: list[int] = []
    monkeypatch.setattr("opsgate.localserver.bind", lambda host, port: None)
    monkeypatch.setattr("opsgate.localserver.serve", lambda open_app, sock, *, freeze: started.append(1))
    monkeypatch.setattr("opsgate.localserver.serve_workers",
                        lambda factory, sock, workers, healthcheck_s: started.append(workers) or [])
    return started
