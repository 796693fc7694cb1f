"""cloud-config validation with cloud-init's schema (system Python) and without cloud-init."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stratuslab.context.schema import (
    SYSTEM_PYTHON,
    cloud_init_available,
    validate_cloud_config,
    validate_user_data,
)
from stratuslab.context.userdata import build_user_data, make_part
from stratuslab.errors import DriverError, InvalidInput

needs_cloud_init = pytest.mark.skipif(
    not cloud_init_available(SYSTEM_PYTHON), reason="needs Debian's cloud-init package"
)
NO_PYTHON = Path("/nonexistent/python3")

GOOD = """#cloud-config
hostname: vm
write_files:
  - path: /etc/marker
    content: hello
runcmd:
  - [touch, /root/ran]
  - echo done
ssh_authorized_keys: [ssh-ed25519 AAAA x]
"""


@needs_cloud_init
def test_valid_cloud_config_passes() -> None:
    validate_cloud_config(GOOD)
    validate_cloud_config("#cloud-config\n")


@needs_cloud_init
def test_schema_errors_name_the_field_and_the_problem() -> None:
    bad = "#cloud-config\nruncmd: touch /x\nwrite_files:\n  - content: x\n"
    with pytest.raises(InvalidInput) as info:
        validate_cloud_config(bad)
    error = info.value
    assert error.code == "invalid_cloud_config"
    assert "runcmd: 'touch /x' is not of type 'array'" in error.message
    assert "write_files.0: 'path' is a required property" in error.message
    assert ["runcmd", "'touch /x' is not of type 'array'"] in error.details["problems"]


@needs_cloud_init
def test_yaml_types_cloud_init_accepts_are_not_rejected_by_transport() -> None:
    # a date is fine YAML for cloud-init; the text goes to cloud-init as it is, not as JSON
    validate_cloud_config(
        "#cloud-config\nwrite_files:\n  - path: /d\n    content: x\n# 2024-01-01\n"
    )


@needs_cloud_init
def test_user_data_validates_every_cloud_config_part() -> None:
    good = make_part(GOOD.encode(), filename="good")
    bad = make_part(b"#cloud-config\npackages: 3\n", filename="bad")
    script = make_part(b"#!/bin/sh\nexit 0\n", filename="s")
    validate_user_data(build_user_data([good, script], compress=True))
    with pytest.raises(InvalidInput, match="packages: 3 is not of type 'array'"):
        validate_user_data(build_user_data([good, bad, script]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#cloud-config\nruncmd: [a\n", "not valid YAML"),
        ("#cloud-config\n- a\n- b\n", "must be a mapping of module keys, not a list"),
    ],
)
def test_yaml_problems_are_found_without_cloud_init(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_cloud_config(text, python=NO_PYTHON)


def test_without_cloud_init_the_schema_check_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="stratuslab.context.schema"):
        validate_cloud_config("#cloud-config\nruncmd: not-a-list\n", python=NO_PYTHON)
    assert "schema check skipped" in caplog.text


def test_without_cloud_init_a_required_check_is_an_error() -> None:
    with pytest.raises(DriverError, match="cloud-init is not installed") as info:
        validate_cloud_config(GOOD, require_schema=True, python=NO_PYTHON)
    assert "apt-get install" in info.value.hint
