"""User data: one file passed literally, or several combined into a MIME multipart, optionally
gzipped, and never more than :data:`MAX_USER_DATA` bytes once gzipped.

This is the ``--user-data FILE[:TYPE]`` option (the original ``--cloud-init TYPE,FILE``). The
types are cloud-init's MIME sub-types (``text/<type>``); a file given without a type gets the
one its first line announces (``#cloud-config``, ``#!``...).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from email import message_from_bytes
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from enum import StrEnum
from pathlib import Path

from stratuslab.errors import InvalidInput

#: The limit of the original StratusLab and of EC2: 16 KiB after gzip.
MAX_USER_DATA = 16 * 1024
GZIP_MAGIC = b"\x1f\x8b"


class PartType(StrEnum):
    """A user-data part type: the MIME type is ``text/<value>``."""

    CLOUD_CONFIG = "cloud-config"
    CLOUD_CONFIG_ARCHIVE = "cloud-config-archive"
    SHELL_SCRIPT = "x-shellscript"
    BOOTHOOK = "cloud-boothook"
    PART_HANDLER = "part-handler"
    INCLUDE_URL = "x-include-url"
    INCLUDE_ONCE_URL = "x-include-once-url"
    JINJA2 = "jinja2"

    @property
    def mime_type(self) -> str:
        return f"text/{self.value}"


_ALIASES = {
    "include-url": PartType.INCLUDE_URL,
    "include-once-url": PartType.INCLUDE_ONCE_URL,
    "shellscript": PartType.SHELL_SCRIPT,
    "boothook": PartType.BOOTHOOK,
}

#: First-line markers, longest first where one is a prefix of another.
_MARKERS = (
    (b"#cloud-config-archive", PartType.CLOUD_CONFIG_ARCHIVE),
    (b"#cloud-config", PartType.CLOUD_CONFIG),
    (b"#cloud-boothook", PartType.BOOTHOOK),
    (b"#part-handler", PartType.PART_HANDLER),
    (b"#include-once", PartType.INCLUDE_ONCE_URL),
    (b"#include", PartType.INCLUDE_URL),
    (b"## template: jinja", PartType.JINJA2),
    (b"#!", PartType.SHELL_SCRIPT),
)


@dataclass(frozen=True)
class UserDataPart:
    """One user-data file: its content, its type and the name the guest sees."""

    content: bytes
    type: PartType
    filename: str


def parse_type(name: str) -> PartType:
    """A part type from its name (``cloud-config``, ``x-shellscript``, ``include-url``...)."""
    text = name.strip().lower().removeprefix("text/")
    if text in _ALIASES:
        return _ALIASES[text]
    try:
        return PartType(text)
    except ValueError:
        known = ", ".join(sorted({t.value for t in PartType} | set(_ALIASES)))
        raise InvalidInput(
            f"unknown user-data type {name!r}", hint=f"use one of: {known}"
        ) from None


def guess_type(content: bytes) -> PartType | None:
    """The type announced by the first line, or None when it announces nothing."""
    for marker, part_type in _MARKERS:
        if content.startswith(marker):
            return part_type
    return None


def split_part_arg(arg: str) -> tuple[Path, PartType | None]:
    """Split ``FILE[:TYPE]``; a suffix that is not a known type stays part of the path."""
    path, sep, suffix = arg.rpartition(":")
    if sep and path:
        try:
            return Path(path), parse_type(suffix)
        except InvalidInput:
            pass
    return Path(arg), None


def make_part(content: bytes, *, filename: str, part_type: PartType | None = None) -> UserDataPart:
    """A part, typed explicitly or from its first line."""
    found = part_type or guess_type(content)
    if found is None:
        raise InvalidInput(
            f"cannot tell the user-data type of {filename}: its first line announces none",
            hint="start it with #cloud-config or #! or give the type: FILE:cloud-config",
        )
    return UserDataPart(content=content, type=found, filename=filename)


def load_part(arg: str) -> UserDataPart:
    """Read the part named by a ``FILE[:TYPE]`` argument."""
    path, part_type = split_part_arg(arg)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read user-data file {path}: {exc.strerror}", hint="check the path"
        ) from exc
    return make_part(content, filename=path.name, part_type=part_type)


def build_user_data(parts: Sequence[UserDataPart], *, compress: bool = False) -> bytes:
    """The user-data payload: one self-describing part literally, else MIME multipart.

    Raises :class:`InvalidInput` if it exceeds :data:`MAX_USER_DATA` bytes after gzip.
    """
    if not parts:
        raise InvalidInput("no user-data part given", hint="pass at least one FILE[:TYPE]")
    if len(parts) == 1 and guess_type(parts[0].content) is parts[0].type:
        payload = parts[0].content
    else:
        payload = mime_multipart(parts)
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    check_user_data_size(payload)
    return payload


def mime_multipart(parts: Sequence[UserDataPart]) -> bytes:
    """A MIME multipart of ``parts`` with a boundary derived from the content (reproducible)."""
    digest = hashlib.sha256(b"\0".join(p.content for p in parts)).hexdigest()
    message = MIMEMultipart(boundary=f"==stratuslab-{digest[:24]}==")
    for part, filename in zip(parts, _unique_names(parts), strict=True):
        try:
            text = part.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"user-data file {part.filename} is not UTF-8 text",
                hint="MIME parts must be text; pass binary content as a single gzip file",
            ) from exc
        sub = MIMEText(text, part.type.value, "utf-8")
        sub.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(sub)
    return message.as_bytes()


def check_user_data_size(payload: bytes) -> int:
    """Return the gzipped size of ``payload``; raise if it is over :data:`MAX_USER_DATA`."""
    packed = payload if payload.startswith(GZIP_MAGIC) else gzip.compress(payload, mtime=0)
    if len(packed) > MAX_USER_DATA:
        raise InvalidInput(
            f"user data is {len(packed)} bytes after gzip, over the limit of {MAX_USER_DATA}",
            hint="move large content out of user data (fetch it from a URL with #include or a "
            "runcmd download, or bake it into the image)",
            code="user_data_too_large",
            details={"size": len(packed), "limit": MAX_USER_DATA},
        )
    return len(packed)


def cloud_config_texts(payload: bytes) -> list[str]:
    """The cloud-config documents inside a payload (literal, MIME or gzip), for validation."""
    if payload.startswith(GZIP_MAGIC):
        payload = gzip.decompress(payload)
    if guess_type(payload) is PartType.CLOUD_CONFIG:
        return [payload.decode("utf-8", errors="replace")]
    if not payload.lstrip().lower().startswith((b"content-type:", b"mime-version:")):
        return []
    message = message_from_bytes(payload)
    texts: list[str] = []
    for sub in message.walk():
        if sub.get_content_type() == PartType.CLOUD_CONFIG.mime_type:
            body = sub.get_payload(decode=True)
            if isinstance(body, bytes):
                texts.append(body.decode("utf-8", errors="replace"))
    return texts


def _unique_names(parts: Sequence[UserDataPart]) -> list[str]:
    seen: set[str] = set()
    names: list[str] = []
    for index, part in enumerate(parts):
        name = part.filename or f"part-{index:03d}"
        if name in seen:
            name = f"{index:03d}-{name}"
        seen.add(name)
        names.append(name)
    return names
