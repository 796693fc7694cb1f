"""Passwords: argon2id hashes, a login rate limiter, and a login flow that tells nothing.

Hashes are PHC strings (``$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>``) made by
``argon2-cffi``; the parameters default to RFC 9106's second recommended option (64 MiB,
3 passes, 4 lanes). When the parameters change, :func:`authenticate_password` returns a
fresh hash on the next successful login so the caller can store it.

No user enumeration: an unknown user, a user without a password and a wrong password all
give the same :func:`bad_login` error after one argon2 verification of equal cost (against
a dummy hash when there is no real one), and all count against the rate limits.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from stratuslab.errors import InvalidInput, Unauthorized

MIN_LENGTH = 8
MAX_LENGTH = 1024


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


class Passwords:
    """Hash and verify with one set of argon2id parameters."""

    def __init__(self, params: Argon2Params | None = None) -> None:
        self.params = params or Argon2Params()
        self._hasher = argon2.PasswordHasher(
            time_cost=self.params.time_cost,
            memory_cost=self.params.memory_kib,
            parallelism=self.params.parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        #: verified against when there is no real hash, so that both paths cost the same
        self.dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str, password: str) -> bool:
        """Constant-time (libargon2 compares in constant time); a corrupt hash never matches."""
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True


def check_new_password(password: str, *, username: str) -> None:
    """Refuse passwords that are too short, too long or equal to the user name."""
    if len(password) < MIN_LENGTH:
        raise InvalidInput(
            f"the password is too short ({len(password)} characters; at least {MIN_LENGTH})",
            hint="use a passphrase of several words",
            code="weak_password",
        )
    if len(password) > MAX_LENGTH:
        raise InvalidInput(
            f"the password is too long (at most {MAX_LENGTH} characters)",
            hint="use a shorter passphrase",
            code="weak_password",
        )
    if password.casefold() == username.casefold():
        raise InvalidInput(
            "the password may not be the user name",
            hint="choose a passphrase",
            code="weak_password",
        )


@dataclass(frozen=True)
class RateLimits:
    """At most ``per_user`` failed logins per user name and ``per_address`` per source
    address (IPv6: per /64) in any sliding ``window`` of seconds."""

    per_user: int = 5
    per_address: int = 20
    window: float = 900.0
    #: keys remembered at most (old ones are dropped first): bounded memory under attack
    max_keys: int = 100_000


class LoginRateLimiter:
    """Sliding-window counters of failed logins; the clock is injected (monotonic seconds)."""

    def __init__(
        self, limits: RateLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or RateLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def check(self, username: str, address: str) -> None:
        """Raise Unauthorized (``too_many_attempts``) if either counter is full."""
        now = self._clock()
        with self._lock:
            waits = [
                self._wait(_user_key(username), self.limits.per_user, now),
                self._wait(_address_key(address), self.limits.per_address, now),
            ]
        wait = max(waits)
        if wait > 0:
            seconds = int(wait) + 1
            raise Unauthorized(
                "too many failed logins; try again later",
                hint=f"wait {seconds} seconds, or use an API token",
                code="too_many_attempts",
                details={"retry_after": seconds},
            )

    def record_failure(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (_user_key(username), _address_key(address)):
                self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > self.limits.max_keys:
                self._shrink(now)

    def record_success(self, username: str) -> None:
        """A good password clears its user's counter (never the address's)."""
        with self._lock:
            self._failures.pop(_user_key(username), None)

    def _wait(self, key: str, limit: int, now: float) -> float:
        hits = self._failures.get(key)
        if hits is None:
            return 0.0
        while hits and hits[0] <= now - self.limits.window:
            hits.popleft()
        if not hits:
            del self._failures[key]
            return 0.0
        return hits[0] + self.limits.window - now if len(hits) >= limit else 0.0

    def _shrink(self, now: float) -> None:
        horizon = now - self.limits.window
        for key in [k for k, hits in self._failures.items() if hits[-1] <= horizon]:
            del self._failures[key]
        excess = len(self._failures) - self.limits.max_keys
        for key in list(self._failures)[: max(excess, 0)]:
            del self._failures[key]


def _user_key(username: str) -> str:
    return "u:" + username.strip().casefold()


def _address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "a:" + address
    if ip.version == 6:
        return "a:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return "a:" + str(ip)


@dataclass(frozen=True)
class PasswordAccount:
    """What the login flow needs to know about a user."""

    user_id: str
    username: str
    #: ``None``: the user cannot log in with a password (certificate or OIDC only)
    password_hash: str | None = field(default=None, repr=False)
    #: ``False``: disabled, or a registration still awaiting e-mail check or approval
    active: bool = True


@dataclass(frozen=True)
class PasswordLogin:
    account: PasswordAccount
    #: a hash with the current parameters, to store (``None``: the stored one is current)
    new_hash: str | None = field(default=None, repr=False)


AccountLookup = Callable[[str], PasswordAccount | None]


def bad_login() -> Unauthorized:
    """The one error for every failed password check (a new instance each time)."""
    return Unauthorized(
        "wrong user name or password",
        hint="check both; after several failures logins are refused for a while",
        code="bad_login",
    )


def authenticate_password(
    username: str,
    password: str,
    *,
    lookup: AccountLookup,
    passwords: Passwords,
    limiter: LoginRateLimiter,
    address: str,
) -> PasswordLogin:
    """Check a user name and password; raise :func:`bad_login` without saying which was wrong."""
    limiter.check(username, address)
    account = lookup(username)
    real = account.password_hash if account is not None else None
    stored = real if real is not None else passwords.dummy_hash
    matches = passwords.verify(stored, password)
    if account is None or real is None or not matches:
        limiter.record_failure(username, address)
        raise bad_login()
    limiter.record_success(username)
    if not account.active:
        raise Unauthorized(
            "this account is not active",
            hint="a new registration must be confirmed by e-mail and approved by an admin; "
            "otherwise ask the cloud administrators",
            code="account_inactive",
        )
    new_hash = passwords.hash(password) if passwords.needs_rehash(real) else None
    return PasswordLogin(account, new_hash)
