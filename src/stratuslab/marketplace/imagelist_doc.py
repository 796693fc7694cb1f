"""The HEPiX image list document: its model, parsing, and the order of its versions.

An image list is a JSON document ``{"hv:imagelist": {...}}`` (the signed content of an
S/MIME message, see :mod:`stratuslab.marketplace.smime`). The mandatory fields are those
atrope enforces; unknown keys (``ad:*`` from AppDB...) are kept.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from stratuslab.errors import InvalidInput
from stratuslab.marketplace.metadata import describe_errors
from stratuslab.marketplace.smime import IMAGE_LIST_HINT

#: extension keys of entries made from an image list
EXT_LIST = "imagelist:identifier"
EXT_VERSION = "imagelist:version"
EXT_IMAGE = "imagelist:image"


def utc(value: datetime) -> datetime:
    """``value`` in UTC (a naive time is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    """``value`` as image lists write times: ``2024-01-31T12:00:00Z``."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


UtcTime = Annotated[datetime, AfterValidator(utc)]
Sha512 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{128}$", to_lower=True)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
Sha1 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{40}$", to_lower=True)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Hepix(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="allow", populate_by_name=True, coerce_numbers_to_str=True
    )


class X509Endorser(_Hepix):
    dn: NonEmpty = Field(alias="hv:dn")
    ca: NonEmpty = Field(alias="hv:ca")
    email: str | None = Field(default=None, alias="hv:email")
    creator: str | None = Field(default=None, alias="dc:creator")


class ListEndorser(_Hepix):
    x509: X509Endorser = Field(alias="hv:x509")


class ListImage(_Hepix):
    """One ``hv:image``; unknown keys (``ad:*`` from AppDB...) are kept in ``model_extra``."""

    identifier: NonEmpty = Field(alias="dc:identifier")
    uri: NonEmpty = Field(alias="hv:uri")
    size: int = Field(alias="hv:size", ge=0)
    sha512: Sha512 = Field(alias="sl:checksum:sha512")
    sha1: Sha1 | None = Field(default=None, alias="sl:checksum:sha1")
    sha256: Sha256 | None = Field(default=None, alias="sl:checksum:sha256")
    title: str | None = Field(default=None, alias="dc:title")
    description: str | None = Field(default=None, alias="dc:description")
    version: str | None = Field(default=None, alias="hv:version")
    arch: str | None = Field(default=None, alias="sl:arch")
    os: str | None = Field(default=None, alias="sl:os")
    osversion: str | None = Field(default=None, alias="sl:osversion")
    comments: str | None = Field(default=None, alias="sl:comments")
    hypervisor: str | list[str] | None = Field(default=None, alias="hv:hypervisor")
    format: str | None = Field(default=None, alias="hv:format")


class ImageItem(_Hepix):
    image: ListImage = Field(alias="hv:image")


class ImageList(_Hepix):
    """The ``hv:imagelist`` object; the mandatory fields are those atrope enforces."""

    identifier: NonEmpty = Field(alias="dc:identifier")
    title: str = Field(alias="dc:title")
    description: str = Field(alias="dc:description")
    created: UtcTime = Field(alias="dc:date:created")
    expires: UtcTime = Field(alias="dc:date:expires")
    source: str = Field(alias="dc:source")
    version: NonEmpty = Field(alias="hv:version")
    uri: str = Field(alias="hv:uri")
    endorser: ListEndorser = Field(alias="hv:endorser")
    images: list[ImageItem] = Field(alias="hv:images")


def parse_image_list(content: bytes) -> ImageList:
    """Parse the JSON of an image list (the signed content); errors name the field."""
    try:
        document = json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the image list is not UTF-8: {exc.reason}", hint=IMAGE_LIST_HINT
        ) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the image list is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint=IMAGE_LIST_HINT,
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("hv:imagelist"), dict):
        raise InvalidInput(
            'the image list is not a JSON object with an "hv:imagelist" object',
            hint=IMAGE_LIST_HINT,
        )
    try:
        return ImageList.model_validate(document["hv:imagelist"])
    except ValidationError as exc:
        raise InvalidInput(
            "invalid image list: " + describe_errors(exc),
            hint="fix the named fields of hv:imagelist",
            details={"fields": [".".join(map(str, e["loc"])) for e in exc.errors()]},
        ) from exc


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order ``hv:version`` strings: numbers numerically (``1.10`` > ``1.9``), words by text."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in parts)


def is_newer(version: str, than: str) -> bool:
    new, old = version_key(version), version_key(than)
    if not new or not old:
        return version > than
    return new > old
