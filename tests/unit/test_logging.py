"""Logging: one output for structlog and the standard library; secrets masked (no database)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import eventsource
from eventsource._logging import configure_logging, get_logger, mask_secrets


@pytest.fixture
def restore_structlog(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Put structlog's configuration and the root logger back as they were after the test."""
    for name in ("EVENTSOURCE_LOG_FORMAT", "EVENTSOURCE_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    alembic_level = logging.getLogger("alembic").level
    yield saved
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(alembic_level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines written to stderr since the last call."""
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:s3cr3t@h/db", "postgresql://u:***@h/db"),
        ("at postgresql+psycopg://u:s3cr3t@h:5/db: refused", "postgresql+psycopg://u:***@h:5/db"),
        ("host=h password=s3cr3t user=u", "host=h password=*** user=u"),
        ("password='s3 cr3t' dbname=x", "password=*** dbname=x"),
        ("postgresql://u@h/db?password=s3cr3t&a=1", "?password=***&a=1"),
    ],
)
def test_mask_secrets_hides_passwords(text: str, masked: str) -> None:
    """Passwords in URLs and connection strings are replaced by ***; the rest stays."""
    assert "s3cr3t" not in mask_secrets(text)
    assert masked in mask_secrets(text)


def test_mask_secrets_keeps_text_without_passwords() -> None:
    """Text without a password is returned unchanged (a URL without one included)."""
    text = "worker started on postgresql://u@h/db with 4 slots"
    assert mask_secrets(text) == text


def test_log_lines_never_show_a_password(
    restore_structlog: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL with a password logged as a value, in the message or in a list is masked."""
    configure_logging("json", "debug", force=True)
    get_logger("test").info(
        "connecting to postgresql://u:s3cr3t@h/db",
        url="postgresql://u:s3cr3t@h/db",
        urls=["postgresql://v:s3cr3t@h/db"],
        queues=["default", "mail"],
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "s3cr3t" not in line
    record = json.loads(line)
    assert record["url"] == "postgresql://u:***@h/db"
    assert record["queues"] == ["default", "mail"]  # values without secrets keep their type


def test_stdlib_and_structlog_share_one_output(
    restore_structlog: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """An application's stdlib logger and the framework's structlog logger write the same JSON
    lines to stderr, each with its logger name, level and time."""
    eventsource.configure_logging("json", "info", force=True)
    logging.getLogger("myapp.orders").info("order %s placed", "o-1", extra={"total": 5})
    get_logger("eventsource.worker").info("worker started", concurrency=4)
    app, framework = _lines(capsys)[-2:]
    assert app["event"] == "order o-1 placed"
    assert (app["logger"], app["level"], app["total"]) == ("myapp.orders", "info", 5)
    assert framework["event"] == "worker started"
    assert (framework["logger"], framework["level"]) == ("eventsource.worker", "info")
    assert set(app) >= {"timestamp"} and set(framework) >= {"timestamp"}


def test_the_level_applies_to_both(
    restore_structlog: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """Below the configured level, neither stdlib records nor structlog events are written."""
    eventsource.configure_logging("json", "warning", force=True)
    logging.getLogger("myapp").info("not shown")
    get_logger("eventsource.test.level").info("not shown either")
    logging.getLogger("myapp").warning("shown")
    assert [line["event"] for line in _lines(capsys)] == ["shown"]


def test_stdlib_exceptions_are_masked(
    restore_structlog: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stdlib record's message and traceback have their passwords masked."""
    eventsource.configure_logging("json", "info", force=True)
    try:
        raise RuntimeError("cannot reach postgresql://u:s3cr3t@h/db")
    except RuntimeError:
        logging.getLogger("myapp").exception("failed on postgresql://u:s3cr3t@h/db")
    line = _lines(capsys)[-1]
    assert "s3cr3t" not in json.dumps(line)
    assert "RuntimeError: cannot reach postgresql://u:***@h/db" in line["exception"]


def test_environment_chooses_format_and_level(
    restore_structlog: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without arguments, EVENTSOURCE_LOG_FORMAT and EVENTSOURCE_LOG_LEVEL decide."""
    monkeypatch.setenv("EVENTSOURCE_LOG_FORMAT", "json")
    monkeypatch.setenv("EVENTSOURCE_LOG_LEVEL", "debug")
    eventsource.configure_logging(force=True)
    logging.getLogger("myapp").debug("details")
    assert _lines(capsys)[-1]["level"] == "debug"
    monkeypatch.setenv("EVENTSOURCE_LOG_FORMAT", "console")
    monkeypatch.setenv("EVENTSOURCE_LOG_LEVEL", "error")
    eventsource.configure_logging(force=True)
    logging.getLogger("myapp").warning("hidden")
    logging.getLogger("myapp").error("plain text")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "plain text" in err
    assert not err.lstrip().startswith("{")


def test_configuring_twice_keeps_one_handler(restore_structlog: object) -> None:
    """Calling configure_logging again (forced) replaces its handler instead of adding one."""
    before = len(logging.getLogger().handlers)
    eventsource.configure_logging("json", "info", force=True)
    eventsource.configure_logging("console", "info", force=True)
    eventsource.configure_logging("json", "info")  # not forced: no effect
    assert len(logging.getLogger().handlers) == before + 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fmt": "xml"}, "fmt must be 'auto', 'json' or 'console', got 'xml'"),
        ({"level": "loud"}, "level must be 'debug', 'info', 'warning' or 'error', got 'loud'"),
        ({"level": 10}, "level must be .*, got 10"),
    ],
)
def test_bad_arguments_are_named(
    restore_structlog: object, kwargs: dict[str, Any], match: str
) -> None:
    """A bad format or level is a one-line ValueError naming the argument; nothing changes."""
    handlers = list(logging.getLogger().handlers)
    with pytest.raises(ValueError, match=match):
        eventsource.configure_logging(force=True, **kwargs)
    assert logging.getLogger().handlers == handlers


def test_a_bad_variable_is_named(
    restore_structlog: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad EVENTSOURCE_LOG_LEVEL is a ValueError naming the variable."""
    monkeypatch.setenv("EVENTSOURCE_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match=r"^EVENTSOURCE_LOG_LEVEL: must be"):
        eventsource.configure_logging(force=True)
