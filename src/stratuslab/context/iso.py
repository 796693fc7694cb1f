"""Write and read NoCloud seed ISOs (ISO 9660 + Joliet + Rock Ridge, label ``cidata``)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from stratuslab.errors import ImageError, InvalidInput

SEED_LABEL = "cidata"
_MAX_NAME = 64


def write_seed_iso(files: Mapping[str, bytes], path: Path, *, label: str = SEED_LABEL) -> None:
    """Write ``files`` (flat names such as ``meta-data``) as an ISO at ``path``, atomically."""
    for name in files:
        _check_name(name)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, joliet=3, rock_ridge="1.09")
    for name, data in sorted(files.items()):
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            iso_path=f"/{_iso9660_name(name)};1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        iso.write(str(tmp))
        iso.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_seed_iso(path: Path) -> dict[str, bytes]:
    """Return the files at the root of a seed ISO by their Rock Ridge names."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, PyCdlibException) as exc:
        raise ImageError(
            f"cannot read seed ISO {path}: {exc}", hint="rebuild it with write_seed_iso"
        ) from exc
    try:
        return {
            child.rock_ridge.name().decode(): _read_file(iso, child.rock_ridge.name().decode())
            for child in iso.list_children(rr_path="/")
            if child.is_file() and child.rock_ridge is not None
        }
    finally:
        iso.close()


def _read_file(iso: pycdlib.PyCdlib, name: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
    return out.getvalue()


def _iso9660_name(name: str) -> str:
    """An ISO 9660 level 3 name: upper-case d-characters, one dot."""
    stem = "".join(c if c.isalnum() else "_" for c in name.upper())
    return f"{stem[:30]}."


def _check_name(name: str) -> None:
    if not name or len(name) > _MAX_NAME or "/" in name or name in (".", ".."):
        raise InvalidInput(
            f"seed file name {name!r} is not a plain file name",
            hint=f"use flat names such as 'meta-data' (at most {_MAX_NAME} characters)",
        )
