"""Build the files of a cloud-init NoCloud seed, as pure functions.

A NoCloud seed is a small filesystem labelled ``cidata`` holding ``meta-data`` (YAML:
``instance-id``, ``local-hostname``, ``public-keys``), ``user-data`` and optionally
``network-config`` and ``vendor-data``. Real cloud-init guests and the tiny appliance both read
it. When the caller gives no user data, a minimal ``#cloud-config`` repeats the hostname and the
SSH keys, because cloud-init installs keys for the default user from user data.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from stratuslab.context.spec import Nic
from stratuslab.errors import InvalidInput

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_KEY_TYPES = frozenset(
    {
        "ssh-rsa",
        "ssh-dss",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_MAX_INSTANCE_ID = 255


def build_nocloud(
    *,
    instance_id: str,
    hostname: str,
    ssh_keys: Sequence[str],
    user_data: bytes | None = None,
    network_config: dict[str, Any] | None = None,
    vendor_data: bytes | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """Return the seed files by name: ``meta-data``, ``user-data`` and the optional ones.

    ``extra`` pairs go under ``meta`` in ``meta-data`` (cloud-init shows them to templates as
    ``ds.meta_data.meta``), as OpenStack does with instance metadata.
    """
    validate_instance_id(instance_id)
    validate_hostname(hostname)
    keys = [validate_ssh_key(key) for key in ssh_keys]
    meta = meta_data(instance_id=instance_id, hostname=hostname, ssh_keys=keys, extra=extra)
    files = {
        "meta-data": meta,
        "user-data": user_data if user_data is not None else default_user_data(hostname, keys),
    }
    if network_config is not None:
        files["network-config"] = _dump_yaml(network_config)
    if vendor_data is not None:
        files["vendor-data"] = vendor_data
    return files


def meta_data(
    *,
    instance_id: str,
    hostname: str,
    ssh_keys: Sequence[str],
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """The ``meta-data`` YAML document (keys already validated)."""
    doc: dict[str, Any] = {"instance-id": instance_id, "local-hostname": hostname}
    if ssh_keys:
        doc["public-keys"] = list(ssh_keys)
    if extra:
        doc["meta"] = dict(sorted(extra.items()))
    return _dump_yaml(doc)


def network_config_v2(nics: Sequence[Nic]) -> dict[str, Any]:
    """Network config version 2 (the netplan subset cloud-init renders on any distribution).

    Interfaces are matched by MAC and named ``eth0``, ``eth1``... in the order given.
    """
    ethernets: dict[str, Any] = {}
    for index, nic in enumerate(nics):
        name = f"eth{index}"
        entry: dict[str, Any] = {"match": {"macaddress": nic.mac}, "set-name": name}
        if nic.address is None:
            entry["dhcp4"] = True
        else:
            entry["dhcp4"] = False
            entry["addresses"] = [str(nic.address)]
            if nic.gateway is not None:
                entry["routes"] = [{"to": "0.0.0.0/0", "via": str(nic.gateway)}]
        if nic.dns:
            entry["nameservers"] = {"addresses": [str(server) for server in nic.dns]}
        if nic.mtu is not None:
            entry["mtu"] = nic.mtu
        ethernets[name] = entry
    return {"version": 2, "ethernets": ethernets}


def default_user_data(hostname: str, ssh_keys: Sequence[str]) -> bytes:
    """A minimal ``#cloud-config`` that sets the hostname and installs the SSH keys."""
    doc: dict[str, Any] = {"hostname": hostname}
    if ssh_keys:
        doc["ssh_authorized_keys"] = list(ssh_keys)
    return b"#cloud-config\n" + _dump_yaml(doc)


def validate_hostname(hostname: str) -> None:
    """Refuse anything that is not one RFC 1123 label (1-63 letters, digits, inner hyphens)."""
    if not _HOSTNAME_RE.match(hostname):
        raise InvalidInput(
            f"hostname {hostname!r} is not a valid RFC 1123 label",
            hint="use 1-63 letters, digits or hyphens, not starting or ending with a hyphen",
        )


def validate_instance_id(instance_id: str) -> None:
    """Refuse empty, overlong or multi-line instance ids."""
    if not instance_id or len(instance_id) > _MAX_INSTANCE_ID or not instance_id.isprintable():
        raise InvalidInput(
            f"instance id {instance_id!r} is empty, too long or contains control characters",
            hint=f"give a printable id of 1-{_MAX_INSTANCE_ID} characters",
        )


def validate_ssh_key(key: str) -> str:
    """Return the key stripped if it looks like an OpenSSH public key line, else raise."""
    line = key.strip()
    parts = line.split(maxsplit=2)
    if "\n" in line or len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise InvalidInput(
            f"not an SSH public key: {_preview(line)!r}",
            hint="pass one public key line such as the content of ~/.ssh/id_ed25519.pub",
        )
    if _embedded_key_type(parts[1]) != parts[0]:
        raise InvalidInput(
            f"SSH public key of type {parts[0]} has a corrupt or mismatched body",
            hint="copy the whole line of the .pub file, not the private key",
        )
    return line


def _embedded_key_type(body: str) -> str | None:
    """The key type named inside the base64 blob of a public key, or None if unreadable."""
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + size:
        return None
    return blob[4 : 4 + size].decode("ascii", errors="replace")


def _preview(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _dump_yaml(doc: dict[str, Any]) -> bytes:
    # A huge width keeps every key on one line: simple guest-side parsers read it line by line.
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1 << 20)
    return text.encode("utf-8")
