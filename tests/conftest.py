"""Shared fixtures: a real ``opsgate serve --sandbox`` on a loopback port, with a fresh SQLite file."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from opsgate.app import create_app
from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.localserver import serve_in_thread
from opsgate.runtime import Runtime
from opsgate.security.auth import TokenService

pytest_plugins = ["opsgate.testing"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@dataclass
class Gateway:
    """A running gateway: ``client`` is an httpx client on its base URL; ``runtime`` its internals."""

    settings: Settings
    runtime: Runtime
    client: httpx.Client

    def token(self, user_id: str = "alice", role: str = "user") -> str:
        return TokenService(self.settings, SystemClock()).issue(user_id, role)

    def post(self, operation: str, body: object, *, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return self.client.post(f"/v1/operations/{operation}", json=body, headers=headers)

    @property
    def sandbox(self):  # type: ignore[no-untyped-def]
        return self.runtime.sandbox

    def stats(self) -> dict[str, dict]:
        """Requests that reached each provider sandbox: ``{provider: {"requests", "statuses"}}``."""
        return self.runtime.sandbox.stats()["providers"]


def gateway_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test gateway: its own SQLite file and JWT key, sandboxes on, short waits."""
    base = {
        "database_url": f"sqlite:///{tmp_path / 'opsgate.db'}",
        "jwt_secret": secrets.token_urlsafe(48),
        "master_key": secrets.token_urlsafe(32) + "=",  # 32 random bytes as padded base64url
        "sandbox": True,
        "sandbox_faults": "none",
        "breaker_cooldown_s": 1.0,
        "max_retry_wait_s": 5.0,
        "provider_timeout_s": 5.0,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    settings = gateway_settings(tmp_path)
    app = create_app(settings)
    server = serve_in_thread(app)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            yield Gateway(settings, app.state.runtime, client)
    finally:
        server.stop()
