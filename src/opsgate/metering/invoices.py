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

Costs are exact Decimal micro-USD; lines of the same (day, model) are summed by the caller.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from opsgate.metering.prices import PriceTable

PROVIDERS = ("anthropic", "deepseek", "gemini")
GEMINI_SERVICES = frozenset({"gemini api", "generative language api"})
MICRO_PER_CENT = Decimal(10_000)
MICRO_PER_USD = Decimal(1_000_000)


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
    UTF-8 text included: the providers export UTF-8, a BOM allowed)."""
    try:
        text = path.read_text("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvoiceFormatError(f"{path.name} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if provider == "anthropic":
        return parse_anthropic_cost_report(text)
    if provider == "deepseek":
        return parse_deepseek_usage_csv(text)
    if provider == "gemini":
        return parse_gcp_billing_csv(text, (prices or PriceTable.load()).prices)
    raise InvoiceFormatError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")


def parse_anthropic_cost_report(text: str) -> list[InvoiceLine]:
    """Lines from a cost report page (or a list of pages); ``amount`` is in cents."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvoiceFormatError(f"not JSON: {exc}") from None
    pages = doc if isinstance(doc, list) else [doc]
    lines = []
    for page in pages:
        for bucket in _field(page, "data", list):
            day = _utc_day(_field(bucket, "starting_at", str))
            for item in _field(bucket, "results", list):
                if not item.get("model"):
                    continue
                _require_usd(item.get("currency", "USD"))
                cents = _decimal(_field(item, "amount", str), "amount")
                lines.append(InvoiceLine(day, item["model"], cents * MICRO_PER_CENT))
    return lines


def parse_deepseek_usage_csv(text: str) -> list[InvoiceLine]:
    """Lines from the DeepSeek usage CSV described in the module doc."""
    rows = _csv(text, ("date", "model", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens",
                       "completion_tokens", "cost_usd"))
    lines = []
    for row in rows:
        _require_usd(row.get("currency") or "USD")
        day = _utc_day(row["date"])
        lines.append(InvoiceLine(day, row["model"], _decimal(row["cost_usd"], "cost_usd") * MICRO_PER_USD))
    return lines


def parse_gcp_billing_csv(text: str, known_models: Iterable[str]) -> list[InvoiceLine]:
    """Gemini API lines from a Cloud Billing standard usage cost export saved as CSV."""
    rows = _csv(text, ("usage_start_time", "service.description", "sku.description", "cost",
                       "currency"))
    phrases = sorted(((m.replace("-", " ").lower(), m) for m in known_models if m.startswith("gemini")),
                     key=lambda p: -len(p[0]))
    lines = []
    for row in rows:
        if row["service.description"].strip().lower() not in GEMINI_SERVICES:
            continue
        _require_usd(row["currency"])
        sku = row["sku.description"].strip()
        model = next((m for phrase, m in phrases if phrase in sku.lower()), sku)
        day = _utc_day(row["usage_start_time"])
        lines.append(InvoiceLine(day, model, _decimal(row["cost"], "cost") * MICRO_PER_USD))
    return lines


def _csv(text: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise InvoiceFormatError(f"missing column(s): {', '.join(missing)}")
    return list(reader)


def _field(obj: Any, name: str, kind: type) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(name), kind):
        raise InvoiceFormatError(f"expected {name!r} ({kind.__name__})")
    return obj[name]


def _decimal(value: str, name: str) -> Decimal:
    try:
        number = Decimal(value.strip())
    except (InvalidOperation, AttributeError):
        raise InvoiceFormatError(f"{name} is not a decimal: {value!r}") from None
    if not number.is_finite():
        raise InvoiceFormatError(f"{name} is not finite: {value!r}")
    return number


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
