"""Networks through the real app: IPAM at run time, lease history, NIC hot-plug, port
forwards and security groups, with an in-process agent (fake compute driver, fake host
network driver). Bad input changes nothing."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from fastapi.testclient import TestClient

from stratuslab.agent.networks import AgentNetworks, FakeNics
from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import StratusClient
from stratuslab.db.models import Base
from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    Direction,
    IpProtocol,
    SecurityRule,
    bridge_name,
    tap_name,
)
from stratuslab.drivers.network.fake import FakeNetworkDriver
from stratuslab.services.context import Ctx
from tests.integration.test_api import error, upload
from tests.integration.test_lifecycle import Node, start_node

P = "/api/v1"
LAB = {"name": "lab", "cidr4": "198.18.10.0/24", "gateway4": "198.18.10.1", "dns": ["198.18.10.2"]}


@pytest.fixture
def node(api: TestClient) -> Iterator[Node]:
    token = api.post(f"{P}/hosts/tokens").json()["token"]
    n = start_node(api, token)
    n.agent.reconciler.networks = AgentNetworks(FakeNetworkDriver(), FakeNics())
    yield n
    n.link.close()


@pytest.fixture
def image(api: TestClient, qcow2_file: Path) -> dict[str, Any]:
    return upload(api, qcow2_file, "base")


def host_driver(node: Node) -> FakeNetworkDriver:
    driver = node.agent.reconciler.networks.driver
    assert isinstance(driver, FakeNetworkDriver)
    return driver


def fake_nics(node: Node) -> FakeNics:
    nics = node.agent.reconciler.networks.nics
    assert isinstance(nics, FakeNics)
    return nics


def make_network(api: TestClient, **body: Any) -> dict[str, Any]:
    resp = api.post(f"{P}/networks", json={**LAB, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def run(api: TestClient, *networks: str, name: str = "vm", **body: Any) -> dict[str, Any]:
    payload = {"image": "base", "flavor": "t1.micro", "name": name, "networks": list(networks)}
    resp = api.post(f"{P}/instances", json={**payload, **body})
    assert resp.status_code == 202, resp.text
    vm: dict[str, Any] = resp.json()["instances"][0]
    return vm


def counts(api: TestClient) -> tuple[int, int, int]:
    instances = api.get(f"{P}/instances").json()["total"]
    nets = api.get(f"{P}/networks").json()
    leased = sum(n["leased"] for n in nets)
    return instances, len(nets), leased


def test_migration_matches_the_models(ctx: Ctx) -> None:
    bind = ctx.sessions.kw["bind"]
    with bind.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    tables = ("networks", "network_leases", "security_", "instance_nics", "port_forwards")
    assert [c for c in diff if any(t in repr(c) for t in tables)] == []


def test_run_on_a_network_allocates_mac_and_address_and_the_host_carries_it(
    api: TestClient, node: Node, image: dict[str, Any]
) -> None:
    net = make_network(api, pools=["198.18.10.10-198.18.10.20"])
    assert (net["capacity"], net["leased"], net["visibility"]) == (11, 0, "project")
    vm = run(api, "lab")
    (nic,) = vm["nics"]
    assert (nic["index"], nic["ipv4"], nic["address"]) == (0, "198.18.10.10", "198.18.10.10/24")
    assert nic["mac"].startswith("02:00:") and nic["security_group"] == "default"
    assert vm["address"] == "198.18.10.10:22"
    second = run(api, "lab:ip=198.18.10.15", name="vm2")
    assert second["nics"][0]["ipv4"] == "198.18.10.15"

    node.settle(lambda: api.get(f"{P}/instances/vm2").json()["status"] == "running")
    driver = host_driver(node)
    spec = driver.specs["lab"]
    assert spec.bridge == bridge_name("lab") and str(spec.address) == "198.18.10.1/24"
    reserved = {(h.mac, str(h.ipv4), h.hostname) for h in spec.dhcp_hosts}
    assert (nic["mac"], "198.18.10.10", "vm") in reserved and len(reserved) == 2
    tap = tap_name(vm["id"], 0)
    assert driver.interfaces[tap] == bridge_name("lab")
    assert driver.security_group(tap) == DEFAULT_SECURITY_GROUP
    assert fake_nics(node).macs(vm["id"]) == {nic["mac"]}
    domain = node.driver._domains[vm["id"]].spec  # the fake keeps what was defined
    assert not domain.user_network and [n.mac for n in domain.nics] == [nic["mac"]]
    assert api.get(f"{P}/networks/lab").json()["leased"] == 2


def test_bad_network_input_is_refused_and_changes_nothing(
    api: TestClient, node: Node, image: dict[str, Any]
) -> None:
    make_network(api, pools=["198.18.10.10-198.18.10.11"])
    before = counts(api)
    bad = [
        ({"name": "x", "cidr4": "198.18.300.0/24"}, 422, "malformed IPv4 CIDR"),
        ({"name": "x", "cidr4": "198.18.11.1/24"}, 422, "host bits set"),
        ({"name": "x", "cidr4": "198.18.10.128/25"}, 409, "overlaps network lab"),
        ({"name": "lab", "cidr4": "198.18.12.0/24"}, 409, "exists already"),
        ({"name": "x", "cidr4": "198.18.11.0/24", "gateway4": "198.18.12.1"}, 422, "gateway"),
        ({"name": "x", "cidr4": "198.18.11.0/24", "pools": ["198.18.12.1-198.18.12.9"]},
         422, "pool"),
        ({"name": "x", "cidr4": "198.18.11.0/24", "dns": ["nine.nine"]}, 422, "DNS server"),
        ({"name": "x", "cidr4": "198.18.11.0/24", "driver": "vxlan", "address_class": "local"},
         422, "private"),
        ({"name": "Bad_Name", "cidr4": "198.18.11.0/24"}, 422, ""),
    ]  # fmt: skip
    for body, status, words in bad:
        resp = api.post(f"{P}/networks", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert words in resp.text, resp.text
    assert counts(api) == before

    run(api, "lab:ip=198.18.10.11", name="a")
    before = counts(api)
    refused = [
        (["lab:ip=198.18.10.11"], 409, "already leased"),
        (["lab:ip=198.18.10.50"], 422, "outside the pools"),
        (["lab:ip=198.18.10.1"], 422, "outside the pools"),
        (["lab:ip=banana"], 422, "malformed requested address"),
        (["lab:ipx"], 422, "malformed network request"),
        (["nowhere"], 404, "network 'nowhere' does not exist"),
    ]
    for networks, status, words in refused:
        resp = api.post(f"{P}/instances", json={"image": "base", "networks": networks})
        assert resp.status_code == status, (networks, resp.text)
        assert words in resp.text
    run(api, "lab", name="b")  # takes the last address
    resp = api.post(f"{P}/instances", json={"image": "base", "name": "c", "networks": ["lab"]})
    assert resp.status_code == 409 and error(resp)["code"] == "pool_exhausted"
    resp = api.post(f"{P}/instances", json={"image": "base", "count": 2, "networks": ["lab"]})
    assert resp.status_code == 409
    assert counts(api)[0] == before[0] + 1 and counts(api)[2] == 2


def test_lease_history_is_kept_and_answers_who_had_an_address_when(
    api: TestClient, node: Node, image: dict[str, Any]
) -> None:
    make_network(api, pools=["198.18.10.10-198.18.10.10"])
    first = run(api, "lab", name="first")
    node.settle()
    mid = api.get(f"{P}/networks/lab/leases", params={"active": True}).json()
    assert [(x["instance_name"], x["until"]) for x in mid] == [("first", None)]
    when = mid[0]["since"]

    resp = api.delete(f"{P}/networks/lab")
    assert resp.status_code == 409 and error(resp)["code"] == "network_in_use"
    assert "first" in error(resp)["message"]

    api.delete(f"{P}/instances/first")
    node.settle(lambda: api.get(f"{P}/instances/{first['id']}").json()["status"] == "deleted")
    second = run(api, "lab", name="second")
    assert second["nics"][0]["ipv4"] == "198.18.10.10", "the address was given back"

    history = api.get(f"{P}/networks/lab/leases", params={"address": "198.18.10.10"}).json()
    assert [x["instance_name"] for x in history] == ["first", "second"]
    assert history[0]["until"] is not None and history[1]["until"] is None
    assert history[0]["mac"] == first["nics"][0]["mac"]
    held = api.get(f"{P}/networks/lab/leases", params={"at": when}).json()
    assert [x["instance_name"] for x in held] == ["first"]
    assert host_driver(node).security_group(tap_name(first["id"], 0)) is None


def test_security_group_change_bumps_the_desired_state_and_reaches_the_host(
    api: TestClient, node: Node, image: dict[str, Any]
) -> None:
    make_network(api)
    assert api.post(f"{P}/security-groups", json={"name": "web"}).status_code == 201
    vm = run(api, "lab", security_group="web")
    node.settle()
    tap = tap_name(vm["id"], 0)
    assert host_driver(node).security_group(tap) == ()  # a new group allows nothing

    generation = node.link.desired(since=-1, wait=0).generation
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 80, "remote": "198.18.0.0/15"}
    resp = api.post(f"{P}/security-groups/web/rules", json=rule)
    assert resp.status_code == 201, resp.text
    assert node.link.desired(since=-1, wait=0).generation > generation
    node.settle()
    allowed = SecurityRule(
        Direction.INGRESS,
        IpProtocol.TCP,
        80,
        80,
        remote=ipaddress.ip_network("198.18.0.0/15"),
    )
    assert host_driver(node).security_group(tap) == (allowed,)

    resp = api.post(f"{P}/security-groups/web/rules", json={**rule, "port_min": 90, "port_max": 80})
    assert resp.status_code == 422
    resp = api.post(f"{P}/security-groups/web/rules", json={**rule, "remote": "198.18.0.1/15"})
    assert resp.status_code == 422
    resp = api.post(
        f"{P}/security-groups/web/rules",
        json={"direction": "ingress", "protocol": "icmp", "port_min": 1},
    )
    assert resp.status_code == 422
    group = api.get(f"{P}/security-groups/web").json()
    assert len(group["rules"]) == 1 and group["nics"] == 1
    assert api.delete(f"{P}/security-groups/web").status_code == 409
    assert api.delete(f"{P}/security-groups/default").status_code == 409

    api.delete(f"{P}/security-groups/web/rules/{group['rules'][0]['id']}")
    node.settle()
    assert host_driver(node).security_group(tap) == ()


def test_nic_hot_attach_detach_and_port_forwards(
    api: TestClient, node: Node, image: dict[str, Any]
) -> None:
    make_network(api)
    make_network(api, name="back", cidr4="198.18.20.0/24", gateway4="198.18.20.1", dns=[])
    vm = run(api, "lab")
    node.settle()
    op = api.post(f"{P}/instances/vm/nics", json={"network": "back", "ip": "198.18.20.7"})
    assert op.status_code == 202, op.text
    node.settle(lambda: api.get(f"{P}/operations/{op.json()['id']}").json()["status"] != "running")
    assert api.get(f"{P}/operations/{op.json()['id']}").json()["status"] == "succeeded"
    nics = api.get(f"{P}/instances/vm/nics").json()
    assert [(n["index"], n["network"], n["ipv4"]) for n in nics] == [
        (0, "lab", "198.18.10.2"),
        (1, "back", "198.18.20.7"),
    ]
    assert fake_nics(node).macs(vm["id"]) == {n["mac"] for n in nics}
    assert host_driver(node).interfaces[tap_name(vm["id"], 1)] == bridge_name("back")

    # on a private network, SSH is forwarded (PAT) from the placement on
    (auto,) = api.get(f"{P}/instances/vm/port-forwards").json()
    assert (auto["host_port"], auto["target"], auto["target_port"]) == (30000, "198.18.10.2", 22)
    resp = api.post(f"{P}/instances/vm/port-forwards", json={"port": 8080})
    assert resp.status_code == 201, resp.text
    forward = resp.json()
    assert (forward["host_port"], forward["target"], forward["target_port"]) == (
        30001,
        "198.18.10.2",
        8080,
    )
    taken = api.post(f"{P}/instances/vm/port-forwards", json={"port": 80, "host_port": 30001})
    assert taken.status_code == 409
    node.settle()
    pats = sorted(host_driver(node).port_forwards(), key=lambda f: f.host_port)
    assert [(f.host_port, str(f.target), f.target_port) for f in pats] == [
        (30000, "198.18.10.2", 22),
        (30001, "198.18.10.2", 8080),
    ]
    shown = api.get(f"{P}/instances/vm").json()
    assert [f["host_port"] for f in shown["port_forwards"]] == [30000, 30001]

    op = api.delete(f"{P}/instances/vm/nics/back")
    assert op.status_code == 202
    node.settle()
    assert len(fake_nics(node).macs(vm["id"])) == 1
    assert tap_name(vm["id"], 1) not in host_driver(node).interfaces
    assert "back" not in host_driver(node).specs, "a network nothing uses leaves the host"
    assert api.delete(f"{P}/networks/back").status_code == 204
    api.delete(f"{P}/instances/vm/port-forwards/30000")
    api.delete(f"{P}/instances/vm/port-forwards/30001")
    node.settle()
    assert host_driver(node).port_forwards() == []


def test_a_member_cannot_make_site_networks_and_sees_public_ones(
    api: TestClient, member_token: str
) -> None:
    make_network(api, name="site", address_class="public")
    member = TestClient(api.app)
    member.headers["Authorization"] = f"Bearer {member_token}"
    resp = member.post(f"{P}/networks", json={**LAB, "name": "x", "address_class": "local"})
    assert resp.status_code == 403
    resp = member.post(f"{P}/networks", json={**LAB, "name": "mine", "cidr4": "198.18.10.0/24"})
    assert resp.status_code == 201, "private networks of other projects may overlap"
    assert {n["name"] for n in member.get(f"{P}/networks").json()} == {"site", "mine"}
    assert member.delete(f"{P}/networks/site").status_code == 403


def test_cli_network_commands(api: TestClient, node: Node, image: dict[str, Any]) -> None:
    token = api.headers["Authorization"].split()[1]
    app = AppContext(
        client_factory=lambda s: StratusClient("http://testserver", token, http=api),
        sleep=lambda _s: None,
    )

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), obj=app, catch_exceptions=False)

    made = invoke(
        "network", "create", "lab", "--cidr", "198.18.10.0/24", "--gateway", "198.18.10.1"
    )
    assert made.exit_code == 0, made.output
    assert "198.18.10.0/24" in invoke("network", "list").stdout
    bad = invoke("network", "create", "other", "--cidr", "198.18.10.0/25")
    assert bad.exit_code == 4 and "overlaps" in bad.stderr
    done = invoke("--json", "run", "base", "-t", "t1.micro", "--network", "lab", "--no-wait")
    assert done.exit_code == 0, done.output
    vm = json.loads(done.stdout)[0]
    node.settle()
    added = invoke("port-forward", "add", vm["id"], "22")
    assert added.exit_code == 0, added.output
    shown = invoke("show", vm["id"])
    assert "NICs" in shown.stdout and "198.18.10.2/24" in shown.stdout
    assert "Port forwards" in shown.stdout and "198.18.10.2:22" in shown.stdout
    leases = invoke("network", "leases", "lab")
    assert "198.18.10.2" in leases.stdout and "active" in leases.stdout
    assert (
        invoke(
            "secgroup", "rule", "add", "default", "ingress", "--protocol", "tcp", "--port", "80-81"
        ).exit_code
        == 0
    )
    assert "80-81" in invoke("secgroup", "show", "default").stdout
    assert invoke("network", "delete", "lab").exit_code == 4
