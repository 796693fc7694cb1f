"""Parsing ``tgtadm --op show`` and the iSCSI backend's naming, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratuslab.drivers.storage.iscsi import IQN_PREFIX, IscsiVolumeBackend
from stratuslab.drivers.storage.tgt import Tgtadm, parse_show
from stratuslab.errors import InvalidInput

SHOW = """\
Target 3: iqn.2011-01.eu.stratuslab:abc
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 1
            Initiator: iqn.2008-11.org.linux-kvm alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
            Backing store flags:
        LUN: 1
            Type: disk
            Size: 8 MB, Block size: 512
            Readonly: Yes
            Backing store type: rdwr
            Backing store path: /srv/volumes/abc.raw
            Backing store flags:
    Account information:
    ACL information:
        127.0.0.1
        10.0.0.2
Target 4: iqn.2011-01.eu.stratuslab:def
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
    Account information:
    ACL information:
"""


def test_parse_show() -> None:
    first, second = parse_show(SHOW)
    assert (first.tid, first.iqn) == (3, "iqn.2011-01.eu.stratuslab:abc")
    assert first.luns == {0: "None", 1: "/srv/volumes/abc.raw"}
    assert first.acl == ["127.0.0.1", "10.0.0.2"]
    assert first.sessions == ["127.0.0.1"]
    assert (second.tid, second.luns, second.acl, second.sessions) == (4, {0: "None"}, [], [])


def test_parse_show_of_nothing() -> None:
    assert parse_show("") == []


def test_targets_are_named_like_the_original(tmp_path: Path) -> None:
    backend = IscsiVolumeBackend(tmp_path, portal_port=3261, control_port=5)
    volume_id = "6f1c2d3e-4b5a-4c6d-8e7f-901234567890"
    assert backend.iqn(volume_id) == f"{IQN_PREFIX}:{volume_id}"
    assert IQN_PREFIX == "iqn.2011-01.eu.stratuslab"
    with pytest.raises(InvalidInput):
        backend.iqn("Not_Valid")


def test_unresolvable_hosts_are_invalid(tmp_path: Path) -> None:
    backend = IscsiVolumeBackend(tmp_path, portal_port=3261, control_port=5)
    backend.create("vol", 1 << 20)
    with pytest.raises(InvalidInput, match="resolve"):
        backend.export("vol", "no-such-host.invalid")
    assert backend.info("vol").exports == ()


def test_an_absent_daemon_is_not_ready() -> None:
    assert Tgtadm(control_port=32001, tgtadm="/nonexistent/tgtadm").ready() is False
