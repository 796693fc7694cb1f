from __future__ import annotations

from stratuslab.scheduler.placement import HostSnapshot, Request, fits_anywhere, place
from stratuslab.types import HostState


def host(
    name: str,
    *,
    vcpus: int = 4,
    mem: int = 8192,
    used_cpu: int = 0,
    used_mem: int = 0,
    state: HostState = HostState.ENABLED,
    arch: str = "x86_64",
) -> HostSnapshot:
    return HostSnapshot(
        id=name,
        name=name,
        state=state,
        arch=arch,
        vcpus=vcpus,
        memory_mib=mem,
        vcpus_used=used_cpu,
        memory_used_mib=used_mem,
    )


def test_packs_onto_the_fullest_host_that_fits() -> None:
    hosts = [host("a", used_mem=1024), host("b", used_mem=4096), host("c", used_mem=8000)]
    result = place(Request(vcpus=1, memory_mib=1024), hosts)
    assert result.host is not None
    assert result.host.name == "b"  # c is too full for 1024 MiB
    assert result.rejections == {"not enough free RAM": 1}


def test_reason_groups_rejected_hosts() -> None:
    hosts = [
        host("a", used_mem=8192),
        host("b", used_mem=8192),
        host("c", used_mem=8192),
        host("d", state=HostState.DISABLED),
    ]
    result = place(Request(vcpus=1, memory_mib=512), hosts)
    assert result.host is None
    assert result.reason == "3 hosts: not enough free RAM; 1 host: disabled"


def test_cpu_arch_and_offline_filters() -> None:
    hosts = [host("a", used_cpu=4), host("b", arch="aarch64"), host("c", state=HostState.OFFLINE)]
    result = place(Request(vcpus=1, memory_mib=512), hosts)
    assert result.host is None
    assert set(result.rejections) == {
        "not enough free vCPUs",
        "architecture aarch64, not x86_64",
        "offline",
    }


def test_no_hosts_reason() -> None:
    assert place(Request(vcpus=1, memory_mib=1), []).reason == "no hosts are registered"


def test_fits_anywhere_ignores_current_usage() -> None:
    hosts = [host("a", vcpus=2, mem=2048, used_cpu=2, used_mem=2048)]
    assert fits_anywhere(Request(vcpus=2, memory_mib=2048), hosts)
    assert not fits_anywhere(Request(vcpus=4, memory_mib=1024), hosts)
