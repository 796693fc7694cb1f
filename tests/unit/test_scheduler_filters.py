"""Each filter and weigher on its own, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stratuslab.scheduler import HostSnapshot, Policy, Request, Strategy, explain
from stratuslab.scheduler.filters import (
    DEFAULT_FILTERS,
    Filter,
    affinity_filter,
    anti_affinity_filter,
    arch_filter,
    cpu_filter,
    disk_filter,
    filters_for,
    hypervisor_filter,
    ram_filter,
    requirements_filter,
    state_filter,
)
from stratuslab.scheduler.weighers import (
    fullness,
    idleness,
    image_weight,
    packing_weight,
    score,
    striping_weight,
)
from stratuslab.types import HostState

HOST = HostSnapshot(
    id="h1",
    name="node-1",
    state=HostState.ENABLED,
    arch="x86_64",
    vcpus=8,
    memory_mib=16384,
    vcpus_used=4,
    memory_used_mib=8192,
    hypervisor="kvm",
    disk_gib=100,
    disk_used_gib=40,
    labels={"gpu": "yes", "rack": "r7"},
    groups=frozenset({"db"}),
    images=frozenset({"img-a"}),
    load=2.0,
)
REQ = Request(vcpus=2, memory_mib=2048)

FILTER_CASES: list[tuple[str, Filter, dict[str, object], dict[str, object], str | None]] = [
    ("enabled host passes", state_filter, {}, {}, None),
    ("disabled host", state_filter, {"state": HostState.DISABLED}, {}, "disabled"),
    ("draining host", state_filter, {"state": HostState.DRAINING}, {}, "draining"),
    ("offline host", state_filter, {"state": HostState.OFFLINE}, {}, "offline"),
    ("host in error", state_filter, {"state": HostState.ERROR}, {}, "error"),
    ("same arch", arch_filter, {}, {}, None),
    (
        "other arch",
        arch_filter,
        {"arch": "aarch64"},
        {},
        "architecture aarch64, not x86_64",
    ),
    ("any hypervisor", hypervisor_filter, {}, {}, None),
    ("same hypervisor", hypervisor_filter, {}, {"hypervisor": "kvm"}, None),
    ("other hypervisor", hypervisor_filter, {}, {"hypervisor": "qemu"}, "hypervisor kvm, not qemu"),
    (
        "unknown hypervisor",
        hypervisor_filter,
        {"hypervisor": ""},
        {"hypervisor": "kvm"},
        "hypervisor unknown, not kvm",
    ),
    ("no requirements", requirements_filter, {}, {}, None),
    ("label met", requirements_filter, {}, {"requirements": 'LABEL:gpu = "yes"'}, None),
    (
        "label not met",
        requirements_filter,
        {"labels": {}},
        {"requirements": 'LABEL:gpu = "yes"'},
        "does not meet the requirements",
    ),
    ("free memory met", requirements_filter, {}, {"requirements": "FREE_MEMORY >= 8192"}, None),
    (
        "free memory not met",
        requirements_filter,
        {},
        {"requirements": "FREE_MEMORY > 8192"},
        "does not meet the requirements",
    ),
    ("no anti-affinity", anti_affinity_filter, {}, {}, None),
    ("anti-affinity, other group", anti_affinity_filter, {}, {"anti_affinity_group": "web"}, None),
    (
        "anti-affinity, member here",
        anti_affinity_filter,
        {},
        {"anti_affinity_group": "db"},
        "already runs a member of anti-affinity group db",
    ),
    ("affinity, member here", affinity_filter, {}, {"affinity_group": "db"}, None),
    (
        "affinity, no member here",
        affinity_filter,
        {},
        {"affinity_group": "web"},
        "runs no member of affinity group web",
    ),
    ("cpu fits exactly", cpu_filter, {}, {"vcpus": 4}, None),
    ("cpu too big", cpu_filter, {}, {"vcpus": 5}, "not enough free vCPUs"),
    ("cpu overcommitted 2x", cpu_filter, {"cpu_ratio": 2.0}, {"vcpus": 12}, None),
    ("ram fits exactly", ram_filter, {}, {"memory_mib": 8192}, None),
    ("ram too big", ram_filter, {}, {"memory_mib": 8193}, "not enough free RAM"),
    ("ram overcommitted 1.5x", ram_filter, {"ram_ratio": 1.5}, {"memory_mib": 16384}, None),
    ("no disk asked", disk_filter, {"disk_used_gib": 100}, {}, None),
    ("disk fits", disk_filter, {}, {"disk_gib": 60}, None),
    ("disk too big", disk_filter, {}, {"disk_gib": 61}, "not enough free disk"),
    ("disk overcommitted", disk_filter, {"disk_ratio": 2.0}, {"disk_gib": 160}, None),
]


@pytest.mark.parametrize(
    ("flt", "host_changes", "req_changes", "expected"),
    [case[1:] for case in FILTER_CASES],
    ids=[case[0] for case in FILTER_CASES],
)
def test_filter(
    flt: Filter,
    host_changes: dict[str, object],
    req_changes: dict[str, object],
    expected: str | None,
) -> None:
    host = replace(HOST, **host_changes)  # type: ignore[arg-type]
    req = replace(REQ, **req_changes)  # type: ignore[arg-type]
    assert flt(host, req) == expected


def test_first_failing_filter_names_the_cause() -> None:
    host = replace(HOST, state=HostState.DISABLED, arch="aarch64")
    assert explain(Request(vcpus=64, memory_mib=1), host) == "disabled"
    assert explain(Request(vcpus=64, memory_mib=1), HOST) == "not enough free vCPUs"
    assert explain(REQ, HOST) is None


def test_affinity_filter_is_dropped_for_the_first_member() -> None:
    req = Request(vcpus=1, memory_mib=1, affinity_group="new")
    assert affinity_filter not in filters_for(req, [HOST])
    assert filters_for(replace(req, affinity_group="db"), [HOST]) == DEFAULT_FILTERS


WEIGHER_CASES = [
    # (weigher, host changes, request, expected)
    (fullness, {}, REQ, 0.5 * (6 / 8 + 10240 / 16384)),
    (fullness, {"cpu_ratio": 2.0}, REQ, 0.5 * (6 / 16 + 10240 / 16384)),
    (fullness, {"vcpus": 0, "memory_mib": 0}, REQ, 0.0),
    (packing_weight, {"vcpus_used": 0, "memory_used_mib": 0}, REQ, 0.5 * (2 / 8 + 2048 / 16384)),
    (striping_weight, {"vcpus_used": 0, "memory_used_mib": 0}, REQ, 1 - 0.5 * (0.25 + 0.125)),
    (idleness, {}, REQ, 1 - (2.0 + 2) / 8),
    (idleness, {"load": 0.0}, Request(vcpus=8, memory_mib=1), 0.0),
    (idleness, {"vcpus": 0}, REQ, 0.0),
    (image_weight, {}, replace(REQ, image="img-a"), 1.0),
    (image_weight, {}, replace(REQ, image="img-b"), 0.0),
    (image_weight, {}, REQ, 0.0),
]


@pytest.mark.parametrize(("weigher", "host_changes", "req", "expected"), WEIGHER_CASES)
def test_weigher(weigher, host_changes, req, expected) -> None:  # type: ignore[no-untyped-def]
    assert weigher(replace(HOST, **host_changes), req) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Policy(image_weight=0), 0.5 * (6 / 8 + 10240 / 16384)),
        (Policy(strategy=Strategy.STRIPE, image_weight=0), 1 - 0.5 * (6 / 8 + 10240 / 16384)),
        (Policy(strategy=Strategy.LOAD, image_weight=0), 0.5),
        (Policy(strategy=Strategy.LOAD, strategy_weight=2, image_weight=1), 2 * 0.5 + 1),
        (
            Policy(strategy=Strategy.PACK, load_weight=0.5, image_weight=0.25),
            0.5 * (6 / 8 + 10240 / 16384) + 0.25 + 0.25,
        ),
    ],
)
def test_policy_score_mixes_the_weighers(policy: Policy, expected: float) -> None:
    assert score(HOST, replace(REQ, image="img-a"), policy) == pytest.approx(expected)
