"""Site image policy: may this site run this image? Pure functions, no I/O.

Rules, checked in this order; the first that refuses names itself in the error:

==================  ===========================================================
``deny_images``     identifiers never run
``allow_images``    if not empty, only these identifiers run
``require_signature`` an image needs a trusted marketplace entry
``deny_endorsers``  entries by these endorsers (email or DN) do not count
``allow_endorsers`` if not empty, only entries by these endorsers count
``deny_checksums``  images with any of these digests never run
``allow_checksums`` if not empty, only images with one of these digests run
``refuse_deprecated`` the newest entry of the endorser deprecates the image
``refuse_expired``  the newest entry of the endorser is past ``valid_until``
==================  ===========================================================

Several endorsers may endorse one image: :func:`check_any` accepts the image if at least one
entry passes (as the original ``policy.cfg`` filters did). Default: accept everything that
carries a valid trusted entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from stratuslab.errors import Forbidden, InvalidInput


class EntryStatus(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    DEPRECATED = "deprecated"


@dataclass(frozen=True)
class SitePolicy:
    allow_endorsers: frozenset[str] = frozenset()
    deny_endorsers: frozenset[str] = frozenset()
    allow_images: frozenset[str] = frozenset()
    deny_images: frozenset[str] = frozenset()
    allow_checksums: frozenset[str] = frozenset()
    deny_checksums: frozenset[str] = frozenset()
    refuse_expired: bool = True
    refuse_deprecated: bool = True
    require_signature: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SitePolicy:
        """Build from configuration (e.g. a TOML ``[policy]`` table); unknown keys refused."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidInput(
                f"unknown site policy setting(s): {', '.join(unknown)}",
                hint=f"known settings: {', '.join(known)}",
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(getattr(cls, name, None), bool):
                values[name] = _flag(name, value)
            else:
                values[name] = _names(name, value)
        return cls(**values)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"policy setting {name} must be true or false", hint="fix the policy")
    return value


def _names(name: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInput(f"policy setting {name} must be a list", hint="fix the policy")
    lowered = name.endswith("checksums")
    return frozenset(str(v).strip().lower() if lowered else str(v).strip() for v in value)


@dataclass(frozen=True)
class PolicyEntry:
    """What the policy needs to know about one marketplace entry (the newest of its
    endorser for the image), with its status computed at the time of the check."""

    identifier: str
    endorser_email: str | None
    endorser_dn: str
    checksums: frozenset[str]
    status: EntryStatus
    trusted: bool = True
    deprecated_reason: str | None = None
    valid_until: str | None = None

    def matches(self, endorsers: frozenset[str]) -> bool:
        email = (self.endorser_email or "").lower()
        return any(e == self.endorser_dn or (email and e.lower() == email) for e in endorsers)


def check(entry: PolicyEntry | None, image_identifier: str, policy: SitePolicy) -> None:
    """Raise :class:`Forbidden` naming the rule if the site may not run the image."""
    _check_image(image_identifier, policy)
    if entry is None:
        _check_unendorsed(image_identifier, policy)
        return
    if entry.identifier != image_identifier:
        raise InvalidInput(
            f"entry is for image {entry.identifier}, not {image_identifier}",
            hint="pass the entry of the image being checked",
        )
    for rule in _ENTRY_RULES:
        reason = rule(entry, policy)
        if reason is not None:
            raise _refused(image_identifier, reason)


def check_any(
    entries: Iterable[PolicyEntry], image_identifier: str, policy: SitePolicy
) -> PolicyEntry | None:
    """Accept the image if one entry passes; return it (``None``: accepted unendorsed).

    When every entry is refused, the error lists each endorser's reason.
    """
    entries = list(entries)
    if not entries:
        check(None, image_identifier, policy)
        return None
    reasons = []
    for entry in entries:
        try:
            check(entry, image_identifier, policy)
        except Forbidden as exc:
            reasons.append(exc.details.get("reason", exc.message))
            if exc.details.get("rule") in ("deny_images", "allow_images"):
                raise
        else:
            return entry
    raise _refused(image_identifier, "; ".join(reasons), rule="all_entries_refused")


def _check_image(identifier: str, policy: SitePolicy) -> None:
    if identifier in policy.deny_images:
        raise _refused(identifier, "the image is on the deny list (deny_images)", "deny_images")
    if policy.allow_images and identifier not in policy.allow_images:
        raise _refused(
            identifier, "the image is not on the allow list (allow_images)", "allow_images"
        )


def _check_unendorsed(identifier: str, policy: SitePolicy) -> None:
    if policy.require_signature:
        raise _refused(
            identifier,
            "no trusted marketplace entry endorses the image (require_signature)",
            "require_signature",
        )
    if policy.allow_endorsers:
        raise _refused(
            identifier,
            "no endorser on the allow list endorses it (allow_endorsers)",
            "allow_endorsers",
        )
    if policy.allow_checksums:
        raise _refused(
            identifier,
            "its checksum is unknown, so it cannot be on the allow list (allow_checksums)",
            "allow_checksums",
        )


def _signature(entry: PolicyEntry, policy: SitePolicy) -> tuple[str, str] | None:
    if policy.require_signature and not entry.trusted:
        return "require_signature", f"the entry by {_who(entry)} has no trusted signature"
    return None


def _endorser(entry: PolicyEntry, policy: SitePolicy) -> tuple[str, str] | None:
    if entry.matches(policy.deny_endorsers):
        return "deny_endorsers", f"endorser {_who(entry)} is on the deny list"
    if policy.allow_endorsers and not entry.matches(policy.allow_endorsers):
        return "allow_endorsers", f"endorser {_who(entry)} is not on the allow list"
    return None


def _checksum(entry: PolicyEntry, policy: SitePolicy) -> tuple[str, str] | None:
    denied = sorted(entry.checksums & policy.deny_checksums)
    if denied:
        return "deny_checksums", f"checksum {denied[0]} is on the deny list"
    if policy.allow_checksums and not entry.checksums & policy.allow_checksums:
        return "allow_checksums", "none of its checksums is on the allow list"
    return None


def _state(entry: PolicyEntry, policy: SitePolicy) -> tuple[str, str] | None:
    if entry.status is EntryStatus.DEPRECATED and policy.refuse_deprecated:
        reason = f": {entry.deprecated_reason}" if entry.deprecated_reason else ""
        return "refuse_deprecated", f"{_who(entry)} deprecated it{reason}"
    if entry.status is EntryStatus.EXPIRED and policy.refuse_expired:
        when = f" at {entry.valid_until}" if entry.valid_until else ""
        return "refuse_expired", f"the entry by {_who(entry)} expired{when}"
    return None


_ENTRY_RULES = (_signature, _endorser, _checksum, _state)


def _who(entry: PolicyEntry) -> str:
    return entry.endorser_email or entry.endorser_dn


def _refused(identifier: str, reason: str | tuple[str, str], rule: str = "") -> Forbidden:
    if isinstance(reason, tuple):
        rule, text = reason
        reason = f"{text} ({rule})"
    return Forbidden(
        f"image {identifier} is refused by site policy: {reason}",
        hint="choose another image, or ask the site administrator to change the image policy",
        code="image_policy",
        details={"rule": rule, "reason": reason, "image": identifier},
    )
