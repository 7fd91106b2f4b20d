"""analytics-summary and analytics-anomaly over a numeric time series.

Input: ``csv`` (``timestamp,value`` text, see :mod:`opsgate.operations.series`) or ``series`` (a
JSON list of ``{"timestamp", "value"}``), exactly one, plus an optional ``name`` and ``unit``.

analytics-summary computes the key figures in code (:class:`Figures`); the model sees them and
the series reduced to at most :data:`MAX_SENT_POINTS` bucket means (equal-count buckets in time
order) and writes the narrative. analytics-anomaly finds anomalies in code
(:func:`series.detect`); the model sees the :data:`MAX_SENT_ANOMALIES` strongest, numbered, and
only narrates them (notes refer to anomalies by number; unknown numbers are dropped). Output
lists at most :data:`MAX_ANOMALIES` anomalies, strongest first.

Answer limits (each string's ``maxLength`` sets the request's ``max_tokens``, see
:mod:`opsgate.operations.caps`), product decisions of issue 16 that follow what the prompts ask
for: both operations' "short narrative" at most :data:`MAX_NARRATIVE_CHARS` characters (about
200 words; was 2,000), a summary's headline at most :data:`MAX_HEADLINE_CHARS` (about 20 words;
was 200) and each highlight at most :data:`MAX_HIGHLIGHT_CHARS` (was 300). An anomaly note's
``explanation`` (possible causes as hypotheses) keeps 400. Each limit is in the JSON schema the
model is given; a longer answer fails it and gets one repair request.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opsgate.operations.base import Operation, Prepared, Sent
from opsgate.operations.prompts import PromptVersion
from opsgate.operations.common import Answer, build_request, data_block, known_references, user_request
from opsgate.operations.series import (
    Anomaly,
    DetectionParams,
    Point,
    detect,
    finish_series,
    median_interval,
    parse_csv,
)

MAX_CSV_CHARS = 5_000_000
MAX_SENT_POINTS = 48
MAX_SENT_ANOMALIES = 20
MAX_ANOMALIES = 100
MAX_HIGHLIGHT_CHARS = 200
"""One highlight of a summary (bounds the answer, :mod:`opsgate.operations.caps`)."""
MAX_HEADLINE_CHARS = 120
MAX_NARRATIVE_CHARS = 1_200


class PointIn(BaseModel):
    """One JSON observation; ``value`` None means missing. Naive timestamps are UTC."""

    model_config = ConfigDict(extra="forbid")

    timestamp: datetime
    value: float | None = Field(allow_inf_nan=False)


class SeriesInput(BaseModel):
    """The series (``csv`` or ``series``) with an optional ``name``/``unit`` and ``question``."""

    model_config = ConfigDict(extra="forbid")

    csv: str | None = Field(None, min_length=1, max_length=MAX_CSV_CHARS)
    series: list[PointIn] | None = Field(None, min_length=1, max_length=100_000)
    name: str | None = Field(None, max_length=200)
    unit: str | None = Field(None, max_length=50)
    question: str | None = Field(None, max_length=1_000)

    @model_validator(mode="after")
    def _exactly_one(self) -> SeriesInput:
        if (self.csv is None) == (self.series is None):
            raise ValueError("give the series in 'csv' (timestamp,value text) or 'series' (JSON), exactly one")
        return self

    def points(self) -> list[Point]:
        """The observations sorted by time; raises InvalidInput for unusable data."""
        if self.csv is not None:
            return parse_csv(self.csv)
        points = [
            Point(p.timestamp if p.timestamp.tzinfo else p.timestamp.replace(tzinfo=UTC), p.value)
            for p in self.series or []
        ]
        return finish_series(points, "series")

    def label(self) -> str:
        """``name (unit)`` for the prompt."""
        return f"{self.name or 'value'}" + (f" ({self.unit})" if self.unit else "")


class Figures(BaseModel):
    """Key figures of the non-missing values; ``slope_per_day`` is a least-squares trend."""

    count: int
    missing: int
    start: datetime
    end: datetime
    first: float
    last: float
    minimum: float
    minimum_at: datetime
    maximum: float
    maximum_at: datetime
    mean: float
    median: float
    stdev: float
    change: float
    change_pct: float | None
    slope_per_day: float | None
    median_interval_seconds: float
    largest_gap_seconds: float
    largest_gap_start: datetime | None


def figures(points: list[Point]) -> Figures:
    """Compute :class:`Figures` (needs at least one non-missing value)."""
    present = [p for p in points if p.value is not None]
    values = [p.value for p in present if p.value is not None]
    low = min(present, key=lambda p: p.value or 0.0)
    high = max(present, key=lambda p: p.value or 0.0)
    gaps = [(b.timestamp - a.timestamp, a.timestamp) for a, b in pairwise(points)]
    widest = max(gaps, default=(timedelta(0), None), key=lambda g: g[0])
    first, last = values[0], values[-1]
    return Figures(
        count=len(values), missing=len(points) - len(values), start=points[0].timestamp,
        end=points[-1].timestamp, first=first, last=last, minimum=low.value or 0.0,
        minimum_at=low.timestamp, maximum=high.value or 0.0, maximum_at=high.timestamp,
        mean=_round(statistics.fmean(values)), median=_round(statistics.median(values)),
        stdev=_round(statistics.pstdev(values)), change=_round(last - first),
        change_pct=_round((last - first) / abs(first) * 100) if first else None,
        slope_per_day=_slope(present),
        median_interval_seconds=median_interval(points).total_seconds(),
        largest_gap_seconds=widest[0].total_seconds(), largest_gap_start=widest[1],
    )


def buckets(points: list[Point], limit: int = MAX_SENT_POINTS) -> list[tuple[datetime, float]]:
    """At most ``limit`` ``(first timestamp, mean value)`` pairs over equal-count buckets."""
    present = [p for p in points if p.value is not None]
    size = -(-len(present) // limit)
    result = []
    for start in range(0, len(present), size):
        chunk = present[start : start + size]
        result.append((chunk[0].timestamp, _round(statistics.fmean(p.value or 0.0 for p in chunk))))
    return result


def _slope(present: list[Point]) -> float | None:
    if len({p.timestamp for p in present}) < 2:
        return None
    origin = present[0].timestamp
    days = [(p.timestamp - origin).total_seconds() / 86_400 for p in present]
    return _round(statistics.linear_regression(days, [p.value or 0.0 for p in present]).slope)


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _figures_text(f: Figures) -> str:
    return "\n".join(
        f"{name}: {value.isoformat() if isinstance(value, datetime) else value}"
        for name, value in f.model_dump().items()
    )


# ---------------------------------------------------------------- analytics-summary


class SummaryAnswer(Answer):
    """The model's narrative: a headline, a paragraph and up to 5 highlights."""

    headline: str = Field(max_length=MAX_HEADLINE_CHARS)
    narrative: str = Field(max_length=MAX_NARRATIVE_CHARS)
    highlights: list[Annotated[str, Field(max_length=MAX_HIGHLIGHT_CHARS)]] = Field(max_length=5)


class SummaryOutput(BaseModel):
    """Key figures computed in code plus the model's narrative."""

    name: str | None
    unit: str | None
    figures: Figures
    headline: str
    narrative: str
    highlights: list[str]
    sent_points: int
    downsampled: bool


class AnalyticsSummary(Operation):
    """Key figures of a series and a narrative about them."""

    id = "analytics-summary"
    Input = SeriesInput
    reads = ("csv", "series")
    ModelOutput = SummaryAnswer
    Output = SummaryOutput
    sends = (
        Sent("series name and unit"),
        Sent("key figures (computed)"),
        Sent(f"bucket means (at most {MAX_SENT_POINTS}, computed)"),
        Sent("question"),
    )

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Compute the figures and the bucketed series; ask for a narrative."""
        assert isinstance(data, SeriesInput)
        points = data.points()
        stats = figures(points)
        shape = buckets(points)
        series_text = "\n".join(f"{t.isoformat()},{v}" for t, v in shape)
        user = (
            f"Series: {data.label()}.\nKey figures (computed exactly):\n{_figures_text(stats)}\n\n"
            f"Shape ({len(shape)} bucket means, time order):\n" + data_block("series", series_text)
        )
        if data.question:
            user += "\n\n" + user_request(data.question)
        system = self.system_prompt(prompt)
        request = build_request(system, user, SummaryAnswer, "series_summary")
        context = {
            "name": data.name, "unit": data.unit, "figures": stats, "sent_points": len(shape),
            "downsampled": len(shape) < stats.count,
        }
        return Prepared(request=request, context=context)

    def finish(self, prepared: Prepared, answer: BaseModel) -> SummaryOutput:
        """Merge the narrative with the figures."""
        assert isinstance(answer, SummaryAnswer)
        return SummaryOutput(**prepared.context, **answer.model_dump())


# ---------------------------------------------------------------- analytics-anomaly


class AnomalyInput(SeriesInput):
    """analytics-anomaly input: the series plus detector settings (see :mod:`series`)."""

    threshold: float = Field(7.0, ge=2.0, le=50.0)
    window_hours: float = Field(72.0, gt=0, le=24 * 366)

    def params(self) -> DetectionParams:
        """The detector settings of this request."""
        return DetectionParams(window=timedelta(hours=self.window_hours), threshold=self.threshold)


class AnomalyOut(BaseModel):
    """An anomaly found in code: peak ``timestamp``, ``value``, ``expected`` (rolling median),
    robust ``score``, and the ``start``..``end`` of its run of ``points`` flagged points."""

    index: int
    timestamp: datetime
    value: float
    expected: float
    score: float
    direction: Literal["high", "low"]
    start: datetime
    end: datetime
    points: int


class AnomalyNote(Answer):
    """The model's explanation of anomaly number ``anomaly``."""

    anomaly: int = Field(ge=0)
    explanation: str = Field(max_length=400)


class AnomalyAnswer(Answer):
    """The model's narration: overall severity, a narrative and per-anomaly notes."""

    severity: Literal["none", "low", "medium", "high"]
    narrative: str = Field(max_length=MAX_NARRATIVE_CHARS)
    notes: list[AnomalyNote] = Field(max_length=MAX_SENT_ANOMALIES)


class AnomalyNoteOut(BaseModel):
    """A note joined with its anomaly."""

    anomaly: AnomalyOut
    explanation: str


class AnomalyOutput(BaseModel):
    """Anomalies computed in code (strongest first) and the model's narration of them."""

    name: str | None
    unit: str | None
    method: str
    threshold: float
    window_hours: float
    count: int
    anomalies: list[AnomalyOut]
    severity: Literal["none", "low", "medium", "high"]
    narrative: str
    notes: list[AnomalyNoteOut]
    trimmed: bool
    trim_notes: list[str]
    dropped_references: int


METHOD = (
    "trailing rolling median/MAD robust z-score (log scale when all values are positive); "
    "|score| >= threshold flags a point; nearby flagged points form one anomaly"
)


def _anomaly_out(index: int, a: Anomaly) -> AnomalyOut:
    return AnomalyOut(
        index=index, timestamp=a.timestamp, value=a.value, expected=_round(a.expected),
        score=a.score, direction="high" if a.direction == "high" else "low", start=a.start,
        end=a.end, points=a.points,
    )


class AnalyticsAnomaly(Operation):
    """Anomalies found by robust statistics in code, narrated by the model."""

    id = "analytics-anomaly"
    Input = AnomalyInput
    reads = ("csv", "series")
    ModelOutput = AnomalyAnswer
    Output = AnomalyOutput
    sends = (
        Sent("series name and unit"),
        Sent("count, time range and median (computed)"),
        Sent("method, threshold and window"),
        Sent(f"anomalies (the {MAX_SENT_ANOMALIES} strongest, computed)"),
        Sent("question"),
    )

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Detect anomalies and ask the model to narrate the strongest."""
        assert isinstance(data, AnomalyInput)
        points = data.points()
        found = detect(points, data.params())
        kept = [_anomaly_out(i, a) for i, a in enumerate(found[:MAX_ANOMALIES])]
        sent = kept[:MAX_SENT_ANOMALIES]
        notes = []
        if len(found) > len(kept):
            notes.append(f"only the {MAX_ANOMALIES} strongest of {len(found)} anomalies returned")
        if len(kept) > len(sent):
            notes.append(f"only the {MAX_SENT_ANOMALIES} strongest anomalies were sent to the model")
        stats = figures(points)
        listing = "\n".join(
            f"[{a.index}] {a.timestamp.isoformat()} value {a.value} expected {a.expected} "
            f"score {a.score} ({a.direction}; {a.points} flagged points from "
            f"{a.start.isoformat()} to {a.end.isoformat()})"
            for a in sent
        ) or "(none found)"
        user = (
            f"Series: {data.label()}, {stats.count} values from {stats.start.isoformat()} to "
            f"{stats.end.isoformat()}, median {stats.median}.\nMethod: {METHOD}; threshold "
            f"{data.threshold}, window {data.window_hours} h.\nAnomalies (computed exactly, "
            "strongest first):\n" + data_block("anomalies", listing)
        )
        if data.question:
            user += "\n\n" + user_request(data.question)
        system = self.system_prompt(prompt)
        request = build_request(system, user, AnomalyAnswer, "anomaly_report", {"notes": len(sent)})
        context = {
            "name": data.name, "unit": data.unit, "method": METHOD, "threshold": data.threshold,
            "window_hours": data.window_hours, "count": len(found), "anomalies": kept,
            "sent": len(sent), "trim_notes": notes,
        }
        return Prepared(request=request, context=context)

    def finish(self, prepared: Prepared, answer: BaseModel) -> AnomalyOutput:
        """Join the notes with the computed anomalies; unknown or repeated numbers are dropped."""
        assert isinstance(answer, AnomalyAnswer)
        ctx = dict(prepared.context)
        anomalies: list[AnomalyOut] = ctx["anomalies"]
        sent = ctx.pop("sent")
        joined = [
            AnomalyNoteOut(anomaly=anomalies[note.anomaly], explanation=note.explanation)
            for note in known_references(answer.notes, lambda note: note.anomaly, sent)
        ]
        return AnomalyOutput(
            **ctx, severity=answer.severity, narrative=answer.narrative, notes=joined,
            trimmed=bool(ctx["trim_notes"]), dropped_references=len(answer.notes) - len(joined),
        )
