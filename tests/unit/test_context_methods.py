"""ConfigDrive, OpenNebula and the build_context dispatch (pure builders)."""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from stratuslab.context import (
    ContextMethod,
    ContextSpec,
    Nic,
    build_context,
    network_config_v2,
    parse_pair,
    read_seed_iso,
    write_context_iso,
)
from stratuslab.context.configdrive import network_data
from stratuslab.context.opennebula import build_opennebula, shell_quote
from stratuslab.context.userdata import MAX_USER_DATA
from stratuslab.errors import InvalidInput

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFYc2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0 alice@lab"
STATIC = Nic(
    mac="52:54:00:aa:bb:01",
    address=ipaddress.IPv4Interface("198.18.5.9/25"),
    gateway=ipaddress.IPv4Address("198.18.5.1"),
    dns=(ipaddress.IPv4Address("198.18.5.2"), ipaddress.IPv4Address("198.18.5.3")),
    mtu=1400,
)
DHCP = Nic(mac="52:54:00:aa:bb:02")


def _spec(**changes: object) -> ContextSpec:
    fields: dict[str, object] = {"instance_id": "i-7", "hostname": "h7", "ssh_keys": (KEY,)}
    fields.update(changes)
    return ContextSpec(**fields)  # type: ignore[arg-type]


def test_labels_per_method() -> None:
    assert build_context(ContextMethod.NOCLOUD, _spec())[0] == "cidata"
    assert build_context(ContextMethod.CONFIGDRIVE, _spec())[0] == "config-2"
    assert build_context(ContextMethod.OPENNEBULA, _spec())[0] == "CONTEXT"


def test_configdrive_meta_data() -> None:
    _, files = build_context(ContextMethod.CONFIGDRIVE, _spec(extra={"ROLE": "db"}))
    assert set(files) == {"openstack/latest/meta_data.json", "openstack/latest/user_data"}
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["uuid"] == "i-7"
    assert meta["hostname"] == meta["name"] == "h7"
    assert meta["public_keys"] == {"key-0": KEY}
    assert meta["meta"] == {"ROLE": "db"}
    assert files["openstack/latest/user_data"].startswith(b"#cloud-config\n")


def test_configdrive_network_data() -> None:
    doc = network_data([STATIC, DHCP])
    assert doc["links"] == [
        {"id": "tap0", "type": "phy", "ethernet_mac_address": STATIC.mac, "mtu": 1400},
        {"id": "tap1", "type": "phy", "ethernet_mac_address": DHCP.mac},
    ]
    static, dhcp = doc["networks"]
    assert (static["type"], static["ip_address"], static["netmask"]) == (
        "ipv4",
        "198.18.5.9",
        "255.255.255.128",
    )
    assert static["routes"][0]["gateway"] == "198.18.5.1"
    assert dhcp["type"] == "ipv4_dhcp"
    assert [s["address"] for s in doc["services"]] == ["198.18.5.2", "198.18.5.3"]


def test_nocloud_network_config_v2() -> None:
    assert network_config_v2([STATIC, DHCP]) == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": STATIC.mac},
                "set-name": "eth0",
                "dhcp4": False,
                "addresses": ["198.18.5.9/25"],
                "routes": [{"to": "0.0.0.0/0", "via": "198.18.5.1"}],
                "nameservers": {"addresses": ["198.18.5.2", "198.18.5.3"]},
                "mtu": 1400,
            },
            "eth1": {"match": {"macaddress": DHCP.mac}, "set-name": "eth1", "dhcp4": True},
        },
    }
    _, files = build_context(ContextMethod.NOCLOUD, _spec(network=(DHCP,), extra={"A": "1"}))
    assert yaml.safe_load(files["network-config"])["ethernets"]["eth0"]["dhcp4"] is True
    assert yaml.safe_load(files["meta-data"])["meta"] == {"A": "1"}


def _source(context_sh: bytes, tmp_path: Path) -> dict[str, str]:
    """Source context.sh in bash -e and print every variable it set, NUL-separated."""
    script = tmp_path / "context.sh"
    script.write_bytes(context_sh)
    names = [line.split("=", 1)[0] for line in context_sh.decode().splitlines()[1:]]
    show = "".join(f'printf "%s=%s\\0" {n} "${n}";' for n in names)
    done = subprocess.run(
        ["bash", "-ec", f". {script}; {show}"], capture_output=True, check=True, text=True
    )
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if item)


def test_opennebula_context_sh(tmp_path: Path) -> None:
    user_data = b"#cloud-config\nruncmd: [id]\n"
    files = build_opennebula(
        instance_id="i-7",
        hostname="h7",
        ssh_keys=[KEY, KEY.replace("alice", "bob")],
        user_data=user_data,
        nics=[STATIC, DHCP],
        extra={"role": "db"},
    )
    assert list(files) == ["context.sh"]
    env = _source(files["context.sh"], tmp_path)
    assert env["SET_HOSTNAME"] == "h7"
    assert env["SSH_PUBLIC_KEY"].splitlines() == [KEY, KEY.replace("alice", "bob")]
    assert base64.b64decode(env["USER_DATA"]) == user_data
    assert env["USER_DATA_ENCODING"] == "base64"
    assert env["NETWORK"] == "YES"
    assert (env["ETH0_MAC"], env["ETH0_IP"], env["ETH0_MASK"]) == (
        STATIC.mac,
        "198.18.5.9",
        "255.255.255.128",
    )
    assert (env["ETH0_GATEWAY"], env["ETH0_DNS"], env["ETH0_MTU"]) == (
        "198.18.5.1",
        "198.18.5.2 198.18.5.3",
        "1400",
    )
    assert (env["ETH1_MAC"], env["ETH1_METHOD"]) == (DHCP.mac, "dhcp")
    assert "ETH1_IP" not in env
    assert env["ROLE"] == "db"


@pytest.mark.parametrize(
    "value",
    ['a"b', "$(touch /tmp/stratus-pwned)", "`id`", "back\\slash", "multi\nline", "it's", "${X:-y}"],
)
def test_shell_quote_survives_bash(value: str, tmp_path: Path) -> None:
    env = _source(f"# c\nV={shell_quote(value)}\n".encode(), tmp_path)
    assert env["V"] == value
    assert not Path("/tmp/stratus-pwned").exists()


def test_opennebula_extra_cannot_override_generated_keys() -> None:
    with pytest.raises(InvalidInput, match="collides with the generated key SET_HOSTNAME"):
        build_context(ContextMethod.OPENNEBULA, _spec(extra={"set_hostname": "evil"}))


@pytest.mark.parametrize("key", ["1A", "A-B", "", "A B", "X" * 65])
def test_bad_pair_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="is not a valid name"):
        _spec(extra={key: "v"})


def test_parse_pair() -> None:
    assert parse_pair("A_1=x=y") == ("A_1", "x=y")
    assert parse_pair("EMPTY=") == ("EMPTY", "")
    with pytest.raises(InvalidInput, match="has no '='"):
        parse_pair("NOVALUE")
    with pytest.raises(InvalidInput, match="not printable"):
        parse_pair("A=\x00")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mac": "52:54:00:AA:BB:01"}, "six lower-case hex pairs"),
        ({"mac": "52-54-00-aa-bb-01"}, "six lower-case hex pairs"),
        ({"address": None}, "gateway but no static address"),
        ({"mtu": 100}, "MTU 100 is out of range"),
    ],
)
def test_bad_nics_are_refused(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "mac": STATIC.mac,
        "address": STATIC.address,
        "gateway": STATIC.gateway,
        "mtu": 1500,
    }
    fields.update(changes)
    with pytest.raises(InvalidInput, match=message):
        Nic(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", list(ContextMethod))
def test_oversized_user_data_is_refused_for_every_method(method: ContextMethod) -> None:
    import os

    big = b"#!/bin/sh\n#" + os.urandom(MAX_USER_DATA).hex().encode()
    with pytest.raises(InvalidInput, match="after gzip, over the limit"):
        build_context(method, _spec(user_data=big))


@pytest.mark.parametrize("method", list(ContextMethod))
def test_bad_hostnames_and_keys_are_refused_for_every_method(method: ContextMethod) -> None:
    with pytest.raises(InvalidInput, match="RFC 1123"):
        build_context(method, _spec(hostname="bad_name"))
    with pytest.raises(InvalidInput, match="not an SSH public key"):
        build_context(method, _spec(ssh_keys=("nope",)))


@pytest.mark.parametrize("method", list(ContextMethod))
def test_write_context_iso_round_trips(method: ContextMethod, tmp_path: Path) -> None:
    label, files = build_context(method, _spec(network=(STATIC,)))
    iso = write_context_iso(method, _spec(network=(STATIC,)), tmp_path / "ctx.iso")
    assert read_seed_iso(iso) == files
    blkid = subprocess.run(
        ["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True
    )
    if blkid.returncode == 0:
        assert blkid.stdout.strip() == label
