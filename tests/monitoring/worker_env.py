"""The environment of a monitoring worker under test: :class:`Env` (settings whose channels all
point at loopback receivers, a migrated database, a ledger, a manual clock) and the receivers'
Discord and PagerDuty paths. The ``env`` fixture that builds it is in ``conftest.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiohttp
from sqlalchemy import Engine
from tests.monitoring.monitoring_receivers import HttpReceiver, SmtpReceiver

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.anchors import DirectoryAnchor, publish
from opsgate.ledger.scheduled import signer_for
from opsgate.ledger.service import create_checkpoint
from opsgate.ledger.writer import Ledger
from opsgate.monitoring.worker import Worker

DISCORD = "/api/webhooks/123/tok"
PAGERDUTY = "/v2/enqueue"


@dataclass
class Env:
    settings: Settings
    engine: Engine
    ledger: Ledger
    clock: ManualClock
    http: HttpReceiver
    smtp: SmtpReceiver
    session: aiohttp.ClientSession
    sid: str

    def worker(self, name: str = "w1", lock: str = "worker.lock") -> Worker:
        settings = self.settings.model_copy(update={"worker_lock_file": self.settings.worker_lock_file.parent / lock})
        return Worker(settings, self.engine, self.ledger, self.clock, self.session, worker_id=name)

    @property
    def sms_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.sid}/Messages.json"


async def cycle(worker: Worker) -> bool:
    """One pass of each of the worker's two loops, in the order :meth:`Worker.run` starts them:
    the jobs (:meth:`Worker.tick`), then the deliveries (:meth:`Worker.deliver`). True when the
    worker leads."""
    leads = await worker.tick()
    await worker.deliver()
    return leads


async def anchored_worker(env: Env, tmp_path: Path) -> Worker:
    """A worker over 6 entries with a signed checkpoint anchored in a directory."""
    settings = env.settings.model_copy(update={
        "ledger_signing_key_file": tmp_path / "ledger.key", "ledger_anchor_dir": tmp_path / "anchors"})
    signer = signer_for(settings, create=True)
    for i in range(6):
        env.ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
    assert create_checkpoint(env.engine, signer, settings.ledger_origin, env.clock) is not None
    assert await publish(env.engine, DirectoryAnchor(tmp_path / "anchors"), env.clock) == 6
    return Worker(settings, env.engine, env.ledger, env.clock, env.session, worker_id="w1")
