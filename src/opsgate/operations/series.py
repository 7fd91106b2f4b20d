"""Numeric time series: parsing, key figures and robust anomaly detection (all in code).

CSV format (RFC 4180): ``timestamp,value`` rows, an optional header row (recognised when its
value cell is not a number; a column named ``value`` is used when there are more columns).
Timestamps are ISO 8601 (``2015-07-28 11:56:00``, ``2015-07-28T11:56:00Z``, ``1958-03-29``) or
Unix epoch seconds; naive ones are UTC. Empty, ``NA``/``NaN`` or infinite values count as missing.
Points are sorted by time. A finite value of magnitude above :data:`MAX_ABS_VALUE` is refused, in
CSV and JSON alike (:func:`finish_series`).

Anomalies: a trailing rolling median / MAD robust z-score (Iglewicz & Hoaglin, 1993):
``score = 0.6745 * (y - median(window)) / MAD(window)`` where ``y`` is the value, log-transformed
when every value is positive (traffic, latency and count data vary multiplicatively), and the
window holds the points of the preceding ``max(window, 12 × median sampling interval)``, at most
:data:`MAX_WINDOW_POINTS` points, and at least ``min_points`` (earlier points are not scored).
The MAD is floored at 10 % of the whole series' MAD so flat stretches do not give infinite scores.
``|score| >= threshold`` flags a point; flagged points closer than ``merge_gap`` (at least
3 × the median interval) form one anomaly, reported at its highest-scoring point. Defaults
(window 72 h, threshold 7, merge gap 6 h) were tuned on the labelled NAB realTraffic series in
``shared/data/series``; the textbook threshold 3.5 flags too many ordinary spikes there.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from bisect import bisect_left, insort
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from opsgate.operations.common import invalid

MAX_POINTS = 100_000
MAX_ABS_VALUE = 1e100
"""The largest magnitude of a value: far past any measurement, and small enough that no figure of
up to :data:`MAX_POINTS` values (sums, squared deviations, the least-squares slope, scores)
overflows a double. Finite values near 1.7e308 made ``statistics.fmean`` and
``statistics.linear_regression`` raise (OverflowError, ValueError ``-inf + inf``), a 422 that
blamed the input's format for both analytics operations (tester A)."""
MAX_WINDOW_POINTS = 1_000
_MISSING = {"", "na", "nan", "null", "none", "-"}


@dataclass(frozen=True)
class Point:
    """One observation; ``value`` is None when missing."""

    timestamp: datetime
    value: float | None


@dataclass(frozen=True)
class DetectionParams:
    """Detector settings; see the module docstring."""

    window: timedelta = timedelta(hours=72)
    threshold: float = 7.0
    merge_gap: timedelta = timedelta(hours=6)
    min_points: int = 12


@dataclass(frozen=True)
class Anomaly:
    """One anomaly: the run of flagged points ``start``..``end`` and its peak point."""

    start: datetime
    end: datetime
    points: int
    peak_index: int
    timestamp: datetime
    value: float
    expected: float
    score: float
    direction: str


def parse_csv(text: str) -> list[Point]:
    """Parse CSV text into points sorted by time.

    Raises InvalidInput naming the row (1-based among non-blank rows, header included) that is
    wrong, never its content.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        raise invalid("the series is empty: no CSV rows", "csv")
    value_column = 1
    first_row = 1
    if len(rows[0]) >= 2 and not _is_number(rows[0][1]):
        header = [cell.strip().lower() for cell in rows[0]]
        value_column = header.index("value") if "value" in header else 1
        rows, first_row = rows[1:], 2
    if not rows:
        raise invalid("the series is empty: the CSV has a header but no data rows", "csv")
    if len(rows) > MAX_POINTS:
        raise invalid(f"the series has more than {MAX_POINTS} rows", "csv")
    points = []
    for number, row in enumerate(rows, start=first_row):
        if len(row) <= value_column:
            raise invalid(f"row {number}: expected a timestamp and a value column", "csv")
        points.append(Point(parse_timestamp(row[0], number), parse_value(row[value_column], number)))
    return finish_series(points, "csv")


def parse_timestamp(cell: str, row: int) -> datetime:
    """An ISO 8601 date/datetime or epoch seconds; naive means UTC."""
    text = cell.strip()
    try:
        if _is_number(text):
            return datetime.fromtimestamp(float(text), tz=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except (ValueError, OverflowError, OSError):
        raise invalid(f"row {row}: the timestamp is not ISO 8601 or epoch seconds", "csv") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_value(cell: str, row: int) -> float | None:
    """A float, or None for a missing/non-finite value; raises InvalidInput if not a number."""
    text = cell.strip()
    if text.lower() in _MISSING:
        return None
    if not _is_number(text):
        raise invalid(f"row {row}: the value is not a number", "csv")
    value = float(text)
    return value if math.isfinite(value) else None


def finish_series(points: list[Point], loc: str) -> list[Point]:
    """Sort by time; raise InvalidInput when no point has a value, or when a value's magnitude is
    above :data:`MAX_ABS_VALUE` (naming its place among the points, 1-based, never the value)."""
    if not any(p.value is not None for p in points):
        raise invalid("the series has no numeric values", loc)
    huge = next((i for i, p in enumerate(points, 1) if p.value is not None and abs(p.value) > MAX_ABS_VALUE), None)
    if huge is not None:
        raise invalid(f"point {huge} of the series: a value's magnitude may be at most {MAX_ABS_VALUE:g}", loc)
    return sorted(points, key=lambda p: p.timestamp)


def median_interval(points: list[Point]) -> timedelta:
    """Median spacing between consecutive timestamps (zero for fewer than two points)."""
    gaps = [b.timestamp - a.timestamp for a, b in pairwise(points)]
    if not gaps:
        return timedelta(0)
    return statistics.median(gaps)  # type: ignore[type-var]  # typeshed: numbers only; timedeltas work


def detect(points: list[Point], params: DetectionParams = DetectionParams()) -> list[Anomaly]:
    """Anomalies in ``points`` (missing values skipped), strongest first; see the module docstring."""
    present = [(i, p) for i, p in enumerate(points) if p.value is not None]
    if len(present) <= params.min_points:
        return []
    values = [p.value for _, p in present if p.value is not None]
    use_log = all(v > 0 for v in values)
    ys = [math.log(v) if use_log else v for v in values]
    times = [p.timestamp for _, p in present]
    step = median_interval([p for _, p in present])
    span = max(params.window, step * 12)
    overall = _mad(ys, statistics.median(ys))
    floor = overall * 0.1 if overall > 0 else 1e-9
    flagged: list[tuple[int, float, float]] = []
    window: list[float] = []
    left = 0
    for k, y in enumerate(ys):
        while left < k and (times[k] - times[left] > span or k - left > MAX_WINDOW_POINTS):
            del window[bisect_left(window, ys[left])]
            left += 1
        if len(window) >= params.min_points:
            centre = _sorted_median(window)
            score = 0.6745 * (y - centre) / max(_sorted_mad(window, centre), floor)
            if abs(score) >= params.threshold:
                flagged.append((k, score, centre))
        insort(window, y)
    gap = max(params.merge_gap, step * 3)
    return _group(flagged, present, times, gap, use_log)


def _group(flagged: list[tuple[int, float, float]], present: list[tuple[int, Point]], times: list[datetime], gap: timedelta, use_log: bool) -> list[Anomaly]:
    runs: list[list[tuple[int, float, float]]] = []
    for item in flagged:
        if runs and times[item[0]] - times[runs[-1][-1][0]] <= gap:
            runs[-1].append(item)
        else:
            runs.append([item])
    anomalies = []
    for run in runs:
        k, score, centre = max(run, key=lambda item: abs(item[1]))
        index, point = present[k]
        anomalies.append(Anomaly(
            start=times[run[0][0]], end=times[run[-1][0]], points=len(run), peak_index=index,
            timestamp=point.timestamp, value=point.value or 0.0,
            expected=math.exp(centre) if use_log else centre, score=round(score, 3),
            direction="high" if score > 0 else "low",
        ))
    return sorted(anomalies, key=lambda a: -abs(a.score))


def _mad(values: list[float], centre: float) -> float:
    return statistics.median(abs(y - centre) for y in values)


def _sorted_median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _sorted_mad(ordered: list[float], centre: float) -> float:
    """MAD of a sorted list in O(log n): the deviations below and above ``centre`` are two sorted
    sequences, and the median of their union is found by the k-th-of-two-sorted-arrays search."""
    split = bisect_left(ordered, centre)
    n = len(ordered)
    if n % 2:
        return _kth_deviation(ordered, split, centre, n // 2)
    return (_kth_deviation(ordered, split, centre, n // 2 - 1) + _kth_deviation(ordered, split, centre, n // 2)) / 2


def _kth_deviation(ordered: list[float], split: int, centre: float, k: int) -> float:
    below, above = split, len(ordered) - split

    def low(i: int) -> float:  # i-th smallest deviation among the values below centre
        return centre - ordered[split - 1 - i]

    def high(j: int) -> float:  # j-th smallest deviation among the values at or above centre
        return ordered[split + j] - centre

    lo, hi = max(0, k + 1 - above), min(k + 1, below)
    while True:
        i = (lo + hi) // 2
        j = k + 1 - i
        if i < below and j > 0 and high(j - 1) > low(i):
            lo = i + 1
        elif i > 0 and j < above and low(i - 1) > high(j):
            hi = i - 1
        else:
            return max(low(i - 1) if i > 0 else -math.inf, high(j - 1) if j > 0 else -math.inf)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
