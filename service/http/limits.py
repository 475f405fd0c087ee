"""Request body limits, as pure ASGI middleware in front of every HTTP handler.

For every state-changing request (POST, PUT, PATCH, DELETE):

- size: more than `max_body_bytes` is 413 `PAYLOAD_TOO_LARGE`. A `Content-Length` over the limit
  is refused before anything is read; a chunked or streamed body is counted while it arrives
  and refused as soon as it passes the limit, so memory held per request is bounded by the
  limit whatever the client claims.
- media type: the request must say it is JSON (`application/json` or any `+json` type), even
  with an empty body, else 415 `UNSUPPORTED_MEDIA_TYPE` before the body is read. This is the
  CSRF defence: the bodies a browser sends cross-site without a CORS preflight are forms and
  `text/plain`, so a request that could come from another site's page never acts.
- shape: JSON nested deeper than `max_depth` or with a number literal longer than
  `max_number_chars` is 422 `INVALID_REQUEST`. These bounds keep decoding cost linear and stop
  numbers that overflow or take quadratic time to parse.

The body is read here (bounded) and handed to the app unchanged; later `receive()` calls go to
the server, so handlers still see `http.disconnect`. A client that disconnects before its
body is complete gets no answer, and the cut-short body never reaches a handler.
"""

from __future__ import annotations

from functools import partial

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.contract.errors import ServiceError
from service.http.problems import problem_response
from streaming.jsonshape import DEFAULT_MAX_DEPTH, DEFAULT_MAX_NUMBER_CHARS, check_json_shape

__all__ = ["BodyLimitMiddleware", "check_json_shape"]

_SCAN_ON_LOOP_MAX = 64 * 1024  # bodies this small are scanned in well under 1 ms
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyLimitMiddleware:
    """Bounds request bodies (see the module docstring). WebSocket traffic passes untouched:
    its message size limit is the WebSocket layer's (close 1009)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = 1 << 20,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS,
        route_limits: dict[str, int] | None = None,  # path -> its own larger limit (uploads)
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.route_limits = dict(route_limits or {})
        self.max_depth = max_depth
        self.max_number_chars = max_number_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._checked_body(scope, receive)
        except ServiceError as exc:
            response = problem_response(exc)
            if exc.code in ("PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE"):
                # The rest of the body is not read: tell the client the connection ends.
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        if body is None:
            return  # the client went away mid-body: nobody to answer, nothing to handle
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, checked; None when the client disconnected before sending it all."""
        headers = Headers(scope=scope)
        limit = self.route_limits.get(scope.get("path", ""), self.max_body_bytes)
        too_large = ServiceError("PAYLOAD_TOO_LARGE", f"request body is larger than {limit} bytes")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        content_type = headers.get("content-type")
        if not _is_json(content_type):
            # CSRF: a browser sends form and text/plain bodies cross-site without a preflight,
            # so such a request must not act, even with an empty body (cancel, retry, delete).
            given = f"not {content_type!r}" if content_type else "but no Content-Type was sent"
            raise ServiceError(
                "UNSUPPORTED_MEDIA_TYPE",
                f"state-changing requests must be sent as application/json, {given}",
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body.strip():
            return body
        check = partial(
            check_json_shape,
            body,
            max_depth=self.max_depth,
            max_number_chars=self.max_number_chars,
        )
        # A large body takes milliseconds to scan: off the event loop.
        problem = (
            check() if len(body) < _SCAN_ON_LOOP_MAX else await anyio.to_thread.run_sync(check)
        )
        if problem is not None:
            raise ServiceError(
                "INVALID_REQUEST", problem, errors=[{"path": "$", "message": problem}]
            )
        return body
