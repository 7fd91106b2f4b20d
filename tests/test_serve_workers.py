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


class _FakeProcess:
    """A uvicorn worker process stand-in: ``alive`` answers the ping or not."""

    started: list[int] = []

    def __init__(self, *_args: object, pid: int = 0, alive: bool = True) -> None:
        self.pid, self.alive, self.exitcode = pid or 200 + len(_FakeProcess.started), alive, None

    def is_alive(self, timeout: float) -> bool:
        return self.alive

    def kill(self) -> None:
        self.alive = False

    def join(self) -> None:
        self.exitcode = -9

    def start(self) -> None:
        _FakeProcess.started.append(self.pid)


def test_a_worker_replaced_by_the_supervisor_is_logged_at_warning(monkeypatch, caplog) -> None:
    """Tester-ops F6: uvicorn logs a replaced worker ("Child process [...] died") at info, below
    serve's warning level, so workers killed and restarted forever left an empty log."""
    import logging

    import uvicorn
    import uvicorn.supervisors.multiprocess as multiprocess

    from opsgate.localserver import _Supervisor

    monkeypatch.setattr(multiprocess.signal, "signal", lambda *_args: None)  # keep pytest's handlers
    monkeypatch.setattr(multiprocess, "Process", _FakeProcess)
    supervisor = _Supervisor(uvicorn.Config("opsgate.app:create_app", factory=True, workers=2,
                                            timeout_worker_healthcheck=7), sockets=[])
    supervisor.processes = [_FakeProcess(pid=101), _FakeProcess(pid=102, alive=False)]
    with caplog.at_level(logging.WARNING, logger="opsgate"):
        supervisor.keep_subprocess_alive()
    replaced = supervisor.processes[1].pid
    assert [r.getMessage() for r in caplog.records if r.name == "opsgate"] == [
        f"worker process 102 died or did not answer the health check within 7 s; started worker process "
        f"{replaced} in its place (opsgate serve --worker-healthcheck-s)"]
    assert supervisor.processes[0].pid == 101 and replaced != 102


def test_worker_healthcheck_s_and_the_freezing_factory_reach_uvicorns_supervisor(tmp_path: Path,
                                                                                monkeypatch) -> None:
    """The workers serve :func:`opsgate.app.create_served_app` (its heap frozen once started,
    tests/test_served_heap.py) with the health check's seconds."""
    from typer.testing import CliRunner

    import opsgate.localserver as localserver
    from opsgate.cli import app

    seen: list[tuple[str, int]] = []

    class Recording:
        def __init__(self, config, sockets) -> None:  # type: ignore[no-untyped-def]
            seen.append((config.app, config.timeout_worker_healthcheck))
            self.processes: list[object] = []

        def run(self) -> None:
            pass

    monkeypatch.setattr(localserver, "_Supervisor", Recording)
    (tmp_path / "empty.toml").write_text("")
    env = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "OPSGATE_CONFIG": str(tmp_path / "empty.toml")}
    for extra in ([], ["--worker-healthcheck-s", "90"]):
        result = CliRunner().invoke(app, ["serve", "--port", "0", "--workers", "2", *extra], env=env)
        assert result.exit_code == 0, result.output
    assert seen == [("opsgate.app:create_served_app", 60), ("opsgate.app:create_served_app", 90)]
    refused = CliRunner().invoke(app, ["serve", "--workers", "2", "--worker-healthcheck-s", "0"], env=env)
    assert refused.exit_code == 2
