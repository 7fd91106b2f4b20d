"""A serving process tunes its garbage collector once started (:func:`opsgate.localserver.freeze_heap`):
its start-up heap is frozen and young collections run every
:data:`~opsgate.localserver.YOUNG_COLLECTION_THRESHOLD` allocations. Before, a full collection
traversed the whole heap (~211,000 objects, ~77 ms of the event loop at once) a few times a
minute under load (issue 21). Tests and ``serve_in_thread`` never freeze: a frozen object is
never collected."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

from fastapi.testclient import TestClient
from tests.gateways import gateway_settings, serve_process

import opsgate.app as app_module
from opsgate.localserver import YOUNG_COLLECTION_THRESHOLD

_REPORTER = """import gc, os, sys, threading, time
if 'serve' in sys.argv:
    def report():
        while True:
            time.sleep(0.2)
            with open({out!r} + '.tmp', 'w') as f:
                f.write(f'{{gc.get_freeze_count()}} {{gc.get_threshold()[0]}}')
            os.replace({out!r} + '.tmp', {out!r})
    threading.Thread(target=report, daemon=True).start()
"""


def test_opsgate_serve_freezes_its_heap_once_started(tmp_path: Path) -> None:
    site, out = tmp_path / "site", tmp_path / "gc.txt"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_REPORTER.format(out=str(out)))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    settings = gateway_settings(tmp_path)
    env = {"PYTHONPATH": path, "OPSGATE_DATABASE_URL": settings.database_url,
           "OPSGATE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
           "OPSGATE_MASTER_KEY": settings.master_key.get_secret_value()}
    proc, _url = serve_process(env, tmp_path)  # ready: started
    try:
        out.unlink(missing_ok=True)  # a report from before the start-up ended
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        frozen, threshold = map(int, out.read_text().split())
    finally:
        proc.terminate()
        proc.wait(30)
    assert frozen > 10_000  # the imported gateway: modules, settings, price data
    assert threshold == YOUNG_COLLECTION_THRESHOLD


def test_a_worker_app_freezes_its_heap_after_its_runtime_opens(tmp_path: Path, monkeypatch) -> None:
    """``opsgate serve --workers N`` serves :func:`opsgate.app.create_served_app`; an app built
    with ``freeze=True`` freezes in its lifespan once the runtime is open, a plain one never."""
    seen: list[bool] = []
    for freeze in (False, True):
        app = app_module.create_app(gateway_settings(tmp_path), freeze=freeze)
        monkeypatch.setattr(app_module, "freeze_heap", lambda app=app: seen.append(hasattr(app.state, "runtime")))
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
    assert seen == [True]
    assert gc.get_freeze_count() == 0  # this test process froze nothing
