"""Everything the CLI prints: tables, JSON, and errors.

This is the one place where a :class:`~stratuslab.errors.StratusError` becomes a message, a
hint (both on stderr) and the process exit code ``err.exit_code``. Any other exception
becomes exit code 1 with a one-line message (``STRATUS_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import pydantic
from rich.markup import escape
from rich.table import Table

from stratuslab.cli.context import AppContext
from stratuslab.errors import InvalidInput, StratusError

Row = Sequence[str]
UNEXPECTED_HINT = "this may be a bug; run again with STRATUS_DEBUG=1 to see the traceback"


# -- errors --------------------------------------------------------------------------------


def report_error(err: StratusError) -> int:
    """Print ``err`` on stderr and return the exit code it maps to."""
    click.echo(click.style("Error: ", fg="red", bold=True) + err.message, err=True)
    if err.hint:
        click.echo(click.style("Hint: ", fg="yellow") + err.hint, err=True)
    return err.exit_code


def report_unexpected(exc: BaseException) -> int:
    name = type(exc).__name__
    click.echo(click.style("Error: ", fg="red", bold=True) + f"{name}: {exc}", err=True)
    click.echo(f"Hint: {UNEXPECTED_HINT}", err=True)
    return 1


def invalid_input(exc: pydantic.ValidationError) -> InvalidInput:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or 'value'}: {item['msg']}"
        for item in exc.errors()
    )
    return InvalidInput(f"invalid input: {problems}", hint="see `stratus COMMAND --help`")


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn exceptions raised by a command into messages and exit codes."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except StratusError as err:
        raise click.exceptions.Exit(report_error(err)) from err
    except pydantic.ValidationError as exc:
        raise click.exceptions.Exit(report_error(invalid_input(exc))) from exc
    except Exception as exc:
        if os.environ.get("STRATUS_DEBUG"):
            raise
        raise click.exceptions.Exit(report_unexpected(exc)) from exc


class Failures:
    """Collects per-item errors of multi-item commands (``kill A B C`` goes on after A)."""

    def __init__(self) -> None:
        self.exit_code = 0

    @contextmanager
    def item(self) -> Iterator[None]:
        try:
            yield
        except StratusError as err:
            self.exit_code = report_error(err)

    def exit(self, ctx: click.Context) -> None:
        if self.exit_code:
            ctx.exit(self.exit_code)


# -- data ----------------------------------------------------------------------------------


def jsonable(data: Any) -> Any:
    if isinstance(data, pydantic.BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, dict):
        return {key: jsonable(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(item) for item in data]
    return data


def print_json(data: Any) -> None:
    click.echo(json.dumps(jsonable(data), indent=2, sort_keys=False))


def print_table(app: AppContext, headers: Sequence[str], rows: Iterable[Row]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(header.upper(), no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    app.out.print(table)


def print_fields(app: AppContext, fields: Iterable[tuple[str, str]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(escape(name), escape(value))
    app.out.print(table)


def emit(
    app: AppContext,
    data: Any,
    headers: Sequence[str],
    rows: Iterable[Row],
    *,
    ids: Iterable[str] | None = None,
) -> None:
    """JSON (``--json``), bare ids (``-q``: ``ids``, else the first column), or a table."""
    if app.json:
        print_json(data)
    elif app.quiet:
        for ident in ids if ids is not None else (row[0] for row in rows):
            click.echo(ident)
    else:
        print_table(app, headers, rows)


def info(app: AppContext, message: str) -> None:
    """A human note on stderr (silent with ``-q`` or ``--json``)."""
    if not (app.quiet or app.json):
        app.err.print(escape(message))


# -- formatting ----------------------------------------------------------------------------


def short_id(value: str | None) -> str:
    return (value or "")[:8]


def text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return fmt_time(value)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str) if value else "-"
    return str(value)


def fmt_mib(mib: int) -> str:
    if mib >= 1024 and mib % 1024 == 0:
        return f"{mib // 1024} GiB"
    if mib >= 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib} MiB"


def fmt_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_time(when: datetime | None) -> str:
    if when is None:
        return "-"
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
