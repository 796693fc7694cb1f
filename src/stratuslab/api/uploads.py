"""Receiving a streamed file body into the images directory, hashing it on the way."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from fastapi import Request


async def receive_upload(request: Request, directory: Path) -> tuple[Path, str]:
    """Write the request body to a temporary file in ``directory``; return it and its sha256.

    The file is removed if the transfer breaks off.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), digest.hexdigest()
