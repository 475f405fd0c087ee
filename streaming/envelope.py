"""The event envelope (CloudEvents 1.0, structured JSON mode) and its one shared encoder.

An event is encoded once, when it is stamped; every subscriber and every log line share those
bytes (`Event.raw`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from streaming.errors import InvalidEventId
from streaming.events import (  # re-exported: the names are defined once, in streaming.events
    EVENT_TYPES,
    RUN_CANCELLED,
    RUN_FINISHED,
    RUN_INTERRUPTED,
    RUN_QUEUED,
    RUN_STARTED,
    SESSION_CREATED,
    SESSION_DELETED,
    SESSION_STATE_CHANGED,
    SESSION_UPDATED,
    SOURCES_CHANGED,
    STEP_FINISHED,
    STEP_PROGRESS,
    STEP_STARTED,
    STREAM_GAP,
    TERMINAL_RUN_TYPES,
)
from streaming.framing import http_chunk, ws_text_frame

__all__ = [
    "EVENT_TYPES", "RUN_CANCELLED", "RUN_FINISHED", "RUN_INTERRUPTED", "RUN_QUEUED", "RUN_STARTED",
    "SESSION_CREATED", "SESSION_DELETED", "SESSION_STATE_CHANGED", "SESSION_UPDATED",
    "SOURCES_CHANGED", "STEP_FINISHED", "STEP_PROGRESS", "STEP_STARTED", "STREAM_GAP",
    "TERMINAL_RUN_TYPES", "Envelope", "Event", "decode", "encode", "format_id", "parse_id",
    "parse_since", "utc_now",
]  # fmt: skip


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """CloudEvents 1.0 envelope. `subject` and `runid` are omitted when the event has no run."""

    specversion: str
    id: str  # "<epoch>-<seq>"
    source: str  # "/v1/sessions/<sid>"
    type: str
    time: str  # RFC 3339, UTC
    datacontenttype: str
    sessionid: str
    seq: int
    data: dict[str, Any]
    subject: str | None = None  # the run id
    runid: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(raw: bytes | str) -> Envelope:
    """Parse one envelope (raises `msgspec.ValidationError`/`DecodeError` on bad input)."""
    return _decoder.decode(raw)


def format_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_id(event_id: str) -> tuple[str, int]:
    """Split `"<epoch>-<seq>"`. Raises ValueError for anything else (CR/LF/NUL included)."""
    epoch, sep, seq_text = event_id.rpartition("-")
    if not sep or not epoch or not seq_text.isdigit() or not seq_text.isascii():
        raise ValueError(f"malformed event id {event_id!r}")
    if any(c in epoch for c in "\r\n\x00") or not epoch.isascii():
        raise ValueError(f"malformed event id {event_id!r}")
    return epoch, int(seq_text)


def parse_since(value: str | None) -> tuple[str | None, int] | None:
    """A resume point: `None` -> None (live only); `"0"` -> (None, 0) (everything retained);
    an event id -> (epoch, seq). Raises `streaming.errors.InvalidEventId` for anything else."""
    if value is None:
        return None
    if value == "0":
        return (None, 0)
    try:
        return parse_id(value)
    except ValueError:
        raise InvalidEventId(value) from None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Event:
    """A stamped event: envelope fields plus its encoded bytes, shared by every consumer."""

    __slots__ = (
        "_chunk",
        "_sse",
        "_text",
        "_ws",
        "envelope",
        "raw",
        "run_id",
        "seq",
        "session_id",
        "type",
    )

    def __init__(self, envelope: Envelope, raw: bytes | None = None) -> None:
        self.envelope = envelope
        self.raw = raw if raw is not None else encode(envelope)
        self.seq = envelope.seq
        self.session_id = envelope.sessionid
        self.run_id = envelope.runid
        self.type = envelope.type
        self._sse: bytes | None = None
        self._text: str | None = None
        self._ws: bytes | None = None
        self._chunk: bytes | None = None

    def ws_frame(self) -> bytes:
        """The event as a complete WebSocket text frame; built once, shared."""
        frame = self._ws
        if frame is None:
            frame = self._ws = ws_text_frame(self.raw)
        return frame

    def sse_chunk(self) -> bytes:
        """`sse_frame()` as one HTTP/1.1 body chunk; built once, shared."""
        chunk = self._chunk
        if chunk is None:
            chunk = self._chunk = http_chunk(self.sse_frame())
        return chunk

    def text(self) -> str:
        """`raw` as str (a WebSocket text frame's payload); decoded once, shared."""
        text = self._text
        if text is None:
            text = self._text = self.raw.decode()
        return text

    def sse_frame(self) -> bytes:
        """The event as one SSE frame (`id:`, `event:`, `data:` on one line); built once, on
        first use, and shared by every SSE subscriber."""
        frame = self._sse
        if frame is None:
            frame = b"".join(
                (b"id: ", self.id.encode(), b"\nevent: ", self.type.encode(), b"\ndata: ",
                 self.raw, b"\n\n")
            )  # fmt: skip
            self._sse = frame
        return frame

    @property
    def id(self) -> str:
        return self.envelope.id

    @classmethod
    def create(
        cls,
        *,
        epoch: str,
        seq: int,
        type: str,
        session_id: str,
        data: dict[str, Any],
        run_id: str | None = None,
        time: str | None = None,
    ) -> Event:
        env = Envelope(
            specversion="1.0",
            id=format_id(epoch, seq),
            source=f"/v1/sessions/{session_id}",
            type=type,
            time=time or utc_now(),
            datacontenttype="application/json",
            sessionid=session_id,
            seq=seq,
            data=data,
            subject=run_id,
            runid=run_id,
        )
        return cls(env)

    @classmethod
    def from_raw(cls, raw: bytes) -> Event:
        return cls(decode(raw), raw)
