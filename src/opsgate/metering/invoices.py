"""Parsers for the providers' usage/cost exports, into :class:`InvoiceLine` (UTC day, model, cost).

- ``anthropic``: the JSON body of the Usage & Cost Admin API's cost report,
  ``GET /v1/organizations/cost_report?bucket_width=1d&group_by[]=description``
  (https://platform.claude.com/docs/en/api/admin/cost_report): ``data[]`` buckets with
  ``starting_at`` (RFC 3339, UTC day) and ``results[]`` of ``{amount, currency, cost_type, model,
  token_type, ...}``, where ``amount`` is a decimal string in CENTS (``"123.45"`` = $1.2345). A
  file may hold one page or a JSON list of pages. Rows without a model (web search, code
  execution) are not token costs and are skipped. The console's CSV export has no published
  column list, so it is not read: export the same report through the API instead.
- ``deepseek``: DeepSeek publishes no machine-readable export schema. We read a CSV with the
  usage object's own field names, one row per UTC day and model, as written from the platform's
  usage page: ``date,model,prompt_cache_hit_tokens,prompt_cache_miss_tokens,completion_tokens,
  cost_usd`` (``cost_usd`` a decimal string; an optional ``currency`` column must be ``USD``).
- ``gemini``: Google Cloud Billing's standard usage cost export
  (https://cloud.google.com/billing/docs/how-to/export-data-bigquery-tables/standard-usage)
  saved as CSV from BigQuery. Nested columns are flattened with dots, as BigQuery's result
  download writes them: ``usage_start_time``, ``service.description``, ``sku.description``,
  ``cost`` (USD, before credits), ``currency``. Only rows whose service is the Gemini API
  (``Gemini API`` or ``Generative Language API``) count; the model is the known model whose name,
  written with spaces (``gemini-2.0-flash`` -> ``gemini 2.0 flash``), appears in the SKU
  description (the longest such name wins); unmatched SKUs keep their description as the model.

Costs are exact Decimal micro-USD; lines of the same (day, model) are summed by the caller. An
amount is read with the one number grammar people's numbers follow (:func:`opsgate.numbers.parse_decimal`,
as ``opsgate budgets set`` reads a limit: ASCII digits, an optional ``.`` and leading ``-``; no
``NaN`` or ``Infinity``, at most 40 characters), or in the scientific notation machine exports
write small floats in, with an exponent of two digits at most (:data:`AMOUNT_RULE`); a negative amount is a credit or an
adjustment line (Cloud Billing's ``cost_type`` ``adjustment`` or ``rounding_error``). The amounts of
one file add up, in magnitude, to at most :data:`~opsgate.metering.budgets.MAX_LIMIT_USD` USD (a
budget's largest limit), so every sum stays far inside the 64-bit integer columns. A JSON export
nests at most :data:`~opsgate.bodies.MAX_DEPTH` levels, the rule every HTTP body follows. Each
refusal is an :class:`InvoiceFormatError` naming the line (CSV) or item (JSON) and the field.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from opsgate.bodies import MAX_DEPTH, nesting_depth
from opsgate.metering.budgets import MAX_LIMIT_USD
from opsgate.metering.prices import PriceTable
from opsgate.numbers import parse_decimal

PROVIDERS = ("anthropic", "deepseek", "gemini")
GEMINI_SERVICES = frozenset({"gemini api", "generative language api"})
MICRO_PER_CENT = Decimal(10_000)
MICRO_PER_USD = Decimal(1_000_000)
MAX_TOTAL_MICRO_USD = MAX_LIMIT_USD * MICRO_PER_USD
"""The most one export's amounts may add up to, in magnitude (micro-USD)."""


class InvoiceFormatError(ValueError):
    """The file is not the documented export format; the message names the line and field."""


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One export line: UTC ``day``, ``model`` and its cost in exact micro-USD (Decimal)."""

    day: date
    model: str
    cost_micro_usd: Decimal


def parse_invoice(provider: str, path: Path, prices: PriceTable | None = None) -> list[InvoiceLine]:
    """Read ``path`` as ``provider``'s export (see the module doc). Raises
    :class:`InvoiceFormatError` for an unknown provider or a malformed file (one that is not
    UTF-8 text or cannot be read included: the providers export UTF-8, a BOM allowed)."""
    try:
        text = path.read_text("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvoiceFormatError(f"{path.name} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except OSError as exc:
        raise InvoiceFormatError(f"{path.name} cannot be read: {exc.strerror or type(exc).__name__}") from None
    if provider == "anthropic":
        lines = parse_anthropic_cost_report(text)
    elif provider == "deepseek":
        lines = parse_deepseek_usage_csv(text)
    elif provider == "gemini":
        lines = parse_gcp_billing_csv(text, (prices or PriceTable.load()).prices)
    else:
        raise InvoiceFormatError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    if sum(abs(line.cost_micro_usd) for line in lines) > MAX_TOTAL_MICRO_USD:
        raise InvoiceFormatError(f"{path.name}: its amounts add up to more than {MAX_LIMIT_USD:,} USD")
    return lines


def parse_anthropic_cost_report(text: str) -> list[InvoiceLine]:
    """Lines from a cost report page (or a list of pages); ``amount`` is in cents."""
    try:
        doc = orjson.loads(text)  # no recursion in Python, whatever the nesting
    except orjson.JSONDecodeError as exc:
        raise InvoiceFormatError(f"not JSON: {exc}") from None
    if nesting_depth(doc) > MAX_DEPTH:
        raise InvoiceFormatError(f"nests arrays and objects more than {MAX_DEPTH} levels deep")
    pages = doc if isinstance(doc, list) else [doc]
    lines = []
    for p, page in enumerate(pages):
        for b, bucket in enumerate(_field(page, "data", list)):
            day = _utc_day(_field(bucket, "starting_at", str))
            for r, item in enumerate(_field(bucket, "results", list)):
                if not item.get("model"):
                    continue
                _require_usd(item.get("currency", "USD"))
                where = f"{'' if page is doc else f'page {p} '}data[{b}].results[{r}]"
                cents = _decimal(_field(item, "amount", str), "amount", where)
                lines.append(InvoiceLine(day, item["model"], cents * MICRO_PER_CENT))
    return lines


def parse_deepseek_usage_csv(text: str) -> list[InvoiceLine]:
    """Lines from the DeepSeek usage CSV described in the module doc."""
    rows = _csv(text, ("date", "model", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens",
                       "completion_tokens", "cost_usd"))
    lines = []
    for number, row in rows:
        _require_usd(row.get("currency") or "USD")
        day = _utc_day(row["date"])
        cost = _decimal(row["cost_usd"], "cost_usd", f"line {number}")
        lines.append(InvoiceLine(day, row["model"], cost * MICRO_PER_USD))
    return lines


def parse_gcp_billing_csv(text: str, known_models: Iterable[str]) -> list[InvoiceLine]:
    """Gemini API lines from a Cloud Billing standard usage cost export saved as CSV."""
    rows = _csv(text, ("usage_start_time", "service.description", "sku.description", "cost",
                       "currency"))
    phrases = sorted(((m.replace("-", " ").lower(), m) for m in known_models if m.startswith("gemini")),
                     key=lambda p: -len(p[0]))
    lines = []
    for number, row in rows:
        if row["service.description"].strip().lower() not in GEMINI_SERVICES:
            continue
        _require_usd(row["currency"])
        sku = row["sku.description"].strip()
        model = next((m for phrase, m in phrases if phrase in sku.lower()), sku)
        day = _utc_day(row["usage_start_time"])
        lines.append(InvoiceLine(day, model, _decimal(row["cost"], "cost", f"line {number}") * MICRO_PER_USD))
    return lines


def _csv(text: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of each CSV record (the number of the line it ends on, 1-based,
    the header being line 1)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise InvoiceFormatError(f"missing column(s): {', '.join(missing)}")
    return [(reader.line_num, row) for row in reader]


def _field(obj: Any, name: str, kind: type) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(name), kind):
        raise InvoiceFormatError(f"expected {name!r} ({kind.__name__})")
    return obj[name]


_SCIENTIFIC = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?[eE][-+]?[0-9]{1,2}")
AMOUNT_RULE = ("a decimal number (ASCII digits, an optional '.' and leading '-'), or one in scientific "
               "notation with an exponent of at most two digits (1.2e-05)")
"""An invoice amount: :func:`~opsgate.numbers.parse_decimal`'s grammar, or the scientific notation
machine exports write small floats in (BigQuery's CSV download of a FLOAT64 cost such as
``1.2e-05``); the exponent's two digits and the file's magnitude bound keep every sum in range."""


def _decimal(value: str | None, name: str, where: str) -> Decimal:
    """``value`` (field ``name`` at ``where``) under :data:`AMOUNT_RULE`, surrounding spaces
    allowed (a CSV cell may pad them); :class:`InvoiceFormatError` naming the rule otherwise."""
    text = (value or "").strip()
    if _SCIENTIFIC.fullmatch(text):
        return Decimal(text)
    try:
        return parse_decimal(text)
    except ValueError:
        raise InvoiceFormatError(f"{where}: {name} must be {AMOUNT_RULE}") from None


def _utc_day(value: str) -> date:
    """The UTC day of an RFC 3339 / ISO timestamp, ``... UTC`` timestamp, or plain date."""
    text = value.strip().removesuffix(" UTC").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvoiceFormatError(f"not a date or timestamp: {value!r}") from None
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


def _require_usd(currency: str) -> None:
    if currency.strip().upper() != "USD":
        raise InvoiceFormatError(f"only USD exports are supported, got {currency!r}")
