"""pytest-timeout with tests/timeouts.py: a test stuck in asyncio.run fails and the run goes on; one
whose unwinding is stuck too ends the run with every thread's stack instead of hanging it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOST_ANSWER = '''
import asyncio

def test_waits_for_an_answer_that_never_comes():
    async def main():
        await asyncio.get_running_loop().create_future()
    asyncio.run(main())

def test_runs_after_it():
    assert True
'''

STUCK_THREAD = '''
import asyncio, threading

def test_waits_in_a_thread_that_never_returns():
    async def main():
        await asyncio.to_thread(threading.Event().wait)
    asyncio.run(main())

def test_never_reached():
    assert True
'''


def inner_run(tmp_path: Path, source: str, unwind_s: int) -> subprocess.CompletedProcess[str]:
    """A pytest run of ``source`` with a 1 s timeout and ``unwind_s`` to unwind (a guard of 120 s:
    a hang raises ``TimeoutExpired`` here)."""
    (tmp_path / "test_inner.py").write_text(source, encoding="utf-8")
    options = ["-o", "timeout=1", "-o", "timeout_method=signal", "-o", f"timeout_unwind={unwind_s}"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.timeouts", *options,
         "test_inner.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )


def test_a_test_stuck_in_asyncio_run_fails_and_the_next_one_runs(tmp_path: Path) -> None:
    run = inner_run(tmp_path, LOST_ANSWER, unwind_s=60)
    assert run.returncode == 1
    assert "Failed: Timeout (>1.0s) from pytest-timeout." in run.stdout
    assert "\n1 failed, 1 passed in " in run.stdout


def test_a_test_that_cannot_unwind_ends_the_run_with_every_threads_stack(tmp_path: Path) -> None:
    run = inner_run(tmp_path, STUCK_THREAD, unwind_s=5)
    assert run.returncode == 1
    assert "Stack of asyncio_0" in run.stdout and "in wait" in run.stdout  # the stuck executor thread
    assert "test_never_reached" not in run.stdout and "passed" not in run.stdout
