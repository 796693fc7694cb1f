"""Fixtures for functional tests: the tiny appliance, an SSH key, a real all-in-one cloud."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import build_tiny
from tests.functional.cloud import TINY_CACHE, Cloud, wait_for


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    return build_tiny(TINY_CACHE / "tiny.qcow2", cache_dir=TINY_CACHE / "tiny")


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def cloud(tiny_image: Path) -> Iterator[Cloud]:
    """Controller + node agent as processes, with the tiny appliance registered as `tiny`."""
    # QEMU runs as libvirt-qemu: the disks must sit below directories it can traverse,
    # which pytest's private tmp_path is not.
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    c = Cloud(root, ssh_port_base=23000 + secrets.randbelow(40) * 50)
    try:
        c.start_controller()
        c.start_node()
        wait_for(lambda: len(c.client.list_hosts()) == 1, 60, "the node to join")
        c.client.upload_image(tiny_image, "tiny")
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
