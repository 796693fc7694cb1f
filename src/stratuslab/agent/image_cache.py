"""One verified base file per image, shared by every instance on the host."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Protocol

from stratuslab.errors import ImageError
from stratuslab.schemas.agent import ImageRef


class ImageSource(Protocol):
    def download_image(self, image_id: str, dest: Path) -> str: ...


class ImageCache:
    def __init__(self, directory: Path, source: ImageSource) -> None:
        self.directory = directory
        self.source = source
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)

    def path_for(self, ref: ImageRef) -> Path:
        return self.directory / f"{ref.sha256}.{ref.format}"

    def ensure(self, ref: ImageRef) -> Path:
        """Return the cached base for ``ref``, downloading and verifying it once."""
        final = self.path_for(ref)
        if final.exists():
            return final
        with self._locks[ref.sha256]:
            if final.exists():
                return final
            part = final.with_suffix(final.suffix + ".part")
            try:
                digest = self.source.download_image(ref.id, part)
                if digest != ref.sha256:
                    raise ImageError(
                        f"image {ref.id} failed verification: sha256 {digest} does not match "
                        f"the registered {ref.sha256}",
                        hint="the image file on the controller changed or the transfer was "
                        "corrupted; re-register the image",
                        code="checksum_mismatch",
                    )
                part.chmod(0o644)
                os.replace(part, final)
            finally:
                part.unlink(missing_ok=True)
            return final

    def cached(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if not p.name.endswith(".part")]


class FakeImageCache:
    """For simulation: every image is 'cached' at once, nothing is downloaded."""

    def __init__(self) -> None:
        self.fetched: set[str] = set()

    def ensure(self, ref: ImageRef) -> Path:
        self.fetched.add(ref.sha256)
        return Path(f"/fake/images/{ref.sha256}.{ref.format}")
