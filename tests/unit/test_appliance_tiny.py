"""Pure parts of the tiny appliance: boot configuration, MBR, modules, cpio, cache key, scripts."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from stratuslab.appliances import tiny
from stratuslab.context import build_nocloud
from stratuslab.errors import DriverError, ImageError, InvalidInput

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFYWuS2DRf1wHo+X4wMFJ0BpulZzN8xItrpMRyTAl7S me@x"
PACKAGES = [tiny.Package("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1"), tiny.Package("a", "1")]


def test_cmdline_has_serial_console_last_and_root_uuid() -> None:
    cmdline = tiny.kernel_cmdline("1234-abcd")
    words = cmdline.split()
    assert "root=UUID=1234-abcd" in words
    assert [w for w in words if w.startswith("console=")][-1].startswith("console=ttyS0")
    assert "quiet" in words


def test_extlinux_conf_boots_kernel_and_initrd_without_prompt() -> None:
    conf = tiny.extlinux_conf("root=UUID=x console=ttyS0")
    assert "PROMPT 0" in conf
    assert "LINUX /boot/vmlinuz" in conf
    assert "INITRD /boot/initrd.img" in conf
    assert "APPEND root=UUID=x console=ttyS0\n" in conf


def test_mbr_has_one_bootable_linux_partition() -> None:
    sector = tiny.mbr(b"\xeb\xfe", start=2048, sectors=522240)
    assert len(sector) == 512
    assert sector[:2] == b"\xeb\xfe"
    assert sector[510:] == b"\x55\xaa"
    entry = sector[446:462]
    assert entry[0] == 0x80
    assert entry[4] == 0x83
    assert int.from_bytes(entry[8:12], "little") == 2048
    assert int.from_bytes(entry[12:16], "little") == 522240
    assert entry[1:4] == bytes([32, 33, 0])  # LBA 2048 = C0/H32/S33 with 255x63 geometry
    assert sector[462:510] == bytes(48)


def test_mbr_refuses_oversized_boot_code() -> None:
    with pytest.raises(ImageError, match="more than 440"):
        tiny.mbr(b"x" * 441, start=2048, sectors=10)


def test_module_depends_reads_modinfo() -> None:
    ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring,net-failover\0intree=Y\0"
    assert tiny.module_depends(ko) == ["virtio", "virtio_ring", "net_failover"]
    assert tiny.module_depends(b"\0depends=\0") == []
    assert tiny.module_depends(b"no modinfo") == []


def test_load_order_puts_dependencies_first_once() -> None:
    graph = {"a": ["b", "c"], "b": ["c"], "c": [], "d": ["c"]}
    assert tiny.load_order(["a", "d"], lambda name: graph[name]) == ["c", "b", "a", "d"]


def test_load_order_detects_cycles() -> None:
    graph = {"a": ["b"], "b": ["a"]}
    with pytest.raises(ImageError, match="cycle"):
        tiny.load_order(["a"], lambda name: graph[name])


def test_cache_key_is_stable_and_sees_every_input() -> None:
    scripts = {"rcS": b"echo hi"}
    key = tiny.cache_key(PACKAGES, scripts, size_mib=256)
    assert key == tiny.cache_key(list(reversed(PACKAGES)), scripts, size_mib=256)
    assert key != tiny.cache_key(PACKAGES, {"rcS": b"echo ho"}, size_mib=256)
    assert key != tiny.cache_key(PACKAGES, scripts, size_mib=512)
    assert key != tiny.cache_key([*PACKAGES[:1], tiny.Package("a", "2")], scripts, size_mib=256)


def test_candidate_versions_from_apt_cache_policy() -> None:
    policy = (
        "busybox-static:\n  Installed: 1:1.35.0-4\n  Candidate: 1:1.35.0-4+b1\n"
        "  Version table:\n *** 1:1.35.0-4+b1 500\n"
        "ghost:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n"
    )
    assert tiny.candidate_versions(policy) == {"busybox-static": "1:1.35.0-4+b1"}


def test_scripts_are_shipped_and_parse() -> None:
    scripts = tiny.read_scripts()
    assert set(scripts) == set(tiny.SCRIPT_NAMES)
    for name in ("initramfs-init", "rcS", "rcK", "udhcpc.script", "acpi-power"):
        path = tiny.SCRIPTS_DIR / name
        assert scripts[name].startswith(b"#!/bin/sh\n")
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_rcs_prints_the_ready_marker_once() -> None:
    rcs = tiny.read_scripts()["rcS"].decode()
    assert rcs.count(f'echo "{tiny.READY_MARKER}') == 1
    assert f'echo "{tiny.READY_MARKER} hostname=$name instance-id=$iid"' in rcs


def test_newc_archive_holds_tree_symlinks_and_nodes(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"ELF!!")
    (tmp_path / "bin/busybox").chmod(0o755)
    (tmp_path / "bin/sh").symlink_to("busybox")
    archive = tiny.newc_archive(tmp_path, extra_nodes={"dev/console": (0o020600, 5, 1)})
    entries = _parse_newc(archive)
    assert list(entries) == ["bin", "bin/busybox", "bin/sh", "dev/console"]
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["bin/busybox"] == (0o100755, b"ELF!!", (0, 0))
    assert stat.S_ISLNK(entries["bin/sh"][0])
    assert entries["bin/sh"][1] == b"busybox"
    assert entries["dev/console"] == (0o020600, b"", (5, 1))
    assert len(archive) % 512 == 0
    assert archive == tiny.newc_archive(tmp_path, extra_nodes={"dev/console": (0o020600, 5, 1)})


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_newc_archive_is_readable_by_cpio(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("tiny\n")
    data = gzip.decompress(gzip.compress(tiny.newc_archive(tree, extra_nodes={})))
    listing = subprocess.run(["cpio", "-t"], input=data, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["etc", "etc/hostname"]


def test_too_small_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="too small"):
        tiny.build_tiny(tmp_path / "out.qcow2", cache_dir=tmp_path, size_mib=8)


def test_missing_extlinux_is_reported_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(tiny, "resolve_packages", lambda: PACKAGES)
    monkeypatch.setattr(
        shutil, "which", lambda tool: None if tool == "extlinux" else real_which(tool)
    )
    with pytest.raises(DriverError, match="extlinux is not installed") as info:
        tiny.build_tiny(tmp_path / "out.qcow2", cache_dir=tmp_path / "cache")
    assert info.value.hint == "apt-get install extlinux syslinux-common"
    assert not (tmp_path / "out.qcow2").exists()


def test_cached_image_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "resolve_packages", lambda: PACKAGES)
    key = tiny.cache_key(PACKAGES, tiny.builder_inputs(), size_mib=256)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"tiny-{key[:16]}.qcow2").write_bytes(b"cached image")
    messages: list[str] = []
    out = tiny.build_tiny(tmp_path / "out/tiny.qcow2", cache_dir=cache, progress=messages.append)
    assert out.read_bytes() == b"cached image"
    assert messages == [f"reusing cached tiny appliance tiny-{key[:16]}.qcow2"]


def test_run_reports_missing_and_failing_commands() -> None:
    with pytest.raises(DriverError, match="not installed"):
        tiny._run(["stratus-no-such-tool"])
    with pytest.raises(DriverError, match="status 3"):
        tiny._run(["sh", "-c", "echo boom >&2; exit 3"])


# ---- the guest's seed parsing, run with the host's sh on what build_nocloud writes ----------


def _rcs(seed: Path, call: str) -> str:
    script = f". {tiny.SCRIPTS_DIR / 'rcS'}; SEED={seed}; {call}"
    done = subprocess.run(
        ["sh", "-c", script],
        env={"TINY_RCS_NO_MAIN": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


def _write(seed: Path, files: Mapping[str, bytes]) -> Path:
    seed.mkdir()
    for name, data in files.items():
        (seed / name).write_bytes(data)
    return seed


def test_guest_reads_meta_data_written_by_build_nocloud(tmp_path: Path) -> None:
    files = build_nocloud(instance_id="i-9", hostname="vm9", ssh_keys=[KEY])
    seed = _write(tmp_path / "seed", files)
    meta = seed / "meta-data"
    assert _rcs(seed, f"yaml_value instance-id {meta}") == "i-9\n"
    assert _rcs(seed, f"yaml_value local-hostname {meta}") == "vm9\n"
    assert _rcs(seed, "collect_keys | sort -u") == " ".join(KEY.split()[:2]) + "\n"


def test_guest_takes_keys_from_cloud_config_user_data_only(tmp_path: Path) -> None:
    other = KEY.replace("AAAAIGFY", "AAAAIGFZ")
    cloud = b"#cloud-config\nssh_authorized_keys:\n  - '" + other.encode() + b"'\n"
    seed = _write(tmp_path / "a", {"meta-data": b"instance-id: x\n", "user-data": cloud})
    assert _rcs(seed, "collect_keys") == " ".join(other.split()[:2]) + "\n"
    script = b"#!/bin/sh\n# " + other.encode() + b"\n"
    seed = _write(tmp_path / "b", {"meta-data": b"instance-id: x\n", "user-data": script})
    assert _rcs(seed, "collect_keys") == ""


def test_guest_strips_yaml_quotes(tmp_path: Path) -> None:
    seed = _write(tmp_path / "seed", {"meta-data": b"instance-id: 'i-1'\nlocal-hostname: \"h\"\n"})
    assert _rcs(seed, f"yaml_value instance-id {seed}/meta-data") == "i-1\n"
    assert _rcs(seed, f"yaml_value local-hostname {seed}/meta-data") == "h\n"


@pytest.mark.parametrize(
    ("hostname", "ok"), [("vm1", True), ("a-b", True), ("-a", False), ("a_b", False), ("", False)]
)
def test_guest_hostname_check(tmp_path: Path, hostname: str, ok: bool) -> None:
    assert _rcs(tmp_path, f"valid_hostname '{hostname}' && echo ok") == ("ok\n" if ok else "")


def _parse_newc(archive: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) // 4 * 4
        data = archive[data_start : data_start + size]
        pos = (data_start + size + 3) // 4 * 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data, (rmaj, rmin))
