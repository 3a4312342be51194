"""Logging set-up, done once per process: structlog and the standard library share one output.

``configure_logging()`` renders structlog's events and the records of standard-library loggers
(the application's, SQLAlchemy's, Alembic's) through the same processors to stderr: a console
renderer on a terminal, JSON lines otherwise (``EVENTSOURCE_LOG_FORMAT``), at
``EVENTSOURCE_LOG_LEVEL``. Every log line can be bound to what it is about
(``log.bind(stream_id=..., partition=...)``), and every value is logged with its passwords
masked (``postgresql://user:***@host/db``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal, get_args

import structlog

__all__ = ["configure_logging", "get_logger", "mask_secrets"]

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

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


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler that ``configure_logging`` installs on the root logger (one only)."""


def _choose(fmt: str | None, level: str | None) -> tuple[LogFormat, LogLevel]:
    """The format and level: the arguments given, else ``EVENTSOURCE_LOG_*`` (ValueError)."""
    if fmt is not None and fmt not in get_args(LogFormat):
        raise ValueError(f"fmt must be 'auto', 'json' or 'console', got {fmt!r}")
    if level is not None and (not isinstance(level, str) or level.lower() not in _LEVELS):
        raise ValueError(f"level must be 'debug', 'info', 'warning' or 'error', got {level!r}")
    if fmt is None or level is None:
        from eventsource._config import Settings  # noqa: PLC0415 - only when not given

        settings = Settings()
        fmt = fmt if fmt is not None else settings.log_format
        level = level if level is not None else settings.log_level
    return fmt, level.lower()  # type: ignore[return-value]


def configure_logging(
    fmt: LogFormat | None = None,
    level: LogLevel | None = None,
    *,
    force: bool = False,
) -> None:
    """Send structlog's and the standard library's logs to stderr in one format.

    ``fmt`` is ``auto`` (console on a terminal, JSON lines otherwise), ``json`` or
    ``console``; ``level`` is ``debug``, ``info``, ``warning`` or ``error``. Left out, they
    come from ``EVENTSOURCE_LOG_FORMAT`` and ``EVENTSOURCE_LOG_LEVEL``. The root logger gets
    one handler and the level, so an application's ``logging.getLogger(__name__)`` records
    and the framework's events share the output::

        import eventsource, logging
        eventsource.configure_logging("json", "info")
        logging.getLogger("myapp").info("ready")   # {"event": "ready", "logger": "myapp", ...}

    Only the first call counts, unless ``force``.
    """
    global _configured  # noqa: PLW0603 - logging is process-wide by nature
    if _configured and not force:
        return
    fmt, level = _choose(fmt, level)
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = _Handler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _mask_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    _quiet_chatter(level)
    _configured = True


# Libraries whose INFO records are chatter at run time ("Context impl PostgresqlImpl."):
# shown at debug only, unless the application set their level itself.
_CHATTY = ("alembic",)
_quieted: set[str] = set()


def _quiet_chatter(level: str) -> None:
    """Raise the chatty libraries' loggers to WARNING below the debug level."""
    for name in _CHATTY:
        logger = logging.getLogger(name)
        if logger.level != logging.NOTSET and name not in _quieted:
            continue  # the application chose
        if level == "debug":
            logger.setLevel(logging.NOTSET)
            _quieted.discard(name)
        else:
            logger.setLevel(logging.WARNING)
            _quieted.add(name)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger named ``name``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
