"""place_many / Board: capacity accounting, groups, images, policies — and agreement with the
plain filter and weigher functions on random clouds."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from stratuslab.scheduler import (
    Board,
    HostSnapshot,
    Policy,
    Request,
    Strategy,
    place,
    place_many,
)
from stratuslab.scheduler.filters import filters_for, first_rejection
from stratuslab.scheduler.weighers import score
from stratuslab.types import HostState


def host(name: str, **kw: object) -> HostSnapshot:
    fields: dict[str, object] = {
        "id": name,
        "name": name,
        "state": HostState.ENABLED,
        "arch": "x86_64",
        "vcpus": 4,
        "memory_mib": 8192,
    }
    fields.update(kw)
    return HostSnapshot(**fields)  # type: ignore[arg-type]


def names(placements: list) -> list[str | None]:  # type: ignore[type-arg]
    return [p.host.name if p.host else None for p in placements]


def test_place_many_counts_each_placement() -> None:
    hosts = [host("a"), host("b")]
    result = place_many([Request(vcpus=2, memory_mib=1024)] * 5, hosts)
    assert names(result) == ["a", "a", "b", "b", None]
    assert result[4].reason == "2 hosts: not enough free vCPUs"
    # the inputs are not changed
    assert hosts[0].vcpus_used == 0


def test_capacity_never_exceeds_total_times_ratio() -> None:
    hosts = [
        host("a", vcpus=4, cpu_ratio=4.0, memory_mib=8192, ram_ratio=1.5),
        host("b", vcpus=8, memory_mib=4096, vcpus_used=6, memory_used_mib=1024),
        host("c", vcpus=2, memory_mib=2048, disk_gib=20, disk_ratio=2.0),
    ]
    rng = random.Random(7)
    reqs = [
        Request(vcpus=rng.randint(1, 3), memory_mib=rng.choice([256, 512, 1024]), disk_gib=5)
        for _ in range(200)
    ]
    for policy in (Policy(), Policy(strategy=Strategy.STRIPE), Policy(strategy=Strategy.LOAD)):
        board = Board(hosts, policy)
        placed = [board.place(r) for r in reqs]
        assert any(p.host is None for p in placed)
        for h in board.hosts():
            assert h.vcpus_used <= h.vcpus * h.cpu_ratio
            assert h.memory_used_mib <= h.memory_mib * h.ram_ratio
            assert h.disk_used_gib <= max(h.disk_gib * h.disk_ratio, 0)
        by_host = Counter(p.host.name for p in placed if p.host is not None)
        updated = {h.name: h for h in board.hosts()}
        for h in hosts:
            mine = [
                r for r, p in zip(reqs, placed, strict=True) if p.host and p.host.name == h.name
            ]
            assert len(mine) == by_host[h.name]
            assert updated[h.name].vcpus_used == h.vcpus_used + sum(r.vcpus for r in mine)
            assert updated[h.name].memory_used_mib == h.memory_used_mib + sum(
                r.memory_mib for r in mine
            )


def test_hosts_without_disk_take_no_disk_requests() -> None:
    result = place(Request(vcpus=1, memory_mib=1, disk_gib=1), [host("a")])
    assert result.reason == "1 host: not enough free disk"


def test_strategies_choose_differently() -> None:
    hosts = [host("empty"), host("half", vcpus_used=2, memory_used_mib=4096, load=3.5)]
    req = Request(vcpus=1, memory_mib=512)
    assert place(req, hosts).host.name == "half"  # type: ignore[union-attr]
    stripe = Policy(strategy=Strategy.STRIPE)
    assert place(req, hosts, policy=stripe).host.name == "empty"  # type: ignore[union-attr]
    busy = [host("idle", vcpus_used=3, load=0.1), host("busy", load=3.9)]
    load = Policy(strategy=Strategy.LOAD)
    assert place(req, busy, policy=load).host.name == "idle"  # type: ignore[union-attr]
    assert place(req, busy).host.name == "idle"  # packing: idle is fuller  # type: ignore[union-attr]
    aware = Policy(strategy=Strategy.PACK, load_weight=2.0)
    assert place(req, busy, policy=aware).host.name == "idle"  # type: ignore[union-attr]


def test_load_aware_spreads_within_a_batch() -> None:
    hosts = [host(f"h{i}", vcpus=8, memory_mib=65536) for i in range(4)]
    result = place_many([Request(vcpus=2, memory_mib=512)] * 4, hosts, policy=Policy(Strategy.LOAD))
    assert sorted(names(result)) == ["h0", "h1", "h2", "h3"]  # type: ignore[type-var]


def test_image_bonus_prefers_hosts_with_the_image() -> None:
    hosts = [host("a"), host("b", images=frozenset({"centos"}))]
    req = Request(vcpus=1, memory_mib=512, image="centos")
    stripe = Policy(strategy=Strategy.STRIPE)
    assert place(req, hosts, policy=stripe).host.name == "b"  # type: ignore[union-attr]
    no_bonus = Policy(strategy=Strategy.STRIPE, image_weight=0)
    assert place(req, hosts, policy=no_bonus).host.name == "a"  # type: ignore[union-attr]
    # after the first placement on "a", "a" caches the image too: the bonus outweighs the
    # fill of one instance, not of two
    many = place_many([replace(req, image="debian")] * 3, [host("a"), host("b")], policy=stripe)
    assert names(many) == ["a", "a", "b"]


def test_anti_affinity_puts_members_on_different_hosts() -> None:
    hosts = [host(n) for n in "abc"] + [host("d", groups=frozenset({"db"}))]
    req = Request(vcpus=1, memory_mib=128, anti_affinity_group="db")
    result = place_many([req] * 4, hosts)
    assert sorted(names(result)[:3]) == ["a", "b", "c"]  # type: ignore[type-var]
    assert result[3].host is None
    assert result[3].reason == "4 hosts: already runs a member of anti-affinity group db"


def test_affinity_keeps_members_together() -> None:
    hosts = [host(n) for n in "abc"]
    req = Request(vcpus=1, memory_mib=128, affinity_group="web")
    stripe = Policy(strategy=Strategy.STRIPE)
    result = place_many([req] * 5, hosts, policy=stripe)
    assert len(set(names(result)[:4])) == 1  # the first went anywhere, the rest followed
    assert result[4].host is None
    assert "2 hosts: runs no member of affinity group web" in result[4].reason
    assert "1 host: not enough free vCPUs" in result[4].reason


def test_affinity_with_members_on_a_disabled_host() -> None:
    hosts = [host("a"), host("b", state=HostState.DISABLED, groups=frozenset({"g"}))]
    result = place(Request(vcpus=1, memory_mib=1, affinity_group="g"), hosts)
    assert result.reason == "1 host: disabled; 1 host: runs no member of affinity group g"


def test_requirements_static_and_dynamic() -> None:
    hosts = [
        host("gpu", labels={"gpu": "yes"}, memory_used_mib=7168),
        host("big", memory_mib=65536),
        host("arm", arch="aarch64", labels={"gpu": "yes"}),
    ]
    req = Request(vcpus=1, memory_mib=512, requirements='LABEL:gpu = "yes"')
    result = place(req, hosts)
    assert result.host is not None and result.host.name == "gpu"
    assert result.rejections == {
        "does not meet the requirements": 1,
        "architecture aarch64, not x86_64": 1,
    }
    dyn = Request(vcpus=1, memory_mib=512, requirements="FREE_MEMORY > 1024")
    # dynamic: after 3 placements "gpu" (1024 MiB free) no longer qualifies
    result = place_many([dyn] * 3, hosts)
    assert names(result) == ["big", "big", "big"]
    board = Board(hosts)
    for _ in range(2):
        board.place(Request(vcpus=1, memory_mib=256, requirements="FREE_MEMORY >= 512"))
    last = board.place(
        Request(vcpus=1, memory_mib=256, requirements="FREE_MEMORY > 512 & LOAD < 10")
    )
    assert last.host is not None and last.host.name == "big"


def test_rejections_are_reported_on_success_too() -> None:
    hosts = [host("a", memory_used_mib=8192), host("b")]
    result = place(Request(vcpus=1, memory_mib=1), hosts)
    assert result.host is not None and result.host.name == "b"
    assert result.rejections == {"not enough free RAM": 1}


def test_ties_go_to_the_first_host_in_snapshot_order() -> None:
    hosts = [host("z"), host("y"), host("x")]
    assert place(Request(vcpus=1, memory_mib=1), hosts).host.name == "z"  # type: ignore[union-attr]


# -- agreement with the plain functions ------------------------------------------------------


def random_cloud(rng: random.Random, n: int) -> list[HostSnapshot]:
    out = []
    for i in range(n):
        vcpus = rng.choice([2, 4, 8, 16])
        mem = rng.choice([4096, 8192, 16384])
        out.append(
            host(
                f"h{i:03d}",
                state=rng.choice([HostState.ENABLED] * 8 + [HostState.DISABLED, HostState.OFFLINE]),
                arch=rng.choice(["x86_64"] * 5 + ["aarch64"]),
                hypervisor=rng.choice(["kvm", "kvm", "qemu"]),
                vcpus=vcpus,
                memory_mib=mem,
                vcpus_used=rng.randint(0, vcpus),
                memory_used_mib=rng.randint(0, mem),
                cpu_ratio=rng.choice([1.0, 2.0, 4.0]),
                ram_ratio=rng.choice([1.0, 1.5]),
                disk_gib=rng.choice([0, 50, 200]),
                labels={"gpu": "yes"} if rng.random() < 0.3 else {"rack": str(rng.randint(1, 3))},
                groups=frozenset(rng.sample(["g1", "g2", "g3"], rng.randint(0, 1))),
                images=frozenset(rng.sample(["i1", "i2"], rng.randint(0, 2))),
                load=rng.uniform(0, vcpus),
            )
        )
    return out


def random_request(rng: random.Random) -> Request:
    return Request(
        vcpus=rng.randint(1, 4),
        memory_mib=rng.choice([256, 512, 1024, 2048]),
        arch=rng.choice(["x86_64"] * 6 + ["aarch64"]),
        disk_gib=rng.choice([0, 0, 5]),
        hypervisor=rng.choice([None, None, "kvm"]),
        requirements=rng.choice(
            ["", "", 'LABEL:gpu = "yes"', "FREE_MEMORY > 2048 | LABEL:rack = 2", "LOAD < 6"]
        ),
        affinity_group=rng.choice([None, None, None, "g1", "g4"]),
        anti_affinity_group=rng.choice([None, None, None, "g2", "g5"]),
        image=rng.choice([None, "i1", "i2"]),
    )


def reference_commit(h: HostSnapshot, req: Request) -> HostSnapshot:
    groups = {g for g in (req.affinity_group, req.anti_affinity_group) if g is not None}
    return replace(
        h,
        vcpus_used=h.vcpus_used + req.vcpus,
        memory_used_mib=h.memory_used_mib + req.memory_mib,
        disk_used_gib=h.disk_used_gib + req.disk_gib,
        load=h.load + req.vcpus,
        groups=h.groups | groups,
        images=h.images | ({req.image} if req.image else set()),
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("strategy", list(Strategy))
def test_board_agrees_with_the_filter_and_weigher_functions(seed: int, strategy: Strategy) -> None:
    rng = random.Random(seed)
    hosts = random_cloud(rng, 40)
    policy = Policy(strategy=strategy, load_weight=rng.choice([0.0, 0.5]), image_weight=0.3)
    board = Board(hosts, policy)
    reference = list(hosts)
    for _ in range(60):
        req = random_request(rng)
        got = board.place(req)
        filters = filters_for(req, reference)
        rejections: Counter[str] = Counter()
        fit = []
        for i, h in enumerate(reference):
            reason = first_rejection(h, req, filters)
            if reason is None:
                fit.append(i)
            else:
                rejections[reason] += 1
        assert got.rejections == dict(rejections)
        if not fit:
            assert got.host is None
            continue
        assert got.host is not None
        best = max(score(reference[i], req, policy) for i in fit)
        chosen = next(i for i, h in enumerate(hosts) if h.id == got.host.id)
        assert chosen in fit
        assert score(reference[chosen], req, policy) == pytest.approx(best, abs=1e-9)
        reference[chosen] = reference_commit(reference[chosen], req)
    assert board.hosts() == reference
