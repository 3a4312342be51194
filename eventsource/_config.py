"""Configuration from the environment (``EVENTSOURCE_*``) and command-line flags.

A bad setting is a ``ValueError`` naming where it came from: the environment variable
(``EVENTSOURCE_POOL_SIZE: must be greater than or equal to 1, got '0'``), or the keyword
argument when ``Settings`` is given one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types
import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventsource._checks import check_database_url, check_schema_name

__all__ = ["MAX_POOL_SIZE", "Settings"]

MAX_POOL_SIZE = 1000  # connections per engine (and as many again in overflow)
MIN_TOKEN, MAX_TOKEN = 16, 1000  # characters of EVENTSOURCE_OPS_TOKEN


def _default_embedded_dir() -> Path:
    """The embedded server's data directory: ``pgdata`` in the user's data directory."""
    return Path(platformdirs.user_data_dir("eventsource")) / "pgdata"


class Settings(BaseSettings):
    """Settings read from ``EVENTSOURCE_*`` environment variables.

    ``EVENTSOURCE_DATABASE_URL``: the PostgreSQL URL; unset means the embedded server.
    ``EVENTSOURCE_SCHEMA``: the schema holding the framework's tables (default ``eventsource``).
    ``EVENTSOURCE_PARTITIONS``: the partition count used when the schema is first created.
    ``EVENTSOURCE_EMBEDDED_DIR``: the embedded server's data directory.
    ``EVENTSOURCE_PREPARED_STATEMENTS``: ``false`` behind a PgBouncer older than 1.21 in
    transaction mode (hot statements are otherwise prepared server-side).
    ``EVENTSOURCE_GROUP_COMMIT``: ``false`` to write every standalone append on its own (by
    default, appends that threads or tasks make at the same moment share one commit).
    ``EVENTSOURCE_COMMAND_LEASE``: seconds a claimed command stays leased without a heartbeat;
    ``EVENTSOURCE_COMMAND_BACKOFF_BASE`` / ``_MAX``: the retry delay after the first failed
    attempt, doubled per attempt up to the maximum (with jitter).
    ``EVENTSOURCE_LOG_FORMAT``: ``auto`` (console on a terminal, JSON otherwise), ``json`` or
    ``console``; ``EVENTSOURCE_LOG_LEVEL``: ``debug``, ``info``, ``warning``, ``error``.
    ``EVENTSOURCE_OPS_TOKEN``: the token that the operations page (``eventsource ops serve``)
    asks for before an action (retry, skip, replay, purge); unset, the page is read-only.
    ``EVENTSOURCE_METRICS_PORT``: worker processes serve their metrics for Prometheus on this
    port (``EVENTSOURCE_METRICS_HOST``, default ``127.0.0.1``); unset: not served.
    """

    model_config = SettingsConfigDict(
        env_prefix="EVENTSOURCE_", extra="ignore", populate_by_name=True
    )

    database_url: str | None = None
    db_schema: str = Field(default="eventsource", validation_alias="EVENTSOURCE_SCHEMA")
    partitions: int = Field(default=16, ge=1, le=4096)
    embedded_dir: Path = Field(default_factory=_default_embedded_dir)
    pool_size: int = Field(default=10, ge=1, le=MAX_POOL_SIZE)
    prepared_statements: bool = True
    group_commit: bool = True
    command_lease: float = Field(default=10.0, ge=0.5, le=3600, allow_inf_nan=False)
    command_backoff_base: float = Field(default=1.0, ge=0, le=3600, allow_inf_nan=False)
    command_backoff_max: float = Field(default=300.0, ge=0, le=86400, allow_inf_nan=False)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ops_token: SecretStr | None = None

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ValueError(_describe(exc, values)) from None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields for ``repr`` and ``str``, with the database URL's password masked."""
        from eventsource.db import safe_url  # noqa: PLC0415 - eventsource.db imports this module

        for name, value in super().__repr_args__():
            yield name, (safe_url(value) if name == "database_url" and value else value)

    @field_validator("database_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return check_database_url(value) if value else None

    @field_validator("ops_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ops_token")
    @classmethod
    def _token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not MIN_TOKEN <= len(value.get_secret_value()) <= MAX_TOKEN:
            raise ValueError(f"must be {MIN_TOKEN} to {MAX_TOKEN} characters long")
        return value

    @field_validator("embedded_dir", mode="before")
    @classmethod
    def _blank_dir_is_default(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return _default_embedded_dir()
        return value

    @field_validator("db_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        check_schema_name(value)
        return value


def _source(field: str, given: dict[str, Any]) -> str:
    """Where a setting came from: its keyword argument if given one, else its variable."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    names = {field, alias} if isinstance(alias, str) else {field}
    if names & set(given):
        return field
    if isinstance(alias, str):
        return alias
    return f"EVENTSOURCE_{field.upper()}"


_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}


def _bounds(field: str) -> tuple[object, object] | None:
    """The inclusive bounds of a numeric setting (``(1, 4096)`` for partitions), if it has both."""
    info = Settings.model_fields.get(field)
    if info is None:
        return None
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    return None if low is None or high is None else (low, high)


def _describe(exc: ValidationError, given: dict[str, Any]) -> str:
    """One line for the first bad setting: ``NAME: problem, got 'value'``."""
    errors = exc.errors(include_url=False)
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else "settings"
    by_alias = {
        info.validation_alias: name
        for name, info in Settings.model_fields.items()
        if isinstance(info.validation_alias, str)
    }
    field = by_alias.get(field, field)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    message = message.replace("Input should be", "must be", 1)
    bounds = _bounds(field)
    if bounds is not None and first.get("type") in _RANGE_ERRORS:
        message = f"must be from {bounds[0]} to {bounds[1]}"
    shown = first.get("input")
    shown_already = isinstance(shown, str) and repr(shown) in message
    if field in ("database_url", "ops_token") or isinstance(shown, dict) or shown_already:
        return f"{_source(field, given)}: {message}"  # (a URL may hold a password)
    return f"{_source(field, given)}: {message}, got {shown!r}"
