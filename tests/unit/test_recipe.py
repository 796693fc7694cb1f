"""Recipes: strict validation, shipped recipes, the pure step list, apt sources, cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratuslab.appliances import builder
from stratuslab.appliances.aptsources import find_mirror, parse_deb822, parse_one_line
from stratuslab.appliances.builder import chroot_steps, cleanup_script, cloud_init_cfg
from stratuslab.appliances.recipe import (
    Cleanup,
    CloudInit,
    DebootstrapRecipe,
    TinyRecipe,
    load_recipe,
    parse_recipe,
    recipe_digest,
    resolve_recipe,
    shipped_recipes,
)
from stratuslab.errors import InvalidInput, NotFound

MINIMAL = 'name: mini\nversion: "1"\n'


def test_shipped_recipes_are_valid() -> None:
    assert set(shipped_recipes()) == {"tiny", "debian-12-base"}
    tiny = load_recipe(resolve_recipe("tiny"))
    assert isinstance(tiny, TinyRecipe)
    base = load_recipe(resolve_recipe("debian-12-base"))
    assert isinstance(base, DebootstrapRecipe)
    wanted = {"systemd-sysv", "cloud-init", "openssh-server", "qemu-guest-agent", "dbus", "locales"}
    assert wanted <= set(base.all_packages())
    assert base.kernel == "linux-image-cloud-amd64"
    assert base.cloud_init.enabled
    assert base.cloud_init.datasources == ("NoCloud", "ConfigDrive", "None")


def test_defaults_of_a_minimal_recipe() -> None:
    spec = parse_recipe(MINIMAL)
    assert isinstance(spec, DebootstrapRecipe)
    assert (spec.base.suite, spec.base.variant, spec.base.mirror) == ("bookworm", "minbase", None)
    assert spec.all_packages() == ["linux-image-cloud-amd64"]
    assert spec.cleanup == Cleanup()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "pakages: [vim]\n", "unknown key 'pakages'"),
        (MINIMAL + "base: {suite: bookworm, mirorr: x}\n", "unknown key 'base.mirorr'"),
        (MINIMAL + "files: [{path: /a, content: x, owner: me}]\n", "unknown key 'files.0.owner'"),
        (MINIMAL + "cleanup: {logz: true}\n", "unknown key 'cleanup.logz'"),
        ('version: "1"\n', "missing key 'name'"),
        (MINIMAL + "packages: [Vim]\n", "packages.0: String should match pattern"),
        (MINIMAL + "files: [{path: etc/x, content: x}]\n", "files.0.path: Value error, must be"),
        (MINIMAL + "files: [{path: /a/../b, content: x}]\n", "without '..'"),
        (MINIMAL + "files: [{path: /a, content: x, mode: '999'}]\n", "files.0.mode"),
        (MINIMAL + "disk_size_mib: 10\n", "disk_size_mib: Input should be greater than"),
        (MINIMAL + "base: {variant: fakechroot}\n", "base.variant: Input should be"),
        (MINIMAL + "builder: packer\n", "unknown builder 'packer'"),
        ('name: t\nversion: "1"\nbuilder: tiny\npackages: [x]\n', "unknown key 'packages'"),
        ("name: [unclosed\n", "is not valid YAML"),
        ("- a\n", "must be a YAML mapping"),
    ],
)
def test_bad_recipes_name_the_key(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_recipe(text)


def test_resolve_recipe(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    assert resolve_recipe(str(path)) == path
    with pytest.raises(NotFound, match="no shipped recipe named 'nope'"):
        resolve_recipe("nope")
    with pytest.raises(NotFound, match="does not exist"):
        resolve_recipe(str(tmp_path / "missing.yaml"))


def test_recipe_digest_follows_content_not_formatting() -> None:
    a = parse_recipe(MINIMAL + "packages: [vim]\n")
    b = parse_recipe("version: '1'\nname: mini\npackages:\n  - vim\n")
    c = parse_recipe(MINIMAL + "packages: [vim, less]\n")
    assert recipe_digest(a) == recipe_digest(b) != recipe_digest(c)


def test_cache_key_changes_with_recipe_mirror_and_release() -> None:
    spec = parse_recipe(MINIMAL)
    other = parse_recipe(MINIMAL + "packages: [less]\n")
    assert isinstance(spec, DebootstrapRecipe) and isinstance(other, DebootstrapRecipe)
    key = builder.cache_key(spec, mirror="http://m", fingerprint="r1")
    assert key == builder.cache_key(spec, mirror="http://m", fingerprint="r1")
    assert key != builder.cache_key(spec, mirror="http://m", fingerprint="r2")
    assert key != builder.cache_key(spec, mirror="http://n", fingerprint="r1")
    assert key != builder.cache_key(other, mirror="http://m", fingerprint="r1")


def _steps(extra: str = "") -> list[builder.Step]:
    spec = parse_recipe(MINIMAL + extra)
    assert isinstance(spec, DebootstrapRecipe)
    return chroot_steps(spec, root_uuid="0000-uuid")


def test_steps_run_in_order_and_end_with_the_clean_up() -> None:
    steps = _steps(
        "packages: [openssh-server]\nlocale: en_US.UTF-8\n"
        "users: [{name: alice, groups: [sudo]}]\n"
        "files: [{path: /etc/motd, content: hi, mode: '0600'}]\n"
        "services: [ssh]\ncommands: ['echo one', 'echo two']\ncloud_init: {enabled: true}\n"
    )
    titles = [step.title for step in steps]
    assert titles == [
        "prepare the build",
        "install 4 packages",
        "generate locale en_US.UTF-8",
        "add user alice",
        "write /etc/motd",
        "write /etc/cloud/cloud.cfg.d/90_stratuslab.cfg",
        "write /etc/fstab",
        "write /etc/hostname",
        "write /etc/hosts",
        "configure the boot loader",
        "enable services",
        "command 1: echo one",
        "command 2: echo two",
        "clean up",
    ]
    by_title = {step.title: step for step in steps}
    install = by_title["install 4 packages"]
    assert install.uses_deb_cache
    assert "linux-image-cloud-amd64 openssh-server cloud-init locales" in install.script
    assert by_title["write /etc/motd"].stdin == b"hi"
    assert "install -D -m 0600 /dev/stdin /etc/motd" in by_title["write /etc/motd"].script
    assert (
        by_title["write /etc/fstab"].stdin
        == b"UUID=0000-uuid / ext4 defaults,errors=remount-ro 0 1\n"
    )
    assert (
        "useradd --create-home --shell /bin/bash --groups sudo alice"
        in by_title["add user alice"].script
    )
    boot = by_title["configure the boot loader"]
    assert boot.stdin is not None and b"APPEND root=UUID=0000-uuid ro console=tty0" in boot.stdin


def test_file_paths_and_commands_are_quoted() -> None:
    (step,) = [
        s for s in _steps('files: [{path: "/etc/a b;rm -rf x", content: x}]\n') if s.stdin == b"x"
    ]
    assert "'/etc/a b;rm -rf x'" in step.script


def test_cleanup_rules_follow_the_original() -> None:
    script = cleanup_script(Cleanup())
    for line in (
        "rm -f /etc/ssh/ssh_host_*",
        "rm -f /root/.ssh/authorized_keys",
        ": > /etc/machine-id",
        "rm -rf /var/lib/apt/lists/*",
        "rm -rf /var/lib/cloud/*",
        "find /var/log -type f -exec truncate -s 0 {} +",
        "rm -f /usr/sbin/policy-rc.d",
    ):
        assert line in script
    kept = cleanup_script(Cleanup(ssh_host_keys=False, logs=False, apt_lists=False))
    assert "ssh_host_" not in kept and "/var/log" not in kept and "apt/lists" not in kept
    assert "policy-rc.d" in kept  # the build's own traces always go


def test_cloud_init_drop_in() -> None:
    import yaml

    doc = yaml.safe_load(cloud_init_cfg(CloudInit(enabled=True, timeout=3, max_wait=6)))
    assert doc["datasource_list"] == ["NoCloud", "ConfigDrive", "None"]
    assert doc["datasource"]["NoCloud"] == {"timeout": 3, "max_wait": 6, "retries": 1}
    assert "None" not in doc["datasource"]
    assert doc["disable_root"] is False


ONE_LINE = """
# comment
deb-src http://deb.debian.org/debian bookworm main
deb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian/ bookworm main contrib
deb http://security.example/debian-security bookworm-security main
"""
DEB822 = """Types: deb deb-src
URIs: http://a.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: trixie

Types: deb
URIs: http://b.example/debian
  http://c.example/debian
Suites: trixie
"""


def test_parse_apt_sources() -> None:
    assert [s.uri for s in parse_one_line(ONE_LINE)] == [
        "http://mirror.example/debian/",
        "http://security.example/debian-security",
    ]
    sources = list(parse_deb822(DEB822))
    assert [(s.uri, s.suites) for s in sources] == [
        ("http://a.example/debian", ("bookworm", "bookworm-updates")),
        ("http://b.example/debian", ("trixie",)),
        ("http://c.example/debian", ("trixie",)),
    ]


def test_find_mirror_takes_the_first_source_of_the_suite() -> None:
    texts = {"/etc/apt/sources.list": ONE_LINE, "/etc/apt/sources.list.d/d.sources": DEB822}
    assert find_mirror(texts, "bookworm") == "http://mirror.example/debian"
    assert find_mirror(texts, "trixie") == "http://b.example/debian"
    with pytest.raises(InvalidInput, match="no apt source serves the suite 'sid'") as info:
        find_mirror(texts, "sid")
    assert "base.mirror" in info.value.hint
