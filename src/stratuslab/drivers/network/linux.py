"""The real host networking driver: iproute2, nftables and one dnsmasq per network.

Everything goes through one subprocess wrapper (:class:`Host`), which prefixes commands with
``ip netns exec NS`` when the driver is given a network namespace: that is how tests (and a
host that keeps tenant networking out of its root namespace) run the whole driver elsewhere.
Device changes are planned from ``ip -json`` output and applied with ``ip -batch`` and
``bridge -batch``; rules are whole ``nft -f -`` transactions (see
:mod:`~stratuslab.drivers.network.nftables`).

The driver keeps what it was asked for under ``state_dir`` (plain JSON), so a restarted agent can
remove what an earlier one created::

    state_dir/networks/NAME.json    the HostNetworkSpec
    state_dir/networks/NAME.hosts   dnsmasq --dhcp-hostsfile (MAC,IP[,hostname]), SIGHUP reloads
    state_dir/networks/NAME.pid     dnsmasq's PID file; NAME.leases, NAME.log next to it
    state_dir/taps.json             taps plug() created (unplug() deletes them)
    state_dir/port-forwards.json    every PortForward in table ip stratus_pat
    state_dir/security-groups.json  every SecuredPort and its rules in the stratus_sg tables
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stratuslab.drivers.network import codec
from stratuslab.drivers.network.base import (
    HostNetworkSpec,
    NetworkStatus,
    PortForward,
    SecuredPort,
    SecurityRule,
    VxlanSpec,
    check_ifname,
)
from stratuslab.drivers.network.nftables import port_forward_script, security_group_script
from stratuslab.errors import Conflict, DriverError, NotFound

DEFAULT_STATE_DIR = Path("/var/lib/stratuslab/network")
_ZERO_MAC = "00:00:00:00:00:00"
_BR_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"
_BR_NF6 = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"


class Host:
    """Run commands on the host, or inside network namespace ``netns``. The one subprocess seam."""

    def __init__(self, netns: str | None = None, timeout: float = 30.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def run(self, args: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
        argv = [*self.prefix(), *args]
        try:
            done = subprocess.run(
                argv, input=input, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(
                f"cannot run {args[0]}: {exc}", hint="install iproute2, nftables and dnsmasq"
            ) from exc
        if check and done.returncode != 0:
            raise DriverError(
                f"{' '.join(args[:4])} failed: {done.stderr.strip() or done.stdout.strip()}",
                hint="see the host's network state; the command was " + " ".join(args),
            )
        return done.stdout

    def prefix(self) -> list[str]:
        return [] if self.netns is None else ["ip", "netns", "exec", self.netns]

    def json(self, args: Sequence[str]) -> Any:
        out = self.run(args)
        return json.loads(out) if out.strip() else []

    def read(self, path: str) -> str | None:
        """A /proc or /sys file as the namespace sees it; None if it does not exist."""
        if self.netns is None:
            with contextlib.suppress(OSError):
                return Path(path).read_text()
            return None
        out = self.run(["sh", "-c", f'cat "{path}" 2>/dev/null || true'])
        return out or None


class LinuxNetworkDriver:
    """:class:`~stratuslab.drivers.network.base.HostNetworkDriver` on Linux.

    ``manage_sysctls`` lets the driver turn on IPv4 forwarding and br_netfilter's
    ``bridge-nf-call-ip(6)tables`` in its namespace; without it they are only checked (a host's
    root namespace is set up once by the operator, not by the agent).
    """

    name = "linux"

    def __init__(
        self,
        *,
        state_dir: Path = DEFAULT_STATE_DIR,
        netns: str | None = None,
        manage_sysctls: bool = False,
        dnsmasq: str = "dnsmasq",
        host: Host | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.host = host or Host(netns)
        self.manage_sysctls = manage_sysctls
        self.dnsmasq = dnsmasq
        self._br_netfilter_ok = False  # checked once per driver instance
        (state_dir / "networks").mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------------------------
    # Networks

    def ensure_network(self, spec: HostNetworkSpec) -> None:
        prior = self._load_network(spec.name)
        if prior is not None and prior.bridge != spec.bridge:
            raise Conflict(
                f"network {spec.name} uses bridge {prior.bridge}, not {spec.bridge}",
                hint="remove the network first to rename its bridge",
            )
        self._check_bridge_owner(spec)
        if self.manage_sysctls:
            self._write_sysctl("net/ipv4/ip_forward", "1")
        try:
            self._converge_devices(spec, prior)
            self._converge_dhcp(spec)
        except Exception:
            if prior is None:
                self._teardown(spec)
            raise
        self._save_network(spec)

    def remove_network(self, name: str) -> None:
        spec = self._load_network(name)
        if spec is None:
            return
        ports = self._ports(spec)
        if ports:
            raise Conflict(
                f"network {name} is in use by {', '.join(ports)}",
                hint="detach those interfaces (unplug) first",
            )
        self._teardown(spec)
        for suffix in (".json", ".hosts", ".leases", ".log", ".pid"):
            self._path(name, suffix).unlink(missing_ok=True)

    def networks(self) -> list[str]:
        return sorted(path.stem for path in (self.state_dir / "networks").glob("*.json"))

    def status(self, name: str) -> NetworkStatus:
        spec = self._require_network(name)
        link = self._links().get(spec.bridge)
        return NetworkStatus(
            name=name,
            bridge=spec.bridge,
            up=link is not None and "UP" in link.get("flags", []),
            ports=tuple(self._ports(spec)),
            dhcp_running=self._dnsmasq_pid(name) is not None,
        )

    # ---------------------------------------------------------------------------------------
    # Ports

    def plug(self, network: str, ifname: str, *, create_tap: bool = False) -> None:
        spec = self._require_network(network)
        check_ifname(ifname)
        links = self._links()
        if ifname not in links:
            if not create_tap:
                raise NotFound(
                    f"interface {ifname} does not exist", hint="create it or pass create_tap=True"
                )
            self.host.run(["ip", "tuntap", "add", "dev", ifname, "mode", "tap"])
            self._save_taps(self._taps() | {ifname})
        mtu = links.get(spec.bridge, {}).get("mtu")
        args = ["ip", "link", "set", "dev", ifname, "master", spec.bridge]
        self.host.run([*args, *(["mtu", str(mtu)] if mtu else []), "up"])

    def unplug(self, ifname: str) -> None:
        check_ifname(ifname)
        link = self._links().get(ifname)
        taps = self._taps()
        if link is not None and ifname in taps:
            self.host.run(["ip", "link", "del", "dev", ifname])
        elif link is not None and "master" in link:
            self.host.run(["ip", "link", "set", "dev", ifname, "nomaster"])
        if ifname in taps:
            self._save_taps(taps - {ifname})

    # ---------------------------------------------------------------------------------------
    # Port address translation

    def ensure_port_forward(self, forward: PortForward) -> None:
        forwards = {f.key: f for f in self.port_forwards()}
        existing = forwards.get(forward.key)
        if existing is not None and existing != forward:
            raise Conflict(
                f"host port {forward.protocol}/{forward.host_port} already forwards to "
                f"{existing.target}:{existing.target_port}",
                hint="remove that forward first or pick another host port",
            )
        forwards[forward.key] = forward
        self._apply_forwards(list(forwards.values()))

    def remove_port_forward(self, forward: PortForward) -> None:
        forwards = {f.key: f for f in self.port_forwards()}
        if forwards.pop(forward.key, None) is not None:
            self._apply_forwards(list(forwards.values()))

    def port_forwards(self) -> list[PortForward]:
        data = self._read_json("port-forwards.json", [])
        return sorted((codec.forward_from_json(item) for item in data), key=lambda f: f.key)

    # ---------------------------------------------------------------------------------------
    # Security groups

    def apply_security_group(self, port: SecuredPort, rules: tuple[SecurityRule, ...]) -> None:
        self._check_br_netfilter()
        bindings = self._bindings()
        bindings[port.ifname] = (port, tuple(rules))
        self._apply_bindings(bindings)

    def remove_security_group(self, ifname: str) -> None:
        bindings = self._bindings()
        if bindings.pop(ifname, None) is not None:
            self._apply_bindings(bindings)

    def security_group(self, ifname: str) -> tuple[SecurityRule, ...] | None:
        binding = self._bindings().get(ifname)
        return None if binding is None else binding[1]

    # ---------------------------------------------------------------------------------------
    # Devices

    def _converge_devices(self, spec: HostNetworkSpec, prior: HostNetworkSpec | None) -> None:
        links = self._links()
        batch: list[str] = []
        if spec.bridge not in links:
            batch.append(f"link add {spec.bridge} type bridge")
        if spec.mtu is not None:
            batch.append(f"link set dev {spec.bridge} mtu {spec.mtu}")
        batch += self._uplink_commands(spec, prior, links)
        batch += self._vxlan_commands(spec, prior, links)
        batch.append(f"link set dev {spec.bridge} up")
        self._ip_batch(batch)
        self._converge_addresses(spec)
        if spec.vxlan is not None:
            self._converge_fdb(spec)

    def _uplink_commands(
        self, spec: HostNetworkSpec, prior: HostNetworkSpec | None, links: dict[str, Any]
    ) -> list[str]:
        batch: list[str] = []
        if prior is not None and prior.vlan_device not in (None, spec.vlan_device):
            batch.append(f"link del dev {prior.vlan_device}")
        elif prior is not None and prior.uplink not in (None, spec.uplink) and prior.vlan is None:
            batch.append(f"link set dev {prior.uplink} nomaster")
        if spec.uplink is None:
            return batch
        if spec.uplink not in links:
            raise NotFound(
                f"uplink {spec.uplink} of network {spec.name} does not exist",
                hint="name an existing host interface",
            )
        port = spec.vlan_device or spec.uplink
        if port not in links:
            batch.append(f"link add link {spec.uplink} name {port} type vlan id {spec.vlan}")
        batch += [
            f"link set dev {spec.uplink} up",
            f"link set dev {port} master {spec.bridge} up",
        ]
        return batch

    def _vxlan_commands(
        self, spec: HostNetworkSpec, prior: HostNetworkSpec | None, links: dict[str, Any]
    ) -> list[str]:
        batch: list[str] = []
        old = None if prior is None else prior.vxlan
        new = spec.vxlan
        replaced = old is not None and (new is None or _vxlan_identity(old) != _vxlan_identity(new))
        if old is not None and replaced and old.device in links:
            batch.append(f"link del dev {old.device}")
            links = {k: v for k, v in links.items() if k != old.device}
        if new is None:
            return batch
        if new.device not in links:
            underlay = f" dev {new.underlay}" if new.underlay is not None else ""
            batch.append(
                f"link add {new.device} type vxlan id {new.vni} local {new.local} "
                f"dstport {new.port}{underlay}"
            )
        mtu = f" mtu {spec.mtu}" if spec.mtu is not None else ""
        batch.append(f"link set dev {new.device} master {spec.bridge}{mtu} up")
        return batch

    def _converge_fdb(self, spec: HostNetworkSpec) -> None:
        assert spec.vxlan is not None
        device = spec.vxlan.device
        entries = self.host.json(["bridge", "-json", "fdb", "show", "dev", device])
        have = {e["dst"] for e in entries if e.get("mac") == _ZERO_MAC and "dst" in e}
        want = {str(peer) for peer in spec.vxlan.peers}
        batch = [f"fdb append {_ZERO_MAC} dev {device} dst {peer}" for peer in sorted(want - have)]
        # Flood entries of former peers go, and so do MACs learned behind them.
        batch += [
            f"fdb del {e['mac']} dev {device} dst {e['dst']}"
            for e in entries
            if "dst" in e and e["dst"] not in want
        ]
        if batch:
            self.host.run(["bridge", "-batch", "-"], input="\n".join(batch) + "\n")

    def _converge_addresses(self, spec: HostNetworkSpec) -> None:
        info = self.host.json(["ip", "-json", "addr", "show", "dev", spec.bridge])
        have = {
            f"{a['local']}/{a['prefixlen']}"
            for entry in info
            for a in entry.get("addr_info", [])
            if a.get("scope") != "link"
        }
        want = {str(a) for a in (spec.address, spec.address6) if a is not None}
        batch = [f"addr del {address} dev {spec.bridge}" for address in sorted(have - want)]
        batch += [f"addr add {address} dev {spec.bridge}" for address in sorted(want - have)]
        self._ip_batch(batch)

    def _teardown(self, spec: HostNetworkSpec) -> None:
        """Best effort: stop DHCP, delete what the network created, release the uplink."""
        self._stop_dnsmasq(spec.name)
        links = self._links()
        batch = []
        if spec.vxlan is not None and spec.vxlan.device in links:
            batch.append(f"link del dev {spec.vxlan.device}")
        if spec.vlan_device is not None and spec.vlan_device in links:
            batch.append(f"link del dev {spec.vlan_device}")
        elif spec.uplink is not None and links.get(spec.uplink, {}).get("master") == spec.bridge:
            batch.append(f"link set dev {spec.uplink} nomaster")
        if spec.bridge in links:
            batch.append(f"link del dev {spec.bridge}")
        for command in batch:
            with contextlib.suppress(DriverError):
                self._ip_batch([command])

    def _check_bridge_owner(self, spec: HostNetworkSpec) -> None:
        for other in self.networks():
            if other == spec.name:
                continue
            theirs = self._load_network(other)
            if theirs is not None and theirs.bridge == spec.bridge:
                raise Conflict(
                    f"bridge {spec.bridge} belongs to network {other}",
                    hint="give each network its own bridge",
                )

    def _ports(self, spec: HostNetworkSpec) -> list[str]:
        own = {spec.vlan_device or spec.uplink, None if spec.vxlan is None else spec.vxlan.device}
        links = self._links()
        return sorted(
            name
            for name, link in links.items()
            if link.get("master") == spec.bridge and name not in own
        )

    def _links(self) -> dict[str, Any]:
        return {link["ifname"]: link for link in self.host.json(["ip", "-json", "link", "show"])}

    def _ip_batch(self, commands: list[str]) -> None:
        if not commands:
            return
        try:
            self.host.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n")
        except DriverError as exc:
            match = re.search(r"Command failed -:(\d+)", exc.message)
            failed = commands[int(match.group(1)) - 1] if match else "; ".join(commands)
            if "Unknown device type" in exc.message and " type vlan " in failed:
                raise DriverError(
                    "this kernel has no 802.1Q VLAN support", hint="enable CONFIG_VLAN_8021Q"
                ) from exc
            raise DriverError(
                f"ip {failed} failed: {exc.message.splitlines()[0]}", hint=exc.hint
            ) from exc

    # ---------------------------------------------------------------------------------------
    # DHCP

    def _converge_dhcp(self, spec: HostNetworkSpec) -> None:
        if not spec.dhcp or spec.address is None:
            self._stop_dnsmasq(spec.name)
            return
        hosts = "".join(
            ",".join([h.mac, str(h.ipv4), *([h.hostname] if h.hostname else [])]) + "\n"
            for h in spec.dhcp_hosts
        )
        hosts_path = self._path(spec.name, ".hosts")
        _check_world_readable(hosts_path.parent)
        changed = not hosts_path.exists() or hosts_path.read_text() != hosts
        if changed:
            _write_atomically(hosts_path, hosts)
        args = self._dnsmasq_args(spec)
        pid = self._dnsmasq_pid(spec.name)
        if pid is not None and _cmdline(pid) != args:
            self._stop_dnsmasq(spec.name)
            pid = None
        if pid is None:
            self._path(spec.name, ".pid").unlink(missing_ok=True)
            self.host.run(args)
        elif changed:
            os.kill(pid, signal.SIGHUP)

    def _dnsmasq_args(self, spec: HostNetworkSpec) -> list[str]:
        assert spec.address is not None
        net = spec.address.network
        options = [f"option:router,{spec.gateway}" if spec.gateway is not None else "3"]
        dns = ",".join(str(server) for server in spec.dns)
        options.append(f"option:dns-server,{dns}" if dns else "6")
        if spec.mtu is not None:
            options.append(f"option:mtu,{spec.mtu}")
        args = [
            self.dnsmasq,
            "--conf-file=/dev/null",
            f"--pid-file={self._path(spec.name, '.pid')}",
            f"--dhcp-leasefile={self._path(spec.name, '.leases')}",
            f"--dhcp-hostsfile={self._path(spec.name, '.hosts')}",
            f"--log-facility={self._path(spec.name, '.log')}",
            f"--interface={spec.bridge}",
            "--bind-interfaces",
            "--except-interface=lo",
            "--port=0",
            "--dhcp-authoritative",
            "--log-dhcp",
            f"--dhcp-range={net.network_address},static,{net.netmask},{spec.lease_seconds}s",
            *(f"--dhcp-option={option}" for option in options),
        ]
        if spec.address6 is not None:
            args += ["--enable-ra", f"--dhcp-range=::,constructor:{spec.bridge},ra-only"]
        return args

    def _dnsmasq_pid(self, name: str) -> int | None:
        try:
            pid = int(self._path(name, ".pid").read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = _cmdline(pid)
        if cmdline is None or f"--pid-file={self._path(name, '.pid')}" not in cmdline:
            return None  # gone, or the PID was reused by another process
        return pid

    def _stop_dnsmasq(self, name: str) -> None:
        pid = self._dnsmasq_pid(name)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not _wait(lambda: _cmdline(pid) is None, 3.0):
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: _cmdline(pid) is None, 3.0)
        self._path(name, ".pid").unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------
    # nftables and sysctls

    def _apply_forwards(self, forwards: list[PortForward]) -> None:
        self.host.run(["nft", "-f", "-"], input=port_forward_script(forwards))
        self._write_json("port-forwards.json", [codec.forward_to_json(f) for f in forwards])

    def _bindings(self) -> dict[str, tuple[SecuredPort, tuple[SecurityRule, ...]]]:
        data = self._read_json("security-groups.json", [])
        return {item["ifname"]: codec.port_from_json(item) for item in data}

    def _apply_bindings(
        self, bindings: dict[str, tuple[SecuredPort, tuple[SecurityRule, ...]]]
    ) -> None:
        self.host.run(["nft", "-f", "-"], input=security_group_script(bindings))
        data = [codec.port_to_json(*bindings[name]) for name in sorted(bindings)]
        self._write_json("security-groups.json", data)

    def _check_br_netfilter(self) -> None:
        if self._br_netfilter_ok:
            return
        if self.manage_sysctls:
            for path in (_BR_NF, _BR_NF6):
                self._write_sysctl(path.removeprefix("/proc/sys/"), "1")
        values = [(self.host.read(path) or "").strip() for path in (_BR_NF, _BR_NF6)]
        if values != ["1", "1"]:
            raise DriverError(
                "bridged traffic does not pass nftables (br_netfilter is off): "
                "security groups would not filter instance-to-instance traffic",
                hint="load br_netfilter and set net.bridge.bridge-nf-call-ip(6)tables=1",
            )
        self._br_netfilter_ok = True

    def _write_sysctl(self, key: str, value: str) -> None:
        self.host.run(["sysctl", "-q", "-w", f"{key.replace('/', '.')}={value}"])

    # ---------------------------------------------------------------------------------------
    # State files

    def _path(self, name: str, suffix: str) -> Path:
        return self.state_dir / "networks" / f"{name}{suffix}"

    def _load_network(self, name: str) -> HostNetworkSpec | None:
        try:
            data = json.loads(self._path(name, ".json").read_text())
        except FileNotFoundError:
            return None
        return codec.network_from_json(data)

    def _require_network(self, name: str) -> HostNetworkSpec:
        spec = self._load_network(name)
        if spec is None:
            raise NotFound(f"network {name} is not set up on this host", hint="ensure it first")
        return spec

    def _save_network(self, spec: HostNetworkSpec) -> None:
        _write_atomically(self._path(spec.name, ".json"), json.dumps(codec.network_to_json(spec)))

    def _taps(self) -> set[str]:
        return set(self._read_json("taps.json", []))

    def _save_taps(self, taps: set[str]) -> None:
        self._write_json("taps.json", sorted(taps))

    def _read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.state_dir / name).read_text())
        except FileNotFoundError:
            return default

    def _write_json(self, name: str, data: Any) -> None:
        _write_atomically(self.state_dir / name, json.dumps(data, indent=1))


def _vxlan_identity(vxlan: VxlanSpec) -> tuple[object, ...]:
    return (vxlan.vni, vxlan.local, vxlan.underlay, vxlan.port)


def _check_world_readable(directory: Path) -> None:
    """dnsmasq drops root and re-reads the hosts file on SIGHUP as an unprivileged user."""
    for path in (directory, *directory.parents):
        if not path.stat().st_mode & 0o001:
            raise DriverError(
                f"{path} is not searchable by other users: dnsmasq, which drops root, could not "
                "read its reservations",
                hint="make the driver's state_dir and its parents mode 0755",
            )


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode() for part in raw.split(b"\0") if part] or None


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
