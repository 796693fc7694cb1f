from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from stratuslab.errors import InvalidInput, Unauthorized
from stratuslab.identity.dn import canonical_dn, dn_rfc4514, dn_slash, parse_dn_map

NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CNRS"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "LAL"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Jane Doe, PhD"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jane@example.org"),
    ]
)


def test_both_forms() -> None:
    assert dn_slash(NAME) == "/C=FR/O=CNRS/OU=LAL/CN=Jane Doe, PhD/emailAddress=jane@example.org"
    assert dn_rfc4514(NAME) == (
        r"emailAddress=jane@example.org,CN=Jane Doe\, PhD,OU=LAL,O=CNRS,C=FR"
    )


def test_multi_valued_rdn() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Robot"),
                    x509.NameAttribute(NameOID.USER_ID, "r2"),
                ]
            ),
        ]
    )
    assert canonical_dn(dn_slash(name)) == canonical_dn(dn_rfc4514(name))


@pytest.mark.parametrize(
    "spelling",
    [
        "/C=FR/O=CNRS/OU=LAL/CN=Jane Doe, PhD/emailAddress=jane@example.org",
        "/c=FR/o=CNRS/ou=LAL/cn=Jane Doe, PhD/E=jane@example.org",
        "/C=FR/O=CNRS/OU=LAL/CN=Jane Doe, PhD/Email=jane@example.org",
        r"emailAddress=jane@example.org,CN=Jane Doe\, PhD,OU=LAL,O=CNRS,C=FR",
        r"E=jane@example.org, CN=Jane Doe\, PhD, OU=LAL, O=CNRS, C=FR",
    ],
)
def test_canonical_form_unifies_spellings(spelling: str) -> None:
    assert canonical_dn(spelling) == dn_slash(NAME)


def test_slashes_inside_values_survive() -> None:
    assert canonical_dn("/DC=org/CN=host/vm1.example.org") == "/DC=org/CN=host/vm1.example.org"


def test_values_compare_exactly() -> None:
    assert canonical_dn("/O=CNRS/CN=jane") != canonical_dn("/O=CNRS/CN=Jane")


@pytest.mark.parametrize("bad", ["", "   ", "/garbage", "not a dn", "CN=a,,O=b"])
def test_unreadable_dns(bad: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_dn(bad)


MAPFILE = r"""
# site users
"/C=FR/O=CNRS/OU=LAL/CN=Jane Doe, PhD/emailAddress=jane@example.org" jane
"CN=Robot R2\, the second,O=Lab,DC=example,DC=org"   robot   # RFC 4514 works too
"/DC=org/CN=Quoted \"Q\"" quoted
/DC=org/DC=example/CN=nospaces	nick,alias

"""


def test_mapfile() -> None:
    mapping = parse_dn_map(MAPFILE)
    assert mapping.lookup(dn_slash(NAME)) == "jane"
    assert mapping.lookup("/DC=org/DC=example/O=Lab/CN=Robot R2, the second") == "robot"
    assert mapping.lookup('/DC=org/CN=Quoted "Q"') == "quoted"
    assert mapping.lookup("CN=nospaces,DC=example,DC=org") == "nick"
    assert mapping.user_for("/DC=org/DC=example/CN=nospaces") == "nick"
    with pytest.raises(Unauthorized) as err:
        mapping.user_for("/DC=org/CN=Stranger")
    assert err.value.code == "unmapped_dn"
    assert "/DC=org/CN=Stranger" in err.value.message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('"/C=FR/CN=Jane jane', 1, "closing quote is missing"),
        ('# c\n"/C=FR/CN=Jane"', 2, "no user name"),
        ('"/C=FR/CN=Jane"jane', 1, "followed by a space"),
        ('"/C=FR/CN=Jane" ja ne', 1, "invalid user name 'ja ne'"),
        ('"/C=FR/CN=Jane" jane\n"/C=FR/CN=Jane" john', 2, "already mapped to 'jane'"),
        ('"/garbage" jane', 1, "not TYPE=value"),
    ],
)
def test_mapfile_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_dn_map(text, source="/etc/stratuslab/grid-mapfile")
    assert err.value.message.startswith(f"/etc/stratuslab/grid-mapfile, line {line}: ")
    assert fragment in err.value.message


def test_the_same_mapping_twice_is_fine() -> None:
    assert parse_dn_map('"/C=FR/CN=J" j\n"/C=FR/CN=J" j').lookup("/C=FR/CN=J") == "j"
