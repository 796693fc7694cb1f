from __future__ import annotations

import pytest

from stratuslab.errors import ERRORS_BY_CODE, InvalidInput, QuotaExceeded, error_from_dict
from stratuslab.identity.quotas import (
    DEFAULT_PROJECT_LIMITS,
    UNLIMITED,
    Limits,
    Usage,
    check,
    check_all,
    instances_request,
    limits_from_dict,
)

LIMITS = Limits(instances=5, vcpus=8, ram_mib=16384, volumes=2, volume_gib=100, images=3)


def test_within_limits() -> None:
    check(
        Usage(instances=4, vcpus=6),
        instances_request(count=1, vcpus=2, memory_mib=2048),
        LIMITS,
        scope="project 'physics'",
    )
    check(Usage(vcpus=8), Usage(), LIMITS, scope="x")  # asking for nothing always passes


def test_exactly_at_the_limit_is_allowed() -> None:
    check(Usage(vcpus=6), Usage(vcpus=2), LIMITS, scope="x")
    with pytest.raises(QuotaExceeded):
        check(Usage(vcpus=7), Usage(vcpus=2), LIMITS, scope="x")


def test_the_error_names_resource_limit_and_use() -> None:
    with pytest.raises(QuotaExceeded) as err:
        check(
            Usage(instances=4, vcpus=6, ram_mib=15000),
            instances_request(count=2, vcpus=2, memory_mib=1024),
            LIMITS,
            scope="project 'physics'",
        )
    exc = err.value
    assert exc.message == (
        "quota exceeded for project 'physics': instances: 4 in use + 2 requested > limit 5; "
        "vCPUs: 6 in use + 4 requested > limit 8; "
        "RAM: 15000 MiB in use + 2048 MiB requested > limit 16384 MiB"
    )
    assert exc.status == 409 and exc.exit_code == 12 and exc.code == "quota_exceeded"
    assert exc.details["exceeded"][1] == {
        "resource": "vcpus",
        "in_use": 6,
        "requested": 4,
        "limit": 8,
    }


def test_over_limit_usage_does_not_block_other_resources() -> None:
    """An admin lowered the vCPU limit below current use: volumes can still be created."""
    check(Usage(vcpus=20), Usage(volumes=1, volume_gib=10), LIMITS, scope="x")


def test_unlimited() -> None:
    check(Usage(vcpus=10**6), Usage(vcpus=10**6), UNLIMITED, scope="x")


def test_project_then_user() -> None:
    request = Usage(instances=1, vcpus=2)
    check_all(request, project=("physics", Usage(), LIMITS), user=("alice", Usage(), LIMITS))
    with pytest.raises(QuotaExceeded, match="user 'alice'"):
        check_all(
            request,
            project=("physics", Usage(), LIMITS),
            user=("alice", Usage(instances=1), Limits(instances=1)),
        )
    with pytest.raises(QuotaExceeded, match="project 'physics'"):
        check_all(request, project=("physics", Usage(instances=5), LIMITS))


def test_usage_adds_up() -> None:
    assert Usage(vcpus=1, images=1) + Usage(vcpus=2) == Usage(vcpus=3, images=1)


def test_limits_from_dict() -> None:
    limits = limits_from_dict(
        {"vcpus": 40, "images": -1, "volumes": None}, base=DEFAULT_PROJECT_LIMITS
    )
    assert limits.vcpus == 40
    assert limits.images is None and limits.volumes is None
    assert limits.instances == DEFAULT_PROJECT_LIMITS.instances


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"cpus": 4}, "unknown quota resource(s): cpus"),
        ({"vcpus": -2}, "whole number"),
        ({"vcpus": "4"}, "whole number"),
        ({"vcpus": True}, "whole number"),
    ],
)
def test_bad_limits(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidInput) as err:
        limits_from_dict(data)
    assert fragment in err.value.message


def test_quota_exceeded_is_on_the_wire() -> None:
    assert ERRORS_BY_CODE["quota_exceeded"] is QuotaExceeded
    err = QuotaExceeded("over", hint="less")
    assert isinstance(error_from_dict(err.to_dict(), 409), QuotaExceeded)
