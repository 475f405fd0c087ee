"""The API node as a stream node reaches it (`runwire serve --role stream`,
`service.http.stream_node`): session and run lookups, and WebSocket control ops forwarded over
HTTP with the client's token (`ForwardedControl` answers what `RuntimeControl` answers on the
API node itself; an unreachable API node is the error reply `BROKER_UNAVAILABLE`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.websockets import WebSocket

from service.contract.errors import ServiceError
from service.http.credentials import presented_token
from service.http.openapi import API_PREFIX
from streaming.errors import ControlError
from streaming.messages import Cancel, ControlOp, DryRun, Process, SetSample

__all__ = ["ApiNode", "ForwardedControl", "Found"]

log = logging.getLogger("runwire.stream")

API_TIMEOUT_S = 10.0  # one forwarded request or lookup


@dataclass(frozen=True)
class Found:
    """What a lookup on the API node answers (the fields the event routes use)."""

    session_id: str
    run_id: str | None = None


class ApiNode:
    """The API node as a stream node reaches it: lookups and forwarded control ops."""

    def __init__(self, api_url: str, token: str | None, *, timeout: float = API_TIMEOUT_S):
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._client = httpx.AsyncClient(base_url=self.api_url + API_PREFIX, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _lookup(self, path: str, fallback: Found) -> dict[str, Any] | Found:
        try:
            response = await self._client.get(path, headers=self._headers(self._token))
        except httpx.HTTPError as exc:
            log.warning("API node %s unreachable for a lookup (%s): subscribing anyway",
                        self.api_url, exc)  # fmt: skip
            return fallback
        if response.status_code >= 400:
            raise _problem(response)
        body: dict[str, Any] = response.json()
        return body

    async def get_session(self, sid: str) -> Found:
        body = await self._lookup(f"/sessions/{sid}", Found(sid))
        return body if isinstance(body, Found) else Found(body["session_id"])

    async def get_run(self, run_id: str) -> Found:
        body = await self._lookup(f"/runs/{run_id}", Found("*", run_id))
        return body if isinstance(body, Found) else Found(body["session_id"], body["run_id"])

    def control(self, websocket: WebSocket) -> ForwardedControl:
        """The WebSocket `ControlHandler` forwarding `websocket`'s ops with its token."""
        return ForwardedControl(self, presented_token(websocket.scope))

    async def request(self, method: str, path: str, token: str | None, body: Any) -> Any:
        """One forwarded call; its JSON answer, or `ControlError` (the API node's code)."""
        try:
            response = await self._client.request(
                method, path, json=body, headers=self._headers(token)
            )
        except httpx.HTTPError as exc:
            raise ControlError(
                "BROKER_UNAVAILABLE", f"the API node {self.api_url} is unreachable: {exc}"
            ) from exc
        if response.status_code >= 400:
            error = _problem(response)
            raise ControlError(error.code, error.detail)
        return response.json() if response.content else {}


def _problem(response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
        code, detail = str(body["code"]), str(body.get("detail", ""))
    except (ValueError, KeyError, TypeError):
        code, detail = "INTERNAL", f"the API node answered {response.status_code}"
    try:
        return ServiceError(code, detail)
    except KeyError:  # a code this node does not know: keep it readable anyway
        return ServiceError("INTERNAL", f"{code}: {detail}")


def _fields(op: ControlOp, *drop: str) -> dict[str, Any]:
    return {
        name: value
        for name in op.__struct_fields__
        if name not in ("id", *drop) and (value := getattr(op, name)) is not None
    }


class ForwardedControl:
    """Control ops -> the API node's HTTP routes, answering what `RuntimeControl` answers."""

    def __init__(self, api: ApiNode, token: str | None) -> None:
        self.api = api
        self.token = token

    async def __call__(self, op: ControlOp) -> dict[str, Any]:
        api, token = self.api, self.token
        result: dict[str, Any]
        if isinstance(op, Process):
            result = await api.request(
                "POST", f"/sessions/{op.session}/process", token, _fields(op, "session")
            )
        elif isinstance(op, DryRun):
            result = await api.request(
                "POST", f"/sessions/{op.session}/process/dry-run", token, _fields(op, "session")
            )
        elif isinstance(op, SetSample):
            answer = await api.request(
                "POST", f"/sessions/{op.session}/sample", token, _fields(op, "session")
            )
            if "run_id" in answer:  # 202: a run was submitted as well
                session = await api.request("GET", f"/sessions/{op.session}", token, None)
                result = {"session": session, "run": answer}
            else:
                result = {"session": answer, "run": None}
        else:
            assert isinstance(op, Cancel)
            result = await api.request("POST", f"/runs/{op.run_id}/cancel", token, {})
        return result
