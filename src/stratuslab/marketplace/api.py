"""The marketplace REST API: one ``APIRouter`` under ``/marketplace``.

It needs only a :class:`MarketplaceContext`, found by :func:`get_marketplace` in
``app.state.marketplace``; mount it into any FastAPI app that sets that (or overrides the
dependency). Reads are anonymous; uploads need a valid signature, not an account.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from stratuslab.db.session import transaction
from stratuslab.errors import InvalidInput, ServiceUnavailable
from stratuslab.marketplace import imagelist, service
from stratuslab.marketplace.context import MarketplaceContext
from stratuslab.marketplace.metadata import describe_errors
from stratuslab.marketplace.models import MarketplaceEntry
from stratuslab.marketplace.policy import EntryStatus
from stratuslab.marketplace.schemas import (
    Endorser,
    Entry,
    EntryEndorser,
    EntryUpload,
    Feed,
    FeedItem,
    SignedEntry,
)
from stratuslab.marketplace.store import SearchFilter
from stratuslab.schemas.common import Page

router = APIRouter(prefix="/marketplace", tags=["marketplace"])
LISTED_FORMAT = "S/MIME signed HEPiX image list (the entry is one of its images)"
ACCEPTED_TYPES = "application/json ({metadata, signature} base64) or multipart/form-data"


def get_marketplace(request: Request) -> MarketplaceContext:
    mp = getattr(request.app.state, "marketplace", None)
    if not isinstance(mp, MarketplaceContext):
        raise ServiceUnavailable(
            "the marketplace is not enabled on this server",
            hint="set app.state.marketplace to a MarketplaceContext",
        )
    return mp


MarketplaceDep = Annotated[MarketplaceContext, Depends(get_marketplace)]


class UploadRefused(InvalidInput):
    """Bad input with the HTTP status of an upload refusal (413, 415); category stays
    ``invalid_input`` on the wire."""

    def __init__(self, message: str, *, hint: str, code: str, status: int) -> None:
        super().__init__(message, hint=hint, code=code)
        self.status = status


@router.post("/entries", status_code=201)
async def upload_entry(request: Request, response: Response, mp: MarketplaceDep) -> Entry:
    """Upload a signed entry; 201 with its URL, or an error saying what failed."""
    body = await _read_limited(request, mp.settings.max_upload_bytes)
    metadata, signature = _split_upload(request.headers.get("content-type", ""), body)
    entry = await run_in_threadpool(_submit, mp, metadata, signature)
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{entry.id}"
    return entry_out(entry, mp.clock())


def _submit(mp: MarketplaceContext, metadata: bytes, signature: bytes) -> MarketplaceEntry:
    trust = mp.trust()
    with transaction(mp.sessions) as session:
        return service.submit(
            session,
            metadata,
            signature,
            trust=trust,
            now=mp.clock(),
            require_crls=mp.settings.require_crls,
            max_clock_skew=mp.settings.max_clock_skew,
        )


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> UploadRefused:
    return UploadRefused(
        f"upload of {size} bytes or more exceeds the limit of {limit} bytes",
        hint="a metadata entry and its signature are a few KiB; check what is being sent",
        code="upload_too_large",
        status=413,
    )


def _split_upload(content_type: str, body: bytes) -> tuple[bytes, bytes]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return _json_upload(body)
    if media_type == "multipart/form-data":
        return _multipart_upload(content_type, body)
    raise UploadRefused(
        f"content type {media_type or '(none)'} is not accepted",
        hint=f"send {ACCEPTED_TYPES}",
        code="unsupported_media_type",
        status=415,
    )


def _json_upload(body: bytes) -> tuple[bytes, bytes]:
    try:
        upload = EntryUpload.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(
            "invalid upload: " + describe_errors(exc),
            hint='send {"metadata": BASE64, "signature": BASE64}',
        ) from exc
    return _b64("metadata", upload.metadata), _b64("signature", upload.signature)


def _b64(field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"{field} is not valid base64: {exc}", hint="encode the exact bytes with base64"
        ) from exc


def _multipart_upload(content_type: str, body: bytes) -> tuple[bytes, bytes]:
    header = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    parts: dict[str, bytes] = {}
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                parts[name] = payload
    missing = [name for name in ("metadata", "signature") if name not in parts]
    if missing:
        raise InvalidInput(
            f"multipart upload lacks the part(s) {', '.join(missing)}",
            hint="send the form fields metadata (the JSON file) and signature (DER)",
        )
    return parts["metadata"], parts["signature"]


StatusParam = Literal["valid", "expired", "deprecated", "all"]


@router.get("/entries")
def search_entries(
    mp: MarketplaceDep,
    endorser: str | None = None,
    os: str | None = None,
    arch: str | None = None,
    kind: Literal["machine", "disk"] | None = None,
    tag: str | None = None,
    status: StatusParam = "valid",
    q: Annotated[str | None, Query(max_length=200)] = None,
    identifier: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[Entry]:
    """The newest entry of each (image, endorser) matching every filter given."""
    query = SearchFilter(
        endorser=endorser,
        os=os,
        arch=arch,
        kind=kind,
        tag=tag,
        status=None if status == "all" else EntryStatus(status),
        text=q,
        identifier=identifier,
        limit=limit,
        offset=offset,
    )
    now = mp.clock()
    with mp.sessions() as session:
        result = service.search(session, query, now=now)
        items = [entry_out(e, now) for e in result.items]
    return Page[Entry](items=items, total=result.total, limit=limit, offset=offset)


@router.get("/images/{identifier}")
def image_entries(identifier: str, mp: MarketplaceDep) -> list[Entry]:
    """Every entry of the image, by every endorser, newest first."""
    now = mp.clock()
    with mp.sessions() as session:
        return [entry_out(e, now) for e in service.image_history(session, identifier)]


@router.get("/images/{identifier}/endorsers/{endorser:path}")
def image_endorser_entries(
    identifier: str, endorser: str, mp: MarketplaceDep, created: datetime | None = None
) -> list[Entry]:
    """The entries of one endorser (email or DN) for the image; ``created`` picks one."""
    now = mp.clock()
    with mp.sessions() as session:
        if created is not None:
            return [entry_out(service.get_exact(session, identifier, endorser, created), now)]
        return [entry_out(e, now) for e in service.image_history(session, identifier, endorser)]


@router.get("/entries/{entry_id}")
def get_entry(entry_id: str, mp: MarketplaceDep) -> Entry:
    with mp.sessions() as session:
        return entry_out(service.get_entry(session, entry_id), mp.clock())


@router.get("/entries/{entry_id}/signed")
def get_signed(entry_id: str, mp: MarketplaceDep) -> SignedEntry:
    """The exact signed bytes and signature, base64, so anyone can verify again."""
    with mp.sessions() as session:
        entry = service.get_entry(session, entry_id)
    listed = imagelist.is_smime(entry.signature)
    return SignedEntry(
        entry_id=entry.id,
        metadata=base64.b64encode(entry.metadata_bytes).decode("ascii"),
        signature=base64.b64encode(entry.signature).decode("ascii"),
        signature_format=LISTED_FORMAT if listed else "CMS SignedData, detached, DER",
    )


@router.get("/entries/{entry_id}/metadata.json")
def get_metadata_bytes(entry_id: str, mp: MarketplaceDep) -> Response:
    with mp.sessions() as session:
        entry = service.get_entry(session, entry_id)
    return Response(entry.metadata_bytes, media_type="application/json")


@router.get("/entries/{entry_id}/signature.p7s")
def get_signature_bytes(entry_id: str, mp: MarketplaceDep) -> Response:
    with mp.sessions() as session:
        entry = service.get_entry(session, entry_id)
    listed = imagelist.is_smime(entry.signature)
    media_type = "message/rfc822" if listed else "application/pkcs7-signature"
    return Response(entry.signature, media_type=media_type)


@router.get("/feed")
def entry_feed(
    mp: MarketplaceDep,
    after: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Feed:
    """Every stored entry with its signed bytes, in storage order, for replication: start
    at a storage time (``since``) or after the ``cursor`` of the last entry seen."""
    with mp.sessions() as session:
        entries = service.feed(session, since=since, after=after, limit=limit)
        items = [
            FeedItem(
                entry_id=e.id,
                identifier=e.identifier,
                endorser=e.endorser_key,
                created=e.created,
                uploaded_at=e.uploaded_at,
                metadata=base64.b64encode(e.metadata_bytes).decode("ascii"),
                signature=base64.b64encode(e.signature).decode("ascii"),
                cursor=service.feed_cursor(e),
            )
            for e in entries
        ]
    return Feed(items=items, next=items[-1].cursor if len(items) == limit else None)


@router.get("/endorsers")
def list_endorsers(mp: MarketplaceDep) -> list[Endorser]:
    with mp.sessions() as session:
        return [Endorser.model_validate(row) for row in service.list_endorsers(session)]


@router.get("/tags/{endorser:path}/{tag}")
def resolve_tag(endorser: str, tag: str, mp: MarketplaceDep) -> Entry:
    """The newest valid entry of ``endorser`` (email or DN) tagged ``tag``."""
    now = mp.clock()
    with mp.sessions() as session:
        return entry_out(service.resolve_tag(session, endorser, tag, now=now), now)


def entry_out(entry: MarketplaceEntry, now: datetime) -> Entry:
    document = json.loads(entry.metadata_bytes)
    return Entry(
        id=entry.id,
        identifier=entry.identifier,
        endorser=EntryEndorser(
            key=entry.endorser_key,
            email=entry.endorser_email,
            subject=entry.endorser_dn,
            issuer=entry.endorser_issuer,
        ),
        created=entry.created,
        valid_until=entry.valid_until,
        status=service.status_of(entry, now).value,
        deprecated=entry.deprecated,
        kind=entry.kind,
        format=entry.format,
        os=entry.os,
        os_version=entry.os_version,
        os_arch=entry.os_arch,
        title=entry.title,
        description=entry.description,
        tags=list(document.get("tags", [])),
        uploaded_at=entry.uploaded_at,
        metadata=document,
    )
