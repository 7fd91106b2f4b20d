"""Shared fixtures: ``gateway``, a real ``opsgate serve --sandbox`` on a loopback port with a fresh
SQLite file (:mod:`tests.gateways`), and the plugin author's fixtures of :mod:`opsgate.testing`.

Test helpers live in modules named for what they hold and are imported by their path from the
repository root (``from tests.gateways import running_gateway``); fixtures live in ``conftest.py``
files (or ``opsgate.testing``) and are never imported."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.gateways import Gateway, gateway_settings, running_gateway

pytest_plugins = ["opsgate.testing", "tests.timeouts"]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(gateway_settings(tmp_path)) as running:
        yield running


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """Each test starts with the root logger's handlers and level as the run had them: the CLI's
    ``configure_logging`` binds a handler to the ``sys.stderr`` of the moment, which under Typer's
    CliRunner is a buffer closed when that invocation ends, and a later test's logging would
    print ``--- Logging error ---`` tracebacks into its own CLI output."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
