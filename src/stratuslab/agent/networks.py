"""The node side of virtual networks: make the host match the desired state's networks.

Each pass of the agent:

1. :meth:`AgentNetworks.ensure_networks` (before instances): every network the host carries,
   with the DHCP reservations of its NICs (bridge, uplink or VXLAN, dnsmasq);
2. per instance (from the reconciler): the domain is defined with its NICs
   (:meth:`~AgentNetworks.domain_nics`; the guest's static network config goes into the seed,
   :func:`guest_network`), running domains get missing NICs hot-attached and removed ones
   detached, and each NIC's tap is plugged into its bridge with its security group
   (:meth:`~AgentNetworks.converge_instance`);
3. :meth:`AgentNetworks.finish` (after instances): port forwards of the whole host, and
   whatever nothing needs any more (forwards, networks) is removed.

Everything compares what is with what should be before changing anything, so a pass with
nothing to do runs no ``nft`` or ``ip`` command that changes state.

With ``netns`` the host driver runs inside that network namespace (tests stand in for hosts
that way). libvirt (in the root namespace) cannot see a bridge in there, so NICs are then
``ethernet`` interfaces: libvirt creates the tap, the agent moves it into the namespace and
plugs it into the bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stratuslab.config import NodeSettings
from stratuslab.context.spec import Nic as GuestNic
from stratuslab.drivers.base import NicSpec, PortForward
from stratuslab.drivers.network import base as net
from stratuslab.drivers.network.fake import FakeNetworkDriver
from stratuslab.drivers.network.linux import Host, LinuxNetworkDriver
from stratuslab.errors import DriverError, InvalidInput, StratusError
from stratuslab.networks import underlay
from stratuslab.schemas.agent import (
    AgentEvent,
    DesiredInstance,
    DesiredNetwork,
    DesiredNic,
    DesiredRule,
    DesiredState,
)

log = logging.getLogger(__name__)
#: NIC indexes looked at when an instance's leftovers are cleaned up
MAX_NICS = 16
#: an unchanged network is ensured again (bridge, addresses, dnsmasq) this often
RECHECK_SECONDS = 60.0


class NicBackend(Protocol):
    """Hot-plug of domain NICs (on libvirt: ``drivers/libvirt/nic_hotplug.py``)."""

    #: the host driver must create the taps itself (no hypervisor makes them)
    create_taps: bool

    def defined(self, uuid: str, nics: tuple[NicSpec, ...]) -> None: ...
    def attach(self, uuid: str, nic: NicSpec) -> None: ...
    def detach(self, uuid: str, mac: str) -> None: ...
    def macs(self, uuid: str) -> set[str]: ...
    def forget(self, uuid: str) -> None: ...


@dataclass
class FakeNics:
    """NICs of fake domains, in memory (with the fake compute driver)."""

    create_taps: bool = True
    domains: dict[str, dict[str, NicSpec]] = field(default_factory=dict)

    def defined(self, uuid: str, nics: tuple[NicSpec, ...]) -> None:
        self.domains[uuid] = {nic.mac: nic for nic in nics}

    def attach(self, uuid: str, nic: NicSpec) -> None:
        self.domains.setdefault(uuid, {})[nic.mac] = nic

    def detach(self, uuid: str, mac: str) -> None:
        self.domains.get(uuid, {}).pop(mac, None)

    def macs(self, uuid: str) -> set[str]:
        return set(self.domains.get(uuid, {}))

    def forget(self, uuid: str) -> None:
        self.domains.pop(uuid, None)


def guest_network(inst: DesiredInstance) -> tuple[GuestNic, ...] | None:
    """The guest's static network configuration (same addresses as the DHCP reservations);
    None when the instance has no NICs on virtual networks (user-mode NIC, DHCP)."""
    if not inst.nics:
        return None
    return tuple(
        GuestNic(
            mac=nic.mac,
            address=None if nic.address is None else ipaddress.IPv4Interface(nic.address),
            gateway=None
            if nic.gateway is None or nic.address is None
            else ipaddress.IPv4Address(nic.gateway),
            dns=tuple(ipaddress.IPv4Address(server) for server in nic.dns),
            mtu=nic.mtu,
        )
        for nic in inst.nics
    )


def host_spec(desired: DesiredNetwork, *, vxlan_local: str | None = None) -> net.HostNetworkSpec:
    """What the host driver needs for ``desired``. A host-local bridge (no uplink) holds the
    gateway address itself and serves DHCP; on an uplink the gateway is elsewhere."""
    address = address6 = None
    if desired.uplink is None and desired.cidr4 and desired.gateway4:
        prefix = desired.cidr4.split("/")[1]
        address = ipaddress.IPv4Interface(f"{desired.gateway4}/{prefix}")
    if desired.uplink is None and desired.cidr6 and desired.gateway6:
        address6 = ipaddress.IPv6Interface(f"{desired.gateway6}/64")
    vxlan = None
    if desired.driver == "vxlan":
        if not vxlan_local or desired.vni is None:
            raise DriverError(
                f"network {desired.name} is a VXLAN network but this host has no underlay address",
                hint="set network_underlay in the node settings",
            )
        local = ipaddress.IPv4Address(vxlan_local)
        peers = sorted({ipaddress.IPv4Address(p) for p in desired.peers if ":" not in p} - {local})
        vxlan = net.VxlanSpec(vni=desired.vni, local=local, peers=tuple(peers))
    return net.HostNetworkSpec(
        name=desired.name,
        bridge=net.bridge_name(desired.name),
        address=address,
        address6=address6,
        gateway=None if desired.gateway4 is None else ipaddress.IPv4Address(desired.gateway4),
        dns=tuple(ipaddress.IPv4Address(s) for s in desired.dns if ":" not in s),
        mtu=desired.mtu,
        uplink=desired.uplink,
        vlan=desired.vlan,
        vxlan=vxlan,
        dhcp=address is not None,
        dhcp_hosts=tuple(
            net.DhcpHost(r.mac, ipaddress.IPv4Address(r.ipv4), r.hostname)
            for r in desired.reservations
        )
        if address is not None
        else (),
    )


class AgentNetworks:
    """Networks, NICs, security groups and port forwards of one host."""

    def __init__(
        self,
        driver: net.HostNetworkDriver | None,
        nics: NicBackend | None,
        *,
        netns: str | None = None,
        vxlan_local: str | None = None,
    ) -> None:
        self.driver = driver
        self.nics = nics
        self.netns = netns
        self.vxlan_local = vxlan_local
        self._root = Host(None)
        #: the last problem reported per network
        self._problems: dict[str, str] = {}
        #: per pass: bridge ports, root namespace links (None: not read yet this pass)
        self._port_view: dict[str, str] | None = None
        self._root_view: set[str] | None = None
        #: rules applied per tap, as far as this agent knows (None: none applied)
        self._bound: dict[str, tuple[net.SecurityRule, ...] | None] = {}
        #: instances whose every possible tap was checked once
        self._swept: set[str] = set()
        #: network -> (spec, when) last ensured: unchanged specs are re-checked now and then
        self._ensured: dict[str, tuple[net.HostNetworkSpec, float]] = {}

    # -- per pass ------------------------------------------------------------------------

    def ensure_networks(self, desired: DesiredState) -> list[AgentEvent]:
        self._port_view = self._root_view = None  # a new pass: read the host again
        if self.driver is None:
            return []
        events = []
        now = time.monotonic()
        for wanted in desired.networks:
            try:
                spec = host_spec(wanted, vxlan_local=self.vxlan_local)
                last = self._ensured.get(wanted.name)
                if last is not None and last[0] == spec and now - last[1] < RECHECK_SECONDS:
                    continue  # unchanged and checked recently
                self.driver.ensure_network(spec)
                self._ensured[wanted.name] = (spec, now)
                self._problems.pop(wanted.name, None)
            except StratusError as exc:
                message = f"network {wanted.name} not set up: {exc}"
                if self._problems.get(wanted.name) != message:  # once, not every pass
                    log.warning("%s", message)
                    events.append(_error(message))
                self._problems[wanted.name] = message
        return events

    def finish(self, desired: DesiredState) -> list[AgentEvent]:
        """Port forwards of the whole host; networks nothing uses any more are removed."""
        if self.driver is None:
            return []
        try:
            events = self._converge_forwards(desired)
        except StratusError as exc:
            events = [_error(f"port forwards not converged: {exc}")]
        wanted = {n.name for n in desired.networks}
        for name in set(self.driver.networks()) - wanted:
            self._ensured.pop(name, None)
            try:
                self.driver.remove_network(name)
            except StratusError as exc:  # still plugged: next pass
                log.info("network %s not removed yet: %s", name, exc)
        return events

    def usage(self) -> dict[str, float]:
        """Heartbeat usage entries: this host's underlay address, so that the controller can
        list it as a VXLAN peer in the other hosts' desired states."""
        return underlay.encode(self.vxlan_local) if self.driver is not None else {}

    # -- per instance --------------------------------------------------------------------

    def user_forwards(self, inst: DesiredInstance) -> tuple[PortForward, ...]:
        """QEMU user-mode forwards besides SSH (the image's declared ports), for the domain."""
        if inst.nics:
            return ()
        return tuple(
            PortForward(host_port=f.host_port, guest_port=f.target_port, protocol=f.protocol)
            for f in inst.port_forwards
            if f.user_mode
        )

    def user_network(self, inst: DesiredInstance) -> bool:
        """Instances on virtual networks have no user-mode NIC."""
        return not inst.nics

    def domain_nics(self, inst: DesiredInstance) -> tuple[NicSpec, ...]:
        """The NICs the domain is defined with (none in a namespace: see :meth:`before_start`)."""
        if not inst.nics:
            return ()
        self._require_driver(inst)
        specs = () if self.netns else tuple(self._spec(inst, nic) for nic in inst.nics)
        if self.nics is not None:
            self.nics.defined(inst.id, specs)
        return specs

    def before_start(self, inst: DesiredInstance) -> None:
        """In a namespace, NICs join the (stopped) domain's definition as ethernet taps."""
        if self.netns and self.nics is not None:
            for nic in inst.nics:
                self.nics.attach(inst.id, self._spec(inst, nic))

    def converge_instance(self, inst: DesiredInstance, *, running: bool) -> None:
        """Hot-attach/detach NICs, then plug the taps and apply the security groups."""
        if self.driver is None or self.nics is None:
            self._require_driver(inst)
            return
        want = {nic.mac: nic for nic in inst.nics}
        have = self.nics.macs(inst.id)
        for mac in sorted(have - set(want)):
            self.nics.detach(inst.id, mac)
        for mac in sorted(set(want) - have):
            self.nics.attach(inst.id, self._spec(inst, want[mac]))
        if running:
            for nic in inst.nics:
                self._secure(inst, nic)
        self._drop_stale_taps(inst.id, keep={self._tap(inst, n) for n in inst.nics})

    def release(self, instance_id: str) -> None:
        """The instance is gone: unplug its taps and drop their rules."""
        if self.nics is not None:
            self.nics.forget(instance_id)
        if self.driver is not None:
            self._drop_stale_taps(instance_id, keep=set())
        self._swept.discard(instance_id)

    # -- internals -----------------------------------------------------------------------

    def _require_driver(self, inst: DesiredInstance) -> None:
        if inst.nics and (self.driver is None or self.nics is None):
            networks = ", ".join(sorted({nic.network for nic in inst.nics}))
            raise DriverError(
                f"this host has no network driver (network_driver = none): cannot attach "
                f"network(s) {networks}",
                hint="set network_driver = linux in the node settings, or run the instance "
                "without --network",
            )

    def _spec(self, inst: DesiredInstance, nic: DesiredNic) -> NicSpec:
        tap = self._tap(inst, nic)
        if self.netns:
            return NicSpec(mac=nic.mac, kind="ethernet", target=tap)
        return NicSpec(mac=nic.mac, bridge=net.bridge_name(nic.network), target=tap)

    @staticmethod
    def _tap(inst: DesiredInstance, nic: DesiredNic) -> str:
        return net.tap_name(inst.id, nic.index)

    def _secure(self, inst: DesiredInstance, nic: DesiredNic) -> None:
        assert self.driver is not None
        tap = self._tap(inst, nic)
        ports = self._ports()
        if self.netns and tap not in ports and tap in self._root_links():
            # libvirt made it in the root namespace (at every start of the domain)
            self._root.run(["ip", "link", "set", "dev", tap, "netns", str(self.netns)])
        if ports.get(tap) != nic.network:
            create = self.nics is not None and self.nics.create_taps
            self.driver.plug(nic.network, tap, create_tap=create)
            ports[tap] = nic.network
        rules = tuple(_rule(r) for r in nic.rules)
        if tap not in self._bound:
            self._bound[tap] = self.driver.security_group(tap)
        if self._bound[tap] != rules:
            port = net.SecuredPort(
                tap,
                nic.mac,
                ipv4=() if nic.ipv4 is None else (ipaddress.IPv4Address(nic.ipv4),),
                ipv6=() if nic.ipv6 is None else (ipaddress.IPv6Address(nic.ipv6),),
            )
            self.driver.apply_security_group(port, rules)
            self._bound[tap] = rules

    def _ports(self) -> dict[str, str]:
        """Tap -> network for every port of every managed bridge: read once per pass."""
        if self._port_view is None:
            assert self.driver is not None
            names = self.driver.networks()
            view: dict[str, str] = {}
            if isinstance(self.driver, LinuxNetworkDriver):  # one `ip link` instead of N
                bridges = {net.bridge_name(name): name for name in names}
                for link in self.driver.host.json(["ip", "-json", "link", "show"]):
                    if link.get("master") in bridges:
                        view[link["ifname"]] = bridges[link["master"]]
            else:
                for name in names:
                    with contextlib.suppress(StratusError):
                        view.update(dict.fromkeys(self.driver.status(name).ports, name))
            self._port_view = view
        return self._port_view

    def _root_links(self) -> set[str]:
        """Interface names of the root namespace: read once per pass."""
        if self._root_view is None:
            out = self._root.run(["ip", "-o", "link", "show"], check=False)
            names = (line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines())
            self._root_view = set(names)
        return self._root_view

    def _drop_stale_taps(self, instance_id: str, *, keep: set[str]) -> None:
        """Unplug and unsecure the instance's taps that are not in ``keep``. The first time an
        instance is seen (after an agent restart too) every possible tap is checked."""
        assert self.driver is not None
        stem = net.tap_name(instance_id, 0)[:-1]
        ports = self._ports()
        candidates = {t for t in (*ports, *self._bound) if t.startswith(stem)}
        if instance_id not in self._swept:
            candidates |= {f"{stem}{index}" for index in range(MAX_NICS)}
            self._swept.add(instance_id)
        for tap in sorted(candidates - keep):
            if tap not in self._bound:
                self._bound[tap] = self.driver.security_group(tap)
            if self._bound.pop(tap) is not None:
                self.driver.remove_security_group(tap)
            if ports.pop(tap, None) is not None:
                self.driver.unplug(tap)

    def _converge_forwards(self, desired: DesiredState) -> list[AgentEvent]:
        assert self.driver is not None
        want: dict[tuple[str, str, int], net.PortForward] = {}
        for inst in desired.instances:
            if inst.desired == "deleted":
                continue
            for f in inst.port_forwards:
                if f.user_mode:
                    continue  # QEMU's, at domain definition
                forward = net.PortForward(
                    host_port=f.host_port,
                    target=ipaddress.IPv4Address(f.target),
                    target_port=f.target_port,
                    protocol=net.IpProtocol(f.protocol),
                )
                want[forward.key] = forward
        have = {f.key: f for f in self.driver.port_forwards()}
        events = []
        for key, forward in have.items():
            if want.get(key) != forward:
                self.driver.remove_port_forward(forward)
        for key, forward in want.items():
            if have.get(key) != forward:
                try:
                    self.driver.ensure_port_forward(forward)
                except StratusError as exc:
                    events.append(_error(f"port forward {key} not set up: {exc}"))
        return events


def _rule(rule: DesiredRule) -> net.SecurityRule:
    return net.SecurityRule(
        direction=net.Direction(rule.direction),
        protocol=net.IpProtocol(rule.protocol),
        port_min=rule.port_min,
        port_max=rule.port_max,
        remote=None if rule.remote is None else ipaddress.ip_network(rule.remote),
    )


def _error(message: str) -> AgentEvent:
    return AgentEvent(kind="host.network_error", level="error", message=message)


def build_networks(settings: NodeSettings) -> AgentNetworks:
    """The node's networking from its settings: ``network_driver`` none | fake | linux."""
    kind = settings.network_driver
    if kind == "none":
        return AgentNetworks(None, None)
    if kind == "fake":
        return AgentNetworks(FakeNetworkDriver(), FakeNics())
    if kind != "linux":
        raise InvalidInput(
            f"unknown network driver {kind!r}", hint="set network_driver to none, linux or fake"
        )
    netns = settings.network_netns or None
    state = (
        Path(settings.network_state_dir)
        if settings.network_state_dir
        else settings.state_dir / "network"
    )
    driver = LinuxNetworkDriver(
        state_dir=state, netns=netns, manage_sysctls=settings.network_manage_sysctls
    )
    nics: NicBackend
    if settings.driver == "fake":
        nics = FakeNics()
    else:
        from stratuslab.drivers.libvirt.nic_hotplug import LibvirtNics

        nics = LibvirtNics(settings.libvirt_uri)
    return AgentNetworks(driver, nics, netns=netns, vxlan_local=underlay_address(settings))


def underlay_address(settings: NodeSettings) -> str | None:
    """``network_underlay``, else (outside a test namespace) the address this host reaches its
    controller from, unless that is a loopback address (an all-in-one cloud has no peers)."""
    if settings.network_underlay or settings.network_netns:
        return settings.network_underlay or None
    url = settings.controller_url
    with contextlib.suppress(OSError, ValueError, KeyError):
        # after a join the credential holds the controller's real URL
        url = json.loads((settings.state_dir / "credential.json").read_text())["controller_url"]
    return underlay.route_source(url)
