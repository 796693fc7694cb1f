"""The whole control loop in one process: API + database + agent with the fake driver.

The agent talks to the real app through a second TestClient; each ``agent.step`` is one
reconcile pass (long-poll, converge, report).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.agent.controller import ControllerLink
from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.api.app import build_ctx, create_app
from stratuslab.config import ControllerSettings
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.schemas.agent import JoinRequest
from stratuslab.services.context import Ctx, UnitOfWork
from stratuslab.services.hosts import mark_offline
from stratuslab.services.instances import place_pending
from stratuslab.types import Hypervisor, PowerState
from tests.integration.test_api import error, upload


@dataclass
class Node:
    agent: Agent
    driver: FakeComputeDriver
    workspace: FakeWorkspace
    link: ControllerLink
    host_id: str

    def settle(self, until: Callable[[], bool] | None = None, passes: int = 20) -> None:
        for _ in range(passes):
            self.agent.step(wait=0)
            if until is None or until():
                return
        if until is not None:
            raise AssertionError("did not converge")


def start_node(
    app_client: TestClient, token: str, *, driver: FakeComputeDriver | None = None
) -> Node:
    driver = driver or FakeComputeDriver(
        hostname="node-1", vcpus=4, memory_mib=8192, hypervisor=Hypervisor.QEMU
    )
    http = TestClient(app_client.app)
    link = ControllerLink("http://testserver", http=http)
    resp = link.join(JoinRequest(token=token, capacity=host_capacity(driver, Path("/"))))
    http.headers["Authorization"] = f"Bearer {resp.credential}"
    return make_node(http, driver, FakeWorkspace(), resp.host_id)


def make_node(
    http: TestClient, driver: FakeComputeDriver, workspace: FakeWorkspace, host_id: str
) -> Node:
    link = ControllerLink("http://testserver", http=http)
    reconciler = Reconciler(driver, workspace, FakeImageCache(), hypervisor=Hypervisor.QEMU)
    agent = Agent(link, reconciler, workspace, lambda: host_capacity(driver, Path("/")))
    return Node(agent, driver, workspace, link, host_id)


@pytest.fixture
def node(api: TestClient) -> Iterator[Node]:
    token = api.post("/api/v1/hosts/tokens").json()["token"]
    n = start_node(api, token)
    yield n
    n.link.close()


@pytest.fixture
def image(api: TestClient, qcow2_file: Path) -> dict:
    return upload(api, qcow2_file, "base")


def run(api: TestClient, **body: object) -> dict:
    resp = api.post("/api/v1/instances", json={"image": "base", **body})
    assert resp.status_code == 202, resp.text
    return resp.json()


def op(api: TestClient, op_id: str) -> dict:
    return api.get(f"/api/v1/operations/{op_id}").json()


def inst(api: TestClient, ref: str) -> dict:
    return api.get(f"/api/v1/instances/{ref}").json()


def test_create_runs_the_instance_and_finishes_the_operation(
    api: TestClient, node: Node, image: dict
) -> None:
    created = run(api, name="web", flavor="t1.micro")
    vm = created["instances"][0]
    assert vm["status"] == "scheduled" and vm["host_id"] == node.host_id
    assert vm["address"].startswith("127.0.0.1:")
    assert created["operation"]["status"] == "running"
    node.settle()
    assert op(api, created["operation"]["id"])["status"] == "succeeded"
    assert inst(api, "web")["status"] == "running"
    assert node.driver.state(vm["id"]) is PowerState.RUNNING
    host = api.get(f"/api/v1/hosts/{node.host_id}").json()
    assert (host["vcpus_allocated"], host["memory_allocated_mib"]) == (1, 512)
    kinds = [e["kind"] for e in api.get("/api/v1/events", params={"instance_id": "web"}).json()]
    assert "instance.created" in kinds and "instance.running" in kinds


def test_count_creates_numbered_instances(api: TestClient, node: Node, image: dict) -> None:
    created = run(api, name="worker", count=3, flavor="t1.micro")
    assert [i["name"] for i in created["instances"]] == ["worker-1", "worker-2", "worker-3"]
    ports = {i["ssh_port"] for i in created["instances"]}
    assert len(ports) == 3
    node.settle()
    assert op(api, created["operation"]["id"])["status"] == "succeeded"


def test_duplicate_instance_name_is_refused(api: TestClient, node: Node, image: dict) -> None:
    run(api, name="same", flavor="t1.micro")
    resp = api.post("/api/v1/instances", json={"image": "base", "name": "same"})
    assert resp.status_code == 409
    assert error(resp)["code"] == "duplicate_name"


def test_stop_start_reboot_delete(api: TestClient, node: Node, image: dict) -> None:
    vm = run(api, name="vm", flavor="t1.micro")["instances"][0]
    node.settle()

    stop = api.post("/api/v1/instances/vm/actions", json={"action": "stop"}).json()
    node.settle(lambda: op(api, stop["id"])["status"] != "running")
    assert op(api, stop["id"])["status"] == "succeeded"
    assert node.driver.state(vm["id"]) is PowerState.SHUTOFF

    resp = api.post("/api/v1/instances/vm/actions", json={"action": "reboot"})
    assert resp.status_code == 409 and error(resp)["code"] == "not_running"

    start = api.post("/api/v1/instances/vm/actions", json={"action": "start"}).json()
    node.settle()
    assert op(api, start["id"])["status"] == "succeeded"
    assert node.driver.state(vm["id"]) is PowerState.RUNNING

    for hard in (False, True):
        reboot = api.post(
            "/api/v1/instances/vm/actions", json={"action": "reboot", "hard": hard}
        ).json()
        node.settle()
        assert op(api, reboot["id"])["status"] == "succeeded"
    kinds = [e["kind"] for e in api.get("/api/v1/events", params={"instance_id": "vm"}).json()]
    assert kinds.count("instance.rebooted") == 2

    delete = api.delete("/api/v1/instances/vm").json()
    node.settle()
    assert op(api, delete["id"])["status"] == "succeeded"
    assert node.driver.state(vm["id"]) is PowerState.MISSING
    assert node.workspace.instance_ids() == set()
    assert api.get("/api/v1/instances").json()["total"] == 0
    host = api.get(f"/api/v1/hosts/{node.host_id}").json()
    assert host["vcpus_allocated"] == 0


def test_driver_failure_fails_the_instance_and_leaves_nothing(api: TestClient, image: dict) -> None:
    token = api.post("/api/v1/hosts/tokens").json()["token"]
    driver = FakeComputeDriver(
        hostname="bad-node",
        vcpus=4,
        memory_mib=8192,
        hypervisor=Hypervisor.QEMU,
        fail_on={"start"},
    )
    node = start_node(api, token, driver=driver)
    created = run(api, name="doomed", flavor="t1.micro")
    node.settle()
    result = op(api, created["operation"]["id"])
    assert result["status"] == "failed"
    assert "doomed" in result["error"]["message"]
    vm = inst(api, "doomed")
    assert vm["status"] == "failed" and vm["status_reason"]
    assert driver.list_domains() == []
    assert node.workspace.instance_ids() == set()
    # a failed instance releases its capacity
    assert api.get(f"/api/v1/hosts/{node.host_id}").json()["vcpus_allocated"] == 0


def test_agent_restart_converges_without_duplicates(
    api: TestClient, node: Node, image: dict
) -> None:
    run(api, name="a", flavor="t1.micro")
    node.agent.step(wait=0)
    # the agent dies; a new one starts with the same host state (domains, files)
    fresh = make_node(node.link._http, node.driver, node.workspace, node.host_id)  # type: ignore[arg-type]
    run(api, name="b", flavor="t1.micro")
    fresh.settle()
    assert {inst(api, n)["status"] for n in ("a", "b")} == {"running"}
    assert len(node.driver.list_domains()) == 2


def test_controller_restart_mid_operation_loses_nothing(
    api: TestClient, node: Node, image: dict, settings: ControllerSettings
) -> None:
    created = run(api, name="survivor", flavor="t1.micro")
    # the controller process is replaced: new engine, new app, same database
    ctx2 = build_ctx(settings)
    try:
        app2 = create_app(settings, ctx=ctx2, background=False)
        http = TestClient(app2)
        http.headers["Authorization"] = node.link._http.headers["Authorization"]
        node2 = make_node(http, node.driver, node.workspace, node.host_id)
        node2.settle()
        api2 = TestClient(app2)
        api2.headers["Authorization"] = api.headers["Authorization"]
        assert op(api2, created["operation"]["id"])["status"] == "succeeded"
        assert inst(api2, "survivor")["status"] == "running"
    finally:
        ctx2.close()


def test_unknown_domains_on_a_host_are_fenced(api: TestClient, node: Node, image: dict) -> None:
    from stratuslab.drivers.base import DomainSpec

    stray = "0c6f1a2e-0000-4000-8000-000000000001"
    node.driver.define(
        DomainSpec(
            uuid=stray,
            name=f"stratus-{stray}",
            vcpus=1,
            memory_mib=128,
            disks=(),
            console_log=Path("/dev/null"),
        )
    )
    node.driver.start(stray)
    node.workspace._states[stray] = {}  # this host's files say the instance is its own
    other = "0c6f1a2e-0000-4000-8000-000000000002"
    node.driver.define(
        DomainSpec(
            uuid=other,
            name=f"stratus-{other}",
            vcpus=1,
            memory_mib=128,
            disks=(),
            console_log=Path("/dev/null"),
        )
    )
    node.settle()
    assert node.driver.state(other) is not PowerState.MISSING  # another agent's: untouched
    assert node.driver.state(stray) is PowerState.MISSING


def test_request_bigger_than_any_host_is_refused(api: TestClient, node: Node, image: dict) -> None:
    api.post("/api/v1/flavors", json={"name": "giant", "vcpus": 64, "memory_mib": 1 << 20})
    resp = api.post("/api/v1/instances", json={"image": "base", "flavor": "giant"})
    assert resp.status_code == 409
    body = error(resp)
    assert body["code"] == "too_big_for_any_host" and "--type" in body["hint"]
    assert api.get("/api/v1/instances").json()["total"] == 0


def test_pending_instance_is_placed_when_capacity_frees(
    api: TestClient, node: Node, image: dict, ctx
) -> None:  # type: ignore[no-untyped-def]
    first = run(api, name="big1", flavor="m1.xlarge")["instances"][0]  # 4 vCPU: host is full
    second = run(api, name="big2", flavor="m1.xlarge")["instances"][0]
    assert second["status"] == "pending"
    assert "not enough free vCPUs" in inst(api, "big2")["status_reason"]
    node.settle()
    api.delete(f"/api/v1/instances/{first['id']}")
    node.settle()
    uow = UnitOfWork(ctx)
    with uow:
        assert place_pending(uow) == 1
    node.settle()
    assert inst(api, "big2")["status"] == "running"


def test_concurrent_creates_never_overcommit(api: TestClient, node: Node, image: dict) -> None:
    results: list[int] = []

    def create(i: int) -> None:
        client = TestClient(api.app)
        client.headers["Authorization"] = api.headers["Authorization"]
        r = client.post(
            "/api/v1/instances", json={"image": "base", "name": f"c{i}", "flavor": "c1.medium"}
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(202) == 8
    placed = [i for i in api.get("/api/v1/instances").json()["items"] if i["host_id"]]
    assert sum(i["vcpus"] for i in placed) <= 4  # c1.medium = 2 vCPU, host has 4
    assert len(placed) == 2


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_user_data_and_context_reach_the_agent(api: TestClient, node: Node, image: dict) -> None:
    seen: list[object] = []
    original = node.agent.reconciler.converge

    def spy(inst):  # type: ignore[no-untyped-def]
        seen.append(inst)
        return original(inst)

    node.agent.reconciler.converge = spy  # type: ignore[method-assign]
    cfg = b"#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: hello\n"
    run(
        api,
        name="ctx",
        flavor="t1.micro",
        user_data=_b64(cfg),
        context_method="configdrive",
        context={"ROLE": "worker"},
    )
    node.settle()
    desired = seen[-1]
    assert desired.context_method == "configdrive"  # type: ignore[attr-defined]
    assert desired.context == {"ROLE": "worker"}  # type: ignore[attr-defined]
    assert desired.user_data == _b64(cfg)  # type: ignore[attr-defined]
    assert inst(api, "ctx")["context_method"] == "configdrive"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"user_data": "not base64!"}, "invalid_user_data"),
        ({"context_method": "floppy"}, "invalid_input"),
        ({"context": {"bad key": "x"}}, "invalid_input"),
        ({"user_data": _b64(os.urandom(20000))}, "user_data_too_large"),
        ({"user_data": _b64(b"#cloud-config\nruncmd: {oops: [\n")}, "invalid_cloud_config"),
    ],
)
def test_bad_context_is_refused_before_anything_is_created(
    api: TestClient, node: Node, image: dict, body: dict, code: str
) -> None:
    resp = api.post("/api/v1/instances", json={"image": "base", **body})
    assert resp.status_code == 422, resp.text
    assert error(resp)["code"] == code
    assert api.get("/api/v1/instances").json()["total"] == 0


class UploadingSaver:
    """Stands in for RootDiskSaver on a fake host: sends a real small qcow2 disk."""

    def __init__(self, link: ControllerLink, disk: Path) -> None:
        self.link, self.disk = link, disk

    def save(self, instance_id: str, image_id: str) -> None:
        self.link.upload_saved_image(image_id, self.disk)


def test_save_a_stopped_instance_as_an_image(
    api: TestClient, node: Node, image: dict, tmp_path: Path
) -> None:
    from tests.conftest import make_qcow2

    node.agent.reconciler.saver = UploadingSaver(node.link, make_qcow2(tmp_path / "s.qcow2"))
    run(api, name="golden", flavor="t1.micro")
    node.settle()
    resp = api.post("/api/v1/instances/golden/save", json={"name": "golden-v1"})
    assert resp.status_code == 409
    assert error(resp)["code"] == "not_stopped"
    api.post("/api/v1/instances/golden/actions", json={"action": "stop"})
    node.settle(lambda: inst(api, "golden")["status"] == "stopped")

    save = api.post("/api/v1/instances/golden/save", json={"name": "golden-v1"})
    assert save.status_code == 202
    assert api.get("/api/v1/images/golden-v1").json()["status"] == "saving"
    node.settle(lambda: op(api, save.json()["id"])["status"] != "running")
    assert op(api, save.json()["id"])["status"] == "succeeded"
    saved = api.get("/api/v1/images/golden-v1").json()
    assert saved["status"] == "available"
    assert saved["source_instance_id"] == inst(api, "golden")["id"]
    draft = api.get("/api/v1/images/golden-v1/metadata").json()
    assert draft["checksums"]["sha256"] == saved["sha256"]
    assert len(draft["identifier"]) == 27
    assert "endorser" not in draft  # a draft until its owner signs it
    # the saved image boots like any other
    run(api, name="clone", flavor="t1.micro", image="golden-v1")
    node.settle()
    assert inst(api, "clone")["status"] == "running"


def test_save_failure_on_the_node_fails_the_operation(
    api: TestClient, node: Node, image: dict
) -> None:
    class FailingSaver:
        def save(self, instance_id: str, image_id: str) -> None:
            node.link.report_save_failure(image_id, "qemu-img convert failed: disk full")

    node.agent.reconciler.saver = FailingSaver()
    run(api, name="vm", flavor="t1.micro")
    node.settle()
    api.post("/api/v1/instances/vm/actions", json={"action": "stop"})
    node.settle(lambda: inst(api, "vm")["status"] == "stopped")
    save = api.post("/api/v1/instances/vm/save", json={"name": "broken"}).json()
    node.settle(lambda: op(api, save["id"])["status"] != "running")
    result = op(api, save["id"])
    assert result["status"] == "failed"
    assert "disk full" in result["error"]["message"]
    assert api.get("/api/v1/images/broken").json()["status"] == "error"


# -- the desired-state long-poll: brief waits answer "unchanged" ---------------------------

DESIRED = "/api/v1/agent/desired"


def _poll(node: Node, **params: object) -> dict:
    http = node.link._http  # the node's own credential
    resp = http.get(DESIRED, params={"wait": 0, **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_brief_polls_answer_unchanged_until_something_changes(
    api: TestClient, node: Node, image: dict
) -> None:
    run(api, name="a", flavor="t1.micro")
    node.settle()
    full = _poll(node, since=-1, brief=True)
    assert not full["unchanged"] and [i["name"] for i in full["instances"]] == ["a"]
    generation = full["generation"]

    quiet = _poll(node, since=generation, brief=True)
    assert quiet["unchanged"] and quiet["instances"] == [] and quiet["generation"] == generation
    # an agent that does not know `unchanged` still gets everything when its wait ends
    old_agent = _poll(node, since=generation)
    assert not old_agent["unchanged"] and len(old_agent["instances"]) == 1

    run(api, name="b", flavor="t1.micro")
    changed = _poll(node, since=generation, brief=True)
    assert not changed["unchanged"] and changed["generation"] > generation
    assert sorted(i["name"] for i in changed["instances"]) == ["a", "b"]


# -- reports: only news, and a bump only when what the host runs changes -----------------


def _generation(node: Node) -> int:
    return int(_poll(node, since=-1)["generation"])


def test_a_report_bumps_the_generation_only_when_what_the_host_runs_changes(
    api: TestClient, node: Node, image: dict
) -> None:
    vm = run(api, name="a", flavor="t1.micro")["instances"][0]
    placed = _generation(node)
    node.settle(lambda: inst(api, "a")["status"] == "running")
    came_up = _generation(node)
    assert came_up == placed  # scheduled -> provisioning -> running: the same state to run
    (desired,) = _poll(node, since=-1)["instances"]
    assert desired["recorded_status"] == "running"

    node.driver.guest_poweroff(vm["id"])
    node.agent.step(wait=0)
    # what should be follows what is: the desired state changed, the agent must read it
    assert inst(api, "a")["status"] == "stopped"
    (desired,) = _poll(node, since=-1)["instances"]
    assert _generation(node) > came_up and desired["desired"] == "stopped"


def test_an_agent_corrects_a_status_the_controller_changed_without_it(
    api: TestClient, ctx: Ctx, node: Node, image: dict
) -> None:
    run(api, name="a", flavor="t1.micro")
    run(api, name="b", flavor="t1.micro")
    node.settle(lambda: {inst(api, n)["status"] for n in "ab"} == {"running"})
    with ctx.uow() as s:  # heartbeats were late: the host is declared offline
        assert mark_offline(s, grace=-1) == [node.host_id]
    assert {inst(api, n)["status"] for n in "ab"} == {"unknown"}
    node.agent.step(wait=0)  # a new state: the agent sees what the controller recorded
    assert {inst(api, n)["status"] for n in "ab"} == {"running"}
