"""Write and read seed ISOs (ISO 9660 + Joliet + Rock Ridge): ``cidata``, ``config-2``, ``CONTEXT``.

File names are paths relative to the root (``meta-data``, ``openstack/latest/meta_data.json``);
guests see the Rock Ridge (Linux) or Joliet (Windows) names, the ISO 9660 names are upper-cased
placeholders that are only unique.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from stratuslab.errors import ImageError, InvalidInput

SEED_LABEL = "cidata"
_MAX_NAME = 64
_MAX_DEPTH = 4


def write_seed_iso(files: Mapping[str, bytes], path: Path, *, label: str = SEED_LABEL) -> None:
    """Write ``files`` (by relative path, e.g. ``meta-data``) as an ISO at ``path``, atomically."""
    for name in files:
        _check_name(name)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, joliet=3, rock_ridge="1.09")
    iso_dirs: dict[str, str] = {"": ""}
    used: set[str] = set()
    for name, data in sorted(files.items()):
        parent, _, leaf = name.rpartition("/")
        iso_parent = _add_directories(iso, iso_dirs, used, parent)
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            iso_path=f"{_iso9660_path(iso_parent, leaf, used)}.;1",
            rr_name=leaf,
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
    """Return the files of a seed ISO by their Rock Ridge paths (``a/b`` below the root)."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, PyCdlibException) as exc:
        raise ImageError(
            f"cannot read seed ISO {path}: {exc}", hint="rebuild it with write_seed_iso"
        ) from exc
    try:
        return dict(_walk(iso, ""))
    finally:
        iso.close()


def _walk(iso: pycdlib.PyCdlib, rr_dir: str) -> Iterator[tuple[str, bytes]]:
    for child in iso.list_children(rr_path=rr_dir or "/"):
        if child.rock_ridge is None or child.is_dot() or child.is_dotdot():
            continue
        rel = f"{rr_dir}/{child.rock_ridge.name().decode()}".lstrip("/")
        if child.is_dir():
            yield from _walk(iso, f"/{rel}")
        elif child.is_file():
            yield rel, _read_file(iso, rel)


def _read_file(iso: pycdlib.PyCdlib, name: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
    return out.getvalue()


def _add_directories(
    iso: pycdlib.PyCdlib, iso_dirs: dict[str, str], used: set[str], rel: str
) -> str:
    """Create ``rel`` and its parents once; return its ISO 9660 path ('' for the root)."""
    if rel in iso_dirs:
        return iso_dirs[rel]
    parent, _, leaf = rel.rpartition("/")
    iso_parent = _add_directories(iso, iso_dirs, used, parent)
    iso_path = _iso9660_path(iso_parent, leaf, used)
    iso.add_directory(iso_path=iso_path, rr_name=leaf, joliet_path=f"/{rel}")
    iso_dirs[rel] = iso_path
    return iso_path


def _iso9660_path(iso_parent: str, name: str, used: set[str]) -> str:
    """A new ISO 9660 level 3 path below ``iso_parent``: upper-case d-characters, unique."""
    stem = "".join(c if c.isalnum() else "_" for c in name.upper())[:30]
    candidate, counter = f"{iso_parent}/{stem}", 0
    while candidate in used:
        counter += 1
        candidate = f"{iso_parent}/{stem[:24]}_{counter}"
    used.add(candidate)
    return candidate


def _check_name(name: str) -> None:
    parts = name.split("/")
    bad = [part for part in parts if not part or len(part) > _MAX_NAME or part in (".", "..")]
    if not name or bad or len(parts) > _MAX_DEPTH:
        raise InvalidInput(
            f"seed file name {name!r} is not a plain file name or a relative path of them",
            hint=f"use names such as 'meta-data' or 'openstack/latest/user_data' (at most "
            f"{_MAX_DEPTH} levels of {_MAX_NAME} characters)",
        )
