"""`stratus appliance build --sign`: the built image gets a signed, verifiable entry."""

from __future__ import annotations

import json
from pathlib import Path

from stratuslab.cli.appliances import sign_built
from stratuslab.marketplace.verify import verify_entry
from tests.marketplace_pki import NOW, make_image, standard_pki


def test_signed_entry_for_a_built_image_verifies(tmp_path: Path) -> None:
    pki = standard_pki(tmp_path)
    image = make_image(tmp_path / "debian-12-base.qcow2")
    built = {"name": "debian-12-base", "version": "1", "os": "debian", "os_version": "12",
             "arch": "amd64", "description": "Debian 12 with cloud-init"}  # fmt: skip
    entry = sign_built(image, built, pki.jane, ["https://images.example.org/d12.qcow2"])
    assert entry.name == "debian-12-base.entry.json"
    verified = verify_entry(entry.read_bytes(), entry.with_suffix(".p7s").read_bytes(),
                            pki.store(), at=NOW)  # fmt: skip
    meta = json.loads(entry.read_bytes())
    assert (meta["os"], meta["os_version"], meta["os_arch"]) == ("debian", "12", "x86_64")
    assert meta["locations"] == ["https://images.example.org/d12.qcow2"]
    assert verified.endorser.email == "jane@example.org"  # raises above if it does not verify
