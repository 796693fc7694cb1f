"""The object every command receives: global options, consoles, and a lazily built client.

Tests replace the outside world through the fields of :class:`AppContext` (``client_factory``,
``bin_dir``, ``exec_fn``, ``sleep``) and pass it as ``obj`` to ``CliRunner.invoke``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from stratuslab.client import StratusClient
from stratuslab.config import ClientSettings, load_client_settings

#: console width when stdout is not a terminal (tables are not folded at 80 columns)
PIPE_WIDTH = 250

ClientFactory = Callable[[ClientSettings], StratusClient]
ExecFn = Callable[[str, Sequence[str]], NoReturn]


def default_client_factory(settings: ClientSettings) -> StratusClient:
    return StratusClient(settings.endpoint, settings.token, timeout=settings.timeout)


def default_exec(file: str, args: Sequence[str]) -> NoReturn:
    os.execvp(file, list(args))


@dataclass
class AppContext:
    """Global options plus the seams to the outside world."""

    client_factory: ClientFactory = default_client_factory
    #: where the sibling programs (stratus-controller, stratus-node) are installed
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    exec_fn: ExecFn = default_exec
    sleep: Callable[[float], None] = time.sleep
    #: console width; None: the terminal's, or PIPE_WIDTH when piped, or $COLUMNS
    width: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    json: bool = False
    quiet: bool = False
    _client: StratusClient | None = None
    _out: Console | None = None
    _err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            self._out = Console(width=self._width(), highlight=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = Console(stderr=True, width=self._width(), highlight=False)
        return self._err

    def _width(self) -> int | None:
        if self.width is not None or "COLUMNS" in os.environ or sys.stdout.isatty():
            return self.width
        return PIPE_WIDTH

    def settings(self) -> ClientSettings:
        return load_client_settings(overrides=self.overrides)

    @property
    def client(self) -> StratusClient:
        """Built on first use, so ``--help`` and ``up`` work without any configuration."""
        if self._client is None:
            self._client = self.client_factory(self.settings())
        return self._client

    def client_for(self, endpoint: str, token: str) -> StratusClient:
        """A client for a given controller (``up`` and ``down`` talk to the local one)."""
        return self.client_factory(ClientSettings(endpoint=endpoint, token=token))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_app = click.make_pass_decorator(AppContext)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(AppContext).json = True


json_option = click.option(
    "--json",
    "json_flag",
    is_flag=True,
    expose_value=False,
    callback=_set_json,
    help="Print JSON instead of a table.",
)
