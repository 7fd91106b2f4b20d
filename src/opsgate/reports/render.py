"""Rendering of the security report document as Markdown, HTML or JSON.

Both text formats are built from one list of :class:`Table` (:func:`security_tables`), so they
always show the same numbers. Every cell is escaped for its format (Markdown table pipes, HTML
entities via :func:`html.escape`) and passed through the sanitizer first, so a report cannot
carry a secret that slipped into a stored detail.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from opsgate.security.sanitizer import sanitize

FORMATS = ("md", "html", "json")

TITLES = {
    "auth_failures": "Failed sign-ins and token rejections",
    "refresh_reuse": "Refresh-token reuse detections",
    "rejections": "Rate-limit and budget rejections",
    "secret_accesses": "Secret accesses (ledger)",
    "keys": "Encryption keys",
    "ledger": "Ledger verification and anchoring",
    "incidents": "Incidents by severity",
    "redactions": "Redactions by kind",
    "weak_config": "Configuration that weakens security",
}


@dataclass(frozen=True, slots=True)
class Table:
    """A titled table: ``header`` names the columns, each row has one cell per column."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


def render(report: dict[str, Any], fmt: str) -> str:
    """``report`` as ``md``, ``html`` or ``json`` text. Raises ``ValueError`` for another format."""
    if fmt == "json":
        return json.dumps(_clean(report), indent=2) + "\n"
    if fmt == "md":
        return to_markdown(report)
    if fmt == "html":
        return to_html(report)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}")


def security_tables(report: dict[str, Any]) -> list[Table]:
    """One table per section, in the document's order."""
    return [_table(name, section) for name, section in report["sections"].items()]


def _table(name: str, s: dict[str, Any]) -> Table:
    title = TITLES[name]
    rows: list[tuple[str, ...]]
    if not s["available"]:
        return Table(title, ("status",), [(f"not available: {s['reason']}",)])
    if "rows" in s:  # the event-count sections
        rows = [(r["kind"], r["reason"], str(r["count"])) for r in s["rows"]]
        return Table(f"{title}: {s['total']} in total", ("kind", "reason", "count"), rows)
    if name == "secret_accesses":
        rows = [(r["secret"], r["actor"], str(r["count"])) for r in s["by_secret_actor"]]
        return Table(f"{title}: {s['total']} in total", ("secret", "actor", "accesses"), rows)
    if name == "keys":
        due = "rotation due" if s["rotation_due"] else "within policy"
        rows = [
            (str(k["key_id"]), k["purpose"], k["state"], k["created_at"], f"{k['age_days']:.1f}")
            for k in s["keys"]
        ]
        return Table(
            f"{title} (policy {s['policy_days']} days: {due})",
            ("key", "purpose", "state", "created (UTC)", "age (days)"),
            rows,
        )
    if name == "ledger":
        return Table(title, ("fact", "value"), _ledger_rows(s))
    if name == "incidents":
        severities = sorted(set(s["opened"]) | set(s["closed"]) | set(s["open_now"]))
        rows = [
            (
                sev,
                str(s["opened"].get(sev, 0)),
                str(s["closed"].get(sev, 0)),
                str(s["open_now"].get(sev, 0)),
            )
            for sev in severities
        ]
        return Table(title, ("severity", "opened", "closed", "open now"), rows)
    rows = [(f["setting"], f["value"], f["why"]) for f in s["findings"]]
    return Table(f"{title}: {len(rows)} finding(s)", ("setting", "value", "why"), rows)


def _ledger_rows(s: dict[str, Any]) -> list[tuple[str, ...]]:
    rec, latest = s["recorded_verifications"], s["latest_checkpoint"]
    rows: list[tuple[str, ...]] = [
        ("entries", str(s["entries"])),
        ("entries written in the window", str(s["entries_in_window"])),
        ("verification now", s["verification"]["summary"]),
        ("verifications recorded in the window", f"{rec['ok']} ok, {rec['failed']} failed"),
        (
            "latest checkpoint",
            f"size {latest['size']} at {latest['created_at']}" if latest else "none",
        ),
        ("checkpoints signed in the window", str(s["checkpoints_in_window"])),
    ]
    rows += [
        (
            f"anchor {a['anchor']}",
            f"anchored size {a['anchored_size']}, {a['anchored_in_window']} posted in the window",
        )
        for a in s["anchors"]
    ] or [("anchors", "none")]
    rows.append(("entries not yet anchored", str(s["unanchored"])))
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    """GitHub-flavoured Markdown: a heading, then one section with a pipe table per table."""
    lines = [
        f"# opsgate security report {report['date']}",
        "",
        (
            f"Window {report['window']['start']} to {report['window']['end']}; "
            f"generated {report['generated_at']}."
        ),
        "",
    ]
    for t in security_tables(report):
        lines += [
            f"## {_md(t.title)}",
            "",
            "| " + " | ".join(map(_md, t.header)) + " |",
            "|" + "---|" * len(t.header),
        ]
        lines += ["| " + " | ".join(map(_md, row)) + " |" for row in t.rows] or [
            "| " + " | ".join(["none"] + [""] * (len(t.header) - 1)) + " |"
        ]
        lines.append("")
    return "\n".join(lines)


def to_html(report: dict[str, Any]) -> str:
    """A standalone HTML5 document (no scripts, no external resources)."""
    e = _html
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>opsgate security report {e(report['date'])}</title></head><body>",
        f"<h1>opsgate security report {e(report['date'])}</h1>",
        (
            f"<p>Window {e(report['window']['start'])} to {e(report['window']['end'])}; "
            f"generated {e(report['generated_at'])}.</p>"
        ),
    ]
    for t in security_tables(report):
        parts.append(
            f"<section><h2>{e(t.title)}</h2><table><thead><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in t.header)
            + "</tr></thead><tbody>"
        )
        parts += [
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows
        ] or [f'<tr><td colspan="{len(t.header)}">none</td></tr>']
        parts.append("</tbody></table></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _clean(obj: Any) -> Any:
    """``obj`` with every string leaf sanitized (keys are the report's own field names)."""
    if isinstance(obj, str):
        return sanitize(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _md(cell: str) -> str:
    return sanitize(str(cell)).replace("|", "\\|").replace("\n", " ")


def _html(cell: str) -> str:
    return html.escape(sanitize(str(cell)))
