"""Client calls of networks, NICs, port forwards and security groups.

``NetworksApi(client)`` adds them to a :class:`~stratuslab.client.StratusClient` (same
connection, same error handling)::

    api = NetworksApi(client)
    api.create_network(NetworkCreate(name="lab", cidr4="198.51.100.0/24"))
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stratuslab.client.client import StratusClient
from stratuslab.client.http import seg as _seg
from stratuslab.schemas.networks import (
    Lease,
    Network,
    NetworkCreate,
    Nic,
    NicCreate,
    PortForward,
    PortForwardCreate,
    SecurityGroup,
    SecurityGroupCreate,
    SecurityRule,
    SecurityRuleCreate,
)
from stratuslab.schemas.operations import Operation


class NetworksApi:
    def __init__(self, client: StratusClient) -> None:
        self.client = client

    # -- networks --------------------------------------------------------------------------

    def list_networks(self) -> list[Network]:
        return self.client._parse_list(Network, self.client._request("GET", "/networks"))

    def create_network(self, spec: NetworkCreate) -> Network:
        body = spec.model_dump(mode="json", exclude_none=True)
        return self.client._parse(Network, self.client._request("POST", "/networks", json=body))

    def get_network(self, ref: str) -> Network:
        return self.client._parse(Network, self.client._request("GET", f"/networks/{_seg(ref)}"))

    def delete_network(self, ref: str) -> None:
        self.client._request("DELETE", f"/networks/{_seg(ref)}")

    def leases(
        self,
        ref: str,
        *,
        address: str | None = None,
        at: datetime | None = None,
        active: bool = False,
    ) -> list[Lease]:
        params: dict[str, Any] = {"active": "true"} if active else {}
        if address is not None:
            params["address"] = address
        if at is not None:
            params["at"] = at.isoformat()
        response = self.client._request("GET", f"/networks/{_seg(ref)}/leases", params=params)
        return self.client._parse_list(Lease, response)

    # -- NICs and port forwards ------------------------------------------------------------

    def list_nics(self, instance: str) -> list[Nic]:
        response = self.client._request("GET", f"/instances/{_seg(instance)}/nics")
        return self.client._parse_list(Nic, response)

    def attach_nic(self, instance: str, spec: NicCreate) -> Operation:
        body = spec.model_dump(mode="json", exclude_none=True)
        response = self.client._request("POST", f"/instances/{_seg(instance)}/nics", json=body)
        return self.client._parse(Operation, response)

    def detach_nic(self, instance: str, nic: str) -> Operation:
        path = f"/instances/{_seg(instance)}/nics/{_seg(nic)}"
        return self.client._parse(Operation, self.client._request("DELETE", path))

    def list_forwards(self, instance: str) -> list[PortForward]:
        response = self.client._request("GET", f"/instances/{_seg(instance)}/port-forwards")
        return self.client._parse_list(PortForward, response)

    def add_forward(self, instance: str, spec: PortForwardCreate) -> PortForward:
        body = spec.model_dump(mode="json", exclude_none=True)
        path = f"/instances/{_seg(instance)}/port-forwards"
        return self.client._parse(PortForward, self.client._request("POST", path, json=body))

    def remove_forward(self, instance: str, forward: str) -> None:
        self.client._request("DELETE", f"/instances/{_seg(instance)}/port-forwards/{_seg(forward)}")

    # -- security groups -------------------------------------------------------------------

    def list_groups(self) -> list[SecurityGroup]:
        response = self.client._request("GET", "/security-groups")
        return self.client._parse_list(SecurityGroup, response)

    def create_group(self, spec: SecurityGroupCreate) -> SecurityGroup:
        body = spec.model_dump(mode="json")
        response = self.client._request("POST", "/security-groups", json=body)
        return self.client._parse(SecurityGroup, response)

    def get_group(self, ref: str) -> SecurityGroup:
        response = self.client._request("GET", f"/security-groups/{_seg(ref)}")
        return self.client._parse(SecurityGroup, response)

    def delete_group(self, ref: str) -> None:
        self.client._request("DELETE", f"/security-groups/{_seg(ref)}")

    def add_rule(self, group: str, spec: SecurityRuleCreate) -> SecurityRule:
        body = spec.model_dump(mode="json", exclude_none=True)
        path = f"/security-groups/{_seg(group)}/rules"
        return self.client._parse(SecurityRule, self.client._request("POST", path, json=body))

    def remove_rule(self, group: str, rule_id: str) -> None:
        self.client._request("DELETE", f"/security-groups/{_seg(group)}/rules/{_seg(rule_id)}")
