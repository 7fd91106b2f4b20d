"""The dashboard under test and the browser that drives it: :class:`Dashboard` (the running
server the ``dashboard`` fixture yields, with its :data:`USERS`), :class:`Console` (errors a page
logged), :func:`sign_in`, :func:`screenshot` and :func:`wait_live`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Page

from opsgate.metering.reconcile import Reconciliation
from opsgate.runtime import Runtime

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
USERS = {"ada": "admin", "oscar": "operator", "ursula": "user"}


@dataclass
class Dashboard:
    """The running server: ``base_url``, its ``runtime``, the users' ``passwords``, the stored
    ``reconciliation``, an httpx ``client`` for the API, the anchor directory, the rehearsal's
    ``report`` and the answers of the ``degraded`` calls made after it."""

    base_url: str
    runtime: Runtime
    passwords: dict[str, str]
    reconciliation: Reconciliation
    client: httpx.Client
    anchor_dir: Path
    report: dict[str, Any]
    degraded: list[dict[str, Any]] = field(default_factory=list)

    def token(self, user: str) -> str:
        """An access token for ``user`` issued on the server's own clock."""
        return self.runtime.tokens.issue(user, USERS[user])

    def api(self, path: str, user: str = "oscar", method: str = "GET", **kwargs: Any) -> Any:
        """``method path`` with ``user``'s bearer token; the JSON answer (raises on HTTP errors)."""
        response = self.client.request(method, path, headers={"Authorization": f"Bearer {self.token(user)}"},
                                       **kwargs)
        response.raise_for_status()
        return response.json() if response.headers.get("content-type", "").startswith("application/json") \
            else response.text


@dataclass
class Console:
    """Console errors and uncaught page errors seen by a page."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                self.errors.append(f"{page.url}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        return page



def sign_in(browser: Browser, dashboard: Dashboard, user: str, console: Console) -> Page:
    """A fresh browser context signed in as ``user`` through the sign-in form; its page."""
    context = browser.new_context(base_url=dashboard.base_url, viewport={"width": 1400, "height": 900})
    page = console.watch(context.new_page())
    page.goto("/dashboard/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", dashboard.passwords[user])
    page.click("button[type=submit]")
    page.wait_for_load_state("domcontentloaded")
    return page


def screenshot(page: Page, name: str) -> None:
    """Save a full-page screenshot as ``artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def wait_live(page: Page) -> None:
    """Wait until the page's script has polled its document and refreshed the figures once."""
    page.wait_for_function(
        "() => /^\\d{4}-\\d{2}-\\d{2}T/.test((document.getElementById('updated') || {}).textContent || '')",
        timeout=15_000)
