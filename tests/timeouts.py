"""A backstop for pytest-timeout (``timeout`` and ``timeout_method = signal`` in pyproject.toml):
a test that outlives its timeout fails and the run goes on; one that cannot even unwind ends the
run with every thread's stack, so a hang never holds CI.

The ``signal`` method raises the failure in the main thread, with every other thread's stack. A
test blocked in ``asyncio.run`` then unwinds: its tasks are cancelled, and asyncio.run waits for
every thread of the loop's default executor, without a limit on Python 3.11, so a thread stuck for
good (a deadlock, a lost answer awaited in ``asyncio.to_thread``) would hang the run again. Hence
``timeout_unwind`` seconds (ini option, default 120) after the failure was due, if the test has
still not ended, pytest-timeout's ``thread`` method runs: it dumps every thread's stack and ends
the run (exit status 1)."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import pytest
import pytest_timeout

UNWIND = "timeout_unwind"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(UNWIND, "seconds a test failed by a signal timeout may take to unwind before the run "
                  "ends with every thread's stack", default="120")


@pytest.hookimpl(wrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, object, object]:
    """After pytest-timeout armed its timer: with the ``signal`` method, also the backstop, cancelled
    with it when the test ends."""
    armed = yield
    if settings.method == "signal":
        unwind_s = float(item.config.getini(UNWIND))
        backstop = threading.Timer(settings.timeout + unwind_s, pytest_timeout.timeout_timer, (item, settings))
        backstop.name, backstop.daemon = f"timeout backstop of {item.nodeid}", True
        cancel_signal = item.cancel_timeout  # type: ignore[attr-defined]  # set by pytest-timeout

        def cancel() -> None:
            cancel_signal()
            backstop.cancel()

        item.cancel_timeout = cancel  # type: ignore[attr-defined]
        backstop.start()
    return armed
