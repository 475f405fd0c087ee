"""The AsyncAPI 3.0 description of the event channels (served at `/v1/asyncapi.json`).

Generated from the same Structs the server decodes and encodes (`streaming.messages`,
`streaming.envelope.Envelope`) through `msgspec.json.schema_components`, so a test-free drift
between description and behaviour is impossible: change a Struct and the document follows.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import msgspec

from streaming.envelope import Envelope
from streaming.events import EVENT_TYPES
from streaming.messages import (
    Cancel,
    DryRun,
    GapData,
    Ping,
    Process,
    Reply,
    SetSample,
    Subscribe,
    SubscribeResult,
    Unsubscribe,
)

_REF = "#/components/schemas/{name}"

# message name -> (Struct, summary)
_CLIENT_MESSAGES: dict[str, tuple[type[msgspec.Struct], str]] = {
    "subscribe": (Subscribe, "Subscribe to sessions, optionally resuming after an event id."),
    "unsubscribe": (Unsubscribe, "Stop receiving some sessions' events."),
    "ping": (Ping, "Liveness check; answered with a reply."),
    "process": (Process, "Submit a run of a session."),
    "set_sample": (SetSample, "Set a session's sample source, optionally processing it."),
    "cancel": (Cancel, "Cancel a run."),
    "dry_run": (DryRun, "Plan a run without running it."),
}
_SERVER_MESSAGES: dict[str, tuple[type[msgspec.Struct], str]] = {
    "event": (Envelope, "A CloudEvents 1.0 event (`specversion` present)."),
    "reply": (Reply, "The answer to one client op, echoing its `id`."),
}


def _schemas() -> dict[str, Any]:
    types = [s for s, _ in (*_CLIENT_MESSAGES.values(), *_SERVER_MESSAGES.values())]
    _, components = msgspec.json.schema_components(
        [*types, SubscribeResult, GapData], ref_template=_REF
    )
    envelope = components["Envelope"]
    envelope["properties"]["type"]["enum"] = list(EVENT_TYPES)
    envelope["description"] = (
        "CloudEvents 1.0 envelope. `id` is `<epoch>-<seq>`; `seq` is one server-wide counter, "
        "strictly increasing, continued across restarts. `stream.gap` events carry GapData."
    )
    return components


def _message(name: str, struct: type[msgspec.Struct], summary: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(name=struct.__name__)},
    }


def _operation(action: str, channel: str, messages: list[str]) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in messages],
    }


def _channel(address: str, messages: list[str], description: str, **params: str) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in messages},
    }
    if params:
        channel["parameters"] = {k: {"description": v} for k, v in params.items()}
    return channel


_SSE_NOTE = (
    "Server-Sent Events (GET, Accept: text/event-stream): frames `id:`, `event:` (the type), "
    "`data:` (the envelope on one line); resume with `Last-Event-ID`, `?since=` or "
    "`?last_event_id=` (the header wins; `0` replays everything retained). Ids are "
    "`<epoch>-<seq>`; a malformed one is 422. Allowed origins get CORS headers."
)
_WS_NOTE = (
    "WebSocket, JSON text frames. Client ops carry an optional `id`, echoed in their reply. The "
    "subscribe reply precedes any replayed event. Close codes: 1000 normal, 1001 shutdown, "
    "1008 policy, 1009 message over 1 MiB, 1011 internal error, 1013 too slow (resume from "
    "the last id). A message that is not valid JSON, nests deeper than 32 levels, has a number "
    "literal over 64 characters or names a bad path gets an INVALID_REQUEST error reply and the "
    "connection stays. The handshake is refused with HTTP 421 MISDIRECTED_REQUEST when a "
    "loopback-bound server does not know the Host; a disallowed Origin is closed with 1008."
)


@functools.cache
def _document() -> dict[str, Any]:
    client = list(_CLIENT_MESSAGES)
    server = list(_SERVER_MESSAGES)
    messages = {
        name: _message(name, struct, summary)
        for name, (struct, summary) in {**_CLIENT_MESSAGES, **_SERVER_MESSAGES}.items()
    }
    sid = "session id"
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "runwire event streams",
            "version": "1.0.0",
            "description": "Live lifecycle events of runwire sessions and runs, with replay.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "ws": _channel("/v1/ws", client + server, _WS_NOTE),
            "sessionWs": _channel(
                "/v1/sessions/{sid}/events",
                client + server,
                _WS_NOTE + " Subscribed to the session at once (`?since=` honoured).",
                sid=sid,
            ),
            "sessionSse": _channel("/v1/sessions/{sid}/events", ["event"], _SSE_NOTE, sid=sid),
            "eventsSse": _channel(
                "/v1/events", ["event"], _SSE_NOTE + " `?sessions=a,b`; all when omitted."
            ),
            "runSse": _channel(
                "/v1/runs/{run_id}/events",
                ["event"],
                _SSE_NOTE + " Ends after the run's terminal event.",
                run_id="run id",
            ),
        },
        "operations": {
            "receiveOps": _operation("receive", "ws", client),
            "sendWs": _operation("send", "ws", server),
            "receiveSessionOps": _operation("receive", "sessionWs", client),
            "sendSessionWs": _operation("send", "sessionWs", server),
            **{
                f"send{name[0].upper()}{name[1:]}": _operation("send", name, ["event"])
                for name in ("sessionSse", "eventsSse", "runSse")
            },
        },
        "components": {"schemas": _schemas(), "messages": messages},
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_document())
