"""An in-memory host networking driver with the same contract as the Linux one.

It keeps the declared state and a little of what a host would show (which interfaces exist and
which bridge they are plugged into), so the contract suite and unit tests of callers can run
without root. ``interfaces`` can be filled by a test to stand for devices that exist already.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stratuslab.drivers.network.base import (
    HostNetworkSpec,
    NetworkStatus,
    PortForward,
    SecuredPort,
    SecurityRule,
    check_ifname,
)
from stratuslab.drivers.network.nftables import port_forward_script, security_group_script
from stratuslab.errors import Conflict, NotFound


@dataclass
class FakeNetworkDriver:
    name: str = "fake"
    specs: dict[str, HostNetworkSpec] = field(default_factory=dict)
    #: Interfaces that exist on the "host" and the bridge each is plugged into (or None).
    interfaces: dict[str, str | None] = field(default_factory=dict)
    taps: set[str] = field(default_factory=set)
    forwards: dict[tuple[str, str, int], PortForward] = field(default_factory=dict)
    bindings: dict[str, tuple[SecuredPort, tuple[SecurityRule, ...]]] = field(default_factory=dict)
    #: The nft scripts the Linux driver would have run, in order (rendered for realism).
    nft_scripts: list[str] = field(default_factory=list)

    def ensure_network(self, spec: HostNetworkSpec) -> None:
        prior = self.specs.get(spec.name)
        if prior is not None and prior.bridge != spec.bridge:
            raise Conflict(
                f"network {spec.name} uses bridge {prior.bridge}, not {spec.bridge}",
                hint="remove the network first to rename its bridge",
            )
        for other in self.specs.values():
            if other.name != spec.name and other.bridge == spec.bridge:
                raise Conflict(
                    f"bridge {spec.bridge} belongs to network {other.name}",
                    hint="give each network its own bridge",
                )
        if spec.uplink is not None and spec.uplink not in self.interfaces:
            raise NotFound(
                f"uplink {spec.uplink} of network {spec.name} does not exist",
                hint="name an existing host interface",
            )
        self.specs[spec.name] = spec

    def remove_network(self, name: str) -> None:
        spec = self.specs.get(name)
        if spec is None:
            return
        ports = self._ports(spec.bridge)
        if ports:
            raise Conflict(
                f"network {name} is in use by {', '.join(ports)}",
                hint="detach those interfaces (unplug) first",
            )
        del self.specs[name]

    def networks(self) -> list[str]:
        return sorted(self.specs)

    def status(self, name: str) -> NetworkStatus:
        spec = self._require(name)
        return NetworkStatus(
            name=name,
            bridge=spec.bridge,
            up=True,
            ports=tuple(self._ports(spec.bridge)),
            dhcp_running=spec.dhcp and spec.address is not None,
        )

    def plug(self, network: str, ifname: str, *, create_tap: bool = False) -> None:
        spec = self._require(network)
        check_ifname(ifname)
        if ifname not in self.interfaces:
            if not create_tap:
                raise NotFound(
                    f"interface {ifname} does not exist", hint="create it or pass create_tap=True"
                )
            self.taps.add(ifname)
        self.interfaces[ifname] = spec.bridge

    def unplug(self, ifname: str) -> None:
        check_ifname(ifname)
        if ifname in self.taps:
            self.taps.discard(ifname)
            self.interfaces.pop(ifname, None)
        elif ifname in self.interfaces:
            self.interfaces[ifname] = None

    def ensure_port_forward(self, forward: PortForward) -> None:
        existing = self.forwards.get(forward.key)
        if existing is not None and existing != forward:
            raise Conflict(
                f"host port {forward.protocol}/{forward.host_port} already forwards to "
                f"{existing.target}:{existing.target_port}",
                hint="remove that forward first or pick another host port",
            )
        candidate = {**self.forwards, forward.key: forward}
        self.nft_scripts.append(port_forward_script(candidate.values()))
        self.forwards = candidate

    def remove_port_forward(self, forward: PortForward) -> None:
        if self.forwards.pop(forward.key, None) is not None:
            self.nft_scripts.append(port_forward_script(self.forwards.values()))

    def port_forwards(self) -> list[PortForward]:
        return [self.forwards[key] for key in sorted(self.forwards)]

    def apply_security_group(self, port: SecuredPort, rules: tuple[SecurityRule, ...]) -> None:
        candidate = {**self.bindings, port.ifname: (port, tuple(rules))}
        self.nft_scripts.append(security_group_script(candidate))  # raises like the real one
        self.bindings = candidate

    def remove_security_group(self, ifname: str) -> None:
        if self.bindings.pop(ifname, None) is not None:
            self.nft_scripts.append(security_group_script(self.bindings))

    def security_group(self, ifname: str) -> tuple[SecurityRule, ...] | None:
        binding = self.bindings.get(ifname)
        return None if binding is None else binding[1]

    def _require(self, name: str) -> HostNetworkSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise NotFound(f"network {name} is not set up on this host", hint="ensure it first")
        return spec

    def _ports(self, bridge: str) -> list[str]:
        return sorted(name for name, master in self.interfaces.items() if master == bridge)
