"""Running marketplace images: resolve an identifier or ``endorser/tag``, apply the site image
policy, and register the image in the caller's project so nodes can fetch it.

The site policy lives in a TOML file with a ``[policy]`` table (see docs/marketplace.md):
``$STRATUS_IMAGE_POLICY``, else ``DATA_DIR/image-policy.toml``, else built-in defaults (trusted
signature required, expired and deprecated images refused).
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Image
from stratuslab.errors import ImageError, InvalidInput, NotFound
from stratuslab.marketplace import service as market
from stratuslab.marketplace import store
from stratuslab.marketplace.ids import is_identifier
from stratuslab.marketplace.metadata import ImageMetadata, parse_metadata
from stratuslab.marketplace.policy import SitePolicy, check_any
from stratuslab.services.auth import Principal
from stratuslab.services.images import get_image
from stratuslab.types import ImageStatus

POLICY_ENV = "STRATUS_IMAGE_POLICY"
TAG_REF = re.compile(r"^(?P<endorser>[^/\s]+@[^/\s]+|[^/\s]+)/(?P<tag>[A-Za-z0-9._-]+)$")


def policy_path(data_dir: Path) -> Path:
    return Path(os.environ.get(POLICY_ENV) or data_dir / "image-policy.toml")


def load_site_policy(path: Path) -> SitePolicy:
    if not path.exists():
        return SitePolicy()
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path} is not valid TOML: {exc}", hint="fix the policy file") from exc
    return SitePolicy.from_mapping(data.get("policy", {}))


def resolve_image(
    session: Session, principal: Principal, ref: str, *, policy: SitePolicy, now: datetime
) -> Image:
    """A local image by id or name, else a marketplace image (identifier or endorser/tag)."""
    try:
        return get_image(session, principal, ref)
    except NotFound:
        identifier = _marketplace_identifier(session, ref, now)
        if identifier is None:
            raise
    entries = market.policy_entries(session, identifier, now=now)
    if not entries:
        raise NotFound(
            f"image {identifier!r} is neither a local image nor in the marketplace",
            hint="search the marketplace (`stratus image search`) or list local images "
            "(`stratus image list`)",
            code="image_not_found",
        )
    accepted = check_any(entries, identifier, policy)
    meta = _metadata(session, identifier, accepted.endorser_email if accepted else None)
    return _register(session, principal, identifier, meta)


def _marketplace_identifier(session: Session, ref: str, now: datetime) -> str | None:
    if is_identifier(ref):
        return ref
    match = TAG_REF.match(ref)
    if match is None:
        return None
    return market.resolve_tag(session, match["endorser"], match["tag"], now=now).identifier


def _metadata(session: Session, identifier: str, endorser_email: str | None) -> ImageMetadata:
    entries = store.newest_per_endorser(session, identifier)
    if not entries:
        raise NotFound(
            f"image {identifier} has no marketplace entry",
            hint="search the marketplace (`stratus image search`) or upload a signed entry",
        )
    chosen = next((e for e in entries if e.endorser_email == endorser_email), entries[0])
    return parse_metadata(chosen.metadata_bytes)


def _register(
    session: Session, principal: Principal, identifier: str, meta: ImageMetadata
) -> Image:
    existing = session.scalar(
        select(Image).where(
            Image.marketplace_id == identifier,
            Image.project_id == principal.project_id,
            Image.status == ImageStatus.AVAILABLE.value,
        )
    )
    if existing is not None:
        return existing
    if not meta.locations:
        raise ImageError(
            f"marketplace image {identifier} has no download location",
            hint="the endorser must publish an entry with at least one location",
            code="no_location",
        )
    sums = meta.checksums
    image = Image(
        name=identifier,
        format=str(meta.format),
        size_bytes=meta.bytes,
        virtual_size_bytes=meta.bytes,
        sha256=sums.sha256 or "",
        sha512=sums.sha512,
        status=ImageStatus.AVAILABLE.value,
        path="",
        marketplace_id=identifier,
        locations=list(meta.locations),
        compression=meta.compression,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    session.add(image)
    session.flush()
    return image
