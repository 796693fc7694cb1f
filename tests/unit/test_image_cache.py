"""The node image cache against a real HTTP server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from stratuslab.agent.image_cache import ImageCache
from stratuslab.errors import ImageError, ServiceUnavailable
from stratuslab.schemas.agent import ImageRef

CONTENT = os.urandom(3 * 1024 * 1024 + 123)
SMALL = os.urandom(300_000)


@dataclass
class Files:
    """What the server serves, and what it saw."""

    content: dict[str, bytes] = field(default_factory=dict)
    #: path -> bytes to send before dropping the connection, once per entry
    cut_after: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: bool = False
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    files: Files

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        files = self.server.files  # type: ignore[attr-defined]
        with files.lock:
            files.requests.append((self.path, self.headers.get("Range")))
        data = files.content.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if files.delay:
            threading.Event().wait(files.delay)
        start = 0
        header = self.headers.get("Range")
        if header and not files.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cuts = files.cut_after.get(self.path)
        if cuts:
            body = body[: cuts.pop(0)]
            self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()
        with files.lock:
            files.sent += len(body)


@dataclass
class Server:
    url: str
    files: Files

    def add(self, name: str, data: bytes) -> str:
        self.files.content[f"/{name}"] = data
        return f"{self.url}/{name}"


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    files = Files()
    httpd.files = files  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", files)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def ref_for(
    data: bytes, *locations: str, fmt: str = "raw", sha512: bool = False, **extra: Any
) -> ImageRef:
    return ImageRef(
        id="img-1",
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        size_bytes=len(data),
        locations=list(locations),
        sha512=hashlib.sha512(data).hexdigest() if sha512 else None,
        **extra,
    )


def cache_in(tmp_path: Path, http: httpx.Client, **options: Any) -> ImageCache:
    return ImageCache(tmp_path / "images", None, http=http, **options)


def only_bases(cache: ImageCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir())


# -- fetching ------------------------------------------------------------------------------


def test_http_download_verified_and_shared(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    cache = cache_in(tmp_path, http)
    ref = ref_for(CONTENT, server.add("disk.img", CONTENT), sha512=True)
    base = cache.ensure(ref)
    assert base == cache.path_for(ref) == cache.directory / f"{ref.sha256}.raw"
    assert base.read_bytes() == CONTENT
    assert stat.S_IMODE(base.stat().st_mode) == 0o644
    assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o755
    assert only_bases(cache) == [base.name]  # no work files left
    assert cache.ensure(ref) == base
    assert len(server.files.requests) == 1


def test_a_corrupted_byte_is_refused_and_nothing_is_cached(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    bad = bytearray(CONTENT)
    bad[len(bad) // 2] ^= 0x01
    cache = cache_in(tmp_path, http)
    ref = ref_for(CONTENT, server.add("disk.img", bytes(bad)))
    with pytest.raises(ImageError) as err:
        cache.ensure(ref)
    assert err.value.code == "checksum_mismatch"
    assert "sha256" in err.value.message
    assert only_bases(cache) == []


def test_a_wrong_size_is_refused(tmp_path: Path, server: Server, http: httpx.Client) -> None:
    cache = cache_in(tmp_path, http)
    ref = ref_for(CONTENT, server.add("disk.img", CONTENT + b"extra"))
    with pytest.raises(ImageError) as err:
        cache.ensure(ref)
    assert err.value.code == "checksum_mismatch"
    assert only_bases(cache) == []


def test_sha512_is_checked_too(tmp_path: Path, server: Server, http: httpx.Client) -> None:
    cache = cache_in(tmp_path, http)
    ref = ref_for(CONTENT, server.add("disk.img", CONTENT)).model_copy(
        update={"sha512": hashlib.sha512(b"other").hexdigest()}
    )
    with pytest.raises(ImageError, match="sha512") as err:
        cache.ensure(ref)
    assert err.value.code == "checksum_mismatch"


def test_interrupted_download_is_resumed_with_range(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    url = server.add("disk.img", CONTENT)
    server.files.cut_after["/disk.img"] = [1_000_000, 500_000]
    cache = cache_in(tmp_path, http)
    base = cache.ensure(ref_for(CONTENT, url))
    assert base.read_bytes() == CONTENT
    assert [r for _p, r in server.files.requests] == [
        None,
        "bytes=1000000-",
        "bytes=1500000-",
    ]
    assert server.files.sent == len(CONTENT)  # nothing downloaded twice


def test_interrupted_download_resumes_at_the_next_ensure(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    url = server.add("disk.img", CONTENT)
    server.files.cut_after["/disk.img"] = [2_000_000]
    cache = cache_in(tmp_path, http, attempts=1)
    ref = ref_for(CONTENT, url)
    with pytest.raises(ImageError) as err:
        cache.ensure(ref)
    assert err.value.code == "image_unreachable"
    assert "2000000 bytes kept" in err.value.message
    assert cache.cached() == []
    assert cache.ensure(ref).read_bytes() == CONTENT
    assert server.files.requests[-1][1] == "bytes=2000000-"
    assert server.files.sent == len(CONTENT)


def test_server_without_ranges_restarts_cleanly(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    url = server.add("disk.img", CONTENT)
    server.files.cut_after["/disk.img"] = [1_000_000]
    server.files.ignore_range = True
    cache = cache_in(tmp_path, http)
    assert cache.ensure(ref_for(CONTENT, url)).read_bytes() == CONTENT


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)],
)
def test_compressed_inputs_are_decompressed_and_verified(
    tmp_path: Path, server: Server, http: httpx.Client, suffix: str, compress: Any
) -> None:
    cache = cache_in(tmp_path, http)
    url = server.add(f"disk.img{suffix}", compress(SMALL))
    base = cache.ensure(ref_for(SMALL, url))
    assert base.read_bytes() == SMALL
    assert only_bases(cache) == [base.name]


def test_compression_from_the_ref_wins_over_the_suffix(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    cache = cache_in(tmp_path, http)
    url = server.add("download?id=7", gzip.compress(SMALL))
    assert cache.ensure(ref_for(SMALL, url, compression="gz")).read_bytes() == SMALL


def test_corrupt_compressed_data_is_refused(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    data = bytearray(lzma.compress(SMALL))
    data[len(data) // 2] ^= 0xFF
    cache = cache_in(tmp_path, http)
    with pytest.raises(ImageError) as err:
        cache.ensure(ref_for(SMALL, server.add("disk.img.xz", bytes(data))))
    assert err.value.code == "checksum_mismatch"
    assert only_bases(cache) == []


def test_next_location_after_a_bad_one(tmp_path: Path, server: Server, http: httpx.Client) -> None:
    cache = cache_in(tmp_path, http)
    missing = f"{server.url}/missing.img"
    corrupt = server.add("corrupt.img", CONTENT[:-1] + b"\x00")
    good = server.add("good.img", CONTENT)
    base = cache.ensure(ref_for(CONTENT, missing, corrupt, good))
    assert base.read_bytes() == CONTENT


def test_unreachable_locations_name_each_failure(tmp_path: Path, http: httpx.Client) -> None:
    cache = cache_in(tmp_path, http, attempts=1)
    ref = ref_for(CONTENT, "http://127.0.0.1:9/disk.img", "ftp://example.org/disk.img")
    with pytest.raises(ImageError) as err:
        cache.ensure(ref)
    assert err.value.code == "image_unreachable"
    assert "127.0.0.1:9" in err.value.message and "ftp" in err.value.message


def test_file_location(tmp_path: Path, http: httpx.Client) -> None:
    source = tmp_path / "disk.img.gz"
    source.write_bytes(gzip.compress(SMALL))
    cache = cache_in(tmp_path, http)
    assert cache.ensure(ref_for(SMALL, source.as_uri())).read_bytes() == SMALL


# -- the controller as source --------------------------------------------------------------


class FakeController:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def download_image(self, image_id: str, dest: Path) -> str:
        self.calls += 1
        dest.write_bytes(self.data)
        return hashlib.sha256(self.data).hexdigest()


def test_controller_is_used_without_locations(tmp_path: Path) -> None:
    controller = FakeController(CONTENT)
    cache = ImageCache(tmp_path / "images", controller)
    ref = ref_for(CONTENT)
    assert cache.ensure(ref).read_bytes() == CONTENT
    assert cache.ensure(ref).read_bytes() == CONTENT
    assert controller.calls == 1


def test_controller_checksum_mismatch(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images", FakeController(b"not it"))
    with pytest.raises(ImageError) as err:
        cache.ensure(ref_for(CONTENT))
    assert err.value.code == "checksum_mismatch"
    assert cache.cached() == []


def test_controller_away_is_not_an_image_error(tmp_path: Path) -> None:
    class Away:
        def download_image(self, image_id: str, dest: Path) -> str:
            raise ServiceUnavailable("controller restarting")

    with pytest.raises(ServiceUnavailable):
        ImageCache(tmp_path / "images", Away()).ensure(ref_for(CONTENT))


# -- formats -------------------------------------------------------------------------------


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_qcow2_with_a_backing_file_is_refused(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    backing = tmp_path / "secret.raw"
    backing.write_bytes(b"\0" * 65536)
    sneaky = tmp_path / "sneaky.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing), str(sneaky))
    data = sneaky.read_bytes()
    cache = cache_in(tmp_path, http)
    with pytest.raises(ImageError, match="refers to another file") as err:
        cache.ensure(ref_for(data, server.add("sneaky.qcow2", data), fmt="qcow2"))
    assert err.value.code == "not_a_disk_image"
    assert only_bases(cache) == []


def test_declared_qcow2_that_is_not_is_refused(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    cache = cache_in(tmp_path, http)
    with pytest.raises(ImageError) as err:
        cache.ensure(ref_for(CONTENT, server.add("disk.qcow2", CONTENT), fmt="qcow2"))
    assert err.value.code == "not_a_disk_image"


def test_qcow2_is_kept_and_vmdk_is_converted(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(CONTENT[: 1024 * 1024])
    qcow2, vmdk = tmp_path / "disk.qcow2", tmp_path / "disk.vmdk"
    _qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    _qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk))
    cache = cache_in(tmp_path, http)
    q = qcow2.read_bytes()
    kept = cache.ensure(ref_for(q, server.add("disk.qcow2", q), fmt="qcow2"))
    assert kept.suffix == ".qcow2" and kept.read_bytes() == q
    v = vmdk.read_bytes()
    converted = cache.ensure(ref_for(v, server.add("disk.vmdk", v), fmt="vmdk"))
    assert converted.suffix == ".qcow2"
    out = tmp_path / "back.raw"
    _qemu_img("convert", "-q", "-f", "qcow2", "-O", "raw", str(converted), str(out))
    assert out.read_bytes() == raw.read_bytes()


def test_raw_to_qcow2_option(tmp_path: Path, server: Server, http: httpx.Client) -> None:
    cache = cache_in(tmp_path, http, raw_to_qcow2=True)
    base = cache.ensure(ref_for(CONTENT, server.add("disk.img", CONTENT)))
    assert base.suffix == ".qcow2"
    assert base.read_bytes()[:4] == b"QFI\xfb"


# -- eviction ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 10
        return self.now


def _images(n: int, size: int = 256 * 1024) -> list[bytes]:
    return [bytes([i + 1]) * size for i in range(n)]


def test_eviction_removes_least_recently_used_unused_bases(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    a, b, c, d = _images(4)
    cache = cache_in(tmp_path, http, clock=Clock())
    refs = [ref_for(x, server.add(f"{i}.img", x)) for i, x in enumerate((a, b, c, d))]
    pa, pb, pc, pd = (cache.ensure(r) for r in refs)
    cache.ensure(refs[0])  # a is now the most recently used
    one = pa.stat().st_blocks * 512
    removed = cache.evict({pb}, max_bytes=2 * one)
    # b is in use; c and d are the least recently used of the rest
    assert removed == [pc, pd]
    assert sorted(cache.cached()) == sorted([pa, pb])
    assert cache.usage() == 2 * one
    assert cache.evict(set(), max_bytes=0) == [pb, pa]


def test_ensure_evicts_by_itself_with_a_limit(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    images = _images(3)
    in_use: set[Path] = set()
    cache = cache_in(tmp_path, http, clock=Clock(), in_use=lambda: in_use)
    first = cache.ensure(ref_for(images[0], server.add("0.img", images[0])))
    cache.max_bytes = first.stat().st_blocks * 512 * 2
    in_use.add(first)
    second = cache.ensure(ref_for(images[1], server.add("1.img", images[1])))
    third = cache.ensure(ref_for(images[2], server.add("2.img", images[2])))
    # over the limit: the unused, least recently used base (second) goes
    assert sorted(cache.cached()) == sorted([first, third])
    assert not second.exists()


def test_no_limit_no_eviction(tmp_path: Path, http: httpx.Client) -> None:
    assert cache_in(tmp_path, http).evict(set()) == []


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_starts_download_once(
    tmp_path: Path, server: Server, http: httpx.Client
) -> None:
    server.files.delay = 0.2
    cache = cache_in(tmp_path, http)
    ref = ref_for(CONTENT, server.add("disk.img", CONTENT))
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(10)

    def start() -> None:
        barrier.wait()
        try:
            results.append(cache.ensure(ref))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 10 and len(set(results)) == 1
    assert len(server.files.requests) == 1
    assert results[0].read_bytes() == CONTENT


def test_no_checksum_no_cache(tmp_path: Path, http: httpx.Client) -> None:
    ref = ImageRef(id="x", sha256="", format="raw", size_bytes=1, locations=["file:///x"])
    with pytest.raises(ImageError) as err:
        cache_in(tmp_path, http).ensure(ref)
    assert err.value.code == "unverifiable_image"
