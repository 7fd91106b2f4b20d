"""JSON responses serialised with orjson (datetimes as RFC 3339, UUIDs and dataclasses as JSON)."""

from __future__ import annotations

import orjson
from starlette.responses import Response


def json_response(document: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An ``application/json`` response holding ``document``."""
    return Response(orjson.dumps(document), status_code=status_code, media_type="application/json",
                    headers=headers)
