from __future__ import annotations

import pytest

from stratuslab.errors import (
    ERRORS_BY_CODE,
    CapacityError,
    Conflict,
    NotFound,
    StratusError,
    error_from_dict,
)


@pytest.mark.parametrize("cls", sorted(ERRORS_BY_CODE.values(), key=lambda c: c.code))
def test_every_error_round_trips_through_its_wire_form(cls: type[StratusError]) -> None:
    err = cls("something is wrong", hint="do this")
    back = error_from_dict(err.to_dict(), err.status)
    assert type(back) is cls
    assert (back.message, back.hint, back.code) == ("something is wrong", "do this", cls.code)


def test_specific_code_keeps_its_category() -> None:
    err = CapacityError("no hosts", hint="start a node", code="no_hosts")
    back = error_from_dict(err.to_dict(), 409)
    assert isinstance(back, CapacityError)
    assert back.code == "no_hosts"
    assert back.exit_code == 6


def test_unknown_code_falls_back_on_status() -> None:
    assert isinstance(error_from_dict({"code": "weird", "message": "m"}, 404), NotFound)
    assert isinstance(error_from_dict({"code": "weird", "message": "m"}, 409), Conflict)


def test_str_includes_hint() -> None:
    assert str(NotFound("gone", hint="look elsewhere")) == "gone (look elsewhere)"
