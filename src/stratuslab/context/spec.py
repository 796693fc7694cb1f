"""What an instance's context says, independent of how it is delivered to the guest.

A :class:`ContextSpec` is built once per instance (from the API request, the user's profile and
the site defaults) and handed to :func:`stratuslab.context.build_context` with a
:class:`ContextMethod`; each method turns the same spec into the files of its own seed disk.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from stratuslab.errors import InvalidInput

_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_PAIR_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_PAIR_VALUE = 4096


class ContextMethod(StrEnum):
    """How the context reaches the guest: the seed disk layout and its label."""

    NOCLOUD = "nocloud"
    CONFIGDRIVE = "configdrive"
    OPENNEBULA = "opennebula"


@dataclass(frozen=True)
class Nic:
    """One network interface: DHCP when ``address`` is None, else a static IPv4 address."""

    mac: str
    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    mtu: int | None = None

    def __post_init__(self) -> None:
        if not _MAC_RE.match(self.mac):
            raise InvalidInput(
                f"NIC MAC address {self.mac!r} is not six lower-case hex pairs",
                hint="write it like 52:54:00:12:34:56",
            )
        if self.address is None and self.gateway is not None:
            raise InvalidInput(
                f"NIC {self.mac} has a gateway but no static address",
                hint="give an address/prefix too, or drop the gateway to use DHCP",
            )
        if self.mtu is not None and not 576 <= self.mtu <= 9216:
            raise InvalidInput(
                f"NIC {self.mac} MTU {self.mtu} is out of range", hint="use 576-9216"
            )

    @property
    def dhcp(self) -> bool:
        return self.address is None


@dataclass(frozen=True)
class ContextSpec:
    """Everything the guest is told at boot.

    ``user_data`` is the final payload (see :mod:`stratuslab.context.userdata`), ``network``
    None lets the guest do DHCP on its first interface, ``extra`` holds free ``KEY=VALUE``
    pairs (``--context``).
    """

    instance_id: str
    hostname: str
    ssh_keys: tuple[str, ...] = ()
    user_data: bytes | None = None
    network: tuple[Nic, ...] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.extra.items():
            validate_pair(key, value)


def validate_pair(key: str, value: str) -> None:
    """A free context pair: a shell-variable-like key and a bounded printable value."""
    if not _PAIR_KEY_RE.match(key):
        raise InvalidInput(
            f"context key {key!r} is not a valid name",
            hint="use letters, digits and underscores, not starting with a digit (max 64)",
        )
    if len(value) > MAX_PAIR_VALUE or not value.replace("\n", "").replace("\t", "").isprintable():
        raise InvalidInput(
            f"context value of {key} is longer than {MAX_PAIR_VALUE} characters or not printable",
            hint="pass large or binary content as user data instead",
        )


def parse_pair(text: str) -> tuple[str, str]:
    """Parse one ``KEY=VALUE`` argument (``--context``)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidInput(f"context pair {text!r} has no '='", hint="write KEY=VALUE")
    validate_pair(key, value)
    return key, value
