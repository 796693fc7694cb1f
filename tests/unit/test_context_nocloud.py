"""The NoCloud seed builder (pure) and the seed ISO writer/reader."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stratuslab.context import build_nocloud, read_seed_iso, write_seed_iso
from stratuslab.errors import ImageError, InvalidInput


def _key(key_type: str = "ssh-ed25519", size: int = 32, comment: str = "alice@lab") -> str:
    name = key_type.encode()
    blob = len(name).to_bytes(4, "big") + name + size.to_bytes(4, "big") + b"k" * size
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}"


ED25519 = _key()
RSA_4096 = _key("ssh-rsa", 512, "a comment with spaces")


def test_meta_data_has_id_hostname_and_keys() -> None:
    files = build_nocloud(instance_id="i-42", hostname="vm-1", ssh_keys=[ED25519])
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "i-42", "local-hostname": "vm-1", "public-keys": [ED25519]}


def test_default_user_data_is_cloud_config_with_hostname_and_keys() -> None:
    files = build_nocloud(instance_id="i-1", hostname="vm", ssh_keys=[ED25519, RSA_4096])
    assert files["user-data"].startswith(b"#cloud-config\n")
    doc = yaml.safe_load(files["user-data"])
    assert doc == {"hostname": "vm", "ssh_authorized_keys": [ED25519, RSA_4096]}


def test_only_meta_and_user_data_by_default() -> None:
    files = build_nocloud(instance_id="i-1", hostname="vm", ssh_keys=[])
    assert set(files) == {"meta-data", "user-data"}
    assert "public-keys" not in yaml.safe_load(files["meta-data"])


def test_given_user_data_is_kept_verbatim() -> None:
    script = b"#!/bin/sh\necho hi\n"
    files = build_nocloud(instance_id="i-1", hostname="vm", ssh_keys=[], user_data=script)
    assert files["user-data"] == script


def test_network_config_and_vendor_data_when_given() -> None:
    network = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    files = build_nocloud(
        instance_id="i-1",
        hostname="vm",
        ssh_keys=[],
        network_config=network,
        vendor_data=b"#cloud-config\n{}\n",
    )
    assert yaml.safe_load(files["network-config"]) == network
    assert files["vendor-data"] == b"#cloud-config\n{}\n"


def test_long_keys_stay_on_one_line() -> None:
    files = build_nocloud(instance_id="i-1", hostname="vm", ssh_keys=[RSA_4096])
    assert f"- {RSA_4096}\n".encode() in files["meta-data"]


def test_keys_are_stripped() -> None:
    files = build_nocloud(instance_id="i-1", hostname="vm", ssh_keys=[f"  {ED25519}\n"])
    assert yaml.safe_load(files["meta-data"])["public-keys"] == [ED25519]


@pytest.mark.parametrize("hostname", ["", "-vm", "vm-", "a" * 64, "vm_1", "vm.example.org", "é"])
def test_bad_hostnames_are_refused(hostname: str) -> None:
    with pytest.raises(InvalidInput, match="RFC 1123") as info:
        build_nocloud(instance_id="i-1", hostname=hostname, ssh_keys=[])
    assert "letters, digits or hyphens" in info.value.hint


@pytest.mark.parametrize("hostname", ["a", "VM1", "a" * 63, "node-01"])
def test_good_hostnames_are_accepted(hostname: str) -> None:
    build_nocloud(instance_id="i-1", hostname=hostname, ssh_keys=[])


@pytest.mark.parametrize(
    "key",
    [
        "",
        "hello world",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "ssh-ed25519",
        "ssh-ed25519 not*base64",
        f"{ED25519}\nssh-rsa AAAA",
        "ssh-rsa " + ED25519.split()[1],
    ],
)
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_nocloud(instance_id="i-1", hostname="vm", ssh_keys=[key])
    assert ".pub" in info.value.hint


@pytest.mark.parametrize("instance_id", ["", "a\nb", "x" * 256])
def test_bad_instance_ids_are_refused(instance_id: str) -> None:
    with pytest.raises(InvalidInput, match="instance id"):
        build_nocloud(instance_id=instance_id, hostname="vm", ssh_keys=[])


# ---- ISO ------------------------------------------------------------------------------------


def _seed_files() -> dict[str, bytes]:
    return build_nocloud(
        instance_id="i-7",
        hostname="vm7",
        ssh_keys=[ED25519],
        network_config={"version": 2},
        vendor_data=b"",
    )


def test_iso_round_trip(tmp_path: Path) -> None:
    files = _seed_files()
    iso = tmp_path / "seed.iso"
    write_seed_iso(files, iso)
    assert read_seed_iso(iso) == files
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


def test_iso_overwrites_atomically(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_seed_iso({"meta-data": b"old"}, iso)
    write_seed_iso({"meta-data": b"new"}, iso)
    assert read_seed_iso(iso) == {"meta-data": b"new"}


@pytest.mark.parametrize("name", ["", "/a", "a//b", "..", "a/../b", "a/b/c/d/e", "x" * 65])
def test_iso_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="plain file name"):
        write_seed_iso({name: b""}, tmp_path / "seed.iso")
    assert not (tmp_path / "seed.iso").exists()


def test_reading_a_non_iso_is_an_image_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.iso"
    bogus.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match="cannot read seed ISO"):
        read_seed_iso(bogus)


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
def test_iso_label_and_names_as_other_tools_see_them(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_seed_iso(_seed_files(), iso)
    pvd = _xorriso(iso, "-pvd_info")
    assert "Volume Id    : cidata" in pvd
    listing = _xorriso(iso, "-ls", "/")
    for name in ("meta-data", "user-data", "network-config", "vendor-data"):
        assert f"'{name}'" in listing


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid is not installed")
def test_blkid_sees_the_cidata_label(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_seed_iso(_seed_files(), iso)
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", str(iso)], capture_output=True, text=True, check=True
    ).stdout
    assert "LABEL=cidata" in out.splitlines()
    assert "TYPE=iso9660" in out.splitlines()


def _xorriso(iso: Path, *args: str) -> str:
    done = subprocess.run(
        ["xorriso", "-indev", str(iso), *args], capture_output=True, text=True, check=True
    )
    return done.stdout + done.stderr
