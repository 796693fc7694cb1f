"""The seeds we build, read back by Debian's cloud-init: its own datasource classes.

cloud-init's modules live in /usr/lib/python3/dist-packages and run under /usr/bin/python3, so
each check extracts the seed ISO with xorriso (an ISO reader independent of pycdlib), then runs
``READER`` in a subprocess: it instantiates cloud-init's ``DataSourceNoCloud``,
``DataSourceConfigDrive`` or ``DataSourceOpenNebula`` on a seed directory inside a temporary
cloud dir, calls ``get_data()`` and reports what the datasource saw as JSON. Nothing touches the
host: device scans and NIC lookups are replaced, the cloud and run dirs are temporary.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stratuslab.context import (
    ContextMethod,
    ContextSpec,
    Nic,
    PartType,
    UserDataPart,
    build_user_data,
    write_context_iso,
)
from stratuslab.context.schema import SYSTEM_PYTHON, cloud_init_available

pytestmark = pytest.mark.skipif(
    not cloud_init_available(SYSTEM_PYTHON) or shutil.which("xorriso") is None,
    reason="needs Debian's cloud-init package (apt-get install cloud-init) and xorriso",
)

READER = r"""
import base64, json, sys
from cloudinit import distros, helpers, util
from cloudinit.net import network_state
from cloudinit.sources import DataSourceConfigDrive, DataSourceNoCloud, DataSourceOpenNebula

args = json.load(sys.stdin)
macs = args["macs"]
paths = helpers.Paths({"cloud_dir": args["cloud_dir"], "run_dir": args["run_dir"]})
distro = distros.fetch("debian")("debian", {}, paths)

def no_injected_files(files):
    assert not files, "the config drive asked cloud-init to write files on the host"

DataSourceConfigDrive.write_injected_files = no_injected_files
DataSourceOpenNebula.find_candidate_devs = lambda: []
DataSourceOpenNebula.get_physical_nics_by_mac = lambda distro: {m: n for n, m in macs.items()}
classes = {
    "nocloud": DataSourceNoCloud.DataSourceNoCloud,
    "configdrive": DataSourceConfigDrive.DataSourceConfigDrive,
    "opennebula": DataSourceOpenNebula.DataSourceOpenNebula,
}
sys_cfg = {"datasource": {"NoCloud": {"fs_label": None}, "OpenNebula": {"parseuser": None}}}
ds = classes[args["method"]](sys_cfg, distro, paths)
ds.known_macs = {m: n for n, m in macs.items()}
found = ds.get_data()
parts = []
for part in ds.get_userdata().walk():
    if part.get_content_maintype() == "multipart":
        continue
    body = part.get_payload(decode=True) or b""
    parts.append([part.get_content_type(), part.get_filename(), body.decode()])
netcfg = ds.network_config
interfaces = {}
if netcfg:
    state = network_state.parse_net_config_data(netcfg)
    for iface in state.iter_interfaces():
        interfaces[iface["name"]] = {
            "mac": iface.get("mac_address"),
            "subnets": [
                {k: s.get(k) for k in ("type", "address", "prefix", "gateway", "routes")}
                for s in iface.get("subnets", [])
            ],
        }
    dns = state.dns_nameservers
else:
    dns = []
print(json.dumps({
    "found": found,
    "instance_id": ds.get_instance_id(),
    "hostname": ds.get_hostname().hostname,
    "keys": ds.get_public_ssh_keys(),
    "meta": ds.metadata.get("meta"),
    "metadata": {k: v for k, v in ds.metadata.items() if isinstance(v, str)},
    "parts": parts,
    "interfaces": interfaces,
    "dns": list(dns),
}))
"""

ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFYc2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0 alice@lab"
)
RSA = "ssh-rsa " + base64.b64encode(b"\0\0\0\x07ssh-rsa" + b"\1" * 64).decode() + " bob"
MAC0, MAC1 = "52:54:00:00:00:01", "52:54:00:00:00:02"
CLOUD_CONFIG = b"#cloud-config\nwrite_files:\n  - path: /etc/marker\n    content: hello\n"
SCRIPT = b"#!/bin/sh\necho 'it''s $HOME' > /root/ran\n"
NICS = (
    Nic(
        mac=MAC0,
        address=ipaddress.IPv4Interface("198.18.0.10/24"),
        gateway=ipaddress.IPv4Address("198.18.0.1"),
        dns=(ipaddress.IPv4Address("198.18.0.2"),),
    ),
    Nic(mac=MAC1),
)


def read_with_cloud_init(method: ContextMethod, spec: ContextSpec, tmp: Path) -> dict[str, Any]:
    iso = write_context_iso(method, spec, tmp / "seed.iso")
    subdir = {"nocloud": "nocloud", "configdrive": "config_drive", "opennebula": "opennebula"}
    seed = tmp / "cloud" / "seed" / subdir[method.value]
    seed.parent.mkdir(parents=True)
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(seed)],
        check=True,
        capture_output=True,
    )
    request = {
        "method": method.value,
        "cloud_dir": str(tmp / "cloud"),
        "run_dir": str(tmp / "run"),
        "macs": {"eth0": MAC0, "eth1": MAC1},
    }
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", READER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["found"] is True
    return result


def _spec(**changes: Any) -> ContextSpec:
    fields: dict[str, Any] = {
        "instance_id": "i-0123",
        "hostname": "vm-ctx",
        "ssh_keys": (ED25519, RSA),
        "user_data": CLOUD_CONFIG,
        "network": NICS,
        "extra": {"ROLE": "worker", "NOTE": 'it\'s "$(touch /tmp/pwned)" `id` \\ done'},
    }
    fields.update(changes)
    return ContextSpec(**fields)


@pytest.mark.parametrize("method", list(ContextMethod))
def test_hostname_keys_and_user_data(method: ContextMethod, tmp_path: Path) -> None:
    seen = read_with_cloud_init(method, _spec(), tmp_path)
    assert seen["hostname"] == "vm-ctx"
    assert sorted(seen["keys"]) == sorted([ED25519, RSA])
    assert seen["parts"] == [["text/cloud-config", "part-001", CLOUD_CONFIG.decode()]]
    if method is not ContextMethod.OPENNEBULA:  # cloud-init 22.4 uses a fixed id there
        assert seen["instance_id"] == "i-0123"


@pytest.mark.parametrize("method", list(ContextMethod))
def test_static_and_dhcp_interfaces(method: ContextMethod, tmp_path: Path) -> None:
    seen = read_with_cloud_init(method, _spec(), tmp_path)
    eth0 = seen["interfaces"]["eth0"]
    assert eth0["mac"] == MAC0
    ((subnet,),) = [eth0["subnets"]]
    assert (subnet["type"], subnet["address"], subnet["prefix"]) == ("static", "198.18.0.10", 24)
    default_routes = [r["gateway"] for r in subnet["routes"] if r["prefix"] == 0]
    assert [subnet["gateway"], *default_routes] in (["198.18.0.1"], [None, "198.18.0.1"])
    assert seen["dns"] == ["198.18.0.2"]
    if method is ContextMethod.OPENNEBULA:
        # cloud-init 22.4's OpenNebula reader is static-only: the address comes from the MAC
        assert seen["interfaces"]["eth1"]["subnets"][0]["address"] == "0.0.0.2"
    else:
        assert seen["interfaces"]["eth1"] == {
            "mac": MAC1,
            "subnets": [dict.fromkeys(subnet, None) | {"type": "dhcp4", "routes": []}],
        }


@pytest.mark.parametrize("method", [ContextMethod.NOCLOUD, ContextMethod.CONFIGDRIVE])
def test_extra_pairs_are_instance_metadata(method: ContextMethod, tmp_path: Path) -> None:
    seen = read_with_cloud_init(method, _spec(), tmp_path)
    assert seen["meta"] == {"NOTE": _spec().extra["NOTE"], "ROLE": "worker"}


def test_opennebula_pairs_survive_bash_unexpanded(tmp_path: Path) -> None:
    seen = read_with_cloud_init(ContextMethod.OPENNEBULA, _spec(), tmp_path)
    assert seen["metadata"]["NOTE"] == _spec().extra["NOTE"]
    assert seen["metadata"]["ROLE"] == "worker"
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("method", list(ContextMethod))
def test_gzipped_mime_multipart(method: ContextMethod, tmp_path: Path) -> None:
    parts = [
        UserDataPart(CLOUD_CONFIG, PartType.CLOUD_CONFIG, "config.yaml"),
        UserDataPart(SCRIPT, PartType.SHELL_SCRIPT, "run.sh"),
        UserDataPart(b"echo early\n", PartType.BOOTHOOK, "hook.sh"),
    ]
    payload = build_user_data(parts, compress=True)
    assert gzip.decompress(payload).startswith(b"Content-Type: multipart/mixed")
    seen = read_with_cloud_init(method, _spec(user_data=payload), tmp_path)
    assert seen["parts"] == [
        ["text/cloud-config", "config.yaml", CLOUD_CONFIG.decode()],
        ["text/x-shellscript", "run.sh", SCRIPT.decode()],
        ["text/cloud-boothook", "hook.sh", "echo early\n"],
    ]


@pytest.mark.parametrize("method", list(ContextMethod))
def test_single_script_is_passed_literally(method: ContextMethod, tmp_path: Path) -> None:
    payload = build_user_data([UserDataPart(SCRIPT, PartType.SHELL_SCRIPT, "run.sh")])
    assert payload == SCRIPT
    seen = read_with_cloud_init(method, _spec(user_data=payload), tmp_path)
    assert seen["parts"] == [["text/x-shellscript", "part-001", SCRIPT.decode()]]


@pytest.mark.parametrize("method", [ContextMethod.NOCLOUD, ContextMethod.CONFIGDRIVE])
def test_default_user_data_sets_hostname_and_keys(method: ContextMethod, tmp_path: Path) -> None:
    seen = read_with_cloud_init(method, _spec(user_data=None, network=None), tmp_path)
    ((content_type, _, text),) = seen["parts"]
    assert content_type == "text/cloud-config"
    assert "hostname: vm-ctx" in text and ED25519 in text
    assert seen["interfaces"] == {}
