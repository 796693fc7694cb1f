"""Our certificate verdicts agree with ``openssl verify -allow_proxy_certs -crl_check_all``
on the same trust directory (hashed CA and CRL names, as fetch-crl leaves them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from stratuslab.errors import Unauthorized
from stratuslab.identity.x509 import verify_client_chain
from stratuslab.marketplace.truststore import TrustStore
from tests.identity_pki import (
    DAY,
    NOW,
    Credential,
    grid_name,
    make_ca,
    make_proxy,
    make_user,
    pem,
    write_trust_dir,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl_accepts(trust_dir: Path, work: Path, chain: list[x509.Certificate]) -> bool:
    leaf, untrusted = work / "leaf.pem", work / "untrusted.pem"
    leaf.write_text(pem(chain[0]))
    untrusted.write_text(pem(*chain[1:]))
    command = [
        "openssl",
        "verify",
        "-allow_proxy_certs",
        "-crl_check_all",
        "-CApath",
        str(trust_dir),
    ]
    if len(chain) > 1:
        command += ["-untrusted", str(untrusted)]
    result = subprocess.run([*command, str(leaf)], capture_output=True, text=True, check=False)
    return result.returncode == 0


def ours_accept(trust_dir: Path, chain: list[x509.Certificate]) -> bool:
    try:
        verify_client_chain(chain, TrustStore.load(trust_dir), at=NOW, require_crls=True)
    except Unauthorized:
        return False
    return True


def cases() -> dict[str, tuple[list[Credential], bool]]:
    ca = make_ca("Agreement CA")
    jane = make_user(ca, "Jane")
    revoked = make_user(ca, "Revoked")
    ca.revoke(revoked.cert)
    proxy = make_proxy(jane)
    mallory = make_user(ca, "Mallory")
    return {
        "_ca": ([ca], True),
        "user": ([jane], True),
        "proxy": ([proxy, jane], True),
        "proxy of proxy": ([make_proxy(proxy), proxy, jane], True),
        "revoked user's proxy": ([make_proxy(revoked), revoked], False),
        "forged proxy": ([make_proxy(jane, signer=mallory.key), jane], False),
        "expired proxy": (
            [make_proxy(jane, not_before=NOW - 2 * DAY, not_after=NOW - DAY), jane],
            False,
        ),
        "proxy with a foreign name": (
            [make_proxy(jane, subject=grid_name("Other", "1")), jane],
            False,
        ),
        "untrusted user": ([make_user(make_ca("Rogue"), "Jane")], False),
    }


CASES = cases()


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("_")])
def test_same_verdict_as_openssl(tmp_path: Path, name: str) -> None:
    [ca], _ = CASES["_ca"]
    trust_dir = write_trust_dir(tmp_path / "certificates", [ca])  # type: ignore[list-item]
    creds, expected = CASES[name]
    chain = [c.cert for c in creds]
    assert openssl_accepts(trust_dir, tmp_path, chain) is expected
    assert ours_accept(trust_dir, chain) is expected
