"""Network commands: ``stratus network|nic|port-forward|secgroup ...``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.progress import wait
from stratuslab.client.networks import NetworksApi
from stratuslab.schemas.networks import (
    Lease,
    Network,
    NetworkCreate,
    Nic,
    NicCreate,
    PortForward,
    PortForwardCreate,
    SecurityGroup,
    SecurityGroupCreate,
    SecurityRule,
    SecurityRuleCreate,
)

NETWORK_HEADERS = ("name", "class", "driver", "ipv4", "ipv6", "leased", "visibility")
LEASE_HEADERS = ("ipv4", "ipv6", "mac", "instance", "since", "until")
NIC_HEADERS = ("index", "network", "mac", "ipv4", "ipv6", "secgroup", "tap")
FORWARD_HEADERS = ("id", "protocol", "host", "host port", "target")
GROUP_HEADERS = ("name", "rules", "nics", "description")
RULE_HEADERS = ("id", "direction", "protocol", "ports", "remote")
WAIT_SECONDS = 300.0


def api(app: AppContext) -> NetworksApi:
    return NetworksApi(app.client)


# -- network -------------------------------------------------------------------------------


@click.group("network")
def network() -> None:
    """Virtual networks: addresses, DHCP, lease history."""


@network.command("create")
@click.argument("name")
@click.option("--cidr", "cidr4", metavar="CIDR", help="IPv4 network, e.g. 198.51.100.0/24.")
@click.option("--gateway", "gateway4", metavar="ADDRESS", help="IPv4 gateway (never leased).")
@click.option("--pool", "pools", multiple=True, metavar="FIRST-LAST|CIDR", help="Repeatable.")
@click.option("--cidr6", metavar="CIDR", help="IPv6 /64 (guests use SLAAC).")
@click.option("--gateway6", metavar="ADDRESS")
@click.option("--dns", multiple=True, metavar="ADDRESS", help="DNS server (repeatable).")
@click.option("--mtu", type=click.IntRange(576, 9000))
@click.option(
    "--class",
    "address_class",
    type=click.Choice(["private", "local", "public"]),
    default="private",
    show_default=True,
)
@click.option("--driver", type=click.Choice(["bridge", "vxlan"]), default="bridge")
@click.option("--uplink", metavar="IFACE", help="Host interface the bridge joins.")
@click.option("--vlan", type=int, help="802.1Q tag on the uplink.")
@click.option("--public", "shared", is_flag=True, help="Every project may attach to it.")
@click.option("--description", default="")
@json_option
@pass_app
def create(
    app: AppContext,
    name: str,
    cidr4: str | None,
    gateway4: str | None,
    pools: tuple[str, ...],
    cidr6: str | None,
    gateway6: str | None,
    dns: tuple[str, ...],
    mtu: int | None,
    address_class: str,
    driver: str,
    uplink: str | None,
    vlan: int | None,
    shared: bool,
    description: str,
) -> None:
    """Create a network (public and local ones: cloud admins)."""
    spec = NetworkCreate.model_validate(
        {
            "name": name,
            "address_class": address_class,
            "driver": driver,
            "cidr4": cidr4,
            "gateway4": gateway4,
            "pools": list(pools),
            "cidr6": cidr6,
            "gateway6": gateway6,
            "dns": list(dns),
            "mtu": mtu,
            "uplink": uplink,
            "vlan": vlan,
            "visibility": "public" if shared else None,
            "description": description,
        }
    )
    created = api(app).create_network(spec)
    output.emit(app, created, NETWORK_HEADERS, _network_rows([created]))


@network.command("list")
@json_option
@pass_app
def list_networks(app: AppContext) -> None:
    """List the networks you may attach to."""
    nets = api(app).list_networks()
    output.emit(app, nets, NETWORK_HEADERS, _network_rows(nets), ids=[n.id for n in nets])


@network.command("show")
@click.argument("ref", metavar="NAME")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show a network and its active leases."""
    net = api(app).get_network(ref)
    leases = api(app).leases(ref, active=True)
    if app.json:
        output.print_json({**net.model_dump(mode="json"), "leases": output.jsonable(leases)})
        return
    output.print_fields(app, ((k, output.text(v)) for k, v in net.model_dump().items()))
    if leases:
        app.out.print("\n[bold]Active leases[/bold]")
        output.print_table(app, LEASE_HEADERS, _lease_rows(leases))


@network.command("delete")
@click.argument("refs", metavar="NAME...", nargs=-1, required=True)
@pass_app
@click.pass_context
def delete(ctx: click.Context, app: AppContext, refs: Sequence[str]) -> None:
    """Delete networks no NIC uses (goes on after an error)."""
    failures = output.Failures()
    for ref in refs:
        with failures.item():
            api(app).delete_network(ref)
            output.info(app, f"deleted: {ref}")
    failures.exit(ctx)


@network.command("leases")
@click.argument("ref", metavar="NAME")
@click.option("--address", help="Only leases of this address.")
@click.option("--at", type=click.DateTime(), help="Only leases held at this (local) time.")
@click.option("--active", is_flag=True, help="Only leases held now.")
@json_option
@pass_app
def leases(
    app: AppContext, ref: str, address: str | None, at: datetime | None, active: bool
) -> None:
    """Lease history: who had which address when (kept forever)."""
    when = None if at is None else at.astimezone()
    items = api(app).leases(ref, address=address, at=when, active=active)
    output.emit(app, items, LEASE_HEADERS, _lease_rows(items))


# -- nic -----------------------------------------------------------------------------------


@click.group("nic")
def nic() -> None:
    """Attach and detach instance NICs (live while the instance runs)."""


@nic.command("list")
@click.argument("instance", metavar="ID")
@json_option
@pass_app
def list_nics(app: AppContext, instance: str) -> None:
    """List an instance's NICs."""
    items = api(app).list_nics(instance)
    output.emit(app, items, NIC_HEADERS, nic_rows(items))


@nic.command("attach")
@click.argument("instance", metavar="ID")
@click.argument("network_ref", metavar="NETWORK")
@click.option("--ip", help="Fixed IPv4 address from the network's pools.")
@click.option("--ipv6", help="Fixed IPv6 address (default: SLAAC).")
@click.option("--secgroup", help="Security group (default: the project's default).")
@click.option("--no-wait", is_flag=True, help="Return once the request is accepted.")
@pass_app
def attach(
    app: AppContext,
    instance: str,
    network_ref: str,
    ip: str | None,
    ipv6: str | None,
    secgroup: str | None,
    no_wait: bool,
) -> None:
    """Attach a NIC on NETWORK to an instance."""
    spec = NicCreate(network=network_ref, ip=ip, ipv6=ipv6, security_group=secgroup)
    operation = api(app).attach_nic(instance, spec)
    if not no_wait:
        wait(app, operation, timeout=WAIT_SECONDS, label=f"attaching a NIC to {instance}")
    items = api(app).list_nics(instance)
    output.emit(app, items, NIC_HEADERS, nic_rows(items))


@nic.command("detach")
@click.argument("instance", metavar="ID")
@click.argument("nic_ref", metavar="NIC")
@click.option("--no-wait", is_flag=True, help="Return once the request is accepted.")
@pass_app
def detach(app: AppContext, instance: str, nic_ref: str, no_wait: bool) -> None:
    """Detach a NIC (by index, MAC or network name); its address is released."""
    operation = api(app).detach_nic(instance, nic_ref)
    if not no_wait:
        wait(app, operation, timeout=WAIT_SECONDS, label=f"detaching NIC {nic_ref}")
    output.info(app, f"detached: {nic_ref}")


# -- port-forward --------------------------------------------------------------------------


@click.group("port-forward")
def port_forward() -> None:
    """Forward host ports to instance ports (PAT)."""


@port_forward.command("add")
@click.argument("instance", metavar="ID")
@click.argument("port", type=click.IntRange(1, 65535), default=22)
@click.option("--host-port", type=click.IntRange(1, 65535), help="Default: the next free one.")
@click.option("--protocol", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option("--nic", "nic_index", type=click.IntRange(0), default=0, show_default=True)
@json_option
@pass_app
def add_forward(
    app: AppContext,
    instance: str,
    port: int,
    host_port: int | None,
    protocol: str,
    nic_index: int,
) -> None:
    """Forward a host port to PORT (default 22) of an instance."""
    spec = PortForwardCreate.model_validate(
        {"port": port, "host_port": host_port, "protocol": protocol, "nic": nic_index}
    )
    made = api(app).add_forward(instance, spec)
    output.emit(app, made, FORWARD_HEADERS, forward_rows([made]))


@port_forward.command("list")
@click.argument("instance", metavar="ID")
@json_option
@pass_app
def list_forwards(app: AppContext, instance: str) -> None:
    """List an instance's port forwards."""
    items = api(app).list_forwards(instance)
    output.emit(app, items, FORWARD_HEADERS, forward_rows(items), ids=[f.id for f in items])


@port_forward.command("remove")
@click.argument("instance", metavar="ID")
@click.argument("forward", metavar="HOST_PORT|ID")
@pass_app
def remove_forward(app: AppContext, instance: str, forward: str) -> None:
    """Stop a port forward."""
    api(app).remove_forward(instance, forward)
    output.info(app, f"removed: {forward}")


# -- secgroup ------------------------------------------------------------------------------


@click.group("secgroup")
def secgroup() -> None:
    """Security groups: allow rules applied to instance NICs at once."""


@secgroup.command("list")
@json_option
@pass_app
def list_groups(app: AppContext) -> None:
    """List the project's security groups."""
    groups = api(app).list_groups()
    output.emit(app, groups, GROUP_HEADERS, _group_rows(groups), ids=[g.id for g in groups])


@secgroup.command("create")
@click.argument("name")
@click.option("--description", default="")
@json_option
@pass_app
def create_group(app: AppContext, name: str, description: str) -> None:
    """Create an empty security group (it allows nothing until rules are added)."""
    made = api(app).create_group(SecurityGroupCreate(name=name, description=description))
    output.emit(app, made, GROUP_HEADERS, _group_rows([made]))


@secgroup.command("show")
@click.argument("ref", metavar="NAME")
@json_option
@pass_app
def show_group(app: AppContext, ref: str) -> None:
    """Show a security group and its rules."""
    group = api(app).get_group(ref)
    if app.json:
        output.print_json(group)
        return
    output.print_fields(app, [("name", group.name), ("description", group.description or "-")])
    output.print_table(app, RULE_HEADERS, _rule_rows(group.rules))


@secgroup.command("delete")
@click.argument("ref", metavar="NAME")
@pass_app
def delete_group(app: AppContext, ref: str) -> None:
    """Delete a security group no NIC uses."""
    api(app).delete_group(ref)
    output.info(app, f"deleted: {ref}")


@secgroup.group("rule")
def rule() -> None:
    """Add and remove the rules of a group."""


@rule.command("add")
@click.argument("group", metavar="GROUP")
@click.argument("direction", type=click.Choice(["ingress", "egress"]))
@click.option(
    "--protocol", type=click.Choice(["any", "tcp", "udp", "icmp"]), default="any", show_default=True
)
@click.option("--port", metavar="PORT[-PORT]", help="Port or range (tcp and udp).")
@click.option("--remote", metavar="CIDR", help="Remote network (default: anywhere).")
@click.option("--remote-group", metavar="GROUP", help="Remote group: its instances' addresses.")
@json_option
@pass_app
def add_rule(
    app: AppContext,
    group: str,
    direction: str,
    protocol: str,
    port: str | None,
    remote: str | None,
    remote_group: str | None,
) -> None:
    """Allow traffic; instances using GROUP get the rule at once."""
    low, high = _ports(port)
    spec = SecurityRuleCreate.model_validate(
        {
            "direction": direction,
            "protocol": protocol,
            "port_min": low,
            "port_max": high,
            "remote": remote,
            "remote_group": remote_group,
        }
    )
    made = api(app).add_rule(group, spec)
    output.emit(app, made, RULE_HEADERS, _rule_rows([made]))


@rule.command("remove")
@click.argument("group", metavar="GROUP")
@click.argument("rule_id", metavar="RULE_ID")
@pass_app
def remove_rule(app: AppContext, group: str, rule_id: str) -> None:
    """Remove a rule (see `stratus secgroup show GROUP` for ids)."""
    api(app).remove_rule(group, rule_id)
    output.info(app, f"removed: {rule_id}")


GROUPS = (network, nic, port_forward, secgroup)


# -- helpers -------------------------------------------------------------------------------


def _ports(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not PORT or PORT-PORT", param_hint="--port"
        ) from None


def _network_rows(nets: Iterable[Network]) -> list[tuple[str, ...]]:
    return [
        (
            n.name,
            n.address_class,
            n.driver + (f" vni {n.vni}" if n.vni else ""),
            output.text(n.cidr4),
            output.text(n.cidr6),
            f"{n.leased}/{n.capacity}",
            n.visibility,
        )
        for n in nets
    ]


def _lease_rows(items: Iterable[Lease]) -> list[tuple[str, ...]]:
    return [
        (
            output.text(lease.ipv4),
            output.text(lease.ipv6),
            lease.mac,
            lease.instance_name or output.short_id(lease.instance_id),
            output.fmt_time(lease.since),
            output.fmt_time(lease.until) if lease.until else "active",
        )
        for lease in items
    ]


def nic_rows(items: Iterable[Nic]) -> list[tuple[str, ...]]:
    return [
        (
            str(n.index),
            n.network,
            n.mac,
            output.text(n.address),
            output.text(n.ipv6),
            output.text(n.security_group),
            n.tap,
        )
        for n in items
    ]


def forward_rows(items: Iterable[PortForward]) -> list[tuple[str, ...]]:
    return [
        (
            output.short_id(f.id),
            f.protocol,
            f.host_name or output.short_id(f.host_id),
            str(f.host_port),
            f"{f.target}:{f.target_port}",
        )
        for f in items
    ]


def _group_rows(groups: Iterable[SecurityGroup]) -> list[tuple[str, ...]]:
    return [(g.name, str(len(g.rules)), str(g.nics), g.description or "-") for g in groups]


def _rule_rows(rules: Iterable[SecurityRule]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in rules:
        ports = "-" if r.port_min is None else f"{r.port_min}-{r.port_max or r.port_min}"
        remote = f"group {r.remote_group}" if r.remote_group else r.remote_cidr or "anywhere"
        rows.append((r.id, r.direction, r.protocol, ports, remote))
    return rows
