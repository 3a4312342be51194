"""The options that the commands of the CLI share, declared once (no database)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from eventsource.cli import app, main
from eventsource.cli._options import AsJson, keyword_option, option_set

Count = Annotated[int, typer.Option("--count", min=1, help="How many.")]


def _commands() -> dict[str, Any]:
    """Every command of `eventsource` (not the groups), by its path."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found[path] = command
        for name, sub in (subcommands or {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def _option(command: Any, flag: str) -> Any:
    """The parameter of ``command`` that ``flag`` names, or None."""
    return next((p for p in command.params if flag in getattr(p, "opts", ())), None)


def test_the_walk_finds_every_command() -> None:
    """The walk finds all 16 commands (so the tests on each cannot pass on none)."""
    assert {"db upgrade", "projections run", "worker run", "relay run", "demo"} <= set(_commands())
    assert len(_commands()) == 16


@pytest.mark.parametrize("path", sorted(_commands()))
def test_every_command_takes_the_database_url_and_the_schema(path: str) -> None:
    """Each command has --database-url and --schema, read from their EVENTSOURCE_* variables."""
    command = _commands()[path]
    url, schema = _option(command, "--database-url"), _option(command, "--schema")
    assert url is not None, path
    assert (url.envvar, url.default, url.required) == ("EVENTSOURCE_DATABASE_URL", None, False)
    assert schema is not None, path
    assert (schema.envvar, schema.default) == ("EVENTSOURCE_SCHEMA", "eventsource")


@pytest.mark.parametrize("path", ["projections run", "projections replay", "projections status"])
def test_projection_commands_take_the_jetstream_source_options(path: str) -> None:
    """--source, --stream and --subject-prefix are on the projection commands that read a log."""
    command = _commands()[path]
    defaults = {flag: _option(command, flag).default for flag in ("--stream", "--subject-prefix")}
    assert _option(command, "--source") is not None
    assert defaults == {"--stream": "EVENTS", "--subject-prefix": "events"}


def test_the_shared_options_keep_their_place_in_help() -> None:
    """The shared options stand where each command has always listed them."""
    names = [p.name for p in _commands()["projections status"].params]
    assert names[:6] == ["database_url", "schema", "as_json", "source", "stream", "subject_prefix"]
    names = [p.name for p in _commands()["projections run"].params]
    assert names[-5:] == ["source", "stream", "subject_prefix", "database_url", "schema"]
    names = [p.name for p in _commands()["db upgrade"].params]
    assert names == ["database_url", "schema", "partitions"]


def test_an_option_set_hands_the_command_what_its_options_make() -> None:
    """A command gets the options of an option set where it says, and the value they make
    (with its own options that the set reads) in its receiving parameter."""
    seen: list[Any] = []
    shared = option_set(
        "total",
        [keyword_option("count", Count, 1)],
        lambda count, as_json: (count, as_json),
        before="as_json",
        reads=["as_json"],
    )

    @shared
    def command(total: tuple[int, bool], name: str = "n", as_json: AsJson = False) -> None:
        seen.append((total, name, as_json))

    small = typer.Typer(add_completion=False)
    small.command()(command)
    result = CliRunner().invoke(small, ["--count", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert seen == [((3, True), "n", True)]
    names = [p.name for p in typer.main.get_command(small).params]
    assert names == ["name", "count", "as_json"]


def test_an_option_set_names_a_missing_parameter() -> None:
    """An option set on a command without its receiver (or its `before`) is a TypeError."""
    shared = option_set("total", [keyword_option("count", Count, 1)], int, before="nope")
    with pytest.raises(TypeError, match="'nope'"):

        @shared
        def command(total: int) -> None: ...


@pytest.mark.parametrize(
    "args",
    [
        ["db", "status", "--schema", "a-b"],
        ["demo", "--schema", "a-b"],
        ["projections", "skip", "p", "--partition", "0", "--schema", "a-b"],
        ["commands", "purge", "--yes", "--schema", "a-b"],
    ],
)
def test_a_bad_shared_option_exits_2_naming_it(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad --schema, on any command, exits 2 with one line naming it."""
    monkeypatch.delenv("EVENTSOURCE_SCHEMA", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: --schema: invalid schema name 'a-b'")
