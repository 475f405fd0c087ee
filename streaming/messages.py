"""WebSocket wire types (contract section 5.2): client ops and server replies.

A tagged union on `op`, decoded by ONE decoder built once; the AsyncAPI document is generated
from these same Structs, so the description cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

RequestId = str | int | None  # chosen by the client, echoed in the reply
# A session id as the contract defines it (section 4): a malformed one in `subscribe` is an
# INVALID_REQUEST error reply, not a silent subscription to a session that can never exist.
SessionId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Sessions = list[SessionId] | Literal["*"]
Mode = Literal["auto", "partial", "full"]


class _Op(
    msgspec.Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    id: RequestId = None


class Subscribe(_Op, tag="subscribe"):
    """Receive these sessions' events ("*": all), replaying what is retained after `since`."""

    sessions: Sessions
    since: str | None = None


class Unsubscribe(_Op, tag="unsubscribe"):
    """Stop receiving these sessions' events ("*": everything)."""

    sessions: Sessions


class Ping(_Op, tag="ping"):
    """Answered with `{"pong": true}`."""


class Process(_Op, tag="process"):
    """Submit a run (as `POST /v1/sessions/{session}/process`)."""

    session: str
    mode: Mode | None = None
    changed_sources: list[str] | None = None
    coalesce: bool | None = None
    run_name: str | None = None


class SetSample(_Op, tag="set_sample"):
    """Set source `sample` (as `POST /v1/sessions/{session}/sample`)."""

    session: str
    location: str
    type: str | None = None
    options: dict[str, Any] | None = None
    process: bool | None = None


class Cancel(_Op, tag="cancel"):
    """Cancel a run (as `POST /v1/runs/{run_id}/cancel`)."""

    run_id: str


class DryRun(_Op, tag="dry_run"):
    """Plan a run without running it (as `POST /v1/sessions/{session}/process/dry-run`)."""

    session: str
    mode: Mode | None = None
    changed_sources: list[str] | None = None
    coalesce: bool | None = None
    run_name: str | None = None


# The ops the channel forwards, typed, to the service's `ControlHandler`.
ControlOp = Process | SetSample | Cancel | DryRun
ClientMessage = Subscribe | Unsubscribe | Ping | Process | SetSample | Cancel | DryRun


def op_name(op: ClientMessage) -> str:
    """The `op` tag of a decoded message ("process", ...)."""
    return str(type(op).__struct_config__.tag)


class ReplyError(msgspec.Struct):
    code: str
    message: str


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The server's answer to one client op (`result` when ok, else `error`)."""

    type: Literal["reply"]
    id: RequestId
    ok: bool
    result: dict[str, Any] | None = None
    error: ReplyError | None = None


class SubscribeResult(msgspec.Struct):
    """`result` of a subscribe reply; sent before any replayed event."""

    sessions: Sessions
    epoch: str
    top_seq: int
    replayed: int
    recovered: bool  # false when a stream.gap follows


class GapData(msgspec.Struct):
    """`data` of a `stream.gap` event: ids are `"<epoch>-<seq>"` (or "0")."""

    requested: str
    oldest_available: str | None
    epoch: str


decoder = msgspec.json.Decoder(ClientMessage)
_encoder = msgspec.json.Encoder()


def ok_reply(request_id: RequestId, result: dict[str, Any]) -> bytes:
    return _encoder.encode(Reply(type="reply", id=request_id, ok=True, result=result))


def error_reply(request_id: RequestId, code: str, message: str) -> bytes:
    error = ReplyError(code, message)
    return _encoder.encode(Reply(type="reply", id=request_id, ok=False, error=error))


def request_id_of(raw: str | bytes) -> RequestId:
    """The `id` of a message that failed validation, if it has a usable one (for the reply)."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    rid = value.get("id") if isinstance(value, dict) else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None
