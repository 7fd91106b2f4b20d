"""The one grammar of numbers that people type: budget limits, counts, percentages, ids.

Python's own parsers are lenient in ways an operator never means: ``int("1_000")``,
``Decimal("1_000")`` and ``float("1_000")`` are 1000, ``int("١٠")`` (Arabic-Indic digits) and
``int("１０")`` (fullwidth) are 10, ``Decimal(" 5 ")`` is 5, ``float("nan")`` and ``Decimal("Inf")``
are numbers, and click's ``INT``/``FLOAT`` and pydantic's lax string-to-number coercion inherit
some of that. So every number typed by a person (a CLI option or argument, a form field, a query or
path parameter, a decimal string in a JSON body) is read here, with one grammar::

    integer = ["-"] 1*DIGIT
    decimal = ["-"] 1*DIGIT ["." 1*DIGIT]
    DIGIT   = %x30-39                     ; ASCII 0-9 only

No sign ``+``, no spaces, no ``_`` separators, no exponent, no ``NaN``/``Infinity``, no other
script's digits, at most :data:`MAX_DIGITS` characters. A leading ``-`` is part of the grammar so
that a negative amount is refused by its range check with a message that says so. Numbers inside
JSON bodies that are JSON numbers are already ASCII (RFC 8259 §6); :mod:`opsgate.bodies` refuses
``NaN`` and ``Infinity`` there.

:func:`parse_int` and :func:`parse_decimal` raise :class:`ValueError` with a message that states
the rule and never the text; :data:`AsciiInt` is the same rule for pydantic (FastAPI path and
query parameters, JSON strings); :func:`cli_int` / :func:`cli_float` are the Typer ``parser=`` of
every ``opsgate`` command's numeric options and arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator

N = TypeVar("N", int, float)

MAX_DIGITS = 40
"""The longest number text accepted (a budget limit with six decimals needs 17)."""
_INTEGER = re.compile(r"-?[0-9]+\Z")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")
INTEGER_RULE = "a whole number in ASCII digits 0-9 (optional leading '-'; no spaces, '+', '_' or exponent)"
DECIMAL_RULE = ("a decimal number in ASCII digits 0-9 with an optional '.' (optional leading '-'; "
                "no spaces, '+', '_' or exponent)")


def parse_int(text: str) -> int:
    """``text`` as an integer under the module's ``integer`` grammar; :class:`ValueError` naming
    the rule (never the text) otherwise."""
    if len(text) > MAX_DIGITS or not _INTEGER.match(text):
        raise ValueError(f"must be {INTEGER_RULE}")
    return int(text)


def parse_decimal(text: str) -> Decimal:
    """``text`` as an exact :class:`~decimal.Decimal` under the module's ``decimal`` grammar;
    :class:`ValueError` naming the rule (never the text) otherwise."""
    if len(text) > MAX_DIGITS or not _DECIMAL.match(text):
        raise ValueError(f"must be {DECIMAL_RULE}")
    return Decimal(text)


def _ascii_int(value: Any) -> Any:
    """A string goes through :func:`parse_int`; an ``int`` (a JSON number) passes to pydantic's own
    checks; anything else is left for pydantic to refuse with its type error."""
    return parse_int(value) if isinstance(value, str) else value


AsciiInt = Annotated[int, BeforeValidator(_ascii_int)]
"""An integer whose text form (a path or query parameter, a JSON string) follows the grammar."""


def cli_int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A Typer ``parser=`` for a whole-number option or argument: :func:`parse_int`, then
    ``low <= n <= high`` (either bound optional); :class:`ValueError` naming the rule otherwise.
    (Typer's own ``int`` coercion is pydantic's lax mode, which takes ``1_000``, and a ``parser``
    replaces ``min``/``max``, so the bounds are checked here.)"""

    def parse(text: str) -> int:
        return _within(parse_int(text) if isinstance(text, str) else text, low, high)

    return parse


def cli_float(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """A Typer ``parser=`` for a number option: :func:`parse_decimal` (so finite: no ``nan``,
    ``inf``, exponent or ``_``) as a float, then ``low <= x <= high`` (either bound optional)."""

    def parse(text: str) -> float:
        return _within(float(parse_decimal(text)) if isinstance(text, str) else text, low, high)

    return parse


def _within(value: N, low: N | None, high: N | None) -> N:
    if low is not None and value < low or high is not None and value > high:
        bounds = f"from {low}" * (low is not None) + f" to {high}" * (high is not None)
        raise ValueError(f"must be {bounds.strip()}")
    return value
