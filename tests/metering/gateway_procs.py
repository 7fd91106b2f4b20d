"""Gateway processes for the metering tests: ``opsgate serve --sandbox`` subprocesses sharing one
database (and Redis), each with its own in-process provider sandboxes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def gateways(n: int, env: dict[str, str], workdir: Path, faults: str = "none") -> Iterator[list[str]]:
    """Start ``n`` gateway processes with ``env`` (OPSGATE_* settings); yield their base URLs."""
    procs, urls = [], []
    try:
        for _ in range(n):
            port = free_port()
            cmd = [sys.executable, "-m", "opsgate.cli", "serve", "--sandbox", "--faults", faults,
                   "--port", str(port)]
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, cwd=workdir,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            _wait_ready(f"{url}/readyz", proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
