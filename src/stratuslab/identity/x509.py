"""Client certificate authentication: grid CA directories, CRLs, RFC 3820 proxies.

:func:`verify_client_chain` takes what the client presented (leaf first, then whatever
else it sent: proxies, its end-entity certificate, intermediate CAs) and, in this order:

1. walks down the proxy certificates to the end-entity certificate (EEC). Each proxy must
   be signed by the next certificate, be named after it plus exactly one ``CN``, not be a
   CA, carry no subjectAltName, and respect the path length limits of the proxies above
   it. RFC 3820 proxies (``proxyCertInfo``, policy *inheritAll* or *limited*), the
   pre-RFC "GT3" draft and legacy Globus proxies (``CN=proxy`` / ``CN=limited proxy``) are
   accepted; *independent* proxies and other policy languages are refused because they do
   not speak for the user.
2. builds the path from the EEC to a CA of the trust directory (laid out like
   ``/etc/grid-security/certificates``; see :mod:`stratuslab.marketplace.truststore`),
   through intermediate CAs the client sent;
3. checks every certificate's validity period, the EEC's extendedKeyUsage (clientAuth if
   present) and that it is not a CA;
4. checks every CA-issued certificate against its issuer's CRL: a revoked certificate, an
   expired CRL or an unreadable CRL file refuses the login (fail closed); a missing CRL
   only when ``require_crls`` is set.

Every refusal is :class:`Unauthorized` saying which certificate failed and why. The
identity is the EEC's subject DN; proxies only prove that the user delegated it.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stratuslab.errors import InvalidInput, Unauthorized
from stratuslab.identity import _der
from stratuslab.identity.dn import dn_rfc4514, dn_slash
from stratuslab.marketplace.truststore import TrustStore

PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
PROXY_CERT_INFO_DRAFT = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
POLICY_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
POLICY_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
POLICY_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
MAX_PROXIES = 10
MAX_CAS = 8
_LEGACY_CNS = {"proxy": False, "limited proxy": True}
_HINT = "present a valid certificate (or `voms-proxy-init`/`grid-proxy-init` a new proxy)"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyInfo:
    kind: str  # "rfc3820", "draft" or "legacy"
    path_length: int | None
    policy: str
    limited: bool


@dataclass(frozen=True)
class CertIdentity:
    """Who a verified certificate chain speaks for."""

    dn: str  # the EEC subject, slash form: the grid's user name
    rfc4514: str
    issuer_dn: str
    serial_number: int
    #: the earliest end of validity in the chain: when this credential stops working
    expires_at: datetime
    proxy_depth: int  # 0: the end-entity certificate itself
    limited: bool
    chain: tuple[x509.Certificate, ...]  # leaf first, trust anchor last


def describe(cert: x509.Certificate) -> str:
    return f"{dn_slash(cert.subject)} (serial {cert.serial_number:#x})"


def _refuse(message: str, code: str = "bad_certificate") -> Unauthorized:
    return Unauthorized(message, hint=_HINT, code=code)


def verify_client_chain(
    presented: Sequence[x509.Certificate],
    trust: TrustStore,
    *,
    at: datetime,
    require_crls: bool = False,
) -> CertIdentity:
    """Verify a client's certificates (leaf first) at time ``at``; see the module doc."""
    if not presented:
        raise _refuse("no client certificate was presented", "no_certificate")
    supplied = tuple(presented[1:])
    proxies, eec, limited = _walk_proxies(presented[0], supplied)
    ca_path = _path_to_anchor(eec, supplied, trust)
    chain = [*proxies, *ca_path]
    _check_validity(chain, at)
    _check_end_entity(eec)
    _check_revocation(ca_path, trust, at=at, require_crls=require_crls)
    return CertIdentity(
        dn=dn_slash(eec.subject),
        rfc4514=dn_rfc4514(eec.subject),
        issuer_dn=dn_slash(eec.issuer),
        serial_number=eec.serial_number,
        expires_at=min(c.not_valid_after_utc for c in chain),
        proxy_depth=len(proxies),
        limited=limited,
        chain=tuple(chain),
    )


# -- proxies ---------------------------------------------------------------------------


def proxy_info(cert: x509.Certificate) -> ProxyInfo | None:
    """What kind of proxy ``cert`` is, or ``None`` for an ordinary certificate."""
    for oid, kind in ((PROXY_CERT_INFO, "rfc3820"), (PROXY_CERT_INFO_DRAFT, "draft")):
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        value = ext.value
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        return _parse_proxy_cert_info(raw, kind, cert)
    last = cert.subject.rdns[-1] if cert.subject.rdns else None
    if last is not None and len(last) == 1:
        attr = next(iter(last))
        legacy = _LEGACY_CNS.get(str(attr.value)) if attr.oid == NameOID.COMMON_NAME else None
        if legacy is not None and x509.Name(cert.subject.rdns[:-1]) == cert.issuer:
            return ProxyInfo(
                "legacy", None, POLICY_LIMITED if legacy else POLICY_INHERIT_ALL, legacy
            )
    return None


def _parse_proxy_cert_info(raw: bytes, kind: str, cert: x509.Certificate) -> ProxyInfo:
    try:
        [(tag, body)] = _der.items(raw)
        if tag != _der.SEQUENCE:
            raise ValueError("not a SEQUENCE")
        path_length: int | None = None
        policy = ""
        for inner_tag, inner in _der.items(body):
            if inner_tag == _der.INTEGER:
                path_length = _der.integer(inner)
            elif inner_tag == _der.SEQUENCE:
                oid_tag, oid_body = _der.items(inner)[0]
                if oid_tag != _der.OID:
                    raise ValueError("policy language is not an OID")
                policy = _der.oid(oid_body)
        if not policy:
            raise ValueError("no proxy policy")
    except ValueError as exc:
        raise _refuse(f"proxy {describe(cert)} has a malformed proxyCertInfo ({exc})") from None
    return ProxyInfo(kind, path_length, policy, policy == POLICY_LIMITED)


def _walk_proxies(
    leaf: x509.Certificate, supplied: tuple[x509.Certificate, ...]
) -> tuple[list[x509.Certificate], x509.Certificate, bool]:
    proxies: list[x509.Certificate] = []
    limited = False
    current = leaf
    while (info := proxy_info(current)) is not None:
        if len(proxies) >= MAX_PROXIES:
            raise _refuse(f"more than {MAX_PROXIES} proxy certificates in a chain")
        issuer = _signed_by(current, supplied)
        if issuer is None:
            raise _refuse(
                f"the issuer of proxy {describe(current)} was not sent with it, or did not sign it",
                "broken_proxy_chain",
            )
        _check_proxy(current, issuer, info, below=len(proxies))
        limited = limited or info.limited
        proxies.append(current)
        current = issuer
    return proxies, current, limited


def _check_proxy(
    proxy: x509.Certificate, issuer: x509.Certificate, info: ProxyInfo, *, below: int
) -> None:
    name = describe(proxy)
    if info.policy == POLICY_INDEPENDENT:
        raise _refuse(f"proxy {name} is independent: it does not carry its issuer's identity")
    if info.policy not in (POLICY_INHERIT_ALL, POLICY_LIMITED):
        raise _refuse(f"proxy {name} has the unsupported policy language {info.policy}")
    rdns = proxy.subject.rdns
    last = rdns[-1] if rdns else None
    if (
        last is None
        or len(last) != 1
        or next(iter(last)).oid != NameOID.COMMON_NAME
        or x509.Name(rdns[:-1]) != issuer.subject
    ):
        raise _refuse(f"proxy {name} is not named after its issuer plus one CN")
    if _is_ca(proxy) or _is_ca(issuer):
        raise _refuse(f"proxy {name} or its issuer is a CA certificate")
    if _has_extension(proxy, x509.SubjectAlternativeName) or _has_extension(
        proxy, x509.IssuerAlternativeName
    ):
        raise _refuse(f"proxy {name} carries alternative names, which RFC 3820 forbids")
    usage = _key_usage(issuer)
    if usage is not None and not usage.digital_signature:
        raise _refuse(f"{describe(issuer)} may not sign proxies (no digitalSignature usage)")
    if info.path_length is not None and below > info.path_length:
        raise _refuse(
            f"proxy {name} allows {info.path_length} further proxies below it, found {below}"
        )


# -- the CA part -----------------------------------------------------------------------


def _path_to_anchor(
    eec: x509.Certificate, supplied: tuple[x509.Certificate, ...], trust: TrustStore
) -> list[x509.Certificate]:
    path = [eec]
    current = eec
    for _ in range(MAX_CAS):
        anchor = _signed_by(current, tuple(trust.issuers_of(current)))
        if anchor is not None:
            return [*path, anchor]
        parent = _signed_by(current, tuple(c for c in supplied if c not in path))
        if parent is None:
            raise _refuse(
                f"{describe(current)} is issued by {dn_slash(current.issuer)}, which is not a "
                "trusted CA (or did not sign it)",
                "untrusted_certificate",
            )
        if not _is_ca(parent):
            raise _refuse(f"{describe(parent)} signed {describe(current)} but is not a CA")
        path.append(parent)
        current = parent
    raise _refuse(f"the chain of {describe(eec)} has more than {MAX_CAS} CAs")


def _check_validity(chain: Iterable[x509.Certificate], at: datetime) -> None:
    for cert in chain:
        if at < cert.not_valid_before_utc:
            raise _refuse(
                f"certificate {describe(cert)} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}",
                "certificate_not_yet_valid",
            )
        if at > cert.not_valid_after_utc:
            raise _refuse(
                f"certificate {describe(cert)} expired at {cert.not_valid_after_utc.isoformat()}",
                "certificate_expired",
            )


def _check_end_entity(eec: x509.Certificate) -> None:
    if _is_ca(eec):
        raise _refuse(f"{describe(eec)} is a CA certificate, not a personal certificate")
    try:
        eku = eec.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if (
        ExtendedKeyUsageOID.CLIENT_AUTH not in eku
        and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
    ):
        raise _refuse(f"{describe(eec)} is not meant for client authentication")


def _check_revocation(
    path: list[x509.Certificate], trust: TrustStore, *, at: datetime, require_crls: bool
) -> None:
    if trust.unreadable_crls:
        raise _refuse(
            "revocation cannot be checked: unreadable CRL file(s) "
            f"{', '.join(trust.unreadable_crls)} in the trust directory",
            "crl_unavailable",
        )
    for cert, issuer in itertools.pairwise(path):
        crls = trust.crls_of(issuer)
        if not crls and require_crls:
            raise _refuse(
                f"no CRL of CA {dn_slash(issuer.subject)} is installed", "crl_unavailable"
            )
        for crl in crls:
            if crl.next_update_utc is not None and at > crl.next_update_utc:
                raise _refuse(
                    f"the CRL of CA {dn_slash(issuer.subject)} expired at "
                    f"{crl.next_update_utc.isoformat()}",
                    "crl_expired",
                )
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                raise _refuse(
                    f"certificate {describe(cert)} was revoked at "
                    f"{revoked.revocation_date_utc.isoformat()}",
                    "certificate_revoked",
                )


def _signed_by(
    cert: x509.Certificate, candidates: tuple[x509.Certificate, ...]
) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _has_extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return False
    return True


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


# -- certificates forwarded by a TLS-terminating front proxy ---------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def parse_trusted_proxies(addresses: Iterable[str]) -> tuple[Network, ...]:
    """``["127.0.0.1", "10.0.0.0/8", "::1"]`` as networks; InvalidInput if one is not."""
    networks = []
    for address in addresses:
        try:
            networks.append(ipaddress.ip_network(address.strip(), strict=False))
        except ValueError as exc:
            raise InvalidInput(
                f"trusted proxy {address!r} is not an address or network ({exc})",
                hint="write addresses or CIDR networks, e.g. 127.0.0.1 or 10.0.0.0/8",
            ) from None
    return tuple(networks)


def certs_from_proxy_header(
    value: str | None, *, peer: str | None, trusted_proxies: Sequence[Network]
) -> list[x509.Certificate] | None:
    """The client certificates a trusted front proxy forwarded in a header.

    ``value`` is e.g. nginx's ``$ssl_client_escaped_cert`` (URL-encoded PEM; only the
    client's own certificate) or several PEM blocks (leaf first) from a proxy that forwards
    the whole chain. ``None`` or empty: no certificate. The header is only believed when
    the TCP peer is one of ``trusted_proxies``; from anyone else it is refused, since a
    client could write any header it likes.
    """
    if not value:
        return None
    if not _is_trusted(peer, trusted_proxies):
        raise Unauthorized(
            f"a client-certificate header came from {peer or 'an unknown address'}, which is "
            "not a trusted proxy",
            hint="connect through the site's TLS front end (or add it to trusted_proxies)",
            code="untrusted_proxy",
        )
    text = unquote(value)
    blocks = _PEM_BLOCK.findall(text)
    try:
        if not blocks:
            raise ValueError("no PEM certificate")
        return [x509.load_pem_x509_certificate(_pem(body)) for body in blocks]
    except ValueError:
        raise Unauthorized(
            "the forwarded client certificate is not a PEM certificate",
            hint="the front proxy must forward $ssl_client_escaped_cert (URL-encoded PEM)",
            code="bad_certificate_header",
        ) from None


def _is_trusted(peer: str | None, networks: Sequence[Network]) -> bool:
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _pem(body: str) -> bytes:
    b64 = "".join(body.split())
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    ).encode()
