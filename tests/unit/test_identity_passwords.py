from __future__ import annotations

import pytest

from stratuslab.errors import InvalidInput, Unauthorized
from stratuslab.identity.passwords import (
    Argon2Params,
    LoginRateLimiter,
    PasswordAccount,
    Passwords,
    RateLimits,
    authenticate_password,
    check_new_password,
)

FAST = Argon2Params(time_cost=1, memory_kib=1024, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords(FAST)


def test_hash_is_argon2id_and_salted(passwords: Passwords) -> None:
    first, second = passwords.hash("correct horse"), passwords.hash("correct horse")
    assert first.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert first != second
    assert passwords.verify(first, "correct horse")
    assert not passwords.verify(first, "correct horsE")


def test_corrupt_hash_never_matches(passwords: Passwords) -> None:
    assert not passwords.verify("$argon2id$garbage", "x")
    assert not passwords.verify("", "")
    assert passwords.needs_rehash("MD5:5f4dcc3b5aa765d61d8327deb882cf99")


def test_rehash_needed_when_parameters_change(passwords: Passwords) -> None:
    old = passwords.hash("pw-pw-pw-pw")
    assert not passwords.needs_rehash(old)
    stronger = Passwords(Argon2Params(time_cost=2, memory_kib=2048, parallelism=1))
    assert stronger.needs_rehash(old)
    assert stronger.verify(old, "pw-pw-pw-pw")  # old hashes keep working


def test_default_parameters_follow_rfc_9106() -> None:
    assert Argon2Params() == Argon2Params(time_cost=3, memory_kib=65536, parallelism=4)


@pytest.mark.parametrize(
    ("password", "fragment"),
    [("short", "too short"), ("x" * 1025, "too long"), ("Alice-Smith", "user name")],
)
def test_new_password_rules(password: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        check_new_password(password, username="alice-smith")
    check_new_password("a decent passphrase", username="alice")


def test_limiter_sliding_window_per_user() -> None:
    clock = Clock()
    limiter = LoginRateLimiter(RateLimits(per_user=3, per_address=100, window=60), clock=clock)
    for _ in range(3):
        limiter.check("Alice", "10.0.0.1")
        limiter.record_failure("Alice", "10.0.0.1")
        clock.now += 10
    with pytest.raises(Unauthorized) as err:
        limiter.check("alice", "10.0.0.2")  # same user, case-insensitive, any address
    assert err.value.code == "too_many_attempts"
    assert err.value.details["retry_after"] == 31  # oldest failure leaves the window at +60
    limiter.check("bob", "10.0.0.1")  # other users are not affected
    clock.now += 31
    limiter.check("alice", "10.0.0.2")


def test_limiter_per_address_and_ipv6_prefix() -> None:
    clock = Clock()
    limiter = LoginRateLimiter(RateLimits(per_user=100, per_address=2, window=60), clock=clock)
    limiter.record_failure("a", "2001:db8::1")
    limiter.record_failure("b", "2001:db8::2")
    with pytest.raises(Unauthorized):
        limiter.check("c", "2001:db8::ffff")  # same /64
    limiter.check("c", "2001:db8:1::1")


def test_success_clears_the_user_but_not_the_address() -> None:
    limiter = LoginRateLimiter(RateLimits(per_user=2, per_address=2, window=60), clock=Clock())
    limiter.record_failure("alice", "10.0.0.1")
    limiter.record_failure("alice", "10.0.0.1")
    limiter.record_success("alice")
    limiter.check("alice", "10.0.0.9")
    with pytest.raises(Unauthorized):
        limiter.check("alice", "10.0.0.1")


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = LoginRateLimiter(RateLimits(max_keys=50, window=60), clock=clock)
    for i in range(500):
        limiter.record_failure(f"user{i}", f"10.0.{i // 250}.{i % 250}")
        clock.now += 0.01
    assert len(limiter._failures) <= 51


ACCOUNTS: dict[str, PasswordAccount] = {}
World = tuple[Passwords, LoginRateLimiter, Clock]


@pytest.fixture
def world(passwords: Passwords) -> World:
    ACCOUNTS.clear()
    ACCOUNTS["alice"] = PasswordAccount("u-1", "alice", passwords.hash("alice's passphrase"))
    ACCOUNTS["carol"] = PasswordAccount(
        "u-3", "carol", passwords.hash("carol's passphrase"), active=False
    )
    ACCOUNTS["dave"] = PasswordAccount("u-4", "dave", None)  # certificate-only user
    clock = Clock()
    return passwords, LoginRateLimiter(RateLimits(per_user=3, per_address=10), clock=clock), clock


def login(
    world: World,
    user: str,
    password: str,
    address: str = "192.0.2.1",
) -> PasswordAccount:
    passwords, limiter, _ = world
    result = authenticate_password(
        user, password, lookup=ACCOUNTS.get, passwords=passwords, limiter=limiter, address=address
    )
    return result.account


def test_good_password(world: World) -> None:
    assert login(world, "alice", "alice's passphrase").user_id == "u-1"


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "wrong"), ("nobody", "alice's passphrase"), ("dave", ""), ("", "")],
)
def test_every_failure_looks_the_same(world: World, user: str, password: str) -> None:
    with pytest.raises(Unauthorized) as err:
        login(world, user, password)
    assert (err.value.code, err.value.message) == ("bad_login", "wrong user name or password")


def test_unknown_users_cost_one_argon2_verification(world: World) -> None:
    calls: list[str] = []

    class Spy(Passwords):
        def verify(self, stored: str, password: str) -> bool:
            calls.append(stored)
            return super().verify(stored, password)

    spy = Spy(FAST)
    for user in ("nobody", "alice", "dave"):
        with pytest.raises(Unauthorized):
            authenticate_password(
                user, "x", lookup=ACCOUNTS.get, passwords=spy, limiter=world[1], address="a"
            )
    assert calls == [spy.dummy_hash, ACCOUNTS["alice"].password_hash, spy.dummy_hash]


def test_rate_limit_applies_to_unknown_users_too(
    world: World,
) -> None:
    for _ in range(3):
        with pytest.raises(Unauthorized, match="wrong user name"):
            login(world, "nobody", "x")
    with pytest.raises(Unauthorized) as err:
        login(world, "nobody", "x")
    assert err.value.code == "too_many_attempts"


def test_locked_user_is_refused_even_with_the_right_password(
    world: World,
) -> None:
    for _ in range(3):
        with pytest.raises(Unauthorized):
            login(world, "alice", "guess")
    with pytest.raises(Unauthorized, match="too many failed logins"):
        login(world, "alice", "alice's passphrase")
    world[2].now += 901
    assert login(world, "alice", "alice's passphrase").username == "alice"


def test_inactive_account_is_told_only_with_the_right_password(
    world: World,
) -> None:
    with pytest.raises(Unauthorized) as err:
        login(world, "carol", "wrong")
    assert err.value.code == "bad_login"
    with pytest.raises(Unauthorized) as err:
        login(world, "carol", "carol's passphrase")
    assert err.value.code == "account_inactive"


def test_login_returns_a_new_hash_when_parameters_changed(
    world: World,
) -> None:
    stronger = Passwords(Argon2Params(time_cost=2, memory_kib=1024, parallelism=1))
    result = authenticate_password(
        "alice",
        "alice's passphrase",
        lookup=ACCOUNTS.get,
        passwords=stronger,
        limiter=world[1],
        address="a",
    )
    assert result.new_hash is not None and result.new_hash.startswith("$argon2id$v=19$m=1024,t=2")
    same = authenticate_password(
        "alice",
        "alice's passphrase",
        lookup=ACCOUNTS.get,
        passwords=world[0],
        limiter=world[1],
        address="a",
    )
    assert same.new_hash is None


def test_secrets_stay_out_of_reprs(world: World) -> None:
    assert "argon2" not in repr(ACCOUNTS["alice"])
