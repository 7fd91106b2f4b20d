"""The operation contract: registry, file inputs, every real file, schema-valid answers -> Outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from opsgate.errors import InvalidInput, NotFound
from opsgate.operations import OPERATIONS, get_operation
from opsgate.operations.caps import answer_cap
from opsgate.operations.io import input_from_file
from tests.shared_data import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
DATA = SHARED_DATA
EXAMPLES = REPO / "examples"
IDS = [
    "email-compose", "email-classify", "email-respond", "calendar-prep", "calendar-time",
    "task-prioritize", "task-breakdown", "analytics-summary", "analytics-anomaly",
]
SECRET = "sk-ant-api03-" + "Q" * 48

# One hand-written, schema-valid model answer per operation; indices 0 and 999 test references.
ANSWERS: dict[str, dict[str, Any]] = {
    "email-classify": {"category": "work", "priority": "high", "needs_reply": True, "confidence": 0.9,
                       "reason": "A customer asks for a refund before a deadline."},
    "email-respond": {"language": "de", "body": "Hallo Jonas,\nFreitag passt.\nAlex", "open_questions": []},
    "email-compose": {"language": "en", "subject": "Post-incident review", "body": "Hi all,\n...",
                      "open_questions": ["Which day?"]},
    "calendar-prep": {"summary": "A busy week.", "items": [
        {"event": 0, "briefing": "Stand-up.", "preparation": ["Check board"]},
        {"event": 0, "briefing": "Duplicate.", "preparation": []},
        {"event": 999, "briefing": "Invented.", "preparation": []}]},
    "calendar-time": {"ranked": [{"slot": 1, "reason": "Morning."}, {"slot": 999, "reason": "x"}],
                      "summary": "Tuesday morning is best."},
    "task-prioritize": {"order": [{"task": 1, "reason": "Customer deadline."},
                                  {"task": 6, "reason": "Closed task: must be ignored."},
                                  {"task": 999, "reason": "Invented."}], "summary": "Refund first."},
    "task-breakdown": {"subtasks": [{"title": "Test upgrade on staging", "estimate_minutes": 240, "done_when": "Green run"},
                                    {"title": "Write rollback plan", "estimate_minutes": 90, "done_when": "Reviewed"}],
                       "notes": "Assumes a Sunday window."},
    "analytics-summary": {"headline": "Signups grow", "narrative": "Weekly cycle.", "highlights": ["+35%"]},
    "analytics-anomaly": {"severity": "high", "narrative": "One incident.",
                          "notes": [{"anomaly": 0, "explanation": "Latency spike."}, {"anomaly": 999, "explanation": "x"}]},
}

# The list fields each operation bounds by its input when it computes max_tokens (operations/caps.py).
CAP_ITEMS: dict[str, Any] = {
    "email-compose": lambda p: None, "email-classify": lambda p: None, "email-respond": lambda p: None,
    "calendar-prep": lambda p: {"items": len(p.context["events"])},
    "calendar-time": lambda p: {"ranked": len(p.context["slots"])},
    "task-prioritize": lambda p: {"order": len(p.context["sent"])},
    "task-breakdown": lambda p: {"subtasks": p.context["max_subtasks"]},
    "analytics-summary": lambda p: None,
    "analytics-anomaly": lambda p: {"notes": p.context["sent"]},
}


def example(op_id: str) -> Path:
    return next(EXAMPLES.glob(f"{op_id}.*"))


def test_registry_has_exactly_the_nine_operations() -> None:
    assert sorted(OPERATIONS) == sorted(IDS)
    assert all(get_operation(op_id).id == op_id for op_id in IDS)
    with pytest.raises(NotFound):
        get_operation("email-delete")


@pytest.mark.parametrize("op_id", IDS)
def test_model_output_schema_is_flat_strict_and_bounded(op_id: str) -> None:
    schema = OPERATIONS[op_id].ModelOutput.model_json_schema()
    text = json.dumps(schema)
    assert "anyOf" not in text and "oneOf" not in text and "allOf" not in text
    for node in [schema, *schema.get("$defs", {}).values()]:
        assert node["additionalProperties"] is False
        assert set(node["required"]) == set(node["properties"])
        for prop in node["properties"].values():
            if prop.get("type") == "array":
                assert "maxItems" in prop


@pytest.mark.parametrize("op_id", IDS)
def test_example_input_round_trips_through_prepare_and_finish(op_id: str) -> None:
    op = OPERATIONS[op_id]
    prepared = op.prepare(op.Input.model_validate(input_from_file(op_id, example(op_id))))
    jsonschema.validate(ANSWERS[op_id], prepared.request.json_schema)
    output = op.finish(prepared, op.answer_model(prepared).model_validate(ANSWERS[op_id]))
    assert isinstance(output, op.Output)
    again = op.Output.model_validate_json(output.model_dump_json())
    assert again.model_dump(mode="json") == output.model_dump(mode="json")
    assert prepared.request.max_tokens == answer_cap(
        op.answer_model(prepared), f"{prepared.request.system}\n{prepared.request.user}", CAP_ITEMS[op_id](prepared))


def test_finish_never_returns_what_the_code_did_not_compute() -> None:
    results = {}
    for op_id in ("calendar-prep", "calendar-time", "task-prioritize", "analytics-anomaly"):
        op = OPERATIONS[op_id]
        prepared = op.prepare(op.Input.model_validate(input_from_file(op_id, example(op_id))))
        results[op_id] = (prepared, op.finish(prepared, op.ModelOutput.model_validate(ANSWERS[op_id])))
    prep = results["calendar-prep"][1]
    assert [item.event.index for item in prep.items] == [0] and prep.dropped_references == 2
    prepared, slots = results["calendar-time"]
    assert [r.index for r in slots.recommended] == [1] and slots.dropped_references == 1
    assert slots.recommended[0].start == prepared.context["slots"][1].start
    prepared, ranked = results["task-prioritize"]
    assert ranked.ranked[0].task.index == 1 and ranked.ranked[0].source == "model"
    assert sorted(r.task.index for r in ranked.ranked) == sorted(prepared.context["sent"])
    assert 6 not in [r.task.index for r in ranked.ranked] and [t.index for t in ranked.closed] == [6]
    assert ranked.dropped_references == 2
    anomaly = results["analytics-anomaly"][1]
    assert [n.anomaly.index for n in anomaly.notes] == [0] and anomaly.count == 2


def test_breakdown_totals_are_computed_in_code() -> None:
    op = OPERATIONS["task-breakdown"]
    prepared = op.prepare(op.Input.model_validate(input_from_file("task-breakdown", example("task-breakdown"))))
    output = op.finish(prepared, op.ModelOutput.model_validate(ANSWERS["task-breakdown"]))
    assert output.total_estimate_minutes == 330 and [s.step for s in output.subtasks] == [1, 2]
    assert output.task.title == "Migrate the billing service to PostgreSQL 16"


def real_files() -> list[tuple[str, Path]]:
    pairs = [(op, p) for p in sorted((DATA / "emails").glob("*.eml")) for op in IDS[:3]]
    pairs += [(op, p) for p in sorted((DATA / "calendars").glob("*.ics")) for op in ("calendar-prep", "calendar-time")]
    pairs += [(op, p) for p in sorted((DATA / "tasks").glob("*.ics")) for op in ("task-prioritize", "task-breakdown")]
    pairs += [(op, p) for p in sorted((DATA / "series").glob("*.csv")) for op in ("analytics-summary", "analytics-anomaly")]
    return pairs




@pytest.mark.parametrize(("op_id", "path"), real_files(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_real_file_drives_its_operations_through_json(op_id: str, path: Path) -> None:
    op = OPERATIONS[op_id]
    body = json.loads(json.dumps(input_from_file(op_id, path)))
    prepared = op.prepare(op.Input.model_validate(body))
    assert prepared.request.user and prepared.request.schema_name
    assert "<data name=" in prepared.request.user


def test_task_files_in_calendar_operations_need_a_window() -> None:
    op = OPERATIONS["calendar-time"]
    body = input_from_file("calendar-time", DATA / "tasks" / "ccs-put-101.ics")
    with pytest.raises(InvalidInput, match="window_start is required"):
        op.prepare(op.Input.model_validate(body))
    body["window_start"] = "2027-01-04T00:00:00Z"
    assert len(op.prepare(op.Input.model_validate(body)).context["slots"]) == 20


@pytest.mark.parametrize(
    ("op_id", "body", "fragment"),
    [
        ("analytics-summary", {"csv": "timestamp,value\n"}, "empty"),
        ("analytics-summary", {"csv": f"timestamp,value\n2026-01-01,{SECRET}\n"}, "row 2: the value is not a number"),
        ("analytics-anomaly", {"csv": f"{SECRET},1\n"}, "row 1: the timestamp"),
        ("analytics-anomaly", {"csv": "timestamp,value\n2026-01-01,\n2026-01-02,NaN\n"}, "no numeric values"),
        ("task-prioritize", {"ics": "BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n"}, "no VTODO"),
        ("task-breakdown", {"tasks": [{"title": "a"}], "task": 3}, "'task' must be less than"),
        ("email-respond", {"raw": f"{SECRET}\n\nbody"}, "not an RFC 822 message"),
    ],
)
def test_bad_inputs_raise_invalid_input_without_echo(op_id: str, body: dict, fragment: str) -> None:
    op = OPERATIONS[op_id]
    with pytest.raises(InvalidInput) as caught:
        op.prepare(op.Input.model_validate(body))
    assert fragment in caught.value.detail
    assert SECRET not in caught.value.detail and SECRET not in json.dumps(caught.value.errors)
    assert all(set(e) == {"loc", "msg"} for e in caught.value.errors)


@pytest.mark.parametrize(
    ("op_id", "body"),
    [
        ("email-classify", {}),
        ("email-classify", {"raw": "x" * 2_000_001}),
        ("email-compose", {"to": ["a@example.com"]}),
        ("calendar-time", {"ics": "x", "duration_minutes": "long"}),
        ("calendar-time", {"ics": "x", "day_start": "18:00", "day_end": "09:00"}),
        ("task-prioritize", {"ics": "x", "tasks": [{"title": "a"}]}),
        ("task-prioritize", {"tasks": [{"title": "a", "priority": 12}]}),
        ("analytics-summary", {"series": [{"timestamp": "2026-01-01", "value": "inf"}]}),
        ("analytics-anomaly", {"csv": "a", "surprise": 1}),
    ],
)
def test_wrong_shapes_fail_validation(op_id: str, body: dict) -> None:
    with pytest.raises(ValidationError):
        OPERATIONS[op_id].Input.model_validate(body)


def test_json_series_and_task_list_alternatives() -> None:
    summary = OPERATIONS["analytics-summary"]
    body = {"series": [{"timestamp": "2026-01-02", "value": 3}, {"timestamp": "2026-01-01T00:00:00", "value": 1},
                       {"timestamp": "2026-01-03T00:00:00+00:00", "value": None}], "name": "orders", "unit": "count"}
    figures = summary.prepare(summary.Input.model_validate(body)).context["figures"]
    assert (figures.count, figures.missing, figures.first, figures.last, figures.change) == (2, 1, 1.0, 3.0, 2.0)
    assert figures.slope_per_day == 2.0 and figures.change_pct == 200.0


def test_input_from_file_rules(tmp_path: Path) -> None:
    assert input_from_file("email-classify", example("email-classify"))["raw"].startswith("Return-Path:")
    assert set(input_from_file("analytics-anomaly", example("analytics-anomaly"), {"threshold": 5})) == {"csv", "threshold"}
    latin = tmp_path / "m.eml"
    latin.write_bytes("Subject: caf\xe9\n\nna\xefve".encode("latin-1"))
    assert input_from_file("email-classify", latin)["raw"].endswith("naïve")
    for name, content, fragment in [("x.txt", b"hi", "unsupported"), ("x.json", b"[1]", "JSON object"),
                                    ("x.json", b"{", "not valid JSON"), ("x.csv", b"\xff\xfe", "not UTF-8")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InvalidInput, match=fragment):
            input_from_file("analytics-summary", path)
