"""The one place that prints: tables, JSON, ids, errors and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click
import pydantic
import pytest
from click.testing import CliRunner, Result

from stratuslab.cli import output
from stratuslab.cli.context import AppContext
from stratuslab.errors import (
    ERRORS_BY_CODE,
    CapacityError,
    Conflict,
    NotFound,
    ServiceUnavailable,
    StratusError,
)
from stratuslab.schemas.flavors import FlavorCreate


def run_command(body: click.Command, *args: str, app: AppContext | None = None) -> Result:
    return CliRunner().invoke(body, list(args), obj=app or AppContext())


def raising(exc: BaseException) -> click.Command:
    @click.command()
    def cmd() -> None:
        with output.exit_codes():
            raise exc

    return cmd


@pytest.mark.parametrize("cls", sorted(set(ERRORS_BY_CODE.values()), key=lambda c: c.code))
def test_every_error_class_maps_to_its_exit_code(cls: type[StratusError]) -> None:
    result = run_command(raising(cls("it broke", hint="do this")))
    assert result.exit_code == cls.exit_code
    assert result.stderr == "Error: it broke\nHint: do this\n"
    assert result.stdout == ""


def test_not_found_is_exit_3_without_hint_line() -> None:
    result = run_command(raising(NotFound("no such instance")))
    assert result.exit_code == 3
    assert result.stderr == "Error: no such instance\n"


def test_unexpected_exception_is_exit_1_with_short_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRATUS_DEBUG", raising=False)
    result = run_command(raising(KeyError("x")))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: KeyError: 'x'\n")
    assert "STRATUS_DEBUG" in result.stderr


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUS_DEBUG", "1")
    result = run_command(raising(KeyError("x")))
    assert isinstance(result.exception, KeyError)


def test_validation_error_is_invalid_input() -> None:
    try:
        FlavorCreate(name="Bad Name", vcpus=0, memory_mib=1)
    except pydantic.ValidationError as exc:
        error = exc
    result = run_command(raising(error))
    assert result.exit_code == 2
    assert "name:" in result.stderr
    assert "vcpus:" in result.stderr


def test_click_exits_pass_through() -> None:
    assert run_command(raising(click.exceptions.Exit(7))).exit_code == 7
    assert run_command(raising(click.UsageError("bad"))).exit_code == 2


def test_failures_keep_going_and_exit_with_the_last_code() -> None:
    @click.command()
    @click.pass_context
    def cmd(ctx: click.Context) -> None:
        failures = output.Failures()
        for exc in (NotFound("a"), None, Conflict("c")):
            with failures.item():
                if exc is not None:
                    raise exc
                click.echo("ok")
        failures.exit(ctx)

    result = run_command(cmd)
    assert result.exit_code == Conflict.exit_code
    assert result.stdout == "ok\n"
    assert result.stderr == "Error: a\nError: c\n"


def emitting(app: AppContext) -> click.Command:
    @click.command()
    def cmd() -> None:
        data = [{"id": "0123456789abcdef", "name": "web"}]
        rows = [("01234567", "web")]
        output.emit(app, data, ("id", "name"), rows, ids=["0123456789abcdef"])

    return cmd


def test_emit_table_json_and_quiet() -> None:
    app = AppContext()
    table = run_command(emitting(app), app=app)
    assert table.stdout.splitlines()[0].split() == ["ID", "NAME"]
    assert "01234567  web" in table.stdout
    app.json = True
    assert json.loads(run_command(emitting(app), app=app).stdout)[0]["name"] == "web"
    app.json, app.quiet = False, True
    assert run_command(emitting(app), app=app).stdout == "0123456789abcdef\n"


def test_table_cells_are_not_rich_markup() -> None:
    app = AppContext()

    @click.command()
    def cmd() -> None:
        output.print_table(app, ("name",), [("[bold]x[/bold]",)])

    assert "[bold]x[/bold]" in run_command(cmd, app=app).stdout


def test_error_classes_used_by_the_client_have_distinct_codes() -> None:
    assert len({CapacityError.exit_code, Conflict.exit_code, ServiceUnavailable.exit_code}) == 3


@pytest.mark.parametrize(
    ("mib", "text"), [(512, "512 MiB"), (1024, "1 GiB"), (1536, "1.5 GiB"), (16384, "16 GiB")]
)
def test_fmt_mib(mib: int, text: str) -> None:
    assert output.fmt_mib(mib) == text


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0 B"), (1023, "1023 B"), (2048, "2.0 KiB"), (5 << 30, "5.0 GiB")]
)
def test_fmt_bytes(size: int, text: str) -> None:
    assert output.fmt_bytes(size) == text


def test_fmt_age() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert output.fmt_age(None) == "never"
    assert output.fmt_age(now - timedelta(seconds=5), now) == "5s ago"
    assert output.fmt_age(now - timedelta(minutes=3), now) == "3m ago"
    assert output.fmt_age(now - timedelta(hours=2), now) == "2h ago"
    assert output.fmt_age(now + timedelta(seconds=2), now) == "just now"
    naive = datetime(2026, 1, 1, 11, 0)
    assert output.fmt_age(naive, now) == "1h ago"


def test_text_and_short_id() -> None:
    assert output.text(None) == "-"
    assert output.text("") == "-"
    assert output.text({}) == "-"
    assert output.text({"a": 1}) == '{"a": 1}'
    assert output.text(3) == "3"
    assert output.short_id("0123456789") == "01234567"
    assert output.short_id(None) == ""
