"""``opsgate serve --workers N`` comes up when a worker's cold start is slow. uvicorn's supervisor
pings each worker process every ``timeout_worker_healthcheck`` seconds (5 by default) and kills
one that does not answer in time, then starts another. A worker answers only once its interpreter
has imported the gateway: ``import opsgate.cli`` took 8.6 s at load 9 on this 2-core machine, so
the workers were killed and restarted for as long as the server ran and never served. Run as the
operator runs it, in a fresh process; a ``sitecustomize`` that sleeps in each worker process
stands in for the slow import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.gateways import free_port

import opsgate

WORKER_COLD_START_S = 8  # slower than uvicorn's default healthcheck (5 s), as measured under load


def test_workers_whose_cold_start_outlasts_uvicorns_default_healthcheck_serve(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(  # only in the workers, spawned as `python -c ... --multiprocessing-fork`
        f"import sys, time\nif '--multiprocessing-fork' in sys.argv:\n    time.sleep({WORKER_COLD_START_S})\n")
    config = tmp_path / "empty.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(site), str(Path(opsgate.__file__).parents[1])]),
                "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "OPSGATE_CONFIG": str(config)})
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "opsgate.cli", "serve", "--port", str(port), "--workers", "2"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 240, None
        while status is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    status = answer.status
            except OSError:
                time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert status == 200, output
