"""Configuration from the environment (``EVENTSOURCE_*``) and command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Settings read from ``EVENTSOURCE_*`` environment variables.

    ``EVENTSOURCE_DATABASE_URL``: the PostgreSQL URL; unset means the embedded server.
    ``EVENTSOURCE_SCHEMA``: the schema holding the framework's tables (default ``eventsource``).
    ``EVENTSOURCE_PARTITIONS``: the partition count used when the schema is first created.
    ``EVENTSOURCE_EMBEDDED_DIR``: the embedded server's data directory.
    ``EVENTSOURCE_PREPARED_STATEMENTS``: ``false`` behind a PgBouncer older than 1.21 in
    transaction mode (hot statements are otherwise prepared server-side).
    ``EVENTSOURCE_COMMAND_LEASE``: seconds a claimed command stays leased without a heartbeat;
    ``EVENTSOURCE_COMMAND_BACKOFF_BASE`` / ``_MAX``: the retry delay after the first failed
    attempt, doubled per attempt up to the maximum (with jitter).
    ``EVENTSOURCE_LOG_FORMAT``: ``auto`` (console on a terminal, JSON otherwise), ``json`` or
    ``console``; ``EVENTSOURCE_LOG_LEVEL``: ``debug``, ``info``, ``warning``, ``error``.
    """

    model_config = SettingsConfigDict(
        env_prefix="EVENTSOURCE_", extra="ignore", populate_by_name=True
    )

    database_url: str | None = None
    db_schema: str = Field(default="eventsource", validation_alias="EVENTSOURCE_SCHEMA")
    partitions: int = Field(default=16, ge=1, le=4096)
    embedded_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("eventsource")) / "pgdata"
    )
    pool_size: int = Field(default=10, ge=1, le=200)
    prepared_statements: bool = True
    command_lease: float = Field(default=10.0, ge=0.5, le=3600)
    command_backoff_base: float = Field(default=1.0, ge=0, le=3600)
    command_backoff_max: float = Field(default=300.0, ge=0, le=86400)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("database_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None
