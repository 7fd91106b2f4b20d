"""Build an operation's JSON request body from a file (``opsgate run OP --input FILE``, demo).

The file's suffix picks the field: ``.eml`` -> ``raw``, ``.ics`` -> ``ics``, ``.csv`` -> ``csv``;
a ``.json`` file is the body itself (options and content together, e.g. a JSON task list or a
calendar-time request with its duration and window), read by the HTTP API's own JSON reader
(:func:`opsgate.bodies.decode_json`: a lone-surrogate escape such as ``"\\ud800"``, ``NaN``, a
repeated key or an integer past 64 bits is refused there as over HTTP, not passed on). ``options`` are merged over the result.
Text files are read as UTF-8; an ``.eml`` that is not valid UTF-8 is read as Latin-1 so every
byte survives (the MIME parser then honours each part's declared charset, see
:func:`opsgate.operations.mailparse.decode_text`). Options not given take the operation's
defaults, which for calendars are relative to the data's own dates (see
:mod:`opsgate.operations.calendar`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsgate.bodies import JSON, decode_json
from opsgate.errors import InvalidInput
from opsgate.operations import get_operation
from opsgate.operations.common import invalid

FIELD_BY_SUFFIX = {".eml": "raw", ".ics": "ics", ".csv": "csv"}
MAX_FILE_BYTES = 5_000_000


def input_from_file(op_id: str, path: str | Path, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body for operation ``op_id`` from the file at ``path`` plus ``options``.

    Raises :class:`opsgate.errors.NotFound` for an unknown operation and
    :class:`opsgate.errors.InvalidInput` for an unsupported suffix, an oversize file, or a
    ``.json`` file that is not a JSON object. Does not validate the body (``Input`` does).
    """
    get_operation(op_id)
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix != ".json" and suffix not in FIELD_BY_SUFFIX:
        raise invalid("unsupported input file type; use one of .eml .ics .csv .json", "input")
    data = file.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise invalid(f"the input file is larger than {MAX_FILE_BYTES} bytes", "input")
    if suffix == ".json":
        try:
            body = decode_json(data, JSON)
        except InvalidInput:
            raise invalid(
                "the .json input file is not valid JSON (RFC 8259, with no NaN, lone surrogate, "
                "repeated key or integer past 64 bits)",
                "input",
            ) from None
        if not isinstance(body, dict):
            raise invalid("the .json input file must hold a JSON object", "input")
    else:
        body = {FIELD_BY_SUFFIX[suffix]: _text(data, latin1_fallback=suffix == ".eml")}
    return {**body, **(options or {})}


def _text(data: bytes, latin1_fallback: bool) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if latin1_fallback:
            return data.decode("latin-1")
        raise invalid("the input file is not UTF-8 text", "input") from None
