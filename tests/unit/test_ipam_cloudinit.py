"""cloud-init network-config v2 from leases: static addresses equal to the DHCP reservations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from stratuslab.context.nocloud import build_nocloud
from stratuslab.errors import InvalidInput
from stratuslab.networks.cloudinit import GuestNic, network_config
from stratuslab.networks.ipam import LeaseBook, define_network

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def nics() -> list[GuestNic]:
    public = define_network(
        name="public",
        address_class="public",
        cidr4="198.51.100.0/24",
        gateway4="198.51.100.1",
        pools=["198.51.100.10-198.51.100.20"],
        cidr6="fd00:5eed:1::/64",
        gateway6="fd00:5eed:1::1",
        dns=["198.51.100.2"],
    )
    private = define_network(
        name="work",
        address_class="private",
        cidr4="198.19.0.0/24",
        gateway4="198.19.0.1",
        mtu=1450,
        project="astro",
    )
    a = LeaseBook(public).lease(instance="vm", mac="02:00:c6:33:64:0a", now=T0)
    b = LeaseBook(private).lease(instance="vm", mac="02:00:c6:13:00:02", now=T0)
    return [GuestNic(public, a), GuestNic(private, b)]


def test_two_nics_primary_gets_the_routes() -> None:
    assert network_config(nics()) == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "02:00:c6:33:64:0a"},
                "set-name": "eth0",
                "dhcp4": False,
                "dhcp6": False,
                "addresses": ["198.51.100.10/24", "fd00:5eed:1::c6ff:fe33:640a/64"],
                "routes": [
                    {"to": "0.0.0.0/0", "via": "198.51.100.1"},
                    {"to": "::/0", "via": "fd00:5eed:1::1"},
                ],
                "nameservers": {"addresses": ["198.51.100.2"]},
            },
            "eth1": {
                "match": {"macaddress": "02:00:c6:13:00:02"},
                "set-name": "eth1",
                "dhcp4": False,
                "dhcp6": False,
                "addresses": ["198.19.0.2/24"],
                "mtu": 1450,
            },
        },
    }


def test_primary_can_be_another_nic() -> None:
    config = network_config(nics(), primary=1)
    assert "routes" not in config["ethernets"]["eth0"]
    assert config["ethernets"]["eth1"]["routes"] == [{"to": "0.0.0.0/0", "via": "198.19.0.1"}]


def test_goes_into_a_nocloud_seed() -> None:
    files = build_nocloud(
        instance_id="i-1", hostname="vm", ssh_keys=[], network_config=network_config(nics())
    )
    assert yaml.safe_load(files["network-config"]) == network_config(nics())


def test_bad_input() -> None:
    first, second = nics()
    with pytest.raises(InvalidInput, match="out of range"):
        network_config([first], primary=1)
    with pytest.raises(InvalidInput, match="same MAC"):
        network_config([first, first])
    with pytest.raises(InvalidInput, match="belongs to network public, not work"):
        GuestNic(second.network, first.lease)
    assert network_config([]) == {"version": 2, "ethernets": {}}
