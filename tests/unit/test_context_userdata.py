"""User data: FILE[:TYPE] arguments, type guessing, literal vs MIME, gzip and the size limit."""

from __future__ import annotations

import email
import gzip
import os
from pathlib import Path

import pytest

from stratuslab.context.userdata import (
    MAX_USER_DATA,
    PartType,
    UserDataPart,
    build_user_data,
    check_user_data_size,
    cloud_config_texts,
    guess_type,
    load_part,
    make_part,
    parse_type,
    split_part_arg,
)
from stratuslab.errors import InvalidInput

CONFIG = b"#cloud-config\nruncmd: [touch /x]\n"
SCRIPT = b"#!/bin/sh\necho hi\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (CONFIG, PartType.CLOUD_CONFIG),
        (b"#cloud-config-archive\n- {}\n", PartType.CLOUD_CONFIG_ARCHIVE),
        (SCRIPT, PartType.SHELL_SCRIPT),
        (b"#!/usr/bin/env python3\n", PartType.SHELL_SCRIPT),
        (b"#cloud-boothook\necho\n", PartType.BOOTHOOK),
        (b"#part-handler\ndef list_types(): ...\n", PartType.PART_HANDLER),
        (b"#include\nhttp://x/y\n", PartType.INCLUDE_URL),
        (b"#include-once\nhttp://x/y\n", PartType.INCLUDE_ONCE_URL),
        (b"## template: jinja\n#cloud-config\n", PartType.JINJA2),
        (b"hello\n", None),
        (b"", None),
    ],
)
def test_guess_type_from_the_first_line(content: bytes, expected: PartType | None) -> None:
    assert guess_type(content) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cloud-config", PartType.CLOUD_CONFIG),
        ("text/x-shellscript", PartType.SHELL_SCRIPT),
        ("include-url", PartType.INCLUDE_URL),
        ("x-include-url", PartType.INCLUDE_URL),
        ("BOOTHOOK", PartType.BOOTHOOK),
        ("part-handler", PartType.PART_HANDLER),
    ],
)
def test_parse_type_accepts_names_and_aliases(name: str, expected: PartType) -> None:
    assert parse_type(name) is expected


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="unknown user-data type 'yaml'") as info:
        parse_type("yaml")
    assert "cloud-config" in info.value.hint


@pytest.mark.parametrize(
    ("arg", "path", "part_type"),
    [
        ("run.sh", "run.sh", None),
        ("run.sh:x-shellscript", "run.sh", PartType.SHELL_SCRIPT),
        ("/d/c.yaml:cloud-config", "/d/c.yaml", PartType.CLOUD_CONFIG),
        ("c:\\x.txt", "c:\\x.txt", None),  # the suffix is no type: part of the path
        ("a:b:include-url", "a:b", PartType.INCLUDE_URL),
    ],
)
def test_split_part_arg(arg: str, path: str, part_type: PartType | None) -> None:
    assert split_part_arg(arg) == (Path(path), part_type)


def test_load_part_reads_and_types(tmp_path: Path) -> None:
    (tmp_path / "cfg").write_bytes(CONFIG)
    (tmp_path / "plain").write_bytes(b"echo\n")
    assert load_part(str(tmp_path / "cfg")) == UserDataPart(CONFIG, PartType.CLOUD_CONFIG, "cfg")
    typed = load_part(f"{tmp_path / 'plain'}:x-shellscript")
    assert typed.type is PartType.SHELL_SCRIPT
    with pytest.raises(InvalidInput, match="cannot tell the user-data type of plain"):
        load_part(str(tmp_path / "plain"))
    with pytest.raises(InvalidInput, match="cannot read user-data file"):
        load_part(str(tmp_path / "missing"))


def test_single_self_describing_part_is_literal() -> None:
    assert build_user_data([make_part(CONFIG, filename="c")]) == CONFIG
    assert build_user_data([make_part(SCRIPT, filename="s")]) == SCRIPT


def test_single_part_whose_type_is_not_announced_becomes_mime() -> None:
    part = make_part(b"echo hi\n", filename="s", part_type=PartType.SHELL_SCRIPT)
    payload = build_user_data([part])
    message = email.message_from_bytes(payload)
    (sub,) = message.get_payload()
    assert sub.get_content_type() == "text/x-shellscript"


def test_several_parts_become_a_reproducible_mime_multipart() -> None:
    parts = [make_part(CONFIG, filename="a.yaml"), make_part(SCRIPT, filename="a.yaml")]
    payload = build_user_data(parts)
    assert payload == build_user_data(parts)
    message = email.message_from_bytes(payload)
    assert message.get_content_type() == "multipart/mixed"
    subs = message.get_payload()
    assert [s.get_content_type() for s in subs] == ["text/cloud-config", "text/x-shellscript"]
    assert [s.get_filename() for s in subs] == ["a.yaml", "001-a.yaml"]
    assert [s.get_payload(decode=True) for s in subs] == [CONFIG, SCRIPT]


def test_gzip_is_deterministic_and_decompresses() -> None:
    parts = [make_part(CONFIG, filename="c")]
    payload = build_user_data(parts, compress=True)
    assert payload == build_user_data(parts, compress=True)
    assert gzip.decompress(payload) == CONFIG


def test_non_utf8_part_cannot_go_into_mime() -> None:
    parts = [make_part(CONFIG, filename="c"), make_part(b"#!/bin/sh\n\xff\n", filename="bin")]
    with pytest.raises(InvalidInput, match="bin is not UTF-8"):
        build_user_data(parts)


def test_no_parts_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="no user-data part"):
        build_user_data([])


def test_size_limit_counts_gzipped_bytes() -> None:
    compressible = b"#!/bin/sh\n" + b"echo aaaaaaaa\n" * 5000  # 70 KB, gzips to ~200 bytes
    assert check_user_data_size(compressible) < 1024
    random = b"#!/bin/sh\n# " + os.urandom(MAX_USER_DATA).hex().encode()
    with pytest.raises(InvalidInput) as info:
        build_user_data([make_part(random, filename="big.sh")], compress=True)
    error = info.value
    assert error.code == "user_data_too_large"
    assert f"over the limit of {MAX_USER_DATA}" in error.message
    assert error.details["size"] > MAX_USER_DATA
    assert "#include" in error.hint


def test_cloud_config_texts_finds_configs_in_every_form() -> None:
    parts = [make_part(CONFIG, filename="c"), make_part(SCRIPT, filename="s")]
    assert cloud_config_texts(CONFIG) == [CONFIG.decode()]
    assert cloud_config_texts(SCRIPT) == []
    assert cloud_config_texts(build_user_data(parts)) == [CONFIG.decode()]
    assert cloud_config_texts(build_user_data(parts, compress=True)) == [CONFIG.decode()]
