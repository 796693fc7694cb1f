"""Wire types of virtual networks, instance NICs, port forwards and security groups."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn

NETWORK_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
GROUP_NAME = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"


class NetworkCreate(WireIn):
    name: str = Field(pattern=NETWORK_NAME, description="lower-case letters, digits, hyphens")
    address_class: Literal["public", "local", "private"] = Field(
        default="private",
        description="public (WAN) and local (data centre) are site networks (cloud admins); "
        "private networks belong to the acting project",
    )
    driver: Literal["bridge", "vxlan"] = Field(
        default="bridge",
        description="bridge: a Linux bridge per host with DHCP; vxlan: a private network "
        "spanning hosts",
    )
    cidr4: str | None = Field(default=None, examples=["198.51.100.0/24"])
    gateway4: str | None = None
    pools: list[str] = Field(
        default_factory=list, description="FIRST-LAST or CIDR; none: every host address"
    )
    cidr6: str | None = Field(default=None, description="an IPv6 /64")
    gateway6: str | None = None
    dns: list[str] = Field(default_factory=list)
    mtu: int | None = None
    uplink: str | None = Field(
        default=None, description="host interface the bridge joins (site networks)"
    )
    vlan: int | None = Field(default=None, description="802.1Q tag on the uplink")
    visibility: Literal["project", "public"] | None = Field(
        default=None,
        description="who may attach: public (every project) or project; default: public for "
        "public and local networks, project for private ones",
    )
    description: str = Field(default="", max_length=1000)


class Network(Wire):
    id: str
    name: str
    address_class: str
    driver: str
    cidr4: str | None
    gateway4: str | None
    pools: list[str]
    cidr6: str | None
    gateway6: str | None
    dns: list[str]
    mtu: int | None
    uplink: str | None
    vlan: int | None
    vni: int | None
    visibility: str
    description: str
    owner_id: str
    project_id: str
    created_at: datetime
    #: IPv4 addresses the pools hold, and how many are leased now
    capacity: int = 0
    leased: int = 0


class Lease(Wire):
    """One entry of a network's lease history: who held which addresses when."""

    network: str
    instance_id: str
    instance_name: str
    project_id: str
    mac: str
    ipv4: str | None
    ipv6: str | None
    since: datetime
    until: datetime | None


class NicCreate(WireIn):
    network: str = Field(min_length=1, description="network name or id")
    ip: str | None = Field(default=None, description="a fixed IPv4 address from the pools")
    ipv6: str | None = Field(default=None, description="a fixed IPv6 address (default: SLAAC)")
    security_group: str | None = Field(
        default=None, description="security group of the NIC (default: the project's default)"
    )


class Nic(Wire):
    id: str
    index: int
    network: str
    network_id: str
    mac: str
    ipv4: str | None
    ipv6: str | None
    #: the IPv4 address with the network's prefix length
    address: str | None = None
    security_group: str | None = None
    #: the host-side interface (tap) of the NIC
    tap: str


class PortForwardCreate(WireIn):
    port: int = Field(ge=1, le=65535, description="the instance's port")
    host_port: int | None = Field(
        default=None, ge=1, le=65535, description="the host's port (default: the next free one)"
    )
    protocol: Literal["tcp", "udp"] = "tcp"
    nic: int = Field(default=0, ge=0, description="index of the NIC whose address is the target")


class PortForward(Wire):
    id: str
    instance_id: str
    protocol: str
    host_port: int
    target: str
    target_port: int
    host_id: str
    host_name: str | None = None


class SecurityRuleCreate(WireIn):
    direction: Literal["ingress", "egress"]
    protocol: Literal["any", "tcp", "udp", "icmp"] = "any"
    port_min: int | None = Field(default=None, ge=1, le=65535)
    port_max: int | None = Field(default=None, ge=1, le=65535)
    remote: str | None = Field(default=None, description="a CIDR (default: anywhere)")
    remote_group: str | None = Field(
        default=None, description="a security group of the project: its instances' addresses"
    )


class SecurityRule(Wire):
    id: str
    direction: str
    protocol: str
    port_min: int | None
    port_max: int | None
    remote_cidr: str | None
    remote_group: str | None = None


class SecurityGroupCreate(WireIn):
    name: str = Field(pattern=GROUP_NAME)
    description: str = Field(default="", max_length=1000)


class SecurityGroup(Wire):
    id: str
    name: str
    description: str
    project_id: str
    created_at: datetime
    rules: list[SecurityRule] = Field(default_factory=list)
    #: NICs using the group now
    nics: int = 0
