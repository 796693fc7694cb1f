"""A host's VXLAN underlay address, as the agent reports it and the controller reads it.

The agent sends it with every heartbeat in the ``usage`` map (the one channel from agent to
controller that the controller stores per host: ``Host.usage``). Usage values are numbers, so
the IPv4 address travels as its integer value (exact in a float: below 2**53).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

#: the heartbeat usage key
USAGE_KEY = "network.underlay_ipv4"


def encode(address: str | None) -> dict[str, float]:
    """The usage entries that announce ``address`` (none for no or a malformed address)."""
    if not address:
        return {}
    try:
        return {USAGE_KEY: float(int(ipaddress.IPv4Address(address)))}
    except ValueError:
        return {}


def decode(usage: Mapping[str, Any] | None) -> str | None:
    """The underlay address a host announced, or None."""
    raw = (usage or {}).get(USAGE_KEY)
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        return None
    try:
        return str(ipaddress.IPv4Address(int(raw)))
    except ValueError:
        return None


def route_source(url: str) -> str | None:
    """The local IPv4 address this host uses to reach ``url``'s host (no packet is sent), or
    None when it is a loopback address or cannot be found: the sensible underlay default,
    since the hosts of one cloud reach its controller over the data-centre network."""
    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((infos[0][4][0], 9))
            source = str(sock.getsockname()[0])
    except (OSError, IndexError):
        return None
    if ipaddress.IPv4Address(source).is_loopback:
        return None
    return source
