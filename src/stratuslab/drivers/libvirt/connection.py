"""The libvirt connection, and the one place where ``libvirtError`` becomes ``DriverError``.

The bindings are imported on first use, so importing this module never needs libvirt; a
missing module or daemon becomes :class:`HypervisorUnavailable` with a hint. A connection
that died (libvirtd restarted) is reopened on next use.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Any

from stratuslab.errors import DriverError, HypervisorUnavailable

START_LIBVIRTD_HINT = "start libvirtd (`virtlogd -d; libvirtd -d`) or install libvirt-daemon-system"


def load_libvirt() -> ModuleType:
    """The libvirt bindings, or :class:`HypervisorUnavailable` when they are missing."""
    try:
        module = importlib.import_module("libvirt")
    except ImportError as exc:
        raise HypervisorUnavailable(
            "the libvirt Python bindings are not installed",
            hint="install libvirt-python (needs libvirt-dev and pkg-config); "
            + START_LIBVIRTD_HINT,
        ) from exc
    return module


@contextmanager
def libvirt_errors(action: str) -> Iterator[None]:
    """Turn any ``libvirtError`` raised in the block into a :class:`DriverError`."""
    libvirt = load_libvirt()
    try:
        yield
    except libvirt.libvirtError as exc:
        raise to_driver_error(action, exc) from exc


def to_driver_error(action: str, exc: Any) -> DriverError:
    """The :class:`DriverError` for a ``libvirtError`` raised while doing ``action``."""
    message = f"{action}: {exc.get_error_message() or exc}"
    details = {"libvirt_code": exc.get_error_code(), "libvirt_domain": exc.get_error_domain()}
    if _is_unreachable(exc):
        return HypervisorUnavailable(message, hint=START_LIBVIRTD_HINT, details=details)
    return DriverError(
        message, hint="see the libvirtd log and the domain's QEMU log", details=details
    )


def error_code(exc: BaseException) -> int | None:
    """libvirt's error code (``VIR_ERR_*``) behind a translated error, if there is one."""
    cause = exc.__cause__ if isinstance(exc, DriverError) else exc
    getter = getattr(cause, "get_error_code", None)
    return None if getter is None else int(getter())


def _is_unreachable(exc: Any) -> bool:
    """A transport failure (daemon gone, socket closed), not an error of the request."""
    libvirt = load_libvirt()
    return exc.get_error_code() == libvirt.VIR_ERR_NO_CONNECT or exc.get_error_domain() in (
        libvirt.VIR_FROM_RPC,
        libvirt.VIR_FROM_REMOTE,
    )


class Connection:
    """One libvirt connection to ``uri``, opened lazily and reopened when it died."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The live ``virConnect``; opens (or reopens) it as needed."""
        with self._lock:
            if self._conn is not None and not self._alive(self._conn):
                self._close_quietly()
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def _open(self) -> Any:
        libvirt = load_libvirt()
        _silence_default_error_handler(libvirt)
        try:
            return libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(
                f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                hint=START_LIBVIRTD_HINT,
            ) from exc

    @staticmethod
    def _alive(conn: Any) -> bool:
        libvirt = load_libvirt()
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _close_quietly(self) -> None:
        libvirt = load_libvirt()
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(libvirt.libvirtError):
                conn.close()


def _silence_default_error_handler(libvirt: ModuleType) -> None:
    """Stop libvirt printing every error to stderr; we raise them instead."""
    libvirt.registerErrorHandler(_ignore_error, None)


def _ignore_error(_ctx: object, _error: object) -> None:
    return None
