"""The service's one exception root, translated into problem+json (or a WebSocket error reply)
in exactly one place (`service.problems`)."""

from __future__ import annotations

from typing import Any

# code -> HTTP status (contract section 4)
STATUS_BY_CODE: dict[str, int] = {
    "INVALID_REQUEST": 422,
    "PIPELINE_INVALID": 422,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "SESSION_NOT_FOUND": 404,
    "RUN_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "SESSION_EXISTS": 409,
    "MISSING_SOURCES": 409,
    "RUN_NOT_RETRYABLE": 409,
    "RUN_NOT_CANCELLABLE": 409,
    "QUEUE_FULL": 429,
    "MISDIRECTED_REQUEST": 421,
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL": 500,
    # Not one of the contract's codes (the contract never lists 405), but still a problem:
    # a known path with a method it does not serve.
    "METHOD_NOT_ALLOWED": 405,
}


class ServiceError(Exception):
    """An error a client should see: a contract `code`, its HTTP status, and a one-line detail.

    `errors` lists `{"path", "message"}` items (validation problems); `headers` adds response
    headers (`Retry-After` for QUEUE_FULL).
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status = STATUS_BY_CODE[code]
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://runwire.dev/problems/{self.code.lower().replace('_', '-')}",
            "title": self.code.replace("_", " ").capitalize(),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = self.errors
        return body
