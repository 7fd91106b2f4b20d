"""analytics-anomaly against the hand-labelled NAB windows in shared/data/series/labels.json.

Scoring (NAB-style, per anomaly event): an anomaly is a true positive when its flagged run
[start, end] overlaps a labelled window; precision = true positives / anomalies reported;
recall = labelled windows overlapped by at least one anomaly / labelled windows.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsgate.operations import OPERATIONS
from opsgate.operations.analytics import AnomalyAnswer
from opsgate.operations.series import _sorted_mad
from tests.shared_data import SHARED_DATA

DATA = SHARED_DATA / "series"
OP = OPERATIONS["analytics-anomaly"]


def windows(name: str) -> list[tuple[datetime, datetime]]:
    labels = json.loads((DATA / "labels.json").read_text())
    return [tuple(datetime.fromisoformat(t).replace(tzinfo=UTC) for t in pair) for pair in labels[name]]


def test_precision_and_recall_on_the_labelled_series() -> None:
    names = json.loads((DATA / "labels.json").read_text())
    hits = reported = found_windows = total_windows = 0
    for name in names:
        prepared = OP.prepare(OP.Input.model_validate({"csv": (DATA / name).read_text()}))
        anomalies = prepared.context["anomalies"]
        labelled = windows(name)
        inside = [a for a in anomalies if any(a.start <= end and a.end >= start for start, end in labelled)]
        found = [w for w in labelled if any(a.start <= w[1] and a.end >= w[0] for a in anomalies)]
        print(f"{name}: {len(anomalies)} anomalies, {len(inside)} in labelled windows, "
              f"{len(found)}/{len(labelled)} windows found")
        hits, reported = hits + len(inside), reported + len(anomalies)
        found_windows, total_windows = found_windows + len(found), total_windows + len(labelled)
    precision, recall = hits / reported, found_windows / total_windows
    print(f"precision {precision:.2f} ({hits}/{reported}), recall {recall:.2f} ({found_windows}/{total_windows})")
    assert recall >= 0.75
    assert precision >= 0.35


def test_anomalies_carry_timestamps_scores_and_expected_values() -> None:
    prepared = OP.prepare(OP.Input.model_validate({"csv": (DATA / "speed_7578.csv").read_text()}))
    strongest = prepared.context["anomalies"][0]
    assert strongest.timestamp == datetime(2015, 9, 16, 17, 10, tzinfo=UTC)
    assert strongest.direction == "low" and strongest.score <= -7
    assert strongest.value == 1.0 and strongest.expected == 66.0


def test_unlabelled_seasonal_series_with_gaps_is_quiet() -> None:
    prepared = OP.prepare(OP.Input.model_validate({"csv": (DATA / "co2_mauna_loa_weekly.csv").read_text()}))
    assert prepared.context["count"] == 0
    output = OP.finish(prepared, AnomalyAnswer(severity="none", narrative="nothing", notes=[{"anomaly": 0, "explanation": "x"}]))
    assert output.anomalies == [] and output.notes == [] and output.dropped_references == 1


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60))
def test_sorted_mad_equals_the_textbook_mad(values: list[float]) -> None:
    ordered = sorted(values)
    centre = statistics.median(ordered)
    assert _sorted_mad(ordered, centre) == pytest.approx(statistics.median(abs(v - centre) for v in ordered))
