"""`stratus appliance derive` and `stratus image save` through the real CLI and cloud."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from stratuslab.schemas.instances import InstanceCreate
from tests.functional.cloud import BIN, Cloud
from tests.functional.test_allinone import ssh_until_ok

pytestmark = pytest.mark.functional


def stratus(cloud: Cloud, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return subprocess.run(
        [str(BIN / "stratus"), "--endpoint", cloud.url, "--token", cloud.admin_token, *args],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )  # fmt: skip


def test_derive_runs_scripts_cleans_and_saves(cloud: Cloud, ssh_key: Path, tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text("echo derived > /root/marker\n")
    proc = stratus(cloud, tmp_path, "--json", "appliance", "derive", "tiny", "--name",
                   "tiny-derived", "--script", str(script), "--type", "t1.micro")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)[0]
    assert image["status"] == "available"
    assert [i.name for i in cloud.client.iter_instances()] == []  # the builder is gone

    pub = ssh_key.with_suffix(".pub").read_text().strip()
    created = cloud.client.create_instances(
        InstanceCreate(image="tiny-derived", flavor="t1.micro", name="child", ssh_keys=[pub])
    )
    assert cloud.client.wait_operation(created.operation.id, timeout=120).status == "succeeded"
    port = int(created.instances[0].ssh_port or 0)
    out = ssh_until_ok(port, ssh_key, "cat /root/marker; cat /root/.ssh/authorized_keys")
    marker, *keys = out.strip().splitlines()
    assert marker == "derived"
    # only our key: the throw-away build key was cleaned away (the guest drops key comments)
    assert [k.split()[:2] for k in keys] == [pub.split()[:2]]


def test_derive_reports_a_failing_script_and_leaves_nothing(cloud: Cloud, tmp_path: Path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text("echo about to fail; exit 3\n")
    proc = stratus(cloud, tmp_path, "appliance", "derive", "tiny", "--name", "never",
                   "--script", str(script), "--type", "t1.micro")  # fmt: skip
    assert proc.returncode != 0
    assert "exit 3" in proc.stderr
    assert "about to fail" in proc.stderr
    assert [i.name for i in cloud.client.iter_instances()] == []
    assert "never" not in [i.name for i in cloud.client.list_images()]
