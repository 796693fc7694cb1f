"""OIDC against a real HTTP issuer on loopback: discovery, JWKS fetch, cache, failures."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from stratuslab.errors import ServiceUnavailable, Unauthorized
from stratuslab.identity.oidc import JwksCache, OidcVerifier, httpx_fetcher, issuer_from_config
from stratuslab.types import Role
from tests.identity_pki import NOW, Issuer, serve_issuer


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as served:
        yield served


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def verifier(issuer: Issuer, client: httpx.Client) -> OidcVerifier:
    config = issuer_from_config(
        {
            "issuer": issuer.url,
            "audience": issuer.audience,
            "groups": {"/atlas": {"project": "atlas", "role": "member"}},
        }
    )
    return OidcVerifier([config], JwksCache(httpx_fetcher(client)))


def test_discovery_then_cached_keys(issuer: Issuer, client: httpx.Client) -> None:
    check = verifier(issuer, client)
    now = NOW
    for alg in ("RS256", "ES256", "RS256"):
        identity = check.verify(issuer.token(alg=alg, **{"wlcg.groups": ["/atlas"]}), now=now)
        assert identity.project_roles == {"atlas": Role.MEMBER}
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks"]


def test_tampered_token_over_http(issuer: Issuer, client: httpx.Client) -> None:
    token = issuer.token()
    head, payload, sig = token.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    with pytest.raises(Unauthorized) as err:
        verifier(issuer, client).verify(f"{head}.{payload}.{flipped}", now=NOW)
    assert err.value.code == "jwt_bad_signature"


def test_unreachable_issuer(client: httpx.Client) -> None:
    with serve_issuer() as gone:
        url = gone.url
    issuer = Issuer(url=url)
    with pytest.raises(ServiceUnavailable) as err:
        verifier(issuer, client).verify(issuer.token(), now=NOW)
    assert err.value.code == "oidc_keys_unavailable"


def test_missing_jwks_document(issuer: Issuer, client: httpx.Client) -> None:
    config = issuer_from_config(
        {"issuer": issuer.url, "audience": issuer.audience, "jwks_uri": issuer.url + "/nope"}
    )
    check = OidcVerifier([config], JwksCache(httpx_fetcher(client)))
    with pytest.raises(ServiceUnavailable, match="404"):
        check.verify(issuer.token(), now=NOW)
