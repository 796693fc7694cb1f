from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stratuslab.errors import InvalidInput, Unauthorized
from stratuslab.identity.dn import parse_dn_map
from stratuslab.identity.x509 import (
    certs_from_proxy_header,
    parse_trusted_proxies,
    proxy_info,
    verify_client_chain,
)
from stratuslab.marketplace.truststore import TrustStore
from tests.identity_pki import (
    CA,
    DAY,
    HOUR,
    INDEPENDENT,
    LIMITED,
    NOW,
    Credential,
    grid_name,
    make_ca,
    make_proxy,
    make_user,
    nginx_escaped,
    pem,
    write_trust_dir,
)

JANE_DN = "/DC=org/DC=stratuslab/O=StratusLab Test/CN=Jane Doe"


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca()


@pytest.fixture(scope="module")
def jane(ca: CA) -> Credential:
    return make_user(ca)


@pytest.fixture
def trust(tmp_path: Path, ca: CA) -> TrustStore:
    return TrustStore.load(write_trust_dir(tmp_path / "certificates", [ca]))


def verify(trust: TrustStore, *creds: Credential | x509.Certificate, **kw: object):  # type: ignore[no-untyped-def]
    certs = [c.cert if isinstance(c, Credential) else c for c in creds]
    return verify_client_chain(certs, trust, at=NOW, **kw)  # type: ignore[arg-type]


def refused(trust: TrustStore, *creds: Credential | x509.Certificate, **kw: object) -> Unauthorized:
    with pytest.raises(Unauthorized) as err:
        verify(trust, *creds, **kw)
    return err.value


def test_end_entity_certificate(trust: TrustStore, jane: Credential) -> None:
    identity = verify(trust, jane)
    assert identity.dn == JANE_DN
    assert identity.rfc4514 == "CN=Jane Doe,O=StratusLab Test,DC=stratuslab,DC=org"
    assert identity.issuer_dn.endswith("/CN=Test CA")
    assert identity.proxy_depth == 0
    assert identity.expires_at == jane.cert.not_valid_after_utc
    assert len(identity.chain) == 2


@pytest.mark.parametrize("kind", ["rfc3820", "draft", "legacy"])
def test_proxies_map_to_the_end_entity(trust: TrustStore, jane: Credential, kind: str) -> None:
    proxy = make_proxy(jane, kind=kind)
    identity = verify(trust, proxy, jane)
    assert identity.dn == JANE_DN
    assert identity.proxy_depth == 1
    assert not identity.limited
    assert identity.expires_at == proxy.cert.not_valid_after_utc


def test_proxy_of_a_proxy(trust: TrustStore, jane: Credential) -> None:
    first = make_proxy(jane)
    second = make_proxy(first)
    identity = verify(trust, second, first, jane)
    assert (identity.dn, identity.proxy_depth) == (JANE_DN, 2)
    assert verify(trust, second, jane, first).dn == JANE_DN  # any order after the leaf


@pytest.mark.parametrize("kind", ["rfc3820", "legacy"])
def test_limited_proxies_are_flagged(trust: TrustStore, jane: Credential, kind: str) -> None:
    proxy = make_proxy(jane, kind=kind, policy=LIMITED)
    assert verify(trust, proxy, jane).limited


def test_independent_proxy_is_refused(trust: TrustStore, jane: Credential) -> None:
    err = refused(trust, make_proxy(jane, policy=INDEPENDENT), jane)
    assert "independent" in err.message


def test_unknown_policy_language_is_refused(trust: TrustStore, jane: Credential) -> None:
    err = refused(trust, make_proxy(jane, policy="1.2.3.4.5"), jane)
    assert "unsupported policy language 1.2.3.4.5" in err.message


def test_proxy_info_reads_path_length(jane: Credential) -> None:
    info = proxy_info(make_proxy(jane, path_length=3).cert)
    assert info is not None and (info.kind, info.path_length) == ("rfc3820", 3)
    assert proxy_info(jane.cert) is None


def test_path_length_constraint(trust: TrustStore, jane: Credential) -> None:
    top = make_proxy(jane, path_length=0)
    below = make_proxy(top)
    err = refused(trust, below, top, jane)
    assert "allows 0 further proxies" in err.message
    assert verify(trust, top, jane).proxy_depth == 1


def test_proxy_signed_with_another_key(trust: TrustStore, jane: Credential, ca: CA) -> None:
    mallory = make_user(ca, "Mallory")
    forged = make_proxy(jane, signer=mallory.key)
    err = refused(trust, forged, jane, mallory)
    assert err.code == "broken_proxy_chain"


def test_proxy_without_its_issuer(trust: TrustStore, jane: Credential) -> None:
    assert refused(trust, make_proxy(jane)).code == "broken_proxy_chain"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda j: make_proxy(j, subject=grid_name("Jane Doe", "123", org="Other")), "plus one CN"),
        (lambda j: make_proxy(j, cn="1+2", subject=grid_name("Jane Doe", "1", "2")), "plus one CN"),
        (lambda j: make_proxy(j, is_ca=True), "is a CA"),
        (lambda j: make_proxy(j, san=True), "alternative names"),
    ],
)
def test_malformed_proxies(trust: TrustStore, jane: Credential, make, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert fragment in refused(trust, make(jane), jane).message


def test_issuer_without_digital_signature_cannot_make_proxies(trust: TrustStore, ca: CA) -> None:
    user = make_user(ca, "No Signer", digital_signature=False)
    assert "may not sign proxies" in refused(trust, make_proxy(user), user).message


def test_expired_proxy(trust: TrustStore, jane: Credential) -> None:
    proxy = make_proxy(jane, not_before=NOW - 2 * DAY, not_after=NOW - DAY)
    err = refused(trust, proxy, jane)
    assert err.code == "certificate_expired"
    assert "expired at" in err.message


def test_expired_and_future_user_certificates(trust: TrustStore, ca: CA) -> None:
    old = make_user(ca, "Old", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    assert refused(trust, old).code == "certificate_expired"
    future = make_user(ca, "Future", not_before=NOW + DAY)
    assert refused(trust, future).code == "certificate_not_yet_valid"


def test_untrusted_ca(trust: TrustStore) -> None:
    rogue = make_ca("Rogue CA")
    err = refused(trust, make_user(rogue, "Jane Doe"))
    assert err.code == "untrusted_certificate"
    assert "not a trusted CA" in err.message


def test_same_name_other_key_is_not_trusted(trust: TrustStore, ca: CA) -> None:
    impostor = make_ca("Test CA")  # same subject, different key
    assert refused(trust, make_user(impostor)).code == "untrusted_certificate"


def test_intermediate_ca_sent_by_the_client(tmp_path: Path, ca: CA) -> None:
    sub = make_ca("Sub CA", parent=ca)
    user = make_user(sub, "Sub User")
    store = TrustStore.load(write_trust_dir(tmp_path / "t", [ca]))
    identity = verify(store, make_proxy(user), user, sub.cert)
    assert identity.dn.endswith("/CN=Sub User")
    assert len(identity.chain) == 4


def test_non_ca_cannot_be_an_intermediate(trust: TrustStore, ca: CA, jane: Credential) -> None:
    fake_sub = CA(jane.cert, jane.key)
    victim = make_user(fake_sub, "Victim", eku=None)
    # a certificate named after Jane, signed by Jane's key, but not a proxy: she is no CA
    victim_cert = victim.cert
    assert proxy_info(victim_cert) is None
    assert "is not a CA" in refused(trust, victim_cert, jane).message


def test_ca_certificate_is_not_a_personal_certificate(trust: TrustStore, ca: CA) -> None:
    assert "is a CA certificate" in refused(trust, make_user(ca, "Sub", is_ca=True)).message


def test_extended_key_usage(trust: TrustStore, ca: CA) -> None:
    server = make_user(ca, "host.example.org", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    assert "not meant for client authentication" in refused(trust, server).message
    assert verify(trust, make_user(ca, "No EKU", eku=None)).dn.endswith("/CN=No EKU")


def test_revoked_certificate(tmp_path: Path) -> None:
    ca = make_ca("Revoking CA")
    user = make_user(ca, "Revoked User")
    ca.revoke(user.cert)
    store = TrustStore.load(write_trust_dir(tmp_path / "t", [ca]))
    err = refused(store, make_proxy(user), user)
    assert err.code == "certificate_revoked"
    assert "Revoked User" in err.message


def test_expired_crl_fails_closed(tmp_path: Path, ca: CA, jane: Credential) -> None:
    store = TrustStore.load(
        write_trust_dir(tmp_path / "t", [ca], crls=[ca.crl(next_update=NOW - HOUR)])
    )
    assert refused(store, jane).code == "crl_expired"


def test_unreadable_crl_fails_closed(tmp_path: Path, ca: CA, jane: Credential) -> None:
    directory = write_trust_dir(tmp_path / "t", [ca])
    next(directory.glob("*.r0")).write_text("not a CRL")
    assert refused(TrustStore.load(directory), jane).code == "crl_unavailable"


def test_missing_crl_only_matters_when_required(tmp_path: Path, ca: CA, jane: Credential) -> None:
    store = TrustStore.load(write_trust_dir(tmp_path / "t", [ca], crls=[]))
    verify(store, jane)
    assert refused(store, jane, require_crls=True).code == "crl_unavailable"


def test_plain_pem_layout(tmp_path: Path, ca: CA, jane: Credential) -> None:
    store = TrustStore.load(write_trust_dir(tmp_path / "t", [ca], layout="pem"))
    assert verify(store, make_proxy(jane), jane, require_crls=True).dn == JANE_DN


def test_nothing_presented(trust: TrustStore) -> None:
    assert refused(trust).code == "no_certificate"


def test_dn_mapping_of_a_proxy_login(trust: TrustStore, jane: Credential) -> None:
    mapping = parse_dn_map('"CN=Jane Doe,O=StratusLab Test,DC=stratuslab,DC=org" jane')
    assert mapping.user_for(verify(trust, make_proxy(jane), jane).dn) == "jane"


# -- the front proxy header ------------------------------------------------------------

PROXIES = parse_trusted_proxies(["127.0.0.1", "10.0.0.0/8", "::1"])


def test_header_from_a_trusted_proxy(jane: Credential) -> None:
    proxy = make_proxy(jane)
    certs = certs_from_proxy_header(
        nginx_escaped(proxy.cert, jane.cert), peer="10.1.2.3", trusted_proxies=PROXIES
    )
    assert certs == [proxy.cert, jane.cert]
    mapped = certs_from_proxy_header(
        nginx_escaped(jane.cert), peer="::ffff:127.0.0.1", trusted_proxies=PROXIES
    )
    assert mapped == [jane.cert]


def test_pem_with_spaces_for_newlines(jane: Credential) -> None:
    flat = pem(jane.cert).replace("\n", " ")
    assert certs_from_proxy_header(flat, peer="::1", trusted_proxies=PROXIES) == [jane.cert]


def test_no_certificate_header() -> None:
    assert certs_from_proxy_header(None, peer="8.8.8.8", trusted_proxies=PROXIES) is None
    assert certs_from_proxy_header("", peer="127.0.0.1", trusted_proxies=PROXIES) is None


@pytest.mark.parametrize("peer", ["192.0.2.1", None, "not-an-ip"])
def test_header_from_anyone_else_is_refused(jane: Credential, peer: str | None) -> None:
    with pytest.raises(Unauthorized) as err:
        certs_from_proxy_header(nginx_escaped(jane.cert), peer=peer, trusted_proxies=PROXIES)
    assert err.value.code == "untrusted_proxy"


@pytest.mark.parametrize(
    "value", ["garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]
)
def test_malformed_header(value: str) -> None:
    with pytest.raises(Unauthorized) as err:
        certs_from_proxy_header(value, peer="127.0.0.1", trusted_proxies=PROXIES)
    assert err.value.code == "bad_certificate_header"


def test_bad_trusted_proxy_setting() -> None:
    with pytest.raises(InvalidInput, match=r"'10\.0\.0\.300'"):
        parse_trusted_proxies(["10.0.0.300"])
