"""Logging: secrets masked in every log line (no database)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from eventsource._logging import configure_logging, get_logger, mask_secrets


@pytest.fixture
def restore_structlog() -> Iterator[dict[str, Any]]:
    """Put structlog's configuration back as it was after the test."""
    saved = structlog.get_config()
    yield saved
    structlog.configure(**saved)


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
