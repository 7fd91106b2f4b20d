"""The readiness audit follows the seed: its headings and lines are parsed from the copy of the
seed in docs/seed-phase8.md, and each line has exactly one audit item, under its heading."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.reports.readiness import (
    DEPLOYMENT_CHECKLIST,
    MANUAL,
    SECURITY_AUDIT,
    SEED_ITEMS,
    Context,
    run_readiness,
)
from opsgate.store.db import make_engine, upgrade

SEED = Path(__file__).resolve().parents[2] / "docs" / "seed-phase8.md"
PARTS = ("## Pre-Production Security Audit", "## Deployment Checklist")


def seed_sections() -> dict[str, list[str]]:
    """``{heading: [checklist lines]}`` of the seed's audit and deployment checklist, in order:
    ``### 1. Secret Management Audit`` -> "Secret Management Audit", ``### Pre-Deployment (Week 20
    Start)`` -> "Pre-Deployment"; lines are ``- [ ] text`` or ``- [x] text``."""
    sections: dict[str, list[str]] = {}
    part = heading = None
    for line in SEED.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            part, heading = line.strip() if line.strip() in PARTS else None, None
        elif part and line.startswith("### "):
            heading = re.sub(r"^\d+\.\s*|\s*\(.*\)$", "", line[4:].strip())
            sections[heading] = []
        elif part and heading and (m := re.match(r"- \[[ x]\] (.+)$", line)):
            sections[heading].append(m.group(1).strip())
    return sections


def test_the_seed_copy_has_seven_audit_headings_and_three_phases() -> None:
    sections = seed_sections()
    assert list(sections) == [*SECURITY_AUDIT, *DEPLOYMENT_CHECKLIST]
    assert sum(len(v) for v in sections.values()) == 67
    assert sections["Pre-Deployment"][0] == "All tests passing (490+)"


def test_every_seed_line_has_exactly_one_item_under_its_heading() -> None:
    sections = seed_sections()
    items: dict[str, list[str]] = {}
    for section, line, _key, _check in SEED_ITEMS:
        items.setdefault(section, []).append(line)
    assert items == sections  # same headings, same lines, same order, none twice
    keys = [key for *_, key, _ in SEED_ITEMS]
    assert len(keys) == len(set(keys))


def test_manual_items_give_their_reason_and_checked_items_a_check() -> None:
    for section, line, key, check in SEED_ITEMS:
        if isinstance(check, str):
            assert check == "derived" or len(check) > 40, (section, line, key)
        else:
            assert callable(check), key


async def test_audit_items_carry_the_seeds_section_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    ctx = Context(Settings(_env_file=None), engine, ManualClock(datetime(2026, 12, 1, tzinfo=UTC)), tmp_path)
    audit = await run_readiness(ctx, only={"csrf_on", "tests_passing", "security_audit_passed",
                                           "success_metrics", "canary_started"})
    engine.dispose()
    doc = {i["key"]: i for i in audit.to_dict()["items"]}
    assert doc["csrf_on"]["section"] == "Code Privacy Audit" and doc["csrf_on"]["title"] == "CSRF tokens validated"
    assert doc["csrf_on"]["status"] == "pass"
    assert doc["tests_passing"]["section"] == "Pre-Deployment" and doc["tests_passing"]["status"] == "fail"
    assert "run `./dev test`" in doc["tests_passing"]["evidence"]
    assert doc["security_audit_passed"]["status"] == "pass"  # csrf_on, the one audit item run, passed
    assert doc["success_metrics"]["status"] == "fail" and "Test Pass Rate (n/a)" in doc["success_metrics"]["evidence"]
    assert doc["canary_started"] == {
        "key": "canary_started", "title": "Canary deployment (5%)", "status": "fail", "blocking": False,
        "section": "Deployment Day", "evidence": "no rollout started: `opsgate rollout start OPERATION`"}
    assert doc["team_debriefing"]["status"] == MANUAL and doc["team_debriefing"]["section"] == "Post-Deployment"
    assert not audit.ready  # tests_passing is blocking
