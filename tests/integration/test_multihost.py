"""Several hosts behind one controller: placement policy, host states, HA, cold migration.

Every host is a real agent (``Agent.step``, the real reconciler) over the fake driver, talking
to the real app through its own TestClient; housekeeping passes are run by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from stratuslab.agent.controller import ControllerLink
from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.api.app import housekeeping
from stratuslab.db.models import Host, utcnow
from stratuslab.drivers.fake import FakeComputeDriver, FakeHypervisors
from stratuslab.schemas.agent import Heartbeat, JoinRequest
from stratuslab.services.context import Ctx
from stratuslab.types import Hypervisor, PowerState
from tests.integration.test_api import error, upload
from tests.integration.test_lifecycle import Node

P = "/api/v1"


class DiskSaver:
    """Stands in for RootDiskSaver on a fake host: sends a real (small) qcow2 file."""

    def __init__(self, link: ControllerLink, disk: Path) -> None:
        self.link, self.disk = link, disk
        self.saved: list[str] = []

    def save(self, instance_id: str, image_id: str) -> None:
        self.saved.append(instance_id)
        self.link.upload_saved_image(image_id, self.disk)


def join(api: TestClient, name: str, disk: Path, *, vcpus: int = 4, memory_mib: int = 4096) -> Node:
    token = api.post(f"{P}/hosts/tokens").json()["token"]
    driver = FakeComputeDriver(
        hostname=name, vcpus=vcpus, memory_mib=memory_mib, hypervisor=Hypervisor.QEMU
    )
    http = TestClient(api.app)
    link = ControllerLink("http://testserver", http=http)
    resp = link.join(JoinRequest(token=token, capacity=host_capacity(driver, Path("/"))))
    http.headers["Authorization"] = f"Bearer {resp.credential}"
    workspace = FakeWorkspace()
    reconciler = Reconciler(
        driver,
        workspace,
        FakeImageCache(),
        hypervisor=Hypervisor.QEMU,
        saver=DiskSaver(link, disk),
    )
    agent = Agent(link, reconciler, workspace, lambda: host_capacity(driver, Path("/")))
    return Node(agent, driver, workspace, link, resp.host_id)


@pytest.fixture
def image(api: TestClient, qcow2_file: Path) -> dict:
    return upload(api, qcow2_file, "base")


@pytest.fixture
def two(api: TestClient, qcow2_file: Path, image: dict) -> Iterator[tuple[Node, Node]]:
    nodes = (join(api, "node-1", qcow2_file), join(api, "node-2", qcow2_file))
    yield nodes
    for n in nodes:
        n.link.close()


def run(api: TestClient, **body: object) -> dict:
    resp = api.post(f"{P}/instances", json={"image": "base", "flavor": "t1.micro", **body})
    assert resp.status_code == 202, resp.text
    return resp.json()


def vm(api: TestClient, ref: str) -> dict:
    return api.get(f"{P}/instances/{ref}").json()


def settle(*nodes: Node, passes: int = 6) -> None:
    for _ in range(passes):
        for n in nodes:
            n.agent.step(wait=0)


def tune(ctx: Ctx, **changes: object) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, **changes)  # type: ignore[arg-type]


def silence(ctx: Ctx, node: Node, seconds: float = 3600) -> None:
    """The host stopped sending heartbeats ``seconds`` ago."""
    with ctx.sessions.begin() as s:
        s.execute(
            update(Host)
            .where(Host.id == node.host_id)
            .values(last_heartbeat=utcnow() - timedelta(seconds=seconds))
        )


# -- placement ---------------------------------------------------------------------------


def test_pack_fills_one_host_and_stripe_spreads(
    api: TestClient, ctx: Ctx, two: tuple[Node, Node]
) -> None:
    packed = run(api, name="p", count=4)["instances"]
    assert len({i["host_id"] for i in packed}) == 1
    tune(ctx, scheduler_strategy="stripe")
    striped = run(api, name="s", count=4)["instances"]
    hosts = [i["host_id"] for i in striped]
    # the packed host is fuller, so striping sends the new ones to the other host first
    assert hosts.count(two[0].host_id) + hosts.count(two[1].host_id) == 4
    assert packed[0]["host_id"] not in hosts[:2]


def test_requirements_and_labels_choose_the_host(api: TestClient, two: tuple[Node, Node]) -> None:
    resp = api.patch(f"{P}/hosts/node-2", json={"labels": {"gpu": "yes"}})
    assert resp.status_code == 200 and resp.json()["labels"] == {"gpu": "yes"}
    placed = run(api, name="g", count=2, requirements='LABEL:gpu = "yes" & ARCH = "x86_64"')
    assert {i["host_id"] for i in placed["instances"]} == {two[1].host_id}
    assert vm(api, "g-1")["requirements"] == 'LABEL:gpu = "yes" & ARCH = "x86_64"'
    none = run(api, name="n", requirements='NAME = "rack9-*"')["instances"][0]
    assert none["status"] == "pending"
    assert "2 hosts: does not meet the requirements" in none["status_reason"]


def test_malformed_requirements_are_refused_with_the_position(
    api: TestClient, two: tuple[Node, Node]
) -> None:
    resp = api.post(
        f"{P}/instances", json={"image": "base", "name": "bad", "requirements": "ARCH = (x86"}
    )
    assert resp.status_code == 422
    err = error(resp)
    assert err["code"] == "invalid_requirements"
    assert "position" in err["message"]
    assert api.get(f"{P}/instances").json()["total"] == 0


def test_affinity_and_anti_affinity(api: TestClient, two: tuple[Node, Node]) -> None:
    tune_hosts = {
        i["host_id"] for i in run(api, name="db", count=2, anti_affinity_group="db")["instances"]
    }
    assert tune_hosts == {two[0].host_id, two[1].host_id}
    third = run(api, name="db-3", anti_affinity_group="db")["instances"][0]
    assert third["status"] == "pending"
    assert "anti-affinity group db" in third["status_reason"]
    web = run(api, name="web", count=3, affinity_group="web")["instances"]
    assert len({i["host_id"] for i in web}) == 1


def test_overcommit_ratio_lets_more_fit(api: TestClient, qcow2_file: Path, image: dict) -> None:
    node = join(api, "small", qcow2_file, vcpus=1, memory_mib=4096)
    first = run(api, name="a")["instances"][0]
    assert first["status"] == "scheduled"
    second = run(api, name="b")["instances"][0]
    assert second["status"] == "pending"
    assert "1 host: not enough free vCPUs" in second["status_reason"]
    resp = api.patch(f"{P}/hosts/small", json={"cpu_ratio": 4})
    assert resp.status_code == 200 and resp.json()["cpu_ratio"] == 4
    third = run(api, name="c")["instances"][0]
    assert third["host_id"] == node.host_id
    bad = api.patch(f"{P}/hosts/small", json={"cpu_ratio": 0})
    assert bad.status_code == 422 and "out of range" in error(bad)["message"]
    node.link.close()


def test_pending_reason_and_timeout(api: TestClient, ctx: Ctx, two: tuple[Node, Node]) -> None:
    assert api.post(f"{P}/hosts/node-1/state", json={"action": "disable"}).status_code == 200
    big = [run(api, name=f"f{i}", flavor="m1.small")["instances"][0] for i in range(3)]
    waiting = [i for i in big if i["status"] == "pending"]
    assert waiting, "node-2 alone cannot take three m1.small"
    reason = vm(api, waiting[-1]["id"])["status_reason"]
    assert "1 host: disabled" in reason and "1 host: not enough free" in reason
    tune(ctx, pending_timeout=0.0)
    housekeeping(ctx)
    failed = vm(api, waiting[-1]["id"])
    assert failed["status"] == "failed" and "no host could take it" in failed["status_reason"]


# -- host states -------------------------------------------------------------------------


def test_disable_enable_and_bad_host_input(api: TestClient, two: tuple[Node, Node]) -> None:
    api.post(f"{P}/hosts/node-1/state", json={"action": "disable", "reason": "maintenance"})
    listed = {h["name"]: h for h in api.get(f"{P}/hosts").json()}
    assert listed["node-1"]["state"] == "disabled"
    assert listed["node-1"]["state_reason"] == "maintenance"
    placed = run(api, name="x", count=2)["instances"]
    assert {i["host_id"] for i in placed} == {two[1].host_id}
    api.post(f"{P}/hosts/node-1/state", json={"action": "enable"})
    assert api.get(f"{P}/hosts/node-1").json()["state"] == "enabled"
    assert api.post(f"{P}/hosts/ghost/state", json={"action": "disable"}).status_code == 404
    bad = api.post(f"{P}/hosts/node-1/state", json={"action": "explode"})
    assert bad.status_code == 422


def test_draining_the_last_host_is_refused(api: TestClient, two: tuple[Node, Node]) -> None:
    api.post(f"{P}/hosts/node-2/state", json={"action": "disable"})
    resp = api.post(f"{P}/hosts/node-1/state", json={"action": "drain"})
    assert resp.status_code == 409 and error(resp)["code"] == "last_host"
    assert api.get(f"{P}/hosts/node-1").json()["state"] == "enabled"


def test_drain_moves_instances_away_then_remove(
    api: TestClient, ctx: Ctx, two: tuple[Node, Node]
) -> None:
    one, other = two
    placed = run(api, name="w", count=2)["instances"]
    assert {i["host_id"] for i in placed} == {one.host_id}
    settle(one, other)
    resp = api.delete(f"{P}/hosts/node-1")
    assert resp.status_code == 409 and error(resp)["code"] == "host_not_empty"
    assert api.post(f"{P}/hosts/node-1/state", json={"action": "drain"}).status_code == 200
    for _ in range(6):
        housekeeping(ctx)
        settle(one, other, passes=2)
    for i in placed:
        moved = vm(api, i["id"])
        assert moved["host_id"] == other.host_id and moved["status"] == "running", moved
        assert other.driver.state(i["id"]) is PowerState.RUNNING
        assert one.driver.state(i["id"]) is PowerState.MISSING
    housekeeping(ctx)
    host = api.get(f"{P}/hosts/node-1").json()
    assert host["state"] == "draining" and host["state_reason"] == "drained"
    assert api.delete(f"{P}/hosts/node-1").status_code == 204
    assert api.get(f"{P}/hosts/node-1").status_code == 404
    # the removed host's credential is worthless now
    beat = Heartbeat(capacity=host_capacity(one.driver, Path("/")))
    resp = one.link._http.post(f"{P}/agent/heartbeat", json=beat.model_dump(mode="json"))
    assert resp.status_code == 401


# -- cold migration ----------------------------------------------------------------------


def test_cold_migration_to_a_named_host(api: TestClient, ctx: Ctx, two: tuple[Node, Node]) -> None:
    one, other = two
    made = run(api, name="mover")
    settle(one, other)
    assert vm(api, "mover")["host_id"] == one.host_id
    op = api.post(f"{P}/instances/mover/migrate", json={"host": "node-2"})
    assert op.status_code == 202, op.text
    op_id = op.json()["id"]
    for _ in range(5):
        settle(one, other, passes=2)
        housekeeping(ctx)
    settle(one, other)
    moved = vm(api, "mover")
    assert moved["host_id"] == other.host_id and moved["status"] == "running"
    assert moved["migration"] is None
    assert api.get(f"{P}/operations/{op_id}").json()["status"] == "succeeded"
    assert one.driver.state(made["instances"][0]["id"]) is PowerState.MISSING
    assert one.workspace.instance_ids() == set()
    assert other.driver.state(moved["id"]) is PowerState.RUNNING
    desired = other.link.desired(since=-1, wait=0)
    root = next(i for i in desired.instances if i.id == moved["id"]).image
    assert root.id != made["instances"][0]["image_id"]  # it boots from its saved disk
    kinds = [e["kind"] for e in api.get(f"{P}/events", params={"instance_id": "mover"}).json()]
    assert "instance.migrating" in kinds and "instance.migrated" in kinds


def test_migration_refusals_change_nothing(api: TestClient, two: tuple[Node, Node]) -> None:
    one, other = two
    run(api, name="stay")
    settle(one, other)
    before = vm(api, "stay")
    same = api.post(f"{P}/instances/stay/migrate", json={"host": "node-1"})
    assert same.status_code == 422 and error(same)["code"] == "same_host"
    ghost = api.post(f"{P}/instances/stay/migrate", json={"host": "ghost"})
    assert ghost.status_code == 404
    api.patch(f"{P}/hosts/node-2", json={"ram_ratio": 0.01})  # node-2 is full now
    full = api.post(f"{P}/instances/stay/migrate", json={"host": "node-2"})
    assert full.status_code == 409 and "not enough free RAM" in error(full)["message"]
    api.patch(f"{P}/hosts/node-2", json={"reset_ratios": ["ram_ratio"]})
    api.post(f"{P}/hosts/node-2/state", json={"action": "disable"})
    off = api.post(f"{P}/instances/stay/migrate", json={"host": "node-2"})
    assert off.status_code == 409 and "disabled" in error(off)["message"]
    anywhere = api.post(f"{P}/instances/stay/migrate", json={})
    assert anywhere.status_code == 409 and error(anywhere)["code"] == "no_target_host"
    after = vm(api, "stay")
    assert (after["generation"], after["desired"], after["migration"]) == (
        before["generation"],
        "running",
        None,
    )


def test_controller_restart_mid_migration(
    api: TestClient, ctx: Ctx, two: tuple[Node, Node]
) -> None:
    from stratuslab.api.app import build_ctx

    one, other = two
    run(api, name="r")
    settle(one, other)
    api.post(f"{P}/instances/r/migrate", json={})
    settle(one, other)  # stopped and saved on node-1
    fresh = build_ctx(ctx.settings)  # a new controller process on the same database
    for _ in range(4):
        housekeeping(fresh)
        settle(one, other, passes=2)
    fresh.close()
    moved = vm(api, "r")
    assert moved["host_id"] == other.host_id and moved["status"] == "running"


# -- host failure and HA -----------------------------------------------------------------


def test_failed_host_ha_restart_and_fencing_on_return(
    api: TestClient, ctx: Ctx, two: tuple[Node, Node]
) -> None:
    one, other = two
    api.post(f"{P}/hosts/node-2/state", json={"action": "disable"})
    cattle = run(api, name="cattle", ha_policy="restart")["instances"][0]
    pet = run(api, name="pet")["instances"][0]
    assert vm(api, "pet")["ha_policy"] == "none"
    settle(one)
    api.post(f"{P}/hosts/node-2/state", json={"action": "enable"})
    silence(ctx, one)
    housekeeping(ctx)  # offline: unknown; cattle back to pending
    assert api.get(f"{P}/hosts/node-1").json()["state"] == "offline"
    assert vm(api, "pet")["status"] == "unknown"
    housekeeping(ctx)  # cattle placed on node-2
    settle(other)
    moved = vm(api, "cattle")
    assert moved["host_id"] == other.host_id and moved["status"] == "running"
    # node-1 comes back: it fences its stale copy of cattle first, pet runs on
    assert one.driver.state(cattle["id"]) is PowerState.RUNNING
    one.agent.link.heartbeat(Heartbeat(capacity=host_capacity(one.driver, Path("/"))))
    one.agent.step(wait=0)
    assert one.driver.state(cattle["id"]) is PowerState.MISSING
    assert other.driver.state(cattle["id"]) is PowerState.RUNNING
    settle(one)
    assert vm(api, "pet")["status"] == "running"
    assert vm(api, "pet")["host_id"] == one.host_id == pet["host_id"]
    assert api.get(f"{P}/hosts/node-1").json()["state"] == "enabled"


def test_ha_migrate_needs_shared_storage(api: TestClient, two: tuple[Node, Node]) -> None:
    resp = api.post(f"{P}/instances", json={"image": "base", "name": "m", "ha_policy": "migrate"})
    assert resp.status_code == 422 and error(resp)["code"] == "ha_needs_shared_storage"


def test_host_error_state_from_heartbeat(api: TestClient, two: tuple[Node, Node]) -> None:
    one, _ = two
    beat = Heartbeat(capacity=host_capacity(one.driver, Path("/")), error="libvirt is down")
    one.link.heartbeat(beat)
    host = api.get(f"{P}/hosts/node-1").json()
    assert host["state"] == "error" and host["state_reason"] == "libvirt is down"
    placed = run(api, name="e")["instances"][0]
    assert placed["host_id"] != one.host_id
    one.link.heartbeat(Heartbeat(capacity=host_capacity(one.driver, Path("/"))))
    assert api.get(f"{P}/hosts/node-1").json()["state"] == "enabled"


def test_cached_image_draws_the_instance(api: TestClient, two: tuple[Node, Node]) -> None:
    other = two[1]
    sha = api.get(f"{P}/images/base").json()["sha256"]
    beat = Heartbeat(capacity=host_capacity(other.driver, Path("/")), images=[sha])
    other.link.heartbeat(beat)
    placed = run(api, name="c")["instances"][0]
    assert placed["host_id"] == other.host_id  # both empty: the cached image decides


def test_labels_declared_at_join(api: TestClient, image: dict) -> None:
    token = api.post(f"{P}/hosts/tokens").json()["token"]
    driver = FakeComputeDriver(hostname="gpu-1", vcpus=2, memory_mib=2048)
    http = TestClient(api.app)
    link = ControllerLink("http://testserver", http=http)
    cap = host_capacity(driver, Path("/"), labels="gpu=yes, rack=r2")
    link.join(JoinRequest(token=token, capacity=cap))
    assert api.get(f"{P}/hosts/gpu-1").json()["labels"] == {"gpu": "yes", "rack": "r2"}
    link.close()


# -- the CLI against the real app ----------------------------------------------------------


def test_host_and_migrate_commands(
    api: TestClient,
    ctx: Ctx,
    two: tuple[Node, Node],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner, Result

    from stratuslab.cli.context import AppContext
    from stratuslab.cli.main import cli
    from stratuslab.client import StratusClient

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("STRATUS_ENDPOINT", "http://testserver")
    monkeypatch.setenv("STRATUS_TOKEN", "unused")
    app = AppContext(
        client_factory=lambda _s: StratusClient(
            "http://testserver", api.headers["Authorization"].split()[-1], http=api
        ),
        sleep=lambda _s: None,
    )

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), obj=app, catch_exceptions=False)

    one, other = two
    out = invoke("host", "label", "node-2", "gpu=yes", "rack=r1")
    assert out.exit_code == 0, out.output
    assert "gpu=yes" in out.output
    invoke("host", "label", "node-2", "rack-")
    assert api.get(f"{P}/hosts/node-2").json()["labels"] == {"gpu": "yes"}
    out = invoke("host", "ratio", "node-1", "--cpu", "2")
    assert out.exit_code == 0 and api.get(f"{P}/hosts/node-1").json()["cpu_ratio"] == 2
    out = invoke("host", "list")
    assert "gpu=yes" in out.output and "(x2)" in out.output
    out = invoke(
        "--json",
        "run",
        "base",
        "--name",
        "g",
        "--vm-requirements",
        'LABEL:gpu = "yes"',
        "--no-wait",
        "--key",
        str(_key(tmp_path)),
    )
    assert out.exit_code == 0, out.output
    assert vm(api, "g")["host_id"] == other.host_id
    bad = invoke(
        "run", "base", "--vm-requirements", "ARCH = = 1", "--no-wait", "--key", str(_key(tmp_path))
    )
    assert bad.exit_code != 0 and "position" in bad.output
    settle(one, other)
    out = invoke("migrate", "g", "--host", "node-1", "--no-wait")
    assert out.exit_code != 0 and "does not meet the requirements" in out.output
    invoke("host", "label", "node-1", "gpu=yes")
    out = invoke("migrate", "g", "--host", "node-1", "--no-wait")
    assert out.exit_code == 0, out.output
    assert vm(api, "g")["migration"]["to"] == one.host_id
    out = invoke("host", "disable", "node-2", "--reason", "fan")
    assert out.exit_code == 0 and "disabled" in out.output
    out = invoke("host", "remove", "node-2")
    assert out.exit_code != 0 and "drain" in out.output


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG test@x\n")
    return key


# -- live migration (fake hypervisors that reach each other by URI) ---------------------------


def join_live(api: TestClient, name: str, reg: FakeHypervisors, **fail: object) -> Node:
    token = api.post(f"{P}/hosts/tokens").json()["token"]
    driver = FakeComputeDriver(
        hostname=name,
        vcpus=4,
        memory_mib=4096,
        hypervisor=Hypervisor.QEMU,
        hypervisors=reg,
        fail_on=fail.get("fail_on", ()),  # type: ignore[arg-type]
    )
    http = TestClient(api.app)
    link = ControllerLink("http://testserver", http=http)
    cap = host_capacity(driver, Path("/"), migration_uri=driver.uri)
    resp = link.join(JoinRequest(token=token, capacity=cap))
    http.headers["Authorization"] = f"Bearer {resp.credential}"
    workspace = FakeWorkspace()

    def connect(uri: str) -> FakeComputeDriver:
        found = reg.lookup(uri)
        assert found is not None
        return found

    reconciler = Reconciler(
        driver,
        workspace,
        FakeImageCache(),
        hypervisor=Hypervisor.QEMU,
        connect=connect,
        migration_uri=driver.uri,
    )
    agent = Agent(link, reconciler, workspace, lambda: cap)
    return Node(agent, driver, workspace, link, resp.host_id)


def test_live_migration_keeps_the_domain_running(api: TestClient, image: dict) -> None:
    reg = FakeHypervisors()
    one, other = join_live(api, "live-1", reg), join_live(api, "live-2", reg)
    made = run(api, name="hot")["instances"][0]
    settle(one, other)
    assert made["host_id"] == one.host_id
    op = api.post(f"{P}/instances/hot/migrate", json={"host": "live-2", "live": True})
    assert op.status_code == 202, op.text
    during = vm(api, "hot")
    assert during["migration"]["mode"] == "live" and during["host_id"] == one.host_id
    settle(one, other)
    moved = vm(api, "hot")
    assert moved["host_id"] == other.host_id and moved["status"] == "running", moved
    assert moved["migration"] is None
    assert api.get(f"{P}/operations/{op.json()['id']}").json()["status"] == "succeeded"
    assert other.driver.state(made["id"]) is PowerState.RUNNING
    assert one.driver.state(made["id"]) is PowerState.MISSING
    assert one.workspace.instance_ids() == set()
    assert moved["ssh_port"] is not None
    kinds = [e["kind"] for e in api.get(f"{P}/events", params={"instance_id": "hot"}).json()]
    assert kinds.count("instance.started") == 1  # booted once, on live-1; never again
    assert "instance.migrated" in kinds
    for n in (one, other):
        n.link.close()


def test_live_migration_refused_by_the_destination_keeps_it_running(
    api: TestClient, image: dict
) -> None:
    reg = FakeHypervisors()
    one = join_live(api, "live-1", reg)
    other = join_live(api, "live-2", reg, fail_on={"accept_migration"})
    made = run(api, name="stay")["instances"][0]
    settle(one, other)
    op = api.post(f"{P}/instances/stay/migrate", json={"live": True})
    assert op.status_code == 202, op.text
    settle(one, other)
    after = vm(api, "stay")
    assert after["host_id"] == one.host_id and after["status"] == "running"
    assert after["migration"] is None
    result = api.get(f"{P}/operations/{op.json()['id']}").json()
    assert result["status"] == "failed" and "refusal" in result["error"]["message"]
    assert one.driver.state(made["id"]) is PowerState.RUNNING
    assert other.workspace.instance_ids() == set()
    for n in (one, other):
        n.link.close()


def test_live_migration_needs_migration_uris(api: TestClient, two: tuple[Node, Node]) -> None:
    run(api, name="cold-only")
    settle(*two)
    resp = api.post(f"{P}/instances/cold-only/migrate", json={"live": True})
    assert resp.status_code == 409 and error(resp)["code"] == "live_migration_unavailable"
    assert vm(api, "cold-only")["migration"] is None
