"""Typed, layered settings.

Layers, highest first: explicit arguments (CLI flags) > ``STRATUS_*`` environment variables >
a TOML file > built-in defaults. Nothing is read at import time: callers build settings with the
``load_*`` functions and pass them on.

The user's client file ``~/.config/stratuslab/config.toml`` holds named cloud sections and
the selected one::

    cloud = "local"

    [clouds.local]
    endpoint = "http://127.0.0.1:8770"
    token = "..."
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from stratuslab.errors import InvalidInput

ENV_PREFIX = "STRATUS_"
DEFAULT_PORT = 8770


def default_data_dir() -> Path:
    """``/var/lib/stratuslab`` for root, ``~/.local/share/stratuslab`` otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/stratuslab")
    return Path.home() / ".local" / "share" / "stratuslab"


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stratuslab" / "config.toml"


@dataclass(frozen=True)
class ControllerSettings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""  # empty: SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: seconds without heartbeat before a host is offline
    heartbeat_grace: float = 60.0
    #: seconds a stop waits for ACPI before forcing the domain off
    stop_timeout: float = 60.0
    #: first port of the per-host range forwarded to guests' SSH (user-mode networking)
    ssh_port_base: int = 22000
    ssh_port_count: int = 1000
    #: host: each host hands out the whole range; cloud: a port is used once in the cloud
    #: (several agents on one machine, as in tests and demos, share its loopback ports)
    ssh_port_scope: str = "host"
    #: longest time a long-poll (operation wait, agent watch) is held open
    max_wait: float = 60.0
    #: seconds before an instance that cannot be placed fails
    pending_timeout: float = 600.0
    #: placement policy (docs/scheduler.md): pack | stripe | load
    scheduler_strategy: str = "pack"
    #: extra weight of the measured host load (0: ignore it)
    scheduler_load_weight: float = 0.0
    #: bonus for a host whose image cache already holds the instance's image
    scheduler_image_weight: float = 0.25
    #: overcommit ratios (capacity = total x ratio); a host's own ratio overrides them
    cpu_ratio: float = 1.0
    ram_ratio: float = 1.0
    disk_ratio: float = 1.0
    #: what an instance does when its host fails, unless it says: none | restart | migrate
    default_ha_policy: str = "none"
    #: seconds a host must have been offline before HA moves its instances
    ha_delay: float = 0.0
    #: user-mode NICs NAT guests to whatever the host reaches (package mirrors...); off: guests
    #: reach nothing but their forwarded ports
    guest_egress: bool = False
    #: contextualization method when a request names none: nocloud | configdrive | opennebula
    context_method: str = "nocloud"
    #: cloud-config schema check at creation: auto (when cloud-init is installed) | require | off
    cloud_config_schema: str = "auto"
    #: CA certificates and CRLs (grid-security layout) for verifying marketplace entries;
    #: empty: the built-in marketplace is read-only
    trust_dir: str = ""
    # -- identity (docs/identity.md) ----------------------------------------------------
    #: how users may authenticate, comma-separated, besides API tokens (always on):
    #: password, x509, oidc
    auth_methods: str = "password"
    #: seconds a token made by `stratus login` lives; the cap of every token (0: no cap)
    login_token_lifetime: float = 12 * 3600.0
    token_max_lifetime: float = 365 * 24 * 3600.0
    #: failed logins allowed per user name and per source address within the window
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    login_failure_window: float = 900.0
    #: seconds a checked API token's principal is kept (0: check every request); a change
    #: made through another controller process is seen within this time
    token_cache_seconds: float = 10.0
    #: argon2id parameters for new password hashes (RFC 9106 second recommendation)
    argon2_memory_kib: int = 65536
    argon2_time_cost: int = 3
    argon2_parallelism: int = 4
    #: TLS front proxies whose forwarded client-certificate header is believed (addresses
    #: or CIDR networks, comma-separated) and the header's name
    trusted_proxies: str = ""
    x509_header: str = "X-SSL-Client-Cert"
    #: CA certificates and CRLs for client certificates (empty: trust_dir)
    x509_trust_dir: str = ""
    x509_require_crls: bool = False
    #: grid-mapfile ("DN" user) consulted when a DN is not linked to a user
    grid_mapfile: str = ""
    #: TOML file with [[oidc.issuers]] tables (docs/identity.md)
    oidc_issuers_file: str = ""
    #: quota of a new project, e.g. "instances=20 vcpus=20 ram_mib=40960" (empty: built-in)
    default_project_quota: str = ""
    #: self-registration: request, e-mail check, admin approval
    registration: bool = False
    #: base URL users reach the controller at (links in e-mails); empty: http://host:port
    public_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "stratuslab@localhost"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    #: seconds before a project's instance lifetime limit stops an instance to warn
    lifetime_warning: float = 3600.0
    #: EGI APEL cloud accounting: GOCDB site name, service, benchmark per vCPU
    apel_site_name: str = ""
    apel_cloud_compute_service: str = ""
    apel_benchmark_type: str = ""
    apel_benchmark: float = 0.0
    # -- networks (docs/networking.md) -------------------------------------------------
    #: locally administered prefix of instance NIC MACs
    mac_prefix: str = "02:00"
    #: per-host range of host ports handed out to port forwards (PAT)
    pat_port_base: int = 30000
    pat_port_count: int = 2000
    # -- volumes (docs/volumes.md) ------------------------------------------------------
    #: seconds deleted volumes and deleted instances' disks are kept before they are wiped
    volume_quarantine: float = 900.0

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'controller.db'}"

    def __post_init__(self) -> None:
        if self.scheduler_strategy not in ("pack", "stripe", "load"):
            raise InvalidInput(
                f"unknown scheduler_strategy {self.scheduler_strategy!r}",
                hint="use pack, stripe or load",
            )
        for name in ("cpu_ratio", "ram_ratio", "disk_ratio"):
            if not 0 < getattr(self, name) <= 100:
                raise InvalidInput(
                    f"{name} {getattr(self, name)} is out of range",
                    hint="give an overcommit ratio above 0 and at most 100 (1.0: none)",
                )
        if self.ssh_port_scope not in ("host", "cloud"):
            raise InvalidInput(
                f"unknown ssh_port_scope {self.ssh_port_scope!r}", hint="use host or cloud"
            )
        if self.default_ha_policy not in ("none", "restart", "migrate"):
            raise InvalidInput(
                f"unknown default_ha_policy {self.default_ha_policy!r}",
                hint="use none, restart or migrate",
            )


@dataclass(frozen=True)
class NodeSettings:
    controller_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    state_dir: Path = field(default_factory=lambda: default_data_dir() / "node")
    driver: str = "libvirt"
    libvirt_uri: str = "qemu:///system"
    #: hypervisor override: "" = probe (kvm if it really works, else qemu/TCG)
    hypervisor: str = ""
    hostname: str = ""
    #: seconds between heartbeats
    heartbeat_interval: float = 10.0
    #: seconds between full reconcile passes when nothing changes
    resync_interval: float = 15.0
    #: a pass with nothing changed converges the state read last; the whole desired state
    #: is read from the controller again at least this often (seconds)
    full_resync_interval: float = 300.0
    #: size limit of the image cache in GiB (0: no limit); unused bases are evicted LRU
    image_cache_max_gib: float = 0.0
    #: labels this host declares when it joins, for requirement expressions: "gpu=yes,rack=r1"
    labels: str = ""
    #: libvirt URI other hosts live-migrate to this one through (empty: no live migration)
    migration_uri: str = ""
    #: seconds without the controller after which this node powers off its instances whose
    #: HA policy (restart, migrate) lets the controller start them elsewhere; keep it below
    #: the controller's heartbeat_grace + ha_delay (0: never)
    self_fence_after: float = 40.0
    #: where live-migration streams to this host go (e.g. tcp://10.0.0.2 on the migration
    #: network); empty: the address this host's name resolves to
    migration_stream: str = ""
    # -- networks (docs/networking.md) ---------------------------------------------------
    #: host networking driver: none (user-mode NAT only: the all-in-one default) | linux | fake
    network_driver: str = "none"
    #: run the network driver inside this network namespace (tests stand in for hosts)
    network_netns: str = ""
    #: where the network driver keeps its state (mode 0755); empty: STATE_DIR/network
    network_state_dir: str = ""
    #: let the driver set ip_forward and bridge-nf-call-ip(6)tables (in network_netns only)
    network_manage_sysctls: bool = False
    #: this host's underlay IPv4 address for VXLAN networks (empty: none here)
    network_underlay: str = ""
    #: the volume pool of this node: file | iscsi | fake | none (fake with the fake driver)
    volume_backend: str = "file"
    #: where the pool keeps its volumes; empty: STATE_DIR/volumes
    volume_dir: str = ""
    #: file backend: qcow2 | raw
    volume_format: str = "qcow2"
    #: iscsi backend: the tgtd portal QEMU's initiator connects to
    volume_portal: str = "127.0.0.1"
    volume_portal_port: int = 3260
    #: iscsi backend: the tgtd to manage (tgtd -C N; 0: the default one). The agent starts
    #: it (on volume_portal:volume_portal_port) when none answers.
    volume_tgtd_control_port: int = 0
    #: file backend: volume_dir is the same shared mount on every host (others attach it)
    volume_shared: bool = False


@dataclass(frozen=True)
class ClientSettings:
    endpoint: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    token: str = ""
    timeout: float = 30.0
    cloud: str = ""


S = TypeVar("S", ControllerSettings, NodeSettings, ClientSettings)


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in {"1", "true", "yes", "on"}
            return bool(raw)
        if isinstance(default, Path):
            return Path(str(raw)).expanduser()
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"setting {name!r} has an invalid value {raw!r}",
            hint=f"give {name} a value of type {type(default).__name__}",
        ) from exc


def layer(settings: S, values: Mapping[str, Any], *, source: str) -> S:
    """Return ``settings`` with ``values`` applied (unknown keys are an error)."""
    known = {f.name: getattr(settings, f.name) for f in fields(settings)}
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise InvalidInput(
                f"unknown setting {key!r} in {source}",
                hint=f"known settings: {', '.join(sorted(known))}",
            )
        if raw is None:
            continue
        changes[name] = _coerce(name, raw, known[name])
    return replace(settings, **changes)


def env_values(settings: S, environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, str]:
    names = {f.name for f in fields(settings)}
    out = {}
    for name in names:
        key = prefix + name.upper()
        if key in environ:
            out[name] = environ[key]
    return out


def read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(
            f"{path} is not valid TOML: {exc}", hint="fix the file or remove it"
        ) from exc


def load_controller_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ControllerSettings:
    env = os.environ if environ is None else environ
    settings = ControllerSettings()
    path = config_file or Path(
        env.get("STRATUS_CONTROLLER_CONFIG", "/etc/stratuslab/controller.toml")
    )
    settings = layer(settings, read_toml(path), source=str(path))
    settings = layer(settings, env_values(settings, env), source="environment")
    return layer(settings, overrides or {}, source="arguments")


def load_node_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeSettings:
    env = os.environ if environ is None else environ
    settings = NodeSettings()
    path = config_file or Path(env.get("STRATUS_NODE_CONFIG", "/etc/stratuslab/node.toml"))
    settings = layer(settings, read_toml(path), source=str(path))
    settings = layer(
        settings, env_values(settings, env, prefix="STRATUS_NODE_"), source="environment"
    )
    return layer(settings, overrides or {}, source="arguments")


def load_client_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ClientSettings:
    """Flags > ``STRATUS_*`` env > selected cloud section of the user file > defaults."""
    env = os.environ if environ is None else environ
    path = config_file or Path(env.get("STRATUS_CONFIG", str(user_config_path())))
    data = read_toml(path)
    flags = dict(overrides or {})
    cloud = flags.get("cloud") or env.get("STRATUS_CLOUD") or data.get("cloud") or ""
    clouds = data.get("clouds", {})
    settings = ClientSettings()
    if cloud:
        if cloud not in clouds:
            raise InvalidInput(
                f"cloud {cloud!r} is not defined in {path}",
                hint=f"defined clouds: {', '.join(sorted(clouds)) or 'none'}; run `stratus up` "
                "for a local cloud",
            )
        settings = layer(settings, clouds[cloud], source=f"{path} [clouds.{cloud}]")
        settings = replace(settings, cloud=cloud)
    settings = layer(settings, env_values(settings, env), source="environment")
    return layer(settings, flags, source="command line")


def save_cloud(path: Path, name: str, values: Mapping[str, Any], *, select: bool = True) -> None:
    """Write (or replace) one cloud section in the user's file, keeping the others."""
    data = read_toml(path)
    clouds = dict(data.get("clouds", {}))
    clouds[name] = dict(values)
    if select or not data.get("cloud"):
        data["cloud"] = name
    data["clouds"] = clouds
    lines = [f'cloud = "{data["cloud"]}"', ""]
    for cname, section in clouds.items():
        lines.append(f"[clouds.{cname}]")
        for key, value in section.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.chmod(0o600)
    tmp.replace(path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
