"""The privacy manifest: per operation, what is sent to a provider, what is clipped at what length,
and what is masked or pseudonymised.

Built from each operation's ``sends`` (:class:`opsgate.operations.base.Sent`) and a
:class:`~opsgate.operations.privacy.PrivacyPolicy`. ``opsgate privacy manifest`` prints it;
docs/privacy.md holds the same table for the default configuration between the markers
:data:`START` and :data:`END`; the readiness audit compares a deployment's manifest with it
(:func:`differences`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from opsgate.operations import OPERATIONS
from opsgate.operations.privacy import PrivacyPolicy

START, END = "<!-- privacy-manifest:start -->", "<!-- privacy-manifest:end -->"
HEADER = ("operation", "sent to the provider", "clipped (characters)", "masked", "pseudonymised")
MASKED = "secrets (always)"
PSEUDONYMISED = "email addresses, display names, phone numbers"


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One operation's line of the manifest (every field is display text)."""

    operation: str
    sent: str
    clipped: str
    masked: str
    pseudonymised: str


def manifest(policy: PrivacyPolicy) -> list[ManifestRow]:
    """The manifest of every operation under ``policy``, by operation id."""
    rows = []
    for op_id in sorted(OPERATIONS):
        sends = OPERATIONS[op_id].sends
        rows.append(ManifestRow(
            operation=op_id,
            sent="; ".join(s.what for s in sends),
            clipped="; ".join(f"{s.what}: {s.clip}" for s in sends if s.clip is not None) or "none",
            masked=MASKED,
            pseudonymised=PSEUDONYMISED if op_id in policy.pseudonymised else "no",
        ))  # fmt: skip
    return rows


def to_markdown(rows: list[ManifestRow]) -> str:
    """The rows as a GitHub-flavoured Markdown table (the form docs/privacy.md holds)."""
    lines = [_line(HEADER), _line(("---",) * len(HEADER))]
    lines += [_line(tuple(asdict(row).values())) for row in rows]
    return "\n".join(lines)


def to_json(rows: list[ManifestRow]) -> list[dict[str, Any]]:
    """The rows as JSON objects (keys: the :class:`ManifestRow` fields)."""
    return [asdict(row) for row in rows]


def from_markdown(document: str) -> list[ManifestRow]:
    """The manifest table between :data:`START` and :data:`END` in ``document``;
    ``ValueError`` when the markers or the table's header are missing."""
    if START not in document or END not in document:
        raise ValueError(f"no manifest table between {START} and {END}")
    table = document.split(START, 1)[1].split(END, 1)[0].strip().splitlines()
    if len(table) < 2 or _cells(table[0]) != list(HEADER):
        raise ValueError("the manifest table does not start with the expected header")
    return [ManifestRow(*_cells(line)) for line in table[2:] if line.strip()]


def differences(documented: list[ManifestRow], deployed: list[ManifestRow]) -> list[str]:
    """The operations whose deployed manifest row differs from the documented one (or exists in
    only one of the two), by operation id."""
    left = {row.operation: row for row in documented}
    right = {row.operation: row for row in deployed}
    return sorted(op for op in left.keys() | right.keys() if left.get(op) != right.get(op))


def _line(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
