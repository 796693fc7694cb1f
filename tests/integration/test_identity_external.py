"""OIDC bearer tokens (a local issuer serving its JWKS on loopback) and X.509 client
certificates (our own CA, forwarded by a trusted front proxy) through the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.api.app import create_app
from stratuslab.config import ControllerSettings
from stratuslab.db.models import User
from stratuslab.identity.dn import dn_slash
from stratuslab.services.context import Ctx
from stratuslab.types import Role
from tests.identity_pki import (
    CA,
    HOUR,
    NOW,
    Credential,
    Issuer,
    grid_name,
    make_ca,
    make_proxy,
    make_user,
    nginx_escaped,
    pem,
    serve_issuer,
    write_trust_dir,
)
from tests.identity_pki import LIMITED as LIMITED_POLICY
from tests.integration.test_authz_matrix import add_user

P = "/api/v1"
HEADER = "X-SSL-Client-Cert"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with serve_issuer() as served:
        served.live_clock = True  # the app checks expiry against the real clock
        yield served


@pytest.fixture
def pki(tmp_path: Path) -> tuple[CA, Credential, Path]:
    ca = make_ca()
    jane = make_user(ca, "Jane Doe")
    return ca, jane, tmp_path / "trust"


@pytest.fixture
def settings(
    tmp_path: Path, database_url: str, issuer: Issuer, pki: tuple[CA, Credential, Path]
) -> ControllerSettings:
    issuers = tmp_path / "oidc.toml"
    issuers.write_text(
        f"""
[[oidc.issuers]]
issuer = "{issuer.url}"
audience = "{issuer.audience}"
groups."/atlas" = {{ project = "atlas", role = "member" }}
groups."/atlas/admins" = {{ project = "atlas", role = "admin" }}
groups."/cms" = {{ project = "cms", role = "reader" }}
"""
    )
    ca, _, trust = pki
    write_trust_dir(trust, [ca])
    mapfile = tmp_path / "grid-mapfile"
    mapfile.write_text(f'"{dn_slash(grid_name("Mapped User"))}" mapped\n')
    return ControllerSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        auth_methods="password,oidc,x509",
        oidc_issuers_file=str(issuers),
        x509_trust_dir=str(trust),
        trusted_proxies="127.0.0.1",
        grid_mapfile=str(mapfile),
    )


@pytest.fixture
def behind_proxy(ctx: Ctx, settings: ControllerSettings, admin_token: str) -> Iterator[TestClient]:
    """Requests that come from the (trusted) TLS front proxy on 127.0.0.1."""
    app = create_app(settings, ctx=ctx, background=False)
    with TestClient(app, client=("127.0.0.1", 40000)) as client:
        yield client


def bearer(client: TestClient, token: str) -> TestClient:
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_oidc_token_maps_groups_to_projects_and_scopes(
    api: TestClient, ctx: Ctx, issuer: Issuer
) -> None:
    add_user(ctx, "someone", "atlas", Role.MEMBER)
    add_user(ctx, "someone", "cms", Role.MEMBER)
    token = issuer.token(**{"wlcg.groups": ["/atlas", "/cms", "/unknown"]})
    me = bearer(api, token).get(f"{P}/auth/whoami")
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"] == "jane"
    assert body["method"] == "oidc"
    assert body["roles"] == {"atlas": "member", "cms": "reader"}
    assert body["scopes"] == ["compute:read", "compute:write"]
    assert body["credential"] == f"{issuer.url}#jane-0001"
    # the same subject is the same user next time; the acting project can be chosen
    api.headers["X-Stratus-Project"] = "cms"
    again = api.get(f"{P}/auth/whoami").json()
    assert (again["user_id"], again["project"]) == (body["user_id"], "cms")
    # scopes narrow: no images scope in the token
    assert api.get(f"{P}/images").json()["error"]["code"] == "missing_scope"
    # a reader in cms cannot create there
    resp = api.post(f"{P}/instances", json={"image": "x"})
    assert resp.status_code == 403


def test_oidc_admin_group(api: TestClient, ctx: Ctx, issuer: Issuer) -> None:
    add_user(ctx, "someone", "atlas", Role.MEMBER)
    token = issuer.token(scope="openid", **{"wlcg.groups": ["/atlas", "/atlas/admins"]})
    body = bearer(api, token).get(f"{P}/auth/whoami").json()
    assert body["roles"] == {"atlas": "admin"}
    assert body["scopes"] is None  # no scope this cloud knows: roles alone


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"aud": "https://other.example.org"}, "jwt_audience"),
        ({"iss": "https://evil.example.org/"}, "jwt_issuer"),
        ({"exp": int(NOW.timestamp()) - 3600, "iat": int(NOW.timestamp()) - 7200}, "jwt_expired"),
    ],
)
def test_bad_oidc_tokens_are_refused(
    api: TestClient, ctx: Ctx, issuer: Issuer, change: dict, code: str
) -> None:
    add_user(ctx, "someone", "atlas", Role.MEMBER)
    token = issuer.token(**{"wlcg.groups": ["/atlas"], **change})
    resp = bearer(api, token).get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["code"] == code
    assert token.split(".")[2] not in resp.text


def test_tampered_and_alg_none_tokens(api: TestClient, ctx: Ctx, issuer: Issuer) -> None:
    add_user(ctx, "someone", "atlas", Role.MEMBER)
    head, _payload, sig = issuer.token(**{"wlcg.groups": ["/atlas"]}).split(".")
    evil = issuer.token(**{"wlcg.groups": ["/atlas/admins"]}).split(".")[1]
    resp = bearer(api, f"{head}.{evil}.{sig}").get(f"{P}/auth/whoami")
    assert resp.json()["error"]["code"] == "jwt_bad_signature"
    none = issuer.token(alg="none", **{"wlcg.groups": ["/atlas"]})
    resp = bearer(api, none).get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "jwt_alg"


def test_oidc_token_without_a_mapped_group_gets_no_account(
    api: TestClient, ctx: Ctx, issuer: Issuer
) -> None:
    resp = bearer(api, issuer.token(**{"wlcg.groups": ["/nobody"]})).get(f"{P}/auth/whoami")
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "no_project"
    with ctx.sessions() as s:
        assert s.query(User).filter_by(name="jane").one_or_none() is None


def test_certificate_linked_to_a_user(
    behind_proxy: TestClient, api: TestClient, ctx: Ctx, pki: tuple[CA, Credential, Path]
) -> None:
    _, jane, _ = pki
    add_user(ctx, "jane", "physics", Role.MEMBER)
    dn = dn_slash(jane.cert.subject)
    linked = api.post(f"{P}/users/jane/identities", json={"kind": "x509", "subject": dn})
    assert linked.status_code == 201, linked.text
    behind_proxy.headers[HEADER] = nginx_escaped(jane.cert)
    me = behind_proxy.get(f"{P}/auth/whoami")
    assert me.status_code == 200, me.text
    assert (me.json()["user"], me.json()["method"]) == ("jane", "x509")
    # an RFC 3820 proxy speaks for the end-entity certificate's DN
    proxy = make_proxy(jane)
    behind_proxy.headers[HEADER] = pem(proxy.cert, jane.cert)
    assert behind_proxy.get(f"{P}/auth/whoami").json()["credential"] == dn
    # a limited proxy may look, not act
    limited = make_proxy(jane, policy=LIMITED_POLICY)
    behind_proxy.headers[HEADER] = pem(limited.cert, jane.cert)
    assert behind_proxy.get(f"{P}/instances").status_code == 200
    resp = behind_proxy.post(f"{P}/instances", json={"image": "x"})
    assert resp.json()["error"]["code"] == "missing_scope"


def test_certificate_mapped_by_grid_mapfile(
    behind_proxy: TestClient, ctx: Ctx, pki: tuple[CA, Credential, Path]
) -> None:
    ca, _, _ = pki
    add_user(ctx, "mapped", "physics", Role.MEMBER)
    mapped = make_user(ca, "Mapped User")
    behind_proxy.headers[HEADER] = nginx_escaped(mapped.cert)
    assert behind_proxy.get(f"{P}/auth/whoami").json()["user"] == "mapped"


def test_bad_certificates_are_refused(
    behind_proxy: TestClient, app_client: TestClient, pki: tuple[CA, Credential, Path]
) -> None:
    ca, jane, trust = pki
    stranger = make_user(make_ca("Other CA"), "Jane Doe")
    behind_proxy.headers[HEADER] = nginx_escaped(stranger.cert)
    resp = behind_proxy.get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    assert "BEGIN CERTIFICATE" not in resp.text
    expired = make_user(ca, "Old", not_before=NOW - 48 * HOUR, not_after=NOW - HOUR)
    behind_proxy.headers[HEADER] = nginx_escaped(expired.cert)
    assert behind_proxy.get(f"{P}/auth/whoami").status_code == 401
    # revoked: the CRL in the trust directory says so
    ca.revoke(jane.cert)
    write_trust_dir(trust, [ca])
    behind_proxy.headers[HEADER] = nginx_escaped(jane.cert)
    resp = behind_proxy.get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "certificate_revoked"
    # unmapped DN
    other = make_user(ca, "Nobody Known")
    behind_proxy.headers[HEADER] = nginx_escaped(other.cert)
    assert behind_proxy.get(f"{P}/auth/whoami").json()["error"]["code"] == "unmapped_dn"
    # the header from anyone but the trusted proxy is refused
    app_client.headers[HEADER] = nginx_escaped(other.cert)
    resp = app_client.get(f"{P}/auth/whoami")
    assert resp.json()["error"]["code"] == "untrusted_proxy"
