"""The service's one exception root, translated into problem+json (or a WebSocket error reply)
in exactly one place (`service.http.problems`)."""

from __future__ import annotations

import errno
import sqlite3
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
    "STORAGE_FULL": 507,
    "SERVICE_UNAVAILABLE": 503,
    "BROKER_UNAVAILABLE": 503,  # Redis (run queue or event bus) unreachable; with Retry-After
    "INTERNAL": 500,
    "PACKAGE_ACTIVATION_FAILED": 409,  # pipeline packages (service.runtime.packages)
    "PACKAGE_INSTALL_FAILED": 422,
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


# Seconds a client is asked to wait after STORAGE_FULL: freeing space is an operator's job, so
# not at once, but the service retries by itself and works again as soon as there is room.
STORAGE_FULL_RETRY_AFTER_S = 30

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from, says the disk (or the quota) is full:
    `OSError` ENOSPC/EDQUOT, SQLite's SQLITE_FULL ("database or disk is full"), or one of our
    errors wrapping either."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ServiceError) and exc.code == "STORAGE_FULL":
            return True
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(exc)
        ):
            return True
        if "database or disk is full" in str(exc) or "No space left on device" in str(exc):
            return True  # a wrapper that kept the message but not the cause (StoreError)
        exc = exc.__cause__ or exc.__context__
    return False


def storage_full_error() -> ServiceError:
    """507 STORAGE_FULL with `Retry-After` (contract section 4): nothing was half-written."""
    return ServiceError(
        "STORAGE_FULL",
        "the data directory's disk is full: nothing was changed; retry once space is freed",
        headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER_S)},
    )
