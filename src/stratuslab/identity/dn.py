"""Distinguished names in both spellings, and the DN-to-user mapping (grid-mapfile style).

* RFC 4514, most specific first: ``CN=Jane Doe,O=Lab,DC=example,DC=org``
* OpenSSL/Globus "slash" form, certificate order: ``/DC=org/DC=example/O=Lab/CN=Jane Doe``

The grid writes DNs in the slash form (grid-mapfiles, VOMS, APEL ``GlobalUserName``), so
that is the canonical form used for comparisons: :func:`canonical_dn` accepts either
spelling and returns the slash form with attribute names normalised (``E``, ``Email`` and
``emailAddress`` are one attribute). Values are compared exactly, as the grid does.

Mapping file, one entry per line (``#`` comments, blank lines ignored)::

    "/DC=org/DC=example/O=Lab/CN=Jane Doe" jane
    "CN=Robot,O=Lab,DC=example,DC=org"     robot      # RFC 4514 is accepted too
    /DC=org/DC=example/CN=nospaces          nick,alias # grid style: the first name is used
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from stratuslab.errors import InvalidInput, Unauthorized

_SHORT_NAMES = {
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.TITLE: "title",
}
_ALIASES = {"E": "emailAddress", "EMAIL": "emailAddress", "EMAILADDRESS": "emailAddress"}
_SLASH_SPLIT = re.compile(r"/(?=[A-Za-z][A-Za-z0-9.-]*=)")
_PLUS_SPLIT = re.compile(r"\+(?=[A-Za-z][A-Za-z0-9.-]*=)")
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _attr_name(attr: x509.NameAttribute[str | bytes]) -> str:
    return _SHORT_NAMES.get(attr.oid, attr.rfc4514_attribute_name)


def _attr_value(attr: x509.NameAttribute[str | bytes]) -> str:
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def dn_slash(name: x509.Name) -> str:
    """The OpenSSL/Globus form, in certificate order: ``/C=CH/O=CERN/CN=Jane``."""
    return "".join(
        "/" + "+".join(f"{_attr_name(a)}={_attr_value(a)}" for a in rdn) for rdn in name.rdns
    )


def dn_rfc4514(name: x509.Name) -> str:
    """The RFC 4514 form, most specific first: ``CN=Jane,O=CERN,C=CH``."""
    return name.rfc4514_string({NameOID.EMAIL_ADDRESS: "emailAddress"})


def canonical_dn(text: str) -> str:
    """The canonical slash form of a DN written either way; InvalidInput if unreadable."""
    text = text.strip()
    if not text:
        raise InvalidInput("empty distinguished name", hint="write /C=../O=../CN=..")
    if text.startswith("/"):
        return "".join("/" + _canonical_rdn(part) for part in _SLASH_SPLIT.split(text[1:]))
    rdns = [_canonical_rdn(rdn) for rdn in reversed(_split_unescaped(text, ","))]
    return "".join("/" + rdn for rdn in rdns)


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split RFC 4514 text at unescaped ``separator``s; values are unescaped."""
    parts, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            hexpair = text[i + 1 : i + 3]
            if re.fullmatch(r"[0-9A-Fa-f]{2}", hexpair):
                current.append(chr(int(hexpair, 16)))
                i += 3
                continue
            current.append(text[i + 1])
            i += 2
            continue
        if char == separator:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current).strip())
    return parts


def _canonical_rdn(rdn: str) -> str:
    parts = []
    for part in _PLUS_SPLIT.split(rdn):
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput(
                f"DN component {part!r} is not TYPE=value", hint="write /C=../O=../CN=.."
            )
        parts.append(f"{_ALIASES.get(key.upper(), key.upper())}={value}")
    return "+".join(parts)


@dataclass(frozen=True)
class DnMap:
    """Canonical DN -> user name."""

    entries: Mapping[str, str]

    def lookup(self, dn: str) -> str | None:
        return self.entries.get(canonical_dn(dn))

    def user_for(self, dn: str) -> str:
        user = self.lookup(dn)
        if user is None:
            raise Unauthorized(
                f"the certificate subject {dn} is not mapped to a user of this cloud",
                hint="ask the cloud administrators to add your DN to the mapping "
                "(or register and link your certificate)",
                code="unmapped_dn",
            )
        return user


def parse_dn_map(text: str, *, source: str = "DN mapping") -> DnMap:
    """Parse a grid-mapfile; every problem is an InvalidInput naming the line."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            dn, user = _parse_line(line)
        except InvalidInput as exc:
            raise InvalidInput(
                f"{source}, line {number}: {exc.message}",
                hint='each line is "DN" username, e.g. "/DC=org/DC=example/CN=Jane Doe" jane',
                code="bad_dn_map",
            ) from None
        if entries.setdefault(dn, user) != user:
            raise InvalidInput(
                f"{source}, line {number}: {dn} is already mapped to {entries[dn]!r}",
                hint="a DN maps to exactly one user; remove one of the lines",
                code="bad_dn_map",
            )
    return DnMap(entries)


def _parse_line(line: str) -> tuple[str, str]:
    if line.startswith('"'):
        dn, rest = _quoted(line)
    else:
        dn, _, rest = line.partition(" ")
        if "\t" in dn:
            dn, _, tail = dn.partition("\t")
            rest = tail + " " + rest
    rest = rest.split("#", 1)[0].strip()
    if not rest:
        raise InvalidInput("no user name after the DN", hint="")
    users = [u.strip() for u in rest.split(",")]
    bad = [u for u in users if not _USERNAME.fullmatch(u)]
    if bad:
        raise InvalidInput(f"invalid user name {bad[0]!r}", hint="")
    return canonical_dn(dn), users[0]


def _quoted(line: str) -> tuple[str, str]:
    out = []
    i = 1
    while i < len(line):
        char = line[i]
        if char == "\\" and i + 1 < len(line) and line[i + 1] in '"\\':
            out.append(line[i + 1])  # \" and \\; other escapes belong to RFC 4514
            i += 2
            continue
        if char == '"':
            rest = line[i + 1 :]
            if rest and not rest[0].isspace():
                raise InvalidInput("the closing quote must be followed by a space", hint="")
            return "".join(out), rest
        out.append(char)
        i += 1
    raise InvalidInput("the DN's closing quote is missing", hint="")
