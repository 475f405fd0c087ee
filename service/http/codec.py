"""JSON in and out of the HTTP handlers: one Encoder, one Decoder per request type, built once.

Bodies reach the handlers already bounded and checked by `service.http.limits` (size, media type,
nesting depth, number sizes); what is left here is typing: a body that does not match its Struct
is a 422 `INVALID_REQUEST` naming the failing path.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.contract.errors import ServiceError
from service.http.problems import validation_problems

__all__ = ["decode_body", "json_response"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
# Decoders are cached per type: building one compiles the type's validation, which should
# happen once per process, not once per request. The key space is the fixed set of request
# Structs, so the cache is bounded by construction.
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


async def decode_body(request: Request, type_: type[T], *, empty_ok: bool = False) -> T:
    """The request body decoded as `type_`; an empty body means `{}` when `empty_ok`.

    Raises `ServiceError("INVALID_REQUEST")` with `errors: [{path, message}]`.
    """
    body = await request.body()
    if not body.strip():
        if not empty_ok:
            # msgspec would say "Input data was truncated", which reads like a network fault.
            raise ServiceError(
                "INVALID_REQUEST",
                "a JSON request body is required",
                errors=[{"path": "$", "message": "request body is empty"}],
            )
        body = b"{}"
    try:
        return _decoder(type_).decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_problems(exc) from exc


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`content` (Structs, dicts, lists) encoded with the shared encoder as application/json."""
    return Response(
        _encoder.encode(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
