"""How figures are shown: one formatter per kind, mirrored exactly by ``static/dashboard.js`` so a
figure looks the same when the server renders it and when the page refreshes it.

Kinds: ``int`` (as is), ``pct`` (2 decimals + " %"), ``ms`` (3 decimals + " ms"), ``usd`` (integer
micro-USD as ``$D.DDDDDD``, integer arithmetic), ``ppm`` (parts per million as % with 2 decimals,
truncated), ``bool`` (yes / no), ``text`` (as is). None shows as an en dash.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

MISSING = "\u2013"


def usd(micro: int) -> str:
    """Integer micro-USD as ``$D.DDDDDD`` (``-$…`` when negative)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), 1_000_000)
    return f"{sign}${whole}.{frac:06d}"


def ppm_pct(ppm: int) -> str:
    """Parts per million as a percentage with two decimals (truncated), e.g. 666666 -> ``66.66 %``."""
    hundredths = int(ppm) // 100
    return f"{hundredths // 100}.{hundredths % 100:02d} %"


def show(value: Any, kind: str) -> str:
    """``value`` formatted as ``kind`` (see the module doc)."""
    if value is None:
        return MISSING
    if kind == "pct":
        return f"{float(value):.2f} %"
    if kind == "ms":
        return f"{float(value):.3f} ms"
    if kind == "usd":
        return usd(int(value))
    if kind == "ppm":
        return ppm_pct(int(value))
    if kind == "bool":
        return "yes" if value else "no"
    return str(value)


def lookup(doc: Any, path: str) -> Any:
    """The value at dotted ``path`` in nested dicts/lists (list items by index); None if absent."""
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return None
    return doc


def figure(doc: Any, path: str, kind: str = "text") -> Markup:
    """A live figure: ``<span class="fig" data-field=path data-format=kind>formatted</span>``;
    the page script replaces its text whenever it polls a fresh document."""
    text = show(lookup(doc, path), kind)
    return Markup('<span class="fig" data-field="{}" data-format="{}">{}</span>').format(
        escape(path), escape(kind), text)
