"""The last test run's reports, as `./dev test` writes them: ``artifacts/junit.xml`` (pytest's
JUnit XML) and ``artifacts/coverage.xml`` (coverage.py's Cobertura XML, branch coverage over
``src/opsgate`` including the servers the tests start as subprocesses).

:func:`read_test_run` and :func:`read_coverage` return what the file says, or raise
:class:`EvidenceError` (missing, unreadable or not the expected format) with a message saying how to
produce it. Counts are integers; the coverage percentage is a :class:`~decimal.Decimal`, computed the
way coverage.py's ``TOTAL`` is with branch measurement on: (covered lines + covered branches) /
(lines + branches) x 100.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

JUNIT = "junit.xml"
COVERAGE = "coverage.xml"
HOW = "run `./dev test` (it writes artifacts/junit.xml and artifacts/coverage.xml)"


def project_root() -> Path:
    """The checkout holding ``pyproject.toml`` above the package (src layout), else the cwd."""
    import opsgate

    candidate = Path(opsgate.__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


def artifacts_dir() -> Path:
    """Where `./dev test` writes its reports: ``<project root>/artifacts``."""
    return project_root() / "artifacts"


class EvidenceError(Exception):
    """A test report is missing or unreadable; the message names the file and how to produce it."""


@dataclass(frozen=True, slots=True)
class TestRun:
    """Totals of one pytest run (JUnit XML ``<testsuite>`` attributes summed over suites):
    ``total`` counts every test case, ``passed = total - failures - errors - skipped``;
    ``finished_at`` is the suite's start time plus its duration (UTC)."""

    __test__ = False  # not a pytest test class

    path: Path
    total: int
    failures: int
    errors: int
    skipped: int
    duration_s: float
    finished_at: datetime

    @property
    def passed(self) -> int:
        return self.total - self.failures - self.errors - self.skipped


@dataclass(frozen=True, slots=True)
class CoverageTotals:
    """Totals of one coverage.py XML report: lines and branches measured and covered, the
    report's timestamp (UTC) and the measured ``percent``."""

    path: Path
    lines_valid: int
    lines_covered: int
    branches_valid: int
    branches_covered: int
    written_at: datetime

    @property
    def percent(self) -> Decimal:
        whole = self.lines_valid + self.branches_valid
        if not whole:
            return Decimal(0)
        return Decimal(self.lines_covered + self.branches_covered) * 100 / whole


def read_test_run(path: Path) -> TestRun:
    """The totals of the JUnit XML report at ``path`` (pytest ``--junit-xml``)."""
    root = _parse(path)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise EvidenceError(f"{path} holds no <testsuite>: {HOW}")
    try:
        counts = {
            key: sum(int(s.get(key, "0")) for s in suites)
            for key in ("tests", "failures", "errors", "skipped")
        }
        duration = sum(float(s.get("time", "0")) for s in suites)
        started = min(_when(s.get("timestamp")) for s in suites)
    except ValueError as exc:
        raise EvidenceError(f"{path} has unreadable totals ({exc}): {HOW}") from None
    return TestRun(
        path,
        counts["tests"],
        counts["failures"],
        counts["errors"],
        counts["skipped"],
        duration,
        started + timedelta(seconds=duration),
    )


def test_cases(path: Path, module: str) -> tuple[int, list[str]]:
    """In the JUnit XML report at ``path``: how many test cases of ``module`` (a dotted test
    module, e.g. ``tests.security.test_injection_corpus``) ran, and the names of those that did
    not pass (failed, errored or skipped)."""
    root = _parse(path)
    ran, bad = 0, []
    for case in root.iter("testcase"):
        name = case.get("classname", "")
        if name != module and not name.startswith(module + "."):
            continue
        ran += 1
        if any(case.find(tag) is not None for tag in ("failure", "error", "skipped")):
            bad.append(case.get("name", "?"))
    return ran, bad


def read_coverage(path: Path) -> CoverageTotals:
    """The totals of the coverage.py XML report at ``path`` (``coverage xml``, Cobertura DTD)."""
    root = _parse(path)
    if root.tag != "coverage":
        raise EvidenceError(f"{path} is not a coverage XML report: {HOW}")
    try:
        stamp_ms = int(root.get("timestamp", ""))
        return CoverageTotals(
            path,
            int(root.get("lines-valid", "")),
            int(root.get("lines-covered", "")),
            int(root.get("branches-valid", "0")),
            int(root.get("branches-covered", "0")),
            datetime.fromtimestamp(stamp_ms / 1000, UTC),
        )
    except ValueError:
        raise EvidenceError(f"{path} lacks the totals of a coverage report: {HOW}") from None


def _parse(path: Path) -> ET.Element:
    if not path.is_file():
        raise EvidenceError(f"no {path}: {HOW}")
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise EvidenceError(f"{path} is not readable XML ({type(exc).__name__}): {HOW}") from None


def _when(text: str | None) -> datetime:
    """pytest writes the suite's local start time without an offset; since pytest 8 with one."""
    if not text:
        raise ValueError("no timestamp")
    moment = datetime.fromisoformat(text)
    return moment.astimezone(UTC) if moment.tzinfo else moment.astimezone().astimezone(UTC)



def totals(artifacts: Path) -> list[str]:
    """One line per report in ``artifacts``: what `./dev test` prints after the run."""
    lines = []
    try:
        run = read_test_run(artifacts / JUNIT)
        lines.append(
            f"tests: {run.passed} passed of {run.total} ({run.failures} failed, {run.errors} errors, "
            f"{run.skipped} skipped) -> {run.path}"
        )
    except EvidenceError as exc:
        lines.append(f"tests: {exc}")
    try:
        cov = read_coverage(artifacts / COVERAGE)
        lines.append(
            f"coverage: {cov.percent:.2f} % of src/opsgate ({cov.lines_covered}/{cov.lines_valid} lines, "
            f"{cov.branches_covered}/{cov.branches_valid} branches) -> {cov.path}"
        )
    except EvidenceError as exc:
        lines.append(f"coverage: {exc}")
    return lines


if __name__ == "__main__":  # `python -m opsgate.monitoring.evidence DIR`, run by `./dev test`
    import sys

    print("\n".join(totals(Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts"))))
