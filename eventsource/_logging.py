"""structlog set-up, done once per process: a console renderer on a terminal, JSON lines otherwise.

Every log line can be bound to what it is about (``log.bind(stream_id=..., partition=...)``);
URLs pass through ``safe_url`` so no password is ever logged.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging", "get_logger", "mask_secrets"]

_configured = False

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# ``scheme://user:password@`` and ``password=...`` in any logged text (a URL in an error
# message, a libpq connection string): the password is replaced by ``***``.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)[^@\s]*(?P<at>@)")
_PARAM_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)


def mask_secrets(text: str) -> str:
    """``text`` with the passwords of URLs and connection strings in it replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***\g<at>", text)
    return _PARAM_PASSWORD.sub(r"\g<head>***", text)


def _mask_processor(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog processor: every value is logged with its passwords masked."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_secrets(value)
        elif value is not None and not isinstance(value, int | float | bool):
            text = str(value)  # a URL object, a list of them...: kept as is unless it leaks
            masked = mask_secrets(text)
            if masked != text:
                event_dict[key] = masked
    return event_dict


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: Literal["debug", "info", "warning", "error"] = "info",
    *,
    force: bool = False,
) -> None:
    """Configure structlog for this process (only the first call counts unless ``force``)."""
    global _configured  # noqa: PLW0603 - logging is process-wide by nature
    if _configured and not force:
        return
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger named ``name``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
