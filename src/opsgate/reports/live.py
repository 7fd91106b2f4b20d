"""Readiness probes that talk over the network: a provider error through the sandboxes, and a
test notification to every configured alert channel."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.monitoring.escalation import Contacts
from opsgate.monitoring.notifiers import DeliveryError, Notification
from opsgate.monitoring.worker import build_notifiers
from opsgate.providers.http import make_session
from opsgate.reports.probes import Probe, probe_user

PROBE_FAULTS = "status:anthropic:401,status:deepseek:500,status:gemini:503"
PROBE_OPERATION = "email-compose"
PROBE_INPUT = {"instructions": "Confirm the meeting on Friday at 10:00."}
PROBLEM_KEYS = {
    "type",
    "title",
    "status",
    "detail",
    "code",
    "request_id",
    "instance",
    "errors",
    "retry_after",
}


@asynccontextmanager
async def scratch_runtime(settings: Settings, clock: Clock, faults: str) -> AsyncIterator[Any]:
    """A runtime like ``settings`` on a temporary SQLite database with the sandboxes (``faults``),
    no anchors and no rate limits, closed and removed afterwards."""
    from opsgate.runtime import start_runtime

    with tempfile.TemporaryDirectory(prefix="opsgate-readiness-") as tmp:
        probe = settings.model_copy(
            update={
                "sandbox": True,
                "sandbox_faults": faults,
                "auto_migrate": True,
                "database_url": f"sqlite:///{Path(tmp) / 'probe.db'}",
                "ledger_anchor_dir": None,
                "ledger_discord_webhook_url": None,
                "ledger_signing_key_file": Path(tmp) / "ledger.key",
                "max_retry_wait_s": 0.0,
                "rate_limit_user_rpm": 0,
                "rate_limit_user_tpm": 0,
                "rate_limit_user_operation_rpm": 0,
                "rate_limit_user_operation_tpm": 0,
            }
        )
        runtime = await start_runtime(probe, clock)
        try:
            yield runtime
        finally:
            await runtime.close()


async def toggle_refuses(settings: Settings, clock: Clock) -> Probe:
    """On a scratch runtime: with the operation's toggle disabled, a call through the full
    pipeline is refused with 403 ``operation_disabled`` and no provider sees a request; enabled
    at 100 %, the same call is answered."""
    from opsgate.pipeline import Call
    from opsgate.problems import problem_body
    from opsgate.rollout.service import ToggleChange
    from opsgate.security.users import add_user

    async with scratch_runtime(settings, clock, "none") as runtime:
        user = probe_user()
        add_user(runtime.engine, clock, user, "user")
        token = runtime.tokens.issue(user, "user")
        found: list[tuple[int, str | None]] = []
        for enabled in (False, True):
            runtime.rollout.set_toggle(
                PROBE_OPERATION,
                ToggleChange(enabled=enabled, rollout_percentage=100, opt_in_required=False),
                "readiness",
            )
            call = Call(PROBE_OPERATION, orjson.dumps(PROBE_INPUT), token, uuid.uuid4().hex)
            try:
                await runtime.gateway.govern(call)
                found.append((200, None))
            except Exception as exc:  # noqa: BLE001 (a refusal is what the probe looks for)
                status, body = problem_body(exc, call.request_id)
                found.append((status, body.get("code")))
            if not enabled:
                reached = sum(p["requests"] for p in runtime.sandbox.stats()["providers"].values())
    if found[0] != (403, "operation_disabled") or reached:
        return False, f"disabled toggle: {found[0]} with {reached} provider request(s)"
    if found[1][0] != 200:
        return False, f"enabled toggle: the call was refused {found[1]}"
    return True, "disabled: 403 operation_disabled, no provider request; enabled at 100 %: answered"


async def provider_errors_sanitised(settings: Settings, clock: Clock) -> Probe:
    """Run one operation through the full pipeline on the sandboxes, every provider answering an
    error (401, 500, 503), and check the problem document the client gets holds only problem
    fields, a stable code, and no provider key, host, port or provider error text."""
    from opsgate.pipeline import Call
    from opsgate.problems import problem_body
    from opsgate.security.users import add_user

    async with scratch_runtime(settings, clock, PROBE_FAULTS) as runtime:
        user = probe_user()
        add_user(runtime.engine, clock, user, "user")
        call = Call(
            PROBE_OPERATION,
            orjson.dumps(PROBE_INPUT),
            runtime.tokens.issue(user, "user"),
            uuid.uuid4().hex,
        )
        try:
            await runtime.gateway.govern(call)
        except Exception as exc:  # noqa: BLE001 (every refusal becomes the client's problem)
            status, body = problem_body(exc, call.request_id)
        else:
            return (
                False,
                "the probe call succeeded although every sandbox provider answered an error",
            )
        secrets_ = [
            runtime.settings.anthropic_api_key,
            runtime.settings.deepseek_api_key,
            runtime.settings.gemini_api_key,
        ]
        hosts = list(runtime.sandbox.base_urls.values()) if runtime.sandbox else []
    text = orjson.dumps(body).decode()
    leaks = [
        what
        for what, found in (
            (
                "a provider key",
                any(s is not None and s.get_secret_value() in text for s in secrets_),
            ),
            ("a provider host", any(h.split("//", 1)[-1] in text for h in hosts)),
            (
                "the provider's error type",
                any(t in text for t in ("authentication_error", "api_error", "UNAVAILABLE")),
            ),
            ("a stack trace", "Traceback" in text),
            ("non-problem fields", not set(body) <= PROBLEM_KEYS),
        )
        if found
    ]
    if leaks:
        return False, f"the client's problem document holds {', '.join(leaks)}"
    return (
        True,
        f"every provider failing gave the client {status} code={body.get('code')} with no key, host or provider text",
    )


async def alert_channels(settings: Settings, clock: Clock) -> Probe:
    """Send a test notification to every configured channel and recipient (PagerDuty: a trigger
    at once resolved, so nobody stays paged)."""
    session = make_session()
    try:
        notifiers = build_notifiers(settings, session)
        if not notifiers:
            return (
                False,
                "no alert channel is configured (Discord, PagerDuty, Twilio SMS or SMTP email)",
            )
        contacts = Contacts.from_settings(settings, frozenset(notifiers))
        key = f"readiness-test:{uuid.uuid4().hex[:12]}"
        results = []
        for channel, notifier in sorted(notifiers.items()):
            recipients = [
                r for r in contacts.recipients(channel) if r or channel in ("discord", "pagerduty")
            ]
            if not recipients:
                results.append(f"{channel}: no recipient configured")
                continue
            events = ("trigger", "resolve") if channel == "pagerduty" else ("test",)
            try:
                for event in events:
                    note = Notification(
                        event,
                        "-",
                        key,
                        "P3",
                        "opsgate readiness test",
                        "A test notification from `opsgate readiness`; no action needed.",
                        clock.now().isoformat(),
                    )
                    for recipient in recipients:
                        for payload in notifier.render(note, recipient):
                            await notifier.send(payload)
            except DeliveryError as exc:
                results.append(f"{channel}: refused ({exc.detail[:120]})")
            else:
                results.append(f"{channel}: accepted by {len(recipients)} recipient(s)")
    finally:
        await session.close()
    return all("accepted" in r for r in results), "; ".join(results)
