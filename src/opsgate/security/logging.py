"""Logging with the sanitizer on every path: structlog and the standard library, JSON lines.

:func:`configure_logging` is the one call an entry point makes. After it:

* every stdlib ``LogRecord`` (any logger: ours, uvicorn, aiohttp, httpx, …) is sanitized when it
  is created (a record factory), so every handler — including ones added later, such as pytest's
  ``caplog`` — sees only redacted text: the message with its arguments applied, the exception text
  and traceback (``exc_text``; ``exc_info`` is dropped) and ``stack_info``;
* :class:`SanitizingFilter` sits on the root handlers and the named third-party loggers as a
  second line for records built without the factory (``logging.makeLogRecord``);
* structlog's pipeline runs :func:`sanitize_processor` after exception formatting and renders
  JSON, and stdlib records are rendered as the same JSON lines.

uvicorn's access formatter needs its five positional arguments, so records of ``uvicorn.access``
keep their arguments, each sanitized, instead of being flattened into the message.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import structlog

from opsgate.security.sanitizer import sanitize, sanitize_obj

THIRD_PARTY_LOGGERS = (
    "uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp", "aiohttp.access", "aiohttp.client",
    "aiohttp.server", "httpx", "httpcore", "sqlalchemy.engine", "alembic",
)  # fmt: skip
_DONE = "_opsgate_sanitized"
_base_factory = logging.getLogRecordFactory()


def sanitize_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact ``record`` in place (idempotent) and return it."""
    if getattr(record, _DONE, False):
        return record
    if isinstance(record.msg, dict) and not record.args:  # structlog's event dict
        record.msg = sanitize_obj(record.msg)
    elif record.name == "uvicorn.access" and isinstance(record.args, tuple):
        record.msg = sanitize(str(record.msg))
        record.args = tuple(sanitize(a) if isinstance(a, str) else a for a in record.args)
    else:
        record.msg, record.args = sanitize(record.getMessage()), ()
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = sanitize("".join(traceback.format_exception(*record.exc_info)).rstrip())
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = sanitize(record.exc_text)
    if record.stack_info:
        record.stack_info = sanitize(record.stack_info)
    setattr(record, _DONE, True)
    return record


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    return sanitize_record(_base_factory(*args, **kwargs))


class SanitizingFilter(logging.Filter):
    """A ``logging.Filter`` that redacts each record (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        sanitize_record(record)
        return True


def sanitize_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every value (and key) of the event dict through ``sanitize_obj``.

    Place it after ``format_exc_info`` so the rendered traceback is covered too.
    """
    return sanitize_obj(event_dict)


def _exc_text_field(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """For a stdlib record: its (already sanitized) ``exc_text`` as the ``exception`` field, so the
    traceback is inside the JSON line rather than appended after it."""
    record = event_dict.get("_record")
    if record is not None and record.exc_text:
        event_dict["exception"] = record.exc_text
        record.exc_text = None
    return event_dict


def configure_logging(level: str | int = "INFO", *, json: bool = True) -> None:
    """Install the sanitizer on every logging path and send JSON lines (or console text when
    ``json`` is False) to stderr at ``level``. Safe to call more than once."""
    logging.setLogRecordFactory(_record_factory)
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _exc_text_field,
        sanitize_processor,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*pre_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(SanitizingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _DONE, False)]:
        root.removeHandler(old)
    setattr(handler, _DONE, True)
    root.addHandler(handler)
    root.setLevel(level)
    install_filters()


def install_filters() -> None:
    """Put one :class:`SanitizingFilter` on each root handler and each third-party logger."""
    targets: list[logging.Filterer] = [*logging.getLogger().handlers]
    targets += [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    for target in targets:
        if not any(isinstance(f, SanitizingFilter) for f in target.filters):
            target.addFilter(SanitizingFilter())
