"""Fixtures for the provider sandbox tests: a running sandbox and keys in the providers' shapes,
generated at test time (never real secrets)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from opsgate.sandbox import SandboxThread


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    """A sandbox on a free loopback port in a background thread, faults ``none``."""
    with SandboxThread() as running:
        yield running


@pytest.fixture
def anthropic_key() -> str:
    return "sk-ant-api03-" + secrets.token_urlsafe(70)


@pytest.fixture
def deepseek_key() -> str:
    return "sk-" + secrets.token_hex(16)


@pytest.fixture
def gemini_key() -> str:
    return "AIza" + secrets.token_urlsafe(26)[:35]
