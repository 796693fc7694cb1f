"""Just enough DER to read a ProxyCertInfo extension (RFC 3820 section 3.8)."""

from __future__ import annotations

SEQUENCE = 0x30
INTEGER = 0x02
OID = 0x06


def items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of consecutive DER TLVs; ValueError if malformed."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated DER")
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or i + count > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > len(data):
            raise ValueError("truncated DER")
        out.append((tag, data[i : i + length]))
        i += length
    return out


def oid(body: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or body[-1] & 0x80:
        raise ValueError("bad OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def integer(body: bytes) -> int:
    if not body:
        raise ValueError("empty INTEGER")
    return int.from_bytes(body, "big", signed=True)
