"""One verified base file per image, shared by every instance on the host.

``ImageCache.ensure(ref)`` returns the path of the image's base file, the qcow2 backing file
of every instance made from it, fetching it first if needed:

1. **download** from the first of ``ref.locations`` that works (``http(s)://``, ``file://``),
   or from the controller when there is none, into ``.<key>.part``; an interrupted HTTP
   download is resumed with a ``Range`` request (now, up to ``attempts`` times, or at the next
   ``ensure``);
2. **decompress** (gz, bz2, xz: ``ref.compression``, else the URL suffix);
3. **verify** size and every digest ``ref`` gives (sha256, sha512) of the uncompressed
   bytes: on a mismatch the files are deleted and :class:`~stratuslab.errors.ImageError`
   ``checksum_mismatch`` is raised, so a bad file is never cached (the next mirror is tried
   first, if any);
4. **inspect** non-raw images from locations with ``qemu-img info`` (the controller checked
   its own at registration): the declared format must be right and there must be no backing
   or external data file (they would expose host files to guests);
5. **convert** with ``qemu-img convert`` to qcow2 formats that are not raw or qcow2 (vmdk,
   vdi, vhd...), and raw too with ``raw_to_qcow2``; the base's suffix is its format;
6. **publish** it atomically as ``<sha256>.<format>``, mode 0644 in a 0755 directory (QEMU
   runs as libvirt-qemu).

Concurrent ``ensure`` calls for one image (threads) fetch it once. The cache may be bounded
(``max_bytes``, allocated bytes): :meth:`ImageCache.evict` removes the least recently used
bases that no instance uses; with an ``in_use`` callback, ``ensure`` evicts by itself.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httpx

from stratuslab.errors import ImageError
from stratuslab.schemas.agent import ImageRef

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
DECOMPRESSORS = ("gz", "bz2", "xz")
#: formats qemu-img converts to qcow2 (a base must be raw or qcow2)
CONVERTIBLE = {"vmdk": "vmdk", "vdi": "vdi", "vhd": "vpc", "vpc": "vpc", "vhdx": "vhdx"}
_SUFFIXES = {".gz": "gz", ".bz2": "bz2", ".xz": "xz"}
_MISMATCH = "checksum_mismatch"


class ImageSource(Protocol):
    """The controller (``ControllerLink``): streams a registered image, returns its sha256."""

    def download_image(self, image_id: str, dest: Path) -> str: ...


class _Retry(Exception):
    """A transfer broke off; what was received is kept in the ``.part`` file."""


class ImageCache:
    def __init__(
        self,
        directory: Path,
        source: ImageSource | None,
        *,
        max_bytes: int | None = None,
        in_use: Callable[[], set[Path]] | None = None,
        http: httpx.Client | None = None,
        raw_to_qcow2: bool = False,
        attempts: int = 3,
        qemu_img: str = "qemu-img",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.source = source
        self.max_bytes = max_bytes
        self.in_use = in_use
        self.raw_to_qcow2 = raw_to_qcow2
        self.attempts = max(1, attempts)
        self.qemu_img = qemu_img
        self.clock = clock
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)

    # -- public ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def path_for(self, ref: ImageRef) -> Path:
        return self.directory / f"{_key(ref)}.{self._target_format(ref)}"

    def ensure(self, ref: ImageRef) -> Path:
        """Return the cached base for ``ref``, fetching and verifying it once."""
        final = self.path_for(ref)
        if not final.exists():
            with self._lock(_key(ref)):
                if not final.exists():
                    self._fill(ref, final)
        self._touch(final)
        if self.in_use is not None and self.max_bytes is not None:
            self.evict(self.in_use() | {final})
        return final

    def evict(self, in_use: set[Path], *, max_bytes: int | None = None) -> list[Path]:
        """Remove least recently used bases not in ``in_use`` until the cache holds at most
        ``max_bytes`` (default: the cache's limit); return what was removed.

        ``in_use`` must name the base of every instance the host has or is about to create.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        if limit is None:
            return []
        keep = {p.resolve() for p in in_use}
        bases = sorted(self.cached(), key=lambda p: p.stat().st_atime_ns)
        total = sum(_allocated(p) for p in bases)
        removed: list[Path] = []
        for base in bases:
            if total <= limit:
                break
            if base.resolve() in keep:
                continue
            lock = self._lock(base.name.split(".", 1)[0])
            if not lock.acquire(blocking=False):
                continue  # being fetched or checked right now
            try:
                size = _allocated(base)
                base.unlink(missing_ok=True)
            finally:
                lock.release()
            total -= size
            removed.append(base)
            log.info("evicted image base %s (%d bytes)", base.name, size)
        return removed

    def cached(self) -> list[Path]:
        """The base files (work files start with a dot)."""
        return sorted(
            p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")
        )

    def usage(self) -> int:
        """Disk space the bases take (allocated bytes: sparse files count what they hold)."""
        return sum(_allocated(p) for p in self.cached())

    # -- fetching --------------------------------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            stat = path.stat()
            os.utime(path, ns=(int(self.clock() * 1e9), stat.st_mtime_ns))

    def _work(self, ref: ImageRef, suffix: str) -> Path:
        return self.directory / f".{_key(ref)}{suffix}"

    def _fill(self, ref: ImageRef, final: Path) -> None:
        if not (ref.sha256 or ref.sha512):
            raise ImageError(
                f"image {ref.id} comes with no checksum, so it cannot be verified",
                hint="register the image with its sha256 (or endorse it with its sha512)",
                code="unverifiable_image",
            )
        if not ref.locations:
            if self.source is None:
                raise ImageError(
                    f"image {ref.id} has no download location", hint="", code="image_unreachable"
                )
            part = self._work(ref, ".part")
            part.unlink(missing_ok=True)
            self.source.download_image(ref.id, part)
            # the controller inspected the file when it was registered
            self._place(ref, part, None, final, inspect=False)
            return
        problems: list[str] = []
        codes: set[str] = set()
        for location in ref.locations:
            try:
                self._download(ref, location)
                self._place(ref, self._work(ref, ".part"), _compression(ref, location), final)
                return
            except ImageError as exc:
                if exc.code != "image_unreachable":  # keep only what may be resumed
                    self._work(ref, ".part").unlink(missing_ok=True)
                    self._work(ref, ".part.src").unlink(missing_ok=True)
                problems.append(f"{location}: {exc.message}")
                codes.add(exc.code)
                log.warning("image %s from %s: %s", ref.id, location, exc.message)
        raise ImageError(
            f"image {ref.id} could not be fetched: {'; '.join(problems)}",
            hint="check the image's locations and its metadata (size, checksums)",
            code=codes.pop() if len(codes) == 1 else _pick(codes),
        )

    def _download(self, ref: ImageRef, location: str) -> None:
        part, origin = self._work(ref, ".part"), self._work(ref, ".part.src")
        if not origin.exists() or origin.read_text() != location:
            part.unlink(missing_ok=True)  # a partial file from another location
            origin.write_text(location)
        scheme = urlsplit(location).scheme
        if scheme == "file":
            _copy_file(Path(unquote(urlsplit(location).path)), part)
            return
        if scheme not in ("http", "https"):
            raise ImageError(
                f"unsupported location scheme {scheme or '(none)'}",
                hint="use http, https or file URLs",
                code="image_unreachable",
            )
        limit = None if _compression(ref, location) else ref.size_bytes
        last = ""
        for attempt in range(self.attempts):
            try:
                self._fetch(location, part, limit)
                return
            except _Retry as exc:
                last = str(exc)
                log.info("download of %s broke off (%s), attempt %d", location, exc, attempt + 1)
        raise ImageError(
            f"download failed after {self.attempts} attempts ({last}); "
            f"{_size(part)} bytes kept to resume",
            hint="the next start of the instance resumes the download",
            code="image_unreachable",
        )

    def _fetch(self, url: str, part: Path, limit: int | None) -> None:
        offset = _size(part)
        # identity: Range counts the bytes of the file, not of a content-encoded form
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with self._http.stream("GET", url, headers=headers, follow_redirects=True) as resp:
                if resp.status_code == 416 and offset:
                    return  # nothing left to send: verification decides
                if resp.status_code >= 400:
                    raise ImageError(
                        f"HTTP {resp.status_code}", hint="check the URL", code="image_unreachable"
                    )
                resumed = resp.status_code == 206 and offset > 0
                if resumed and not resp.headers.get("content-range", "").startswith(
                    f"bytes {offset}-"
                ):
                    part.unlink(missing_ok=True)
                    raise _Retry(f"unexpected Content-Range {resp.headers.get('content-range')}")
                with part.open("ab" if resumed else "wb") as out:
                    written = offset if resumed else 0
                    for chunk in resp.iter_raw():  # as received: kept if cut
                        written += len(chunk)
                        if limit is not None and written > limit:
                            part.unlink(missing_ok=True)
                            raise ImageError(
                                f"the server sends more than the {limit} bytes of the image",
                                hint="the location serves another file",
                                code=_MISMATCH,
                            )
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc

    # -- checking and publishing -----------------------------------------------------------

    def _place(
        self,
        ref: ImageRef,
        part: Path,
        compression: str | None,
        final: Path,
        *,
        inspect: bool = True,
    ) -> None:
        tmp = self._work(ref, ".tmp")
        converted = self._work(ref, ".qcow2.tmp")
        try:
            data = part
            if compression is not None:
                _decompress(part, tmp, compression, limit=ref.size_bytes or None)
                data = tmp
            _verify(ref, data)
            if inspect and ref.format != "raw":
                self._inspect(data, ref.format)
            target = self._target_format(ref)
            if target != ref.format:
                self._convert(data, ref.format, converted)
                data = converted
            data.chmod(0o644)
            os.replace(data, final)
            log.info("cached image %s as %s", ref.id, final.name)
        except BaseException:
            part.unlink(missing_ok=True)  # a bad or unusable file is never kept
            raise
        finally:
            for leftover in (part, tmp, converted, self._work(ref, ".part.src")):
                leftover.unlink(missing_ok=True)

    def _target_format(self, ref: ImageRef) -> str:
        if ref.format in CONVERTIBLE or (ref.format == "raw" and self.raw_to_qcow2):
            return "qcow2"
        return ref.format

    def _inspect(self, path: Path, fmt: str) -> None:
        driver = CONVERTIBLE.get(fmt, fmt)
        info = self._qemu_img(
            ["info", "--output=json", "-f", driver, str(path)], f"is not a {fmt} image"
        )
        try:
            details = json.loads(info)
        except ValueError as exc:
            raise ImageError(
                "qemu-img info gave no JSON", hint="check qemu-utils", code="not_a_disk_image"
            ) from exc
        data_file = details.get("format-specific", {}).get("data", {}).get("data-file")
        if details.get("backing-filename") or data_file:
            other = details.get("backing-filename") or data_file
            raise ImageError(
                f"the {fmt} image refers to another file ({other})",
                hint="an image must be self-contained (flatten it with qemu-img convert)",
                code="not_a_disk_image",
            )

    def _convert(self, source: Path, fmt: str, dest: Path) -> None:
        driver = CONVERTIBLE.get(fmt, fmt)
        self._qemu_img(
            ["convert", "-q", "-f", driver, "-O", "qcow2", str(source), str(dest)],
            f"cannot be converted from {fmt} to qcow2",
        )

    def _qemu_img(self, args: list[str], problem: str) -> str:
        try:
            proc = subprocess.run(
                [self.qemu_img, *args], capture_output=True, text=True, check=False, timeout=3600
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImageError(
                f"cannot run qemu-img: {exc}",
                hint="install qemu-utils",
                code="qemu_img_failed",
            ) from exc
        if proc.returncode != 0:
            raise ImageError(
                f"the image {problem}: {proc.stderr.strip()}",
                hint="check the image's format in its metadata",
                code="not_a_disk_image",
            )
        return proc.stdout


def _pick(codes: set[str]) -> str:
    """The failure to report when locations failed differently: a bad file wins."""
    return _MISMATCH if _MISMATCH in codes else "image_unreachable"


def _key(ref: ImageRef) -> str:
    return ref.sha256 or ref.sha512 or ref.id


def _compression(ref: ImageRef, location: str) -> str | None:
    if ref.compression is not None:
        if ref.compression not in DECOMPRESSORS:
            raise ImageError(
                f"compression {ref.compression} is not supported",
                hint="use gz, bz2 or xz",
                code="unsupported_compression",
            )
        return ref.compression
    return _SUFFIXES.get(Path(urlsplit(location).path).suffix)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _copy_file(source: Path, part: Path) -> None:
    offset = _size(part)
    try:
        with source.open("rb") as src, part.open("ab" if offset else "wb") as out:
            src.seek(offset)
            shutil.copyfileobj(src, out, CHUNK)
    except OSError as exc:
        raise ImageError(
            f"cannot read {source}: {exc.strerror}", hint="", code="image_unreachable"
        ) from exc


def _open_compressed(path: Path, compression: str) -> io.BufferedIOBase:
    if compression == "gz":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    return lzma.open(path, "rb")


def _decompress(source: Path, dest: Path, compression: str, *, limit: int | None) -> None:
    written = 0
    try:
        with _open_compressed(source, compression) as src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if limit is not None and written > limit:
                    raise ImageError(
                        f"the image decompresses to more than its {limit} bytes",
                        hint="the location serves another file",
                        code=_MISMATCH,
                    )
                out.write(chunk)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ImageError(
            f"the downloaded file is not valid {compression} data: {exc}",
            hint="the download is corrupt or the compression in the metadata is wrong",
            code=_MISMATCH,
        ) from exc


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _verify(ref: ImageRef, path: Path) -> None:
    wanted = {"sha256": ref.sha256, "sha512": ref.sha512}
    hashers = {name: hashlib.new(name) for name, value in wanted.items() if value}
    size = 0
    for chunk in _chunks(path):
        size += len(chunk)
        for hasher in hashers.values():
            hasher.update(chunk)
    if ref.size_bytes > 0 and size != ref.size_bytes:
        raise ImageError(
            f"image {ref.id} failed verification: {size} bytes, expected {ref.size_bytes}",
            hint="the transfer was corrupted or the location serves another file",
            code=_MISMATCH,
        )
    for name, hasher in hashers.items():
        digest = hasher.hexdigest()
        if digest != str(wanted[name]).lower():
            raise ImageError(
                f"image {ref.id} failed verification: {name} {digest} does not match the "
                f"expected {wanted[name]}",
                hint="the image file changed or the transfer was corrupted; the file was not kept",
                code=_MISMATCH,
            )


class FakeImageCache:
    """For simulation: every image is 'cached' at once, nothing is downloaded."""

    def __init__(self) -> None:
        self.fetched: set[str] = set()

    def ensure(self, ref: ImageRef) -> Path:
        self.fetched.add(ref.sha256)
        return Path(f"/fake/images/{ref.sha256}.{ref.format}")
