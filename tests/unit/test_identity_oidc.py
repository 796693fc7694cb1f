from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from stratuslab.errors import InvalidInput, ServiceUnavailable, Unauthorized
from stratuslab.identity.oidc import (
    GroupRule,
    IssuerConfig,
    JwksCache,
    OidcVerifier,
    issuer_from_config,
    parse_jwks,
    split_jwt,
    verify_signature,
)
from stratuslab.types import Role
from tests.identity_pki import NOW, Issuer, b64url, ec_key, encode_jwt, jwk, rsa_key

ATLAS = {
    "/atlas": GroupRule("atlas", Role.MEMBER),
    "/atlas/admins": GroupRule("atlas", Role.ADMIN),
    "/atlas/readers": GroupRule("atlas", Role.READER),
    "urn:mace:egi.eu:group:vo.cta.eu:role=member#aai.egi.eu": GroupRule("cta", Role.MEMBER),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """Serves the issuer's JWKS (and discovery) from memory, counting requests."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.urls: list[str] = []
        self.down = False

    def __call__(self, url: str) -> Mapping[str, Any]:
        self.urls.append(url)
        if self.down:
            raise ServiceUnavailable("issuer down", hint="")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": self.issuer.url, "jwks_uri": self.issuer.url + "/jwks"}
        return self.issuer.jwks()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def config_for(issuer: Issuer, **overrides: Any) -> IssuerConfig:
    settings: dict[str, Any] = {
        "issuer": issuer.url,
        "audiences": (issuer.audience,),
        "groups": ATLAS,
    }
    settings.update(overrides)
    return IssuerConfig(**settings)


def verifier_for(
    issuer: Issuer, fetch: Fetcher | None = None, clock: Clock | None = None, **overrides: Any
) -> OidcVerifier:
    cache = JwksCache(fetch or Fetcher(issuer), clock=clock or Clock())
    return OidcVerifier([config_for(issuer, **overrides)], cache)


def refusal(verifier: OidcVerifier, token: str, *, now: datetime = NOW) -> Unauthorized:
    with pytest.raises(Unauthorized) as err:
        verifier.verify(token, now=now)
    assert not token or token not in str(err.value.to_dict())
    return err.value


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_good_token(issuer: Issuer, alg: str) -> None:
    identity = verifier_for(issuer).verify(issuer.token(alg=alg), now=NOW)
    assert identity.issuer == issuer.url
    assert identity.subject == "jane-0001"
    assert identity.username == "jane"
    assert identity.groups == ("/atlas", "/atlas/admins")
    assert identity.project_roles == {"atlas": Role.ADMIN}
    assert identity.scopes == {"compute:read", "compute:write"}
    assert identity.expires_at == NOW + timedelta(seconds=600)
    assert identity.credential_id == f"{issuer.url}#jane-0001"


def test_rfc7515_appendix_a3_es256_vector() -> None:
    token = (
        "eyJhbGciOiJFUzI1NiJ9"
        ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
    )
    keys = parse_jwks(
        {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                }
            ]
        }
    )
    header, claims, signing_input, signature = split_jwt(token)
    assert header == {"alg": "ES256"}
    assert claims["iss"] == "joe"
    verify_signature(keys[""], "ES256", signing_input, signature)
    with pytest.raises(Unauthorized, match="does not verify"):
        verify_signature(keys[""], "ES256", signing_input + b"x", signature)


def test_expired_with_leeway(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    token = issuer.token(exp=int(NOW.timestamp()) - 30)
    verifier.verify(token, now=NOW)  # within the 60 s leeway
    err = refusal(verifier, issuer.token(exp=int(NOW.timestamp()) - 61))
    assert err.code == "jwt_expired"
    assert "expired at" in err.message


def test_not_yet_valid(issuer: Issuer) -> None:
    later = int(NOW.timestamp()) + 3600
    err = refusal(verifier_for(issuer), issuer.token(nbf=later, exp=later + 600))
    assert err.code == "jwt_not_yet_valid"
    err = refusal(verifier_for(issuer), issuer.token(iat=later, nbf=None, exp=later + 600))
    assert "issued in the future" in err.message


def test_exp_is_required_and_numeric(issuer: Issuer) -> None:
    assert "no expiry" in refusal(verifier_for(issuer), issuer.token(exp=None)).message
    assert "not a number" in refusal(verifier_for(issuer), issuer.token(exp="tomorrow")).message
    assert "not a number" in refusal(verifier_for(issuer), issuer.token(exp=True)).message


@pytest.mark.parametrize("aud", ["https://other.example.org", ["a", "b"], None, []])
def test_wrong_audience(issuer: Issuer, aud: Any) -> None:
    err = refusal(verifier_for(issuer), issuer.token(aud=aud))
    assert err.code == "jwt_audience"


def test_audience_list_containing_ours(issuer: Issuer) -> None:
    verifier_for(issuer).verify(issuer.token(aud=["x", issuer.audience]), now=NOW)


def test_wrong_issuer(issuer: Issuer) -> None:
    err = refusal(verifier_for(issuer), issuer.token(iss="https://evil.example.org/"))
    assert err.code == "jwt_issuer"
    assert "evil.example.org" in err.message


def test_no_subject(issuer: Issuer) -> None:
    assert "no subject" in refusal(verifier_for(issuer), issuer.token(sub=None)).message


def test_alg_none_is_refused(issuer: Issuer) -> None:
    for alg in ("none", "None", "NONE"):
        err = refusal(verifier_for(issuer), issuer.token(alg=alg))
        assert err.code == "jwt_alg"
        assert "alg 'none'" in err.message


def test_hs256_signed_with_the_public_key_is_refused(issuer: Issuer) -> None:
    public_pem = issuer.rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    err = refusal(verifier_for(issuer), issuer.token(alg="HS256", key=public_pem))
    assert err.code == "jwt_alg"
    assert "HS256" in err.message and "shared-secret" in err.message


@pytest.mark.parametrize("alg", ["PS256", "RS512", "ES384", "EdDSA"])
def test_other_algorithms_are_refused(issuer: Issuer, alg: str) -> None:
    assert (
        "RS256 or ES256 only"
        in refusal(verifier_for(issuer), issuer.token(alg=alg, key=b"")).message
    )


def test_algorithm_and_key_type_must_match(issuer: Issuer) -> None:
    # an RS256 header naming the EC key: the key cannot verify RS256
    token = issuer.token(alg="RS256", kid="ec-1", key=issuer.rsa_private)
    assert refusal(verifier_for(issuer), token).code == "jwt_alg"


def test_tampered_payload(issuer: Issuer) -> None:
    token = issuer.token()
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["wlcg.groups"] = ["/atlas/admins"]
    forged = f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"
    err = refusal(verifier_for(issuer), forged)
    assert err.code == "jwt_bad_signature"


def test_signed_by_another_key_with_a_known_kid(issuer: Issuer) -> None:
    token = issuer.token(kid="rsa-1", key=rsa_key(1))
    assert refusal(verifier_for(issuer), token).code == "jwt_bad_signature"
    token = issuer.token(alg="ES256", kid="ec-1", key=ec_key())
    assert refusal(verifier_for(issuer), token).code == "jwt_bad_signature"


def test_malformed_tokens(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    good = issuer.token()
    head, payload, sig = good.split(".")
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        f"{head}.{payload}.{sig}!",
        f"{head}.{payload}===.{sig}",
        f"{b64url(b'[1]')}.{payload}.{sig}",
        "x" * 20000,
    ]:
        assert refusal(verifier, bad).code == "invalid_jwt", bad[:40]


def test_duplicate_claims_are_refused(issuer: Issuer) -> None:
    head = b64url(json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode())
    body = b64url(b'{"sub": "a", "sub": "b"}')
    assert refusal(verifier_for(issuer), f"{head}.{body}.AAAA").code == "invalid_jwt"


def test_crit_header_is_refused(issuer: Issuer) -> None:
    token = issuer.token(header={"crit": ["exp"]})
    assert "critical header" in refusal(verifier_for(issuer), token).message


def test_unknown_kid_refreshes_once_then_refuses(issuer: Issuer) -> None:
    fetch = Fetcher(issuer)
    clock = Clock()
    verifier = verifier_for(issuer, fetch, clock)
    verifier.verify(issuer.token(), now=NOW)
    assert len(fetch.urls) == 2  # discovery + JWKS
    clock.now = 40  # past min_refresh: an unknown kid may refresh
    err = refusal(verifier, issuer.token(kid="rotated", key=issuer.rsa_private))
    assert err.code == "jwt_unknown_key"
    assert "'rotated'" in err.message
    assert len(fetch.urls) == 4
    refusal(verifier, issuer.token(kid="rotated", key=issuer.rsa_private))
    assert len(fetch.urls) == 4  # no refresh storm


def test_key_rotation_is_picked_up(issuer: Issuer) -> None:
    fetch = Fetcher(issuer)
    clock = Clock()
    verifier = verifier_for(issuer, fetch, clock)
    verifier.verify(issuer.token(), now=NOW)
    new_key = ec_key()
    issuer.keys["ec-2"] = new_key
    clock.now = 31
    verifier.verify(issuer.token(alg="ES256", kid="ec-2"), now=NOW)


def test_cache_ttl_and_stale_keys(issuer: Issuer) -> None:
    fetch = Fetcher(issuer)
    clock = Clock()
    verifier = verifier_for(issuer, fetch, clock)
    for _ in range(5):
        verifier.verify(issuer.token(), now=NOW)
    assert len(fetch.urls) == 2
    clock.now = 301
    fetch.down = True
    verifier.verify(issuer.token(), now=NOW)  # stale keys still verify while the IdP is down
    clock.now = 90000
    with pytest.raises(ServiceUnavailable):
        verifier.verify(issuer.token(), now=NOW)


def test_configured_jwks_uri_skips_discovery(issuer: Issuer) -> None:
    fetch = Fetcher(issuer)
    verifier = verifier_for(issuer, fetch, jwks_uri="https://issuer.example.org/keys")
    verifier.verify(issuer.token(), now=NOW)
    assert fetch.urls == ["https://issuer.example.org/keys"]


def test_discovery_naming_another_issuer(issuer: Issuer) -> None:
    fetch = Fetcher(issuer)
    fetch.issuer = Issuer(url="https://other.example.org/")
    with pytest.raises(ServiceUnavailable, match="names another issuer"):
        verifier_for(issuer, fetch).verify(issuer.token(), now=NOW)


def test_jwks_parsing_skips_unusable_keys() -> None:
    ec = jwk("ec", ec_key())
    keys = parse_jwks(
        {
            "keys": [
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {**ec, "kid": "enc", "use": "enc"},
                {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
                ec,
            ]
        }
    )
    assert list(keys) == ["ec"]
    assert parse_jwks({"keys": "nope"}) == {}


def test_group_mapping_takes_the_highest_role(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    identity = verifier.verify(
        issuer.token(**{"wlcg.groups": ["/atlas/readers", "/atlas", "/atlas/unknown", "/cms"]}),
        now=NOW,
    )
    assert identity.project_roles == {"atlas": Role.MEMBER}


def test_child_group_does_not_imply_parent(issuer: Issuer) -> None:
    identity = verifier_for(issuer).verify(
        issuer.token(**{"wlcg.groups": ["/atlas/production"]}), now=NOW
    )
    assert identity.project_roles == {}


def test_entitlements_and_plain_groups(issuer: Issuer) -> None:
    token = issuer.token(
        **{
            "wlcg.groups": None,
            "eduperson_entitlement": "urn:mace:egi.eu:group:vo.cta.eu:role=member#aai.egi.eu",
            "groups": ["/atlas"],
        }
    )
    identity = verifier_for(issuer).verify(token, now=NOW)
    assert identity.project_roles == {"cta": Role.MEMBER, "atlas": Role.MEMBER}


def test_default_project_for_unmapped_tokens(issuer: Issuer) -> None:
    verifier = verifier_for(issuer, default=GroupRule("guests", Role.READER))
    identity = verifier.verify(issuer.token(**{"wlcg.groups": ["/nobody"]}), now=NOW)
    assert identity.project_roles == {"guests": Role.READER}


def test_scopes(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    plain = verifier.verify(issuer.token(scope="openid profile email"), now=NOW)
    assert plain.scopes is None
    native = verifier.verify(
        issuer.token(scope="openid images:read compute.cancel storage.read:/"), now=NOW
    )
    assert native.scopes == {"images:read", "compute:write"}
    listed = verifier.verify(issuer.token(scope=None, scp=["compute.read"]), now=NOW)
    assert listed.scopes == {"compute:read"}
    strict = verifier_for(issuer, require_scope=True)
    assert refusal(strict, issuer.token(scope="openid")).code == "jwt_scope"


def test_maximum_lifetime(issuer: Issuer) -> None:
    verifier = verifier_for(issuer, max_lifetime=3600)
    now = int(NOW.timestamp())
    verifier.verify(issuer.token(exp=now + 3600), now=NOW)
    err = refusal(verifier, issuer.token(exp=now + 7200))
    assert err.code == "jwt_lifetime"


def test_issuer_from_config() -> None:
    config = issuer_from_config(
        {
            "issuer": "https://wlcg.cloud.cnaf.infn.it/",
            "audience": "https://stratus.example.org",
            "groups": {"/atlas": {"project": "atlas", "role": "admin"}},
            "default": {"project": "guests", "role": "reader"},
            "max_lifetime": 21600,
        }
    )
    assert config.audiences == ("https://stratus.example.org",)
    assert config.groups["/atlas"] == GroupRule("atlas", Role.ADMIN)
    assert config.default == GroupRule("guests", Role.READER)
    assert config.max_lifetime == 21600.0


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"audience": "a"}, "'issuer'"),
        ({"issuer": "http://idp.example.org", "audience": "a"}, "'issuer'"),
        ({"issuer": "https://idp.example.org"}, "'audience'"),
        ({"issuer": "https://i", "audience": "a", "jwks_uri": "ftp://x"}, "'jwks_uri'"),
        ({"issuer": "https://i", "audience": "a", "groups": {"/g": "atlas"}}, "'groups./g'"),
        (
            {
                "issuer": "https://i",
                "audience": "a",
                "groups": {"/g": {"project": "p", "role": "boss"}},
            },
            "'groups./g'",
        ),
    ],
)
def test_bad_issuer_config(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        issuer_from_config(settings)
    assert fragment in err.value.message


def test_loopback_http_is_allowed_for_tests() -> None:
    assert issuer_from_config({"issuer": "http://127.0.0.1:8080", "audience": "a"}).issuer


def test_errors_never_echo_the_token(issuer: Issuer) -> None:
    token = encode_jwt(
        {"alg": "RS256", "kid": "rsa-1"}, {"iss": issuer.url, "exp": 1}, issuer.rsa_private
    )
    err = refusal(verifier_for(issuer), token)
    assert token.split(".")[2] not in err.message
    assert datetime.fromtimestamp(1, UTC).isoformat() in err.message
