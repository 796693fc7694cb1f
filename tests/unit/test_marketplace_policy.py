"""The site image policy matrix: each rule alone, then rules together."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from stratuslab.errors import Forbidden, InvalidInput
from stratuslab.marketplace.policy import EntryStatus, PolicyEntry, SitePolicy, check, check_any

IMAGE = "MMZu9WvwKIro-rtBQfDk4PsKO7_"
OTHER = "AAAAAAAAAAAAAAAAAAAAAAAAAAA"
SHA1 = "c319bbd5afc0a22ba3eaed0507c39383ec28eeff"
JANE_DN = "/DC=org/DC=example/CN=Jane"
ENTRY = PolicyEntry(
    identifier=IMAGE,
    endorser_email="jane@example.org",
    endorser_dn=JANE_DN,
    checksums=frozenset({SHA1, "ab" * 32}),
    status=EntryStatus.VALID,
    valid_until="2026-06-01T00:00:00Z",
)
EXPIRED = replace(ENTRY, status=EntryStatus.EXPIRED)
DEPRECATED = replace(ENTRY, status=EntryStatus.DEPRECATED, deprecated_reason="CVE-2026-1")
UNTRUSTED = replace(ENTRY, trusted=False)
P = SitePolicy

# (policy, entry, refusing rule or None)
MATRIX: list[tuple[str, SitePolicy, PolicyEntry | None, str | None]] = [
    ("default accepts a valid entry", P(), ENTRY, None),
    ("default refuses no entry", P(), None, "require_signature"),
    ("unsigned allowed", P(require_signature=False), None, None),
    ("untrusted entry", P(), UNTRUSTED, "require_signature"),
    ("untrusted allowed", P(require_signature=False), UNTRUSTED, None),
    ("deny image", P(deny_images=frozenset({IMAGE})), ENTRY, "deny_images"),
    ("deny other image", P(deny_images=frozenset({OTHER})), ENTRY, None),
    ("allow image", P(allow_images=frozenset({IMAGE})), ENTRY, None),
    ("allow other image", P(allow_images=frozenset({OTHER})), ENTRY, "allow_images"),
    ("deny image beats unsigned", P(deny_images=frozenset({IMAGE}), require_signature=False),
     None, "deny_images"),
    ("deny endorser by email", P(deny_endorsers=frozenset({"JANE@example.org"})), ENTRY,
     "deny_endorsers"),
    ("deny endorser by DN", P(deny_endorsers=frozenset({JANE_DN})), ENTRY, "deny_endorsers"),
    ("deny other endorser", P(deny_endorsers=frozenset({"bob@example.org"})), ENTRY, None),
    ("allow endorser by email", P(allow_endorsers=frozenset({"jane@example.org"})), ENTRY, None),
    ("allow endorser by DN", P(allow_endorsers=frozenset({JANE_DN})), ENTRY, None),
    ("allow other endorser", P(allow_endorsers=frozenset({"bob@example.org"})), ENTRY,
     "allow_endorsers"),
    ("allow endorser, no entry", P(allow_endorsers=frozenset({"jane@example.org"}),
     require_signature=False), None, "allow_endorsers"),
    ("deny checksum", P(deny_checksums=frozenset({SHA1})), ENTRY, "deny_checksums"),
    ("deny other checksum", P(deny_checksums=frozenset({"0" * 40})), ENTRY, None),
    ("allow checksum", P(allow_checksums=frozenset({"ab" * 32})), ENTRY, None),
    ("allow other checksum", P(allow_checksums=frozenset({"0" * 40})), ENTRY, "allow_checksums"),
    ("allow checksum, no entry", P(allow_checksums=frozenset({SHA1}), require_signature=False),
     None, "allow_checksums"),
    ("expired refused", P(), EXPIRED, "refuse_expired"),
    ("expired allowed", P(refuse_expired=False), EXPIRED, None),
    ("deprecated refused", P(), DEPRECATED, "refuse_deprecated"),
    ("deprecated allowed", P(refuse_deprecated=False), DEPRECATED, None),
    ("expiry relaxed, still deprecated", P(refuse_expired=False), DEPRECATED, "refuse_deprecated"),
    ("allow-listed endorser, still deprecated", P(allow_endorsers=frozenset({JANE_DN})),
     DEPRECATED, "refuse_deprecated"),
    ("allowed image, denied endorser", P(allow_images=frozenset({IMAGE}),
     deny_endorsers=frozenset({JANE_DN})), ENTRY, "deny_endorsers"),
    ("everything relaxed", P(refuse_expired=False, refuse_deprecated=False,
     require_signature=False), replace(UNTRUSTED, status=EntryStatus.DEPRECATED), None),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "entry", "rule"), [m[1:] for m in MATRIX],
                         ids=[m[0] for m in MATRIX])  # fmt: skip
def test_policy_matrix(policy: SitePolicy, entry: PolicyEntry | None, rule: str | None) -> None:
    if rule is None:
        check(entry, IMAGE, policy)
        return
    with pytest.raises(Forbidden) as err:
        check(entry, IMAGE, policy)
    assert err.value.code == "image_policy"
    assert err.value.details["rule"] == rule
    assert f"({rule})" in err.value.message
    assert IMAGE in err.value.message


def test_deprecation_reason_is_in_the_message() -> None:
    with pytest.raises(Forbidden, match=r"jane@example.org deprecated it: CVE-2026-1"):
        check(DEPRECATED, IMAGE, SitePolicy())


def test_expiry_time_is_in_the_message() -> None:
    with pytest.raises(Forbidden, match="expired at 2026-06-01T00:00:00Z"):
        check(EXPIRED, IMAGE, SitePolicy())


def test_entry_for_another_image_is_a_programming_error() -> None:
    with pytest.raises(InvalidInput, match="not " + IMAGE):
        check(replace(ENTRY, identifier=OTHER), IMAGE, SitePolicy())


BOB = replace(ENTRY, endorser_email="bob@example.org", endorser_dn="/CN=Bob")


def test_check_any_accepts_when_one_endorser_passes() -> None:
    policy = SitePolicy(allow_endorsers=frozenset({"bob@example.org"}))
    assert check_any([ENTRY, BOB], IMAGE, policy) is BOB


def test_check_any_lists_every_reason() -> None:
    policy = SitePolicy(allow_endorsers=frozenset({"carol@example.org"}))
    with pytest.raises(Forbidden) as err:
        check_any([ENTRY, replace(BOB, status=EntryStatus.EXPIRED)], IMAGE, policy)
    assert err.value.details["rule"] == "all_entries_refused"
    assert "jane@example.org is not on the allow list" in err.value.message
    assert "bob@example.org is not on the allow list" in err.value.message


def test_check_any_image_rules_are_final() -> None:
    with pytest.raises(Forbidden) as err:
        check_any([ENTRY, BOB], IMAGE, SitePolicy(deny_images=frozenset({IMAGE})))
    assert err.value.details["rule"] == "deny_images"


def test_check_any_without_entries() -> None:
    assert check_any([], IMAGE, SitePolicy(require_signature=False)) is None
    with pytest.raises(Forbidden, match="require_signature"):
        check_any([], IMAGE, SitePolicy())


def test_policy_from_configuration() -> None:
    policy = SitePolicy.from_mapping(
        {"deny_endorsers": ["bob@example.org"], "allow_checksums": [SHA1.upper()],
         "refuse_expired": False}
    )  # fmt: skip
    assert policy.deny_endorsers == frozenset({"bob@example.org"})
    assert policy.allow_checksums == frozenset({SHA1})
    assert policy.refuse_expired is False
    assert policy.require_signature is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"deny_endorser": []}, "unknown site policy setting"),
        ({"refuse_expired": "yes"}, "must be true or false"),
        ({"deny_images": "MMZu9WvwKIro-rtBQfDk4PsKO7_"}, "must be a list"),
    ],
)
def test_policy_configuration_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SitePolicy.from_mapping(data)
