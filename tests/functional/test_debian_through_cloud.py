"""debian-12-base through the whole cloud: cloud-init applies our NoCloud seed.

The image is built by the recipe builder (cached under $STRATUS_TEST_CACHE/recipes), registered
through the API, run with a cloud-config user data; the test logs in over SSH with the injected
key and checks the hostname and the file user data wrote.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.appliances.builder import build_recipe
from stratuslab.appliances.recipe import resolve_recipe
from stratuslab.schemas.instances import InstanceCreate
from tests.functional.cloud import TINY_CACHE, Cloud, wait_for
from tests.functional.test_allinone import ssh_until_ok

pytestmark = [pytest.mark.functional, pytest.mark.slow]

USER_DATA = b"""#cloud-config
write_files:
  - path: /root/written-by-user-data
    content: stratuslab was here
"""


@pytest.fixture(scope="module")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("d12") / "debian-12-base.qcow2"
    return build_recipe(
        resolve_recipe("debian-12-base"), out, cache_dir=TINY_CACHE / "recipes"
    ).image


@pytest.fixture
def cloud(debian_image: Path) -> Iterator[Cloud]:
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    c = Cloud(root, ssh_port_base=25000 + secrets.randbelow(40) * 50)
    try:
        c.start_controller()
        c.start_node()
        wait_for(lambda: len(c.client.list_hosts()) == 1, 60, "the node to join")
        c.client.upload_image(debian_image, "debian-12-base")
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def test_cloud_init_applies_our_seed(cloud: Cloud, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    created = cloud.client.create_instances(
        InstanceCreate(
            image="debian-12-base",
            flavor="m1.small",
            name="deb",
            ssh_keys=[key.with_suffix(".pub").read_text()],
            user_data=base64.b64encode(USER_DATA).decode(),
        )
    )
    op = cloud.client.wait_operation(created.operation.id, timeout=300)
    assert op.status == "succeeded", cloud.log("node")
    port = int(created.instances[0].ssh_port or 0)
    out = ssh_until_ok(port, key, "hostname; cat /root/written-by-user-data", timeout=300)
    assert out.splitlines() == ["deb", "stratuslab was here"]
