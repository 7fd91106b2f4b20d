"""Fakes and fixtures for plugin authors and the pipeline's own tests: drive
:meth:`opsgate.pipeline.Gateway.govern` in-process, without a server, a sandbox or a network.

- :class:`FakeProvider` is a :class:`~opsgate.providers.base.Provider` that answers from a script
  (a JSON object, an error to raise, or ``None`` for a schema-valid instance of whatever schema
  the request asked for) and records every request it was sent.
- :class:`ManualClock` (from :mod:`opsgate.clock`) is the clock that moves only when told to.
- :func:`gateway_settings` gives settings for a throw-away gateway: its own SQLite file, a JWT
  secret and master key generated at call time.
- :func:`governed_gateway` opens a real :class:`~opsgate.pipeline.Gateway` over a migrated SQLite
  database with the real ledger writer, router, price table and (by default) metering; every
  operation routes to the fake provider. It yields a :class:`GovernedGateway`.
- The pytest fixtures ``manual_clock``, ``fake_provider`` and ``governed`` wrap those; load them
  with ``pytest_plugins = ["opsgate.testing"]`` in a ``conftest.py``.

Only tests import this module (it needs pytest).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.entry import decode_body
from opsgate.ledger.writer import Ledger
from opsgate.metering.prices import PriceBook, PriceTable
from opsgate.metering.service import build_metering
from opsgate.operations import OPERATIONS
from opsgate.pipeline import Call, Gateway, Outcome
from opsgate.providers.base import Completion, CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import ProviderError
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router
from opsgate.sandbox.instance import instance_for
from opsgate.security.auth import TokenService
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries

__all__ = [
    "FakeProvider",
    "GovernedGateway",
    "ManualClock",
    "fake_provider",
    "gateway_settings",
    "governed",
    "governed_gateway",
    "manual_clock",
]

FAKE_PROVIDER = "anthropic"
FAKE_MODEL = "claude-opus-4-5"
"""The fake provider answers under a priced provider/model pair, so calls are metered for real."""

_ENVELOPE = frozenset({"v", "seq", "ts", "kind"})
"""Keys every stored ledger body has besides its payload (see :func:`opsgate.ledger.entry.encode_body`)."""

Answer = dict[str, Any] | ProviderError | None
"""One scripted answer: a JSON object to answer with, an error to raise, or ``None`` for a
schema-valid instance of the request's ``json_schema`` (see :mod:`opsgate.sandbox.instance`)."""


@dataclass
class FakeProvider:
    """A provider that answers from ``script`` in order, then with schema-valid instances.

    ``usage`` is billed for every answer (tokens, integers); ``finish_reason`` is every answer's
    stop reason (``STOP``; ``LENGTH`` plays a provider that returns a cut-off answer instead of
    raising as the built-in adapters do); ``served_model`` is the model every answer says served
    it (``None``: it names none, as the requested one). ``requests`` holds every
    :class:`CompletionRequest` received, in order; ``on_send`` (if set) runs with each request
    before the answer is made, i.e. at the moment a real adapter would send its first byte.
    """

    name: str = FAKE_PROVIDER
    script: list[Answer] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(input_tokens=1_000, output_tokens=200))
    finish_reason: FinishReason = FinishReason.STOP
    on_send: Callable[[CompletionRequest], None] | None = None
    requests: list[CompletionRequest] = field(default_factory=list)
    served_model: str | None = None

    async def complete(self, request: CompletionRequest, model: str, timeout_s: float) -> Completion:
        """Record ``request``, run ``on_send``, then answer the next scripted step."""
        self.requests.append(request)
        if self.on_send is not None:
            self.on_send(request)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, ProviderError):
            raise step
        data = step if step is not None else _instance(request)
        return Completion(
            provider=self.name,
            model=model,
            text=orjson.dumps(data).decode(),
            data=data,
            usage=self.usage,
            finish_reason=self.finish_reason,
            raw_finish_reason="end_turn" if self.finish_reason is FinishReason.STOP else self.finish_reason.value,
            provider_request_id=f"fake-{len(self.requests)}",
            provider_latency_ms=1.0,
            served_model=self.served_model,
        )


def _instance(request: CompletionRequest) -> dict[str, Any]:
    """A schema-valid JSON object for ``request``, from the sandboxes' generator."""
    data = instance_for(request.json_schema or {"type": "object"})
    if not isinstance(data, dict):
        raise TypeError("a FakeProvider answers JSON objects: give the request an object schema")
    return data


def gateway_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a throw-away gateway under ``tmp_path``: SQLite file ``opsgate.db`` and a JWT
    secret and 32-byte master key generated now (never a real secret); everything else is the
    default (no sandbox, rate limits off). ``overrides`` replace any field; pydantic validates each
    value as ``Settings(**...)`` would (``ValidationError`` otherwise)."""
    values: dict[str, Any] = {  # Any: pydantic validates each value against its field
        "database_url": f"sqlite:///{tmp_path / 'opsgate.db'}",
        "jwt_secret": secrets.token_urlsafe(48),
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        **overrides,
    }
    return Settings(**values)


@dataclass
class GovernedGateway:
    """A real :class:`Gateway` in-process: ``gateway``, its ``engine``, ``ledger``, ``tokens``,
    ``clock`` and the ``provider`` every operation routes to."""

    gateway: Gateway
    engine: Engine
    ledger: Ledger
    tokens: TokenService
    clock: ManualClock
    provider: FakeProvider

    def call(self, operation: str, body: dict[str, Any], *, user: str = "alice") -> Call:
        """A :class:`Call` of ``operation`` with the JSON ``body`` and a fresh token for ``user``."""
        return Call(operation, orjson.dumps(body), self.tokens.issue(user, "user"), uuid.uuid4().hex)

    async def govern(self, operation: str, body: dict[str, Any], *, user: str = "alice") -> Outcome:
        """Run :meth:`call` through the pipeline."""
        return await self.gateway.govern(self.call(operation, body, user=user))

    def entries(self, request_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Committed ledger entries as ``(kind, payload)``, read on a fresh connection; only
        those of ``request_id`` when given."""
        with self.engine.connect() as conn:
            bodies = conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq))
            decoded = [decode_body(bytes(b)) for (b,) in bodies]
        found = [(d["kind"], {k: v for k, v in d.items() if k not in _ENVELOPE}) for d in decoded]
        return [(k, p) for k, p in found if request_id is None or p.get("request_id") == request_id]


def _policies(provider: str, models: Sequence[str]) -> dict[str, RoutePolicy]:
    policy = RoutePolicy(
        chain=tuple(Target(provider, m) for m in models),
        timeout_s=5.0,
        max_attempts_per_target=1,
        max_retry_wait_s=0.0,
    )
    return {op: policy for op in OPERATIONS}


@asynccontextmanager
async def governed_gateway(
    settings: Settings,
    provider: FakeProvider,
    *,
    clock: ManualClock | None = None,
    metering: bool = True,
    may_serve: Mapping[str, Sequence[str]] | None = None,
    model: str = FAKE_MODEL,
) -> AsyncIterator[GovernedGateway]:
    """Migrate ``settings.database_url``, start a ledger writer and build a :class:`Gateway`
    whose every operation routes to ``provider`` (``model``, default :data:`FAKE_MODEL`, one
    attempt, no waits; it must have a price). ``metering=False`` leaves out rate limits and
    budgets; ``may_serve`` is the price book's (``"provider/model"`` -> the other models it may
    serve). The ledger is closed on exit."""
    clock = clock or ManualClock()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    ledger = Ledger(engine, clock)
    ledger.start()
    try:
        prices = PriceBook(PriceTable.load(), now=clock.now, may_serve=may_serve)
        tokens = TokenService(settings, clock)
        gateway = Gateway(
            tokens=tokens,
            ledger=ledger,
            router=Router({provider.name: provider}, clock),
            policies=_policies(provider.name, [model]),
            prices=prices,
            clock=clock,
            metering=(build_metering(settings, engine, clock, prices, [f"{provider.name}/{model}"])
                      if metering else None),
        )
        yield GovernedGateway(gateway, engine, ledger, tokens, clock, provider)
    finally:
        ledger.close()
        engine.dispose()


@pytest.fixture
def manual_clock() -> ManualClock:
    """A :class:`ManualClock` at 2026-01-01T00:00:00Z."""
    return ManualClock()


@pytest.fixture
def fake_provider() -> FakeProvider:
    """A :class:`FakeProvider` with an empty script (schema-valid answers)."""
    return FakeProvider()


@pytest.fixture
async def governed(
    tmp_path: Path, fake_provider: FakeProvider, manual_clock: ManualClock
) -> AsyncIterator[GovernedGateway]:
    """A :func:`governed_gateway` with metering on a fresh SQLite file under ``tmp_path``."""
    async with governed_gateway(gateway_settings(tmp_path), fake_provider, clock=manual_clock) as g:
        yield g
