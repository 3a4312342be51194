"""Configuration, database URLs and schema names (no database)."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from eventsource import AsyncEventStore, EventStore, Settings
from eventsource.db import describe_target, quote_schema, resolve_url, safe_url
from eventsource.store import Queries

_ENV = (
    "EVENTSOURCE_DATABASE_URL",
    "EVENTSOURCE_SCHEMA",
    "EVENTSOURCE_PARTITIONS",
    "EVENTSOURCE_EMBEDDED_DIR",
    "EVENTSOURCE_POOL_SIZE",
    "EVENTSOURCE_PREPARED_STATEMENTS",
    "EVENTSOURCE_COMMAND_LEASE",
    "EVENTSOURCE_COMMAND_BACKOFF_BASE",
    "EVENTSOURCE_COMMAND_BACKOFF_MAX",
    "EVENTSOURCE_LOG_FORMAT",
    "EVENTSOURCE_LOG_LEVEL",
    "EVENTSOURCE_METRICS_PORT",
    "EVENTSOURCE_METRICS_HOST",
    "DB_SCHEMA",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any setting that Settings reads."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- Settings -----------------------------------------------------------------------------


def test_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    """Without EVENTSOURCE_* variables: no URL, schema eventsource, 16 partitions."""
    settings = Settings()
    assert settings.database_url is None
    assert settings.db_schema == "eventsource"
    assert settings.partitions == 16
    assert settings.pool_size == 10
    assert settings.log_format == "auto"
    assert settings.log_level == "info"
    assert settings.embedded_dir.name == "pgdata"
    assert (settings.metrics_port, settings.metrics_host) == (None, "127.0.0.1")


def test_settings_read_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every EVENTSOURCE_* variable sets its field."""
    clean_env.setenv("EVENTSOURCE_DATABASE_URL", "postgresql://u@db.example/app")
    clean_env.setenv("EVENTSOURCE_SCHEMA", "es_custom")
    clean_env.setenv("EVENTSOURCE_PARTITIONS", "8")
    clean_env.setenv("EVENTSOURCE_EMBEDDED_DIR", str(tmp_path))
    clean_env.setenv("EVENTSOURCE_POOL_SIZE", "3")
    clean_env.setenv("EVENTSOURCE_LOG_FORMAT", "json")
    clean_env.setenv("EVENTSOURCE_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.database_url == "postgresql://u@db.example/app"
    assert settings.db_schema == "es_custom"
    assert settings.partitions == 8
    assert settings.embedded_dir == tmp_path
    assert settings.pool_size == 3
    assert settings.log_format == "json"
    assert settings.log_level == "debug"


def test_metrics_port_and_host(clean_env: pytest.MonkeyPatch) -> None:
    """EVENTSOURCE_METRICS_PORT (1 to 65535) and _HOST say where workers serve metrics."""
    clean_env.setenv("EVENTSOURCE_METRICS_PORT", "9464")
    clean_env.setenv("EVENTSOURCE_METRICS_HOST", "0.0.0.0")
    settings = Settings()
    assert (settings.metrics_port, settings.metrics_host) == (9464, "0.0.0.0")
    clean_env.setenv("EVENTSOURCE_METRICS_PORT", "0")
    with pytest.raises(ValueError, match="EVENTSOURCE_METRICS_PORT"):
        Settings()


def test_blank_database_url_means_unset(clean_env: pytest.MonkeyPatch) -> None:
    """EVENTSOURCE_DATABASE_URL set to an empty string is treated as not set."""
    clean_env.setenv("EVENTSOURCE_DATABASE_URL", "")
    assert Settings().database_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTSOURCE_PARTITIONS", "0"),
        ("EVENTSOURCE_PARTITIONS", "5000"),
        ("EVENTSOURCE_PARTITIONS", "many"),
        ("EVENTSOURCE_POOL_SIZE", "0"),
        ("EVENTSOURCE_POOL_SIZE", "ten"),
        ("EVENTSOURCE_PREPARED_STATEMENTS", "maybe"),
        ("EVENTSOURCE_COMMAND_LEASE", "nan"),
        ("EVENTSOURCE_COMMAND_LEASE", "inf"),
        ("EVENTSOURCE_COMMAND_BACKOFF_BASE", "-1"),
        ("EVENTSOURCE_COMMAND_BACKOFF_MAX", "1e300"),
        ("EVENTSOURCE_LOG_FORMAT", "xml"),
        ("EVENTSOURCE_LOG_LEVEL", "loud"),
        ("EVENTSOURCE_SCHEMA", "a-b"),
        ("EVENTSOURCE_DATABASE_URL", "postgresql://u@h:abc/db"),
    ],
)
def test_invalid_settings_are_rejected(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Out-of-range or unknown values raise a one-line ValueError naming the variable."""
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=rf"^{name}: ") as info:
        Settings()
    assert "\n" not in str(info.value)
    assert "For further information" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EVENTSOURCE_PARTITIONS", "0", "EVENTSOURCE_PARTITIONS: must be from 1 to 4096, got '0'"),
        ("EVENTSOURCE_POOL_SIZE", "1001", "EVENTSOURCE_POOL_SIZE: must be from 1 to 1000"),
        ("EVENTSOURCE_COMMAND_LEASE", "0.1", "EVENTSOURCE_COMMAND_LEASE: must be from 0.5 to 3600"),
        ("EVENTSOURCE_COMMAND_BACKOFF_BASE", "-1", "must be from 0 to 3600, got '-1'"),
    ],
)
def test_out_of_range_settings_show_the_range(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """A number out of range names the variable, both bounds and the value given."""
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=r"^EVENTSOURCE_") as info:
        Settings()
    assert message in str(info.value)


def test_blank_embedded_dir_means_the_default(clean_env: pytest.MonkeyPatch) -> None:
    """EVENTSOURCE_EMBEDDED_DIR set to an empty string is the default directory, not '.'."""
    clean_env.setenv("EVENTSOURCE_EMBEDDED_DIR", "  ")
    default = Path(platformdirs.user_data_dir("eventsource")) / "pgdata"
    assert Settings().embedded_dir == default


def test_invalid_keyword_settings_name_the_argument(clean_env: pytest.MonkeyPatch) -> None:
    """A bad keyword argument of Settings is named as such, not as an environment variable."""
    clean_env.setenv("EVENTSOURCE_POOL_SIZE", "0")
    assert Settings(pool_size=5).pool_size == 5  # the argument wins over the variable
    with pytest.raises(ValueError, match=r"^pool_size: must be from 1 to 1000, got 0$"):
        Settings(pool_size=0)
    with pytest.raises(ValueError, match=r"^db_schema: invalid schema name"):
        Settings(db_schema="a b")


def test_database_url_errors_name_the_port_and_hide_the_password(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """A non-numeric port is named as the port (not an int() message); the password is hidden."""
    clean_env.setenv("EVENTSOURCE_DATABASE_URL", "postgresql://u:s3cr3t@h:5432x/db")
    with pytest.raises(ValueError, match="port of the database URL must be a number") as info:
        Settings()
    assert "'5432x'" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert "int()" not in str(info.value)


def test_unprefixed_db_schema_variable_is_ignored(clean_env: pytest.MonkeyPatch) -> None:
    """Only EVENTSOURCE_SCHEMA sets the schema; another app's DB_SCHEMA does not."""
    clean_env.setenv("DB_SCHEMA", "someone_elses")
    assert Settings().db_schema == "eventsource"


# -- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:pw@db.example:5433/app",
        "postgresql://u:pw@db.example:5433/app",
        "postgresql+psycopg2://u:pw@db.example:5433/app",
        "postgresql+asyncpg://u:pw@db.example:5433/app",
    ],
)
def test_resolve_url_uses_psycopg3(url: str) -> None:
    """postgres:// and postgresql[+driver]:// URLs resolve to postgresql+psycopg, else intact."""
    resolved = resolve_url(url)
    assert resolved.drivername == "postgresql+psycopg"
    assert (resolved.username, resolved.password, resolved.host) == ("u", "pw", "db.example")
    assert (resolved.port, resolved.database) == (5433, "app")


def test_resolve_url_reads_settings(clean_env: pytest.MonkeyPatch) -> None:
    """resolve_url(None) takes the URL from Settings (the environment)."""
    clean_env.setenv("EVENTSOURCE_DATABASE_URL", "postgres://env-host/envdb")
    resolved = resolve_url(None)
    assert resolved.host == "env-host"
    assert resolved.database == "envdb"
    explicit = resolve_url(None, Settings(database_url="postgresql://other/db2"))
    assert explicit.host == "other"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x.db", "oracle://h/db"])
def test_resolve_url_rejects_other_databases(url: str) -> None:
    """Non-PostgreSQL URLs are a ValueError naming the scheme."""
    with pytest.raises(ValueError, match="needs PostgreSQL") as info:
        resolve_url(url)
    assert url.split(":", 1)[0] in str(info.value)


@pytest.mark.parametrize("url", ["not a url", "://nothing", "postgresql:/"])
def test_resolve_url_rejects_garbage(url: str) -> None:
    """An unparseable URL is a ValueError that shows the expected form."""
    with pytest.raises(ValueError, match="postgresql://"):
        resolve_url(url)


def test_safe_url_masks_the_password() -> None:
    """safe_url hides the password but keeps user, host and database."""
    masked = safe_url("postgresql+psycopg://alice:s3cr3t@db.example:5432/app")
    assert "s3cr3t" not in masked
    assert masked == "postgresql+psycopg://alice:***@db.example:5432/app"
    assert "s3cr3t" not in safe_url(resolve_url("postgres://alice:s3cr3t@db/app"))
    assert safe_url("postgresql://alice@db/app") == "postgresql://alice@db/app"


def test_safe_url_of_garbage_reveals_nothing() -> None:
    """An unparseable URL is not echoed (it may hold a password)."""
    assert safe_url("garbage:s3cr3t") == "<unparseable database URL>"


def test_describe_target_names_host_port_and_database() -> None:
    """The target of an error message is host:port/database, without user or password."""
    assert describe_target(resolve_url("postgresql://u:pw@db.example:6000/app")) == (
        "db.example:6000/app"
    )
    assert describe_target(resolve_url("postgresql://u@/app?host=/run/pg")) == "/run/pg/app"
    assert describe_target(resolve_url("postgresql:///app")) == "localhost/app"


# -- schema names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("eventsource", "eventsource"),
        ("es_1", "es_1"),
        ("_x$y", "_x$y"),
        ("Mixed", '"Mixed"'),
        ("select", '"select"'),
        ("a" * 63, "a" * 63),
    ],
)
def test_quote_schema_quotes_valid_names(name: str, quoted: str) -> None:
    """Valid schema names are quoted by the dialect where needed (case, reserved words)."""
    assert quote_schema(name) == quoted


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a" * 64,
        "1abc",
        'x"; DROP SCHEMA public CASCADE; --',
        "x; DROP TABLE y",
        "a-b",
        "a.b",
        "a b",
        "ünïcode",
        "x\x00",
        None,
        42,
    ],
)
def test_quote_schema_rejects_hostile_names(bad: object) -> None:
    """Names that are not plain identifiers are a ValueError showing the name."""
    with pytest.raises(ValueError, match="invalid schema name"):
        quote_schema(bad)  # type: ignore[arg-type]


def test_queries_use_the_quoted_schema() -> None:
    """Every statement built for a schema names it exactly as quoted."""
    queries = Queries("Mixed")
    assert '"Mixed".events' in str(queries.read_stream)
    assert '"Mixed".append_events' in str(queries.append)
    assert "Mixed.events" not in str(queries.read_stream).replace('"Mixed"', "")


# -- secrets ------------------------------------------------------------------------------


def test_settings_repr_masks_the_password(clean_env: pytest.MonkeyPatch) -> None:
    """repr() and str() of Settings show the database URL with its password as ***."""
    settings = Settings(database_url="postgresql://alice:s3cr3t@db.example/app")
    for text in (repr(settings), str(settings)):
        assert "s3cr3t" not in text
        assert "postgresql://alice:***@db.example/app" in text
    assert settings.database_url == "postgresql://alice:s3cr3t@db.example/app"


def test_safe_url_masks_a_password_query_parameter() -> None:
    """A password given as a query parameter (libpq accepts one) is masked too."""
    masked = safe_url("postgresql://alice@db/app?password=s3cr3t&sslmode=require")
    assert "s3cr3t" not in masked
    assert masked == "postgresql://alice@db/app?password=***&sslmode=require"


@pytest.mark.parametrize("cls", [EventStore, AsyncEventStore], ids=lambda c: c.__name__)
def test_store_repr_masks_the_password(clean_env: pytest.MonkeyPatch, cls: type) -> None:
    """A store's repr names its URL without the password, and its schema (no I/O)."""
    store = cls.from_url("postgresql://alice:s3cr3t@db.example/app", schema="bank")
    assert repr(store) == (
        f"{cls.__name__}('postgresql+psycopg://alice:***@db.example/app', schema='bank')"
    )
