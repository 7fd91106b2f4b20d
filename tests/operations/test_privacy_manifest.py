"""The privacy manifest: ``opsgate privacy manifest`` and docs/privacy.md agree, the readiness
audit notices a deployment that differs from the page, and the clip lengths it states are real."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.operations import OPERATIONS
from opsgate.operations.email import MAX_SUBJECT_CHARS
from opsgate.operations.manifest import from_markdown, manifest, to_markdown
from opsgate.operations.privacy import PrivacyPolicy
from opsgate.reports.readiness import Context, privacy_manifest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "privacy.md"


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str, pseudonymise: str | None = None):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OPSGATE_PRIVACY_PSEUDONYMISE", raising=False)
    if pseudonymise is not None:
        monkeypatch.setenv("OPSGATE_PRIVACY_PSEUDONYMISE", pseudonymise)
    return CliRunner().invoke(app, ["privacy", "manifest", *args])


def test_the_command_prints_the_table_of_the_docs_page(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _cli(monkeypatch)
    assert result.exit_code == 0, result.output
    documented = from_markdown(PAGE.read_text(encoding="utf-8"))
    assert from_markdown(f"<!-- privacy-manifest:start -->\n{result.output}<!-- privacy-manifest:end -->") == documented
    assert [row.operation for row in documented] == sorted(OPERATIONS)
    assert {row.operation for row in documented if row.pseudonymised != "no"} == {
        "email-compose", "email-classify", "email-respond", "calendar-prep", "calendar-time"}
    assert all(row.masked == "secrets (always)" for row in documented)


def test_the_json_form_follows_the_deployed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _cli(monkeypatch, "--json", pseudonymise='["email-respond"]')
    assert result.exit_code == 0, result.output
    rows = {row["operation"]: row for row in json.loads(result.output)}
    assert [op for op, row in rows.items() if row["pseudonymised"] != "no"] == ["email-respond"]
    assert rows["email-classify"]["clipped"] == (
        "Subject: 300; new text of the body: 12000; quoted history (its newest part): 4000")


def test_an_unknown_operation_in_the_settings_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _cli(monkeypatch, pseudonymise='["email-respond", "mail-respond"]')
    assert result.exit_code == 2
    assert "mail-respond" in result.output


def test_readiness_fails_when_the_deployment_differs_from_the_page() -> None:
    engine = create_engine("sqlite://")  # the check reads settings and the page, not the database
    clock = ManualClock(datetime(2026, 12, 4, tzinfo=UTC))
    as_documented = Context(Settings(_env_file=None), engine, clock, REPO)
    ok, evidence = privacy_manifest(as_documented)
    assert ok, evidence
    switched_off = Settings(privacy_pseudonymise=["email-respond", "calendar-prep"], _env_file=None)
    ok, evidence = privacy_manifest(Context(switched_off, engine, clock, REPO))
    assert not ok
    assert evidence.endswith("for: calendar-time, email-classify, email-compose")


def test_the_stated_clip_length_is_the_one_applied() -> None:
    op = OPERATIONS["email-classify"]
    subject = "quarterly numbers " * 40
    data = op.Input.model_validate({"email": {"subject": subject, "sender": "a@example.com", "body": "Hi"}})
    prompt = op.prepare(data).request.user
    sent = prompt.split("Subject: ", 1)[1].split("\nAttachments: ", 1)[0]  # clip's "[...]" marker included
    stated = next(s.clip for s in op.sends if s.what == "Subject")
    assert stated == MAX_SUBJECT_CHARS and len(sent) == stated and sent.endswith("[...]")


def test_the_markdown_round_trips() -> None:
    rows = manifest(PrivacyPolicy())
    assert from_markdown(f"<!-- privacy-manifest:start -->\n{to_markdown(rows)}\n<!-- privacy-manifest:end -->") == rows
