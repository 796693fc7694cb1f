"""Volume calls of the controller API, over a :class:`~stratuslab.client.StratusClient`.

``VolumesAPI(client).create(VolumeCreate(...))`` etc.; errors are the client's
:class:`~stratuslab.errors.StratusError` classes.
"""

from __future__ import annotations

from typing import Any

from stratuslab.client.client import StratusClient
from stratuslab.client.http import seg as _seg
from stratuslab.schemas.operations import Operation
from stratuslab.schemas.volumes import Volume, VolumeAccepted, VolumeCreate


class VolumesAPI:
    def __init__(self, client: StratusClient) -> None:
        self.client = client

    def list_volumes(self) -> list[Volume]:
        return self.client._parse_list(Volume, self.client._request("GET", "/volumes"))

    def get(self, ref: str) -> Volume:
        return self.client._parse(Volume, self.client._request("GET", f"/volumes/{_seg(ref)}"))

    def create(self, spec: VolumeCreate) -> VolumeAccepted:
        body = spec.model_dump(mode="json", exclude_none=True)
        return self._accepted("POST", "/volumes", body)

    def update(self, ref: str, **changes: Any) -> Volume:
        body = {k: v for k, v in changes.items() if v is not None}
        response = self.client._request("PATCH", f"/volumes/{_seg(ref)}", json=body)
        return self.client._parse(Volume, response)

    def delete(self, ref: str) -> Volume:
        response = self.client._request("DELETE", f"/volumes/{_seg(ref)}")
        return self.client._parse(Volume, response)

    def attach(self, ref: str, instance: str) -> Operation:
        return self._operation(f"/volumes/{_seg(ref)}/attach", {"instance": instance})

    def detach(self, ref: str, instance: str | None = None) -> Operation:
        body = {"instance": instance} if instance is not None else {}
        return self._operation(f"/volumes/{_seg(ref)}/detach", body)

    def snapshot(self, ref: str, name: str) -> VolumeAccepted:
        return self._accepted("POST", f"/volumes/{_seg(ref)}/snapshot", {"name": name})

    def clone(self, ref: str, name: str) -> VolumeAccepted:
        return self._accepted("POST", f"/volumes/{_seg(ref)}/clone", {"name": name})

    def grow(self, ref: str, size_gib: float) -> Operation:
        return self._operation(f"/volumes/{_seg(ref)}/grow", {"size_gib": size_gib})

    # -- quarantine (cloud admins) -------------------------------------------------------

    def quarantine(self) -> list[Volume]:
        return self.client._parse_list(Volume, self.client._request("GET", "/volumes/quarantine"))

    def release(self, volume_id: str) -> Volume:
        path = f"/volumes/quarantine/{_seg(volume_id)}/release"
        return self.client._parse(Volume, self.client._request("POST", path))

    def purge(self, volume_id: str) -> Operation:
        path = f"/volumes/quarantine/{_seg(volume_id)}"
        return self.client._parse(Operation, self.client._request("DELETE", path))

    def _operation(self, path: str, body: dict[str, Any]) -> Operation:
        return self.client._parse(Operation, self.client._request("POST", path, json=body))

    def _accepted(self, method: str, path: str, body: dict[str, Any]) -> VolumeAccepted:
        response = self.client._request(method, path, json=body)
        return self.client._parse(VolumeAccepted, response)
