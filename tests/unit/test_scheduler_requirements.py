"""The requirement expression language: what it accepts, and where it says it went wrong."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stratuslab.errors import InvalidInput
from stratuslab.scheduler import HostSnapshot, parse_requirements
from stratuslab.types import HostState

HOST = HostSnapshot(
    id="h1",
    name="rack1-node07",
    state=HostState.ENABLED,
    arch="x86_64",
    vcpus=16,
    memory_mib=65536,
    vcpus_used=4,
    memory_used_mib=61440,
    hypervisor="kvm",
    disk_gib=500,
    labels={"gpu": "yes", "gpus": "2", "zone": "north"},
    load=3.5,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('ARCH = "x86_64"', True),
        ('ARCH != "x86_64"', False),
        ('arch = "x86_64"', True),  # attribute names are case-insensitive
        ('ARCH = "x86_64" & (FREE_MEMORY > 4096 | LABEL:gpu = "yes")', True),
        ('ARCH = "x86_64" & FREE_MEMORY > 4096', False),  # 4096 MiB free, not more
        ("FREE_MEMORY >= 4096", True),
        ("FREE_CPU = 12", True),
        ("VCPUS > 8 & MEMORY >= 65536 & DISK = 500", True),
        ("USED_CPU < 5 & USED_MEMORY > 60000 & USED_DISK = 0", True),
        ("LOAD < 4", True),
        ("LOAD <= 3.5 & LOAD >= 3.5", True),
        ('HYPERVISOR = "kvm" & STATE = "enabled"', True),
        ('NAME = "rack1-*"', True),
        ('HOSTNAME = "rack2-*"', False),
        ('HOSTNAME != "rack2-*"', True),
        ('ID = "h1"', True),
        ('LABEL:zone = "north"', True),
        ("LABEL:zone = 'north'", True),
        ('LABEL:zone = "nor\\"th"', False),
        ("LABEL:gpus >= 2", True),  # a label compared with a number is read as one
        ("LABEL:gpus > 2", False),
        ("LABEL:zone > 2", False),  # not a number: every ordering fails
        ('LABEL:missing = "x"', False),
        ('LABEL:missing != "x"', True),
        ("LABEL:missing < 1", False),
        ("LABEL:gpu = LABEL:gpu", True),
        ('!(LABEL:gpu = "yes")', False),
        ('! ARCH = "aarch64"', True),
        ('ARCH = "aarch64" | ARCH = "x86_64"', True),
        ('ARCH = "aarch64" || LOAD < 1 || LABEL:gpu == "yes"', True),
        ('ARCH = "x86_64" && LOAD > 10', False),
        ("4096 < FREE_MEMORY", False),
        ("-1 < FREE_MEMORY", True),
    ],
)
def test_expression_on_a_host(text: str, expected: bool) -> None:
    requirement = parse_requirements(text)
    assert requirement is not None
    assert requirement.matches(HOST) is expected


def test_precedence_and_binds_tighter_than_or() -> None:
    req = parse_requirements('ARCH = "aarch64" & LOAD > 100 | LABEL:gpu = "yes"')
    assert req is not None and req.matches(HOST)
    req = parse_requirements('ARCH = "aarch64" & (LOAD > 100 | LABEL:gpu = "yes")')
    assert req is not None and not req.matches(HOST)


def test_empty_expression_means_no_requirement() -> None:
    assert parse_requirements("") is None
    assert parse_requirements("   ") is None


def test_static_and_dynamic_expressions() -> None:
    static = parse_requirements('ARCH = "x86_64" & LABEL:gpu = "yes"')
    dynamic = parse_requirements('ARCH = "x86_64" & FREE_MEMORY > 1')
    assert static is not None and not static.dynamic
    assert static.attributes == {"ARCH", "LABEL:gpu"}
    assert dynamic is not None and dynamic.dynamic


def test_label_names_keep_their_case() -> None:
    host = replace(HOST, labels={"GPU": "yes"})
    req = parse_requirements('LABEL:GPU = "yes" & label:GPU = "yes"')
    assert req is not None and req.matches(host)
    req = parse_requirements('LABEL:gpu = "yes"')
    assert req is not None and not req.matches(host)


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ('ARCH = "x86_64" & )', "unexpected ')'", 19),
        ('ARCH = "x86_64" & (FREE_MEMORY > 4096 | LABEL:gpu = "yes"', "expected ')'", 58),
        ('ARCH = "x86_64")', "unexpected ')'", 16),
        ("()", "unexpected ')'", 2),
        ("ARCH", "expected a comparison operator", 5),
        ('ARCH "x86_64"', "expected a comparison operator", 6),
        ("ARCH =", "ends where a value was expected", 7),
        ("!", "ends where a value was expected", 2),
        ('ARCH = "x86_64" &', "ends where a value was expected", 18),
        ("FOO = 1", "unknown host attribute 'FOO'", 1),
        ("ARCH = 5", "cannot compare ARCH (text) with 5 (a number)", 8),
        ('FREE_MEMORY > "lots"', 'cannot compare FREE_MEMORY (a number) with "lots" (text)', 15),
        ('ARCH < "x"', "'<' compares numbers", 6),
        ("1 = 2", "needs a host attribute", 1),
        ("LABEL: = 1", "a label name must follow 'LABEL:'", 1),
        ('ARCH = "x86_64', "unterminated string", 8),
        ("ARCH # 1", "unexpected character '#'", 6),
        ("FREE_MEMORY > 4096MB", "unexpected 'MB'", 19),
        ('ARCH = "x" LOAD < 1', "unexpected 'LOAD'", 12),
        ("ARCH = = 1", "unexpected '='", 8),
    ],
)
def test_malformed_expression_points_at_the_position(
    text: str, message: str, position: int
) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_requirements(text)
    err = info.value
    assert message in err.message
    assert err.message.startswith("requirement expression: ")
    assert err.message.endswith(f"at position {position}")
    assert err.code == "invalid_requirements"
    assert err.details == {"position": position, "expression": text}
    assert err.hint


def test_malformed_expression_is_refused_at_placement() -> None:
    from stratuslab.scheduler import Request, place

    with pytest.raises(InvalidInput):
        place(Request(vcpus=1, memory_mib=1, requirements="ARCH ="), [HOST])
