"""IP address management: table-driven validation, seeded random allocation properties."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest

from stratuslab.errors import CapacityError, Conflict, InvalidInput, StratusError
from stratuslab.networks.ipam import (
    AddressClass,
    AddressPool,
    LeaseBook,
    NetworkDefinition,
    allocate_mac,
    check_mac_prefix,
    check_overlap,
    define_network,
    eui64,
    normalize_mac,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def public(**changes: object) -> NetworkDefinition:
    fields: dict[str, object] = {
        "name": "public",
        "address_class": "public",
        "cidr4": "198.51.100.0/24",
        "gateway4": "198.51.100.1",
        "pools": ["198.51.100.10-198.51.100.19"],
        "cidr6": "fd00:5eed:1::/64",
        "gateway6": "fd00:5eed:1::1",
        "dns": ["198.51.100.2", "fd00:5eed:1::2"],
    }
    fields.update(changes)
    return define_network(**fields)  # type: ignore[arg-type]


def test_a_well_formed_network() -> None:
    net = public()
    assert net.address_class is AddressClass.PUBLIC
    assert net.pools == (AddressPool(IPv4Address("198.51.100.10"), IPv4Address("198.51.100.19")),)
    assert net.capacity == 10
    assert net.scope == "site"
    assert [str(server) for server in net.dns] == ["198.51.100.2", "fd00:5eed:1::2"]


def test_default_pool_is_every_host_address() -> None:
    net = public(pools=[], cidr4="198.51.100.0/29", gateway4="198.51.100.1")
    assert [str(pool) for pool in net.pools] == ["198.51.100.1-198.51.100.6"]
    assert net.capacity == 5  # the gateway is never handed out


def test_a_cidr_pool_is_clipped_to_host_addresses() -> None:
    net = public(pools=["198.51.100.0/24"])
    assert [str(pool) for pool in net.pools] == ["198.51.100.1-198.51.100.254"]


BAD_NETWORKS: list[tuple[dict[str, object], type[StratusError], str]] = [
    ({"cidr4": "198.51.100.0/33"}, InvalidInput, "malformed IPv4 CIDR"),
    ({"cidr4": "198.51.100.7/24"}, InvalidInput, "malformed IPv4 CIDR"),  # host bits set
    ({"cidr4": "banana"}, InvalidInput, "malformed IPv4 CIDR"),
    ({"cidr4": "198.51.100.0/31", "pools": [], "gateway4": None}, InvalidInput, "too small"),
    ({"cidr6": "fd00:5eed:1::/48"}, InvalidInput, "not a /64"),
    ({"cidr6": "fd00:5eed:1::/64:"}, InvalidInput, "malformed IPv6 CIDR"),
    ({"gateway4": "198.51.101.1"}, InvalidInput, "gateway 198.51.101.1 is not a host address"),
    ({"gateway4": "198.51.100.255"}, InvalidInput, "is not a host address"),
    ({"gateway4": "198.51.100.300"}, InvalidInput, "malformed gateway"),
    ({"gateway4": "fd00::1"}, InvalidInput, "is not an IPv4 address"),
    ({"gateway6": "fd00:5eed:2::1"}, InvalidInput, "IPv6 gateway .* is not in"),
    ({"pools": ["198.51.101.10-198.51.101.20"]}, InvalidInput, "pool .* is not inside"),
    ({"pools": ["198.51.100.20-198.51.100.10"]}, InvalidInput, "is empty"),
    ({"pools": ["198.51.100.20"]}, InvalidInput, "malformed address pool"),
    ({"pools": ["198.51.100.1-x"]}, InvalidInput, "malformed pool end"),
    ({"pools": ["198.51.100.10-198.51.100.20", "198.51.100.15-198.51.100.30"]}, InvalidInput,
     "overlap"),
    ({"dns": ["8.8.8"]}, InvalidInput, "malformed DNS server"),
    ({"address_class": "galactic"}, InvalidInput, "unknown address class"),
    ({"name": "Not OK"}, InvalidInput, "network name"),
    ({"cidr4": None, "cidr6": None, "pools": [], "gateway4": None, "gateway6": None},
     InvalidInput, "neither an IPv4 nor an IPv6"),
    ({"cidr4": None, "gateway4": None}, InvalidInput, "pools or gateway but no IPv4"),
    ({"mtu": 100}, InvalidInput, "MTU"),
    ({"address_class": "private"}, InvalidInput, "private network needs a project"),
    ({"project": "astro"}, InvalidInput, "private network needs a project"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "error", "message"), BAD_NETWORKS)
def test_bad_networks_are_refused_clearly(
    changes: dict[str, object], error: type[StratusError], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        public(**changes)
    assert info.value.hint


def test_overlap_within_a_scope_only() -> None:
    site = public()
    check_overlap(
        public(
            name="other",
            cidr4="198.51.101.0/24",
            pools=[],
            cidr6=None,
            gateway4=None,
            gateway6=None,
        ),
        [site],
    )
    with pytest.raises(Conflict, match="overlaps network public"):
        check_overlap(
            public(
                name="local",
                address_class="local",
                cidr4="198.51.100.128/25",
                pools=[],
                gateway4=None,
                cidr6=None,
                gateway6=None,
            ),
            [site],
        )
    with pytest.raises(Conflict, match="overlaps"):
        check_overlap(public(name="v6", cidr4=None, pools=[], gateway4=None), [site])
    with pytest.raises(Conflict, match="named public exists"):
        check_overlap(
            public(cidr4="203.0.113.0/24", pools=[], gateway4=None, cidr6=None, gateway6=None),
            [site],
        )
    mine = define_network(name="a", address_class="private", cidr4="198.19.0.0/24", project="p1")
    theirs = define_network(name="b", address_class="private", cidr4="198.19.0.0/24", project="p2")
    check_overlap(theirs, [mine])  # two projects may use the same private range
    wider = define_network(name="c", address_class="private", cidr4="198.19.0.0/16", project="p1")
    with pytest.raises(Conflict, match="overlaps network a"):
        check_overlap(wider, [mine, theirs])


def test_lowest_free_then_requested_then_exhausted() -> None:
    book = LeaseBook(public())
    first = book.lease(instance="i1", mac="02:00:00:00:00:01", now=T0)
    assert first.ipv4 == IPv4Address("198.51.100.10")
    assert first.ipv6 == IPv6Address("fd00:5eed:1::ff:fe00:1")
    fixed = book.lease(instance="i2", mac="02:00:00:00:00:02", now=T0, ipv4="198.51.100.15")
    assert fixed.ipv4 == IPv4Address("198.51.100.15")
    assert book.lease(instance="i3", mac="02:00:00:00:00:03", now=T0).ipv4 == IPv4Address(
        "198.51.100.11"
    )
    for n in range(4, 11):
        book.lease(instance=f"i{n}", mac=f"02:00:00:00:00:{n:02x}", now=T0)
    before = list(book.history)
    with pytest.raises(CapacityError, match="exhausted") as info:
        book.lease(instance="i11", mac="02:00:00:00:00:11", now=T0)
    assert info.value.code == "pool_exhausted"
    assert book.history == before  # nothing changed


REQUEST_ERRORS: list[tuple[dict[str, str], type[StratusError], str]] = [
    ({"ipv4": "198.51.100.10"}, Conflict, "already leased"),
    ({"ipv4": "198.51.100.50"}, InvalidInput, "outside the pools"),
    ({"ipv4": "198.51.100.1"}, InvalidInput, "outside the pools"),  # the gateway
    ({"ipv4": "198.51.100.x"}, InvalidInput, "malformed requested address"),
    ({"ipv4": "fd00:5eed:1::9"}, InvalidInput, "not an IPv4 address"),
    ({"ipv6": "fd00:5eed:2::9"}, InvalidInput, "not usable"),
    ({"ipv6": "fd00:5eed:1::1"}, InvalidInput, "not usable"),  # the gateway
    ({"ipv6": "fd00:5eed:1::ff:fe00:1"}, Conflict, "already leased"),
    ({"mac": "02:00:00:00:00:01"}, Conflict, "already holds a lease"),
    ({"mac": "03:00:00:00:00:09"}, InvalidInput, "multicast"),
    ({"mac": "02:00:00:00:09"}, InvalidInput, "malformed MAC"),
]


@pytest.mark.parametrize(("request_", "error", "message"), REQUEST_ERRORS)
def test_bad_requests_change_nothing(
    request_: dict[str, str], error: type[StratusError], message: str
) -> None:
    book = LeaseBook(public())
    book.lease(instance="i1", mac="02:00:00:00:00:01", now=T0)
    before = list(book.history)
    args = {"mac": "02:00:00:00:00:09", **request_}
    with pytest.raises(error, match=message):
        book.lease(instance="i2", now=T0, **args)  # type: ignore[arg-type]
    assert book.history == before


def test_v4_only_and_v6_only_networks() -> None:
    v4 = LeaseBook(public(cidr6=None, gateway6=None))
    assert v4.lease(instance="i", mac="02:00:00:00:00:01", now=T0).ipv6 is None
    with pytest.raises(InvalidInput, match="no IPv6"):
        v4.lease(instance="j", mac="02:00:00:00:00:02", now=T0, ipv6="fd00::1")
    v6 = LeaseBook(public(cidr4=None, gateway4=None, pools=[]))
    assert v6.lease(instance="i", mac="02:00:00:00:00:01", now=T0).ipv4 is None
    with pytest.raises(InvalidInput, match="no IPv4"):
        v6.lease(instance="j", mac="02:00:00:00:00:02", now=T0, ipv4="198.51.100.10")


def test_history_answers_who_had_an_address_when() -> None:
    book = LeaseBook(public())
    alice = book.lease(instance="alice-vm", mac="02:00:00:00:00:01", now=T0)
    [ended] = book.release(instance="alice-vm", now=T0 + timedelta(hours=1))
    assert ended.until == T0 + timedelta(hours=1)
    assert book.release(instance="alice-vm", now=T0 + timedelta(hours=2)) == []
    bob = book.lease(instance="bob-vm", mac="02:00:00:00:00:02", now=T0 + timedelta(hours=3))
    assert bob.ipv4 == alice.ipv4  # the address was free again
    assert book.holder("198.51.100.10", T0 + timedelta(minutes=30)) == ended
    assert book.holder("198.51.100.10", T0 + timedelta(hours=2)) is None
    assert book.holder("198.51.100.10", T0 + timedelta(hours=4)) == bob
    assert book.holder(str(alice.ipv6), T0) == ended
    assert [lease.instance for lease in book.history] == ["alice-vm", "bob-vm"]
    assert book.active() == [bob]


def test_release_one_nic_of_several() -> None:
    book = LeaseBook(public())
    book.lease(instance="vm", mac="02:00:00:00:00:01", now=T0)
    book.lease(instance="vm", mac="02:00:00:00:00:02", now=T0)
    [ended] = book.release(instance="vm", mac="02-00-00-00-00-02", now=T0)
    assert ended.mac == "02:00:00:00:00:02"
    assert [lease.mac for lease in book.active()] == ["02:00:00:00:00:01"]


@pytest.mark.parametrize("seed", range(5))
def test_random_lease_and_release_keeps_invariants(seed: int) -> None:
    """Property: active addresses are unique, inside the pools, never the gateway; allocation
    always takes the lowest free address."""
    rng = random.Random(seed)
    net = public(pools=["198.51.100.2-198.51.100.40", "198.51.100.100-198.51.100.110"])
    book = LeaseBook(net)
    now = T0
    for step in range(300):
        now += timedelta(seconds=1)
        active = book.active()
        if active and rng.random() < 0.4:
            book.release(instance=rng.choice(active).instance, now=now)
            continue
        used = {lease.ipv4 for lease in active}
        free = [
            a for pool in net.pools for a in _range(pool) if a not in used and a != net.gateway4
        ]
        mac = allocate_mac([lease.mac for lease in active], seed=f"{seed}-{step}")
        if not free:
            with pytest.raises(CapacityError):
                book.lease(instance=f"vm{step}", mac=mac, now=now)
            continue
        lease = book.lease(instance=f"vm{step}", mac=mac, now=now)
        assert lease.ipv4 == min(free)
        addresses = [lease.ipv4 for lease in book.active()]
        assert len(addresses) == len(set(addresses))
        assert all(any(a in pool for pool in net.pools) for a in addresses)
        assert net.gateway4 not in addresses


def _range(pool: AddressPool) -> list[IPv4Address]:
    return [IPv4Address(v) for v in range(int(pool.first), int(pool.last) + 1)]


def test_mac_from_ipv4_is_the_original_scheme() -> None:
    assert allocate_mac([], ipv4=IPv4Address("198.51.100.10")) == "02:00:c6:33:64:0a"
    with pytest.raises(Conflict, match="in use"):
        allocate_mac(["02:00:c6:33:64:0a"], ipv4=IPv4Address("198.51.100.10"))


def test_mac_from_seed_is_deterministic_and_unique() -> None:
    first = allocate_mac([], seed="instance-1/0")
    assert first == allocate_mac([], seed="instance-1/0")
    assert first != allocate_mac([], seed="instance-1/1")
    assert allocate_mac([first], seed="instance-1/0") != first  # probes past a collision
    assert first.startswith("02:00:")
    macs: list[str] = []
    for n in range(500):
        macs.append(allocate_mac(macs, prefix="0a:0a:00:00", seed=str(n % 7)))
    assert len(set(macs)) == 500
    assert all(int(mac[:2], 16) & 0b11 == 0b10 for mac in macs)


def test_lowest_mac_without_seed() -> None:
    assert allocate_mac([], prefix="06:aa:bb:cc:dd") == "06:aa:bb:cc:dd:00"
    assert allocate_mac(["06:aa:bb:cc:dd:00"], prefix="06:aa:bb:cc:dd") == "06:aa:bb:cc:dd:01"


@pytest.mark.parametrize(
    ("prefix", "message"),
    [("00:16", "not locally administered"), ("03:00", "not locally administered"),
     ("02:0", "malformed MAC prefix"), ("02:00:00:00:00:00", "malformed MAC prefix")],
)  # fmt: skip
def test_bad_mac_prefixes(prefix: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_mac_prefix(prefix)


def test_eui64_and_mac_normalisation() -> None:
    assert normalize_mac("02-00-C6-33-64-0A") == "02:00:c6:33:64:0a"
    net = IPv6Network("fd00:5eed:1::/64")
    assert eui64(net, "52:54:00:12:34:56") == IPv6Address("fd00:5eed:1::5054:ff:fe12:3456")


def test_leases_are_plain_records() -> None:
    book = LeaseBook(public())
    lease = book.lease(instance="i", mac="02:00:00:00:00:01", now=T0)
    assert lease.active and lease.held_at(T0) and not lease.held_at(T0 - timedelta(seconds=1))
    assert NetworkDefinition.__dataclass_params__.frozen  # type: ignore[attr-defined]
