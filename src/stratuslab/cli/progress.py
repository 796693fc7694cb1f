"""Live displays on stderr: waiting for an operation, and uploading a file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from stratuslab.cli.context import AppContext
from stratuslab.schemas.operations import Operation


def wait(app: AppContext, operation: Operation, *, timeout: float, label: str = "") -> Operation:
    """Wait for ``operation`` with a spinner, its progress text and the elapsed time.

    Raises the operation's error (a StratusError) if it failed.
    """
    title = label or operation.kind
    if app.quiet or app.json:
        return app.client.wait_operation(operation.id, timeout)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=app.err, transient=True) as progress:
        task = progress.add_task(_describe(title, operation), total=None)

        def show(current: Operation) -> None:
            progress.update(task, description=_describe(title, current))

        return app.client.wait_operation(operation.id, timeout, on_progress=show)


def _describe(title: str, operation: Operation) -> str:
    if operation.progress:
        return f"{title}: {operation.progress}"
    return f"{title}: {operation.status}"


@contextmanager
def upload_bar(app: AppContext, label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield a callback that advances a byte progress bar (no display with -q/--json)."""
    if app.quiet or app.json:
        yield lambda _n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=app.err, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
