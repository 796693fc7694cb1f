"""The agent's view of the controller: a small httpx client with the node credential."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from stratuslab.errors import ServiceUnavailable, StratusError, error_from_dict
from stratuslab.schemas.agent import (
    DesiredState,
    Heartbeat,
    JoinRequest,
    JoinResponse,
    Report,
    ReportAck,
)

API = "/api/v1/agent"
#: longer than the longest long-poll the controller holds (max_wait, 60 s by default)
READ_TIMEOUT = 120.0


class ControllerLink:
    def __init__(self, url: str, credential: str = "", *, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http or httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(READ_TIMEOUT, connect=10.0)
        )
        if credential:
            self._http.headers["Authorization"] = f"Bearer {credential}"

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, API + path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"cannot reach the controller at {self.url}: {exc}",
                hint="check that the controller runs and the URL is right",
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()["error"]
            except (ValueError, KeyError, TypeError):
                body = {"code": "error", "message": resp.text[:200]}
            raise error_from_dict(body, resp.status_code)
        return resp

    def join(self, req: JoinRequest) -> JoinResponse:
        return JoinResponse.model_validate(
            self._call("POST", "/join", json=req.model_dump()).json()
        )

    def heartbeat(self, beat: Heartbeat) -> None:
        self._call("POST", "/heartbeat", json=beat.model_dump())

    def desired(self, *, since: int, wait: float, brief: bool = False) -> DesiredState:
        """The host's desired state once its generation differs from ``since`` or ``wait``
        seconds passed; ``brief``: a wait that ends with no change answers ``unchanged``."""
        params: dict[str, str | int | float] = {"since": since, "wait": wait}
        if brief:
            params["brief"] = "true"
        resp = self._call("GET", "/desired", params=params)
        return DesiredState.model_validate(resp.json())

    def always_report(self) -> bool:
        """Send a report after every pass, even one with no news of instances? (A link
        that adds something of its own to each report says so.)"""
        return False

    def report(self, report: Report) -> ReportAck:
        return ReportAck.model_validate(
            self._call("POST", "/report", json=report.model_dump()).json()
        )

    def download_image(self, image_id: str, dest: Path) -> str:
        """Stream an image to ``dest``; return its sha256."""
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", f"{API}/images/{image_id}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_from_dict(resp.json().get("error", {}), resp.status_code)
                with dest.open("wb") as out:
                    for chunk in resp.iter_bytes(1024 * 1024):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"image download from {self.url} failed: {exc}", hint="the agent retries"
            ) from exc
        except StratusError:
            raise
        return digest.hexdigest()

    def upload_saved_image(self, image_id: str, path: Path) -> None:
        """Send a saved root disk (streamed from the file)."""
        with path.open("rb") as fh:
            self._call(
                "PUT",
                f"/images/{image_id}/file",
                content=iter(lambda: fh.read(1024 * 1024), b""),
                headers={"Content-Type": "application/octet-stream"},
            )

    def report_save_failure(self, image_id: str, reason: str) -> None:
        self._call("POST", f"/images/{image_id}/failure", json={"reason": reason[:4000]})
