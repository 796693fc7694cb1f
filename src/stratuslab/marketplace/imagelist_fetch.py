"""Fetching what an image list points at: the list itself, and images for their digests.

Image lists carry only SHA-512 while marketplace ids come from SHA-1: when a list lacks
``sl:checksum:sha1`` (ours carry it), the image is fetched once from ``hv:uri`` to compute the
other digests, and its size and SHA-512 are checked on the way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from stratuslab.errors import InvalidInput, VerificationError
from stratuslab.marketplace.imagelist_doc import ListImage
from stratuslab.marketplace.metadata import Checksums

_CHUNK = 1024 * 1024

Fetcher = Callable[[ListImage], tuple[Checksums, str]]


def open_location(uri: str, *, http: httpx.Client | None = None) -> Iterator[bytes]:
    """Stream the bytes at an ``http(s)://`` or ``file://`` URI (or a local path)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        client = http or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        try:
            with client.stream("GET", uri, follow_redirects=True) as response:
                if response.status_code >= 400:
                    raise InvalidInput(
                        f"GET {uri} failed: HTTP {response.status_code}",
                        hint="check the URL",
                        code="unreachable_location",
                    )
                yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as exc:
            raise InvalidInput(
                f"cannot fetch {uri}: {exc}", hint="check the URL", code="unreachable_location"
            ) from exc
        finally:
            if http is None:
                client.close()
        return
    path = Path(unquote(parts.path)) if parts.scheme == "file" else Path(uri)
    if parts.scheme not in ("file", ""):
        raise InvalidInput(
            f"cannot fetch {uri}: scheme {parts.scheme} is not supported",
            hint="use http, https or file URLs",
            code="unreachable_location",
        )
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk
    except OSError as exc:
        raise InvalidInput(
            f"cannot read {uri}: {exc.strerror}", hint="check the path", code="unreachable_location"
        ) from exc


def read_location(uri: str, *, http: httpx.Client | None = None, limit: int) -> bytes:
    data = bytearray()
    for chunk in open_location(uri, http=http):
        data += chunk
        if len(data) > limit:
            raise InvalidInput(f"{uri} is larger than {limit} bytes", hint="check the URL")
    return bytes(data)


def fetching_digests(http: httpx.Client | None = None) -> Fetcher:
    """A fetcher that downloads each image once, checking its size and SHA-512."""

    def fetch(image: ListImage) -> tuple[Checksums, str]:
        hashers = {name: hashlib.new(name) for name in ("md5", "sha1", "sha256", "sha512")}
        size, head = 0, b""
        for chunk in open_location(image.uri, http=http):
            if len(head) < 4:
                head += chunk[:4]
            size += len(chunk)
            if size > image.size:
                break
            for hasher in hashers.values():
                hasher.update(chunk)
        if size != image.size:
            more = "more than " if size > image.size else ""
            raise VerificationError(
                f"image {image.identifier} at {image.uri} has {more}{size} bytes, the list "
                f"says {image.size}",
                hint="the image at hv:uri is not the one the endorser listed",
                code="checksum_mismatch",
            )
        checksums = Checksums(**{name: h.hexdigest() for name, h in hashers.items()})
        return checksums, "qcow2" if head.startswith(b"QFI\xfb") else "raw"

    return fetch


def checksums_for(image: ListImage, fetcher: Fetcher | None) -> tuple[Checksums, str | None]:
    """The digests of a listed image: from the list when it has SHA-1, else fetched (with
    the format sniffed from the image's first bytes)."""
    if image.sha1 is not None:
        return Checksums(sha1=image.sha1, sha256=image.sha256, sha512=image.sha512), None
    if fetcher is None:
        raise InvalidInput(
            f"image {image.identifier} has no sl:checksum:sha1 and fetching images is off",
            hint="allow fetching the images (their SHA-1 gives the marketplace id)",
        )
    return fetcher(image)
