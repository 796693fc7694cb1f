"""Build the files of an OpenStack ConfigDrive v2, as pure functions.

The drive is a filesystem labelled ``config-2`` holding ``openstack/latest/meta_data.json``
(``uuid``, ``hostname``, ``name``, ``public_keys``, ``meta``), ``openstack/latest/user_data``
and ``openstack/latest/network_data.json``. cloud-init and cloudbase-init read the newest
dated directory they know, else ``latest``: only ``latest`` is written, so there is one copy of
every document (a dated copy would add nothing these readers use).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stratuslab.context.nocloud import (
    default_user_data,
    validate_hostname,
    validate_instance_id,
    validate_ssh_key,
)
from stratuslab.context.spec import Nic

CONFIGDRIVE_LABEL = "config-2"
PREFIX = "openstack/latest"


def build_configdrive(
    *,
    instance_id: str,
    hostname: str,
    ssh_keys: Sequence[str],
    user_data: bytes | None = None,
    nics: Sequence[Nic] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """Return the drive's files by path (``openstack/latest/...``)."""
    validate_instance_id(instance_id)
    validate_hostname(hostname)
    keys = [validate_ssh_key(key) for key in ssh_keys]
    meta = meta_data_json(instance_id=instance_id, hostname=hostname, ssh_keys=keys, extra=extra)
    files = {
        f"{PREFIX}/meta_data.json": _dump_json(meta),
        f"{PREFIX}/user_data": user_data
        if user_data is not None
        else default_user_data(hostname, keys),
    }
    if nics is not None:
        files[f"{PREFIX}/network_data.json"] = _dump_json(network_data(nics))
    return files


def meta_data_json(
    *,
    instance_id: str,
    hostname: str,
    ssh_keys: Sequence[str],
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``meta_data.json`` document (keys already validated)."""
    return {
        "uuid": instance_id,
        "hostname": hostname,
        "name": hostname,
        "launch_index": 0,
        "availability_zone": "nova",
        "public_keys": {f"key-{index}": key for index, key in enumerate(ssh_keys)},
        "keys": [
            {"name": f"key-{index}", "type": "ssh", "data": key}
            for index, key in enumerate(ssh_keys)
        ],
        "meta": dict(sorted((extra or {}).items())),
    }


def network_data(nics: Sequence[Nic]) -> dict[str, Any]:
    """The ``network_data.json`` document: one ``phy`` link and one network per NIC."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for index, nic in enumerate(nics):
        link: dict[str, Any] = {"id": f"tap{index}", "type": "phy", "ethernet_mac_address": nic.mac}
        if nic.mtu is not None:
            link["mtu"] = nic.mtu
        links.append(link)
        networks.append(_network(index, nic))
        services.extend({"type": "dns", "address": str(server)} for server in nic.dns)
    return {"links": links, "networks": networks, "services": services}


def _network(index: int, nic: Nic) -> dict[str, Any]:
    base = {"id": f"network{index}", "link": f"tap{index}", "network_id": f"net-{index}"}
    if nic.address is None:
        return {**base, "type": "ipv4_dhcp"}
    network: dict[str, Any] = {
        **base,
        "type": "ipv4",
        "ip_address": str(nic.address.ip),
        "netmask": str(nic.address.netmask),
        "routes": [],
    }
    if nic.gateway is not None:
        network["routes"] = [
            {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": str(nic.gateway)}
        ]
    if nic.dns:
        network["services"] = [{"type": "dns", "address": str(server)} for server in nic.dns]
    return network


def _dump_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
