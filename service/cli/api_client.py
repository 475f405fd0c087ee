"""A thin HTTP client for the runwire API, used by the CLI (`runwire session|events|runs`).

Everything that can go wrong on the wire is translated here, once, into
`service.cli.errors.CliError` carrying the one line the CLI prints:

- a problem+json answer becomes `CODE: detail` (exit status `EXIT_API_ERROR`);
- a connection failure becomes `cannot reach URL: reason` (exit status `EXIT_UNAVAILABLE`).

Timeouts are on by default (`DEFAULT_TIMEOUT`). `EventStream` follows a Server-Sent Events
endpoint and resumes by itself after a dropped connection, from the last event id it saw, so
a consumer neither loses nor repeats events.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote

import httpx

from service.cli.errors import EXIT_API_ERROR, EXIT_UNAVAILABLE, CliError
from streaming.events import STREAM_GAP

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/v1"


# Generous for a busy server, short enough that a dead one is noticed.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# The server sends an SSE keep-alive comment every 15 s, so a stream silent for 45 s is dead.
STREAM_READ_TIMEOUT_S = 45.0


def resolve_url(url: str | None) -> str:
    """`--url`, else `RUNWIRE_URL`, else `DEFAULT_URL`; without a trailing slash.

    The server's root is meant, but a URL ending in the API's base path (`.../v1`, as the HTTP
    docs show it) names the same server, so that suffix is dropped rather than doubled.
    """
    chosen = url or os.environ.get("RUNWIRE_URL") or DEFAULT_URL
    if "://" not in chosen:
        chosen = "http://" + chosen
    return chosen.rstrip("/").removesuffix(API_PREFIX)


def resolve_token(token: str | None) -> str | None:
    """`--token`, else `RUNWIRE_TOKEN`, else no token."""
    return token or os.environ.get("RUNWIRE_TOKEN") or None


def seg(value: str) -> str:
    """One URL path segment (a session id, run id or ref), percent-encoded."""
    return quote(value, safe="")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def problem_error(response: httpx.Response) -> CliError:
    """Map an error response to the CLI's one-line error: `CODE: detail`.

    Validation problems (`errors: [{path, message}]`) are appended, `; `-separated, so a user
    sees every problem of an invalid pipeline file on the one line.
    """
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        message = f"{body['code']}: {body.get('detail') or body.get('title') or ''}".rstrip(": ")
        problems = body.get("errors")
        if isinstance(problems, list) and problems:
            listed = "; ".join(
                f"{p.get('path')}: {p.get('message')}" if isinstance(p, dict) else str(p)
                for p in problems
            )
            message = f"{message} ({listed})"
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            message = f"{message} (retry after {retry_after} s)"
    else:
        message = f"HTTP {response.status_code}: {response.reason_phrase or 'error'}"
    return CliError(_one_line(message), EXIT_API_ERROR)


class RunwireClient:
    """Synchronous client for one runwire server.

    `request()` returns the decoded JSON body (None for an empty answer) or raises `CliError`.
    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_url(base_url)
        headers = {"User-Agent": "runwire-cli", "Accept": "application/json"}
        token = resolve_token(token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Loading the CA bundle costs ~50 ms of the 0.3 s start-up budget; a plain-http URL
        # never uses it (redirects are not followed, so no request can switch to https).
        plain_http = self.base_url.startswith("http://")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=not plain_http,
        )

    def __enter__(self) -> RunwireClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        return API_PREFIX + path

    def transport_error(self, exc: httpx.TransportError) -> CliError:
        """Map an httpx transport failure to `cannot reach URL: reason`."""
        reason = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            reason = f"timed out ({reason})" if str(exc) else "timed out"
        return CliError(f"cannot reach {self.base_url}: {reason}", EXIT_UNAVAILABLE)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request to `/v1<path>`; the JSON answer, or `CliError`."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(
                method, self.url(path), json=json, params=clean, headers=headers
            )
        except httpx.TransportError as exc:
            raise self.transport_error(exc) from exc
        if response.status_code >= 400:
            raise problem_error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(
                f"invalid JSON from {self.base_url}{self.url(path)}", EXIT_API_ERROR
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, headers=headers)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        # No body, but the server's CSRF rule wants every state-changing request to be JSON.
        return self.request("DELETE", path, headers={"Content-Type": "application/json"})

    def download(self, path: str, sink: IO[bytes]) -> int:
        """Stream the body of `GET /v1<path>` into `sink`; the number of bytes written."""
        written = 0
        try:
            with self.http.stream("GET", self.url(path), headers={"Accept": "*/*"}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise problem_error(response)
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise self.transport_error(exc) from exc
        return written

    def events(
        self,
        path: str,
        *,
        since: str | None = None,
        params: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        on_reconnect: Callable[[str, float], None] | None = None,
        give_up: Callable[[], bool] | None = None,
    ) -> EventStream:
        """Follow the SSE endpoint `/v1<path>` (see `EventStream`)."""
        return EventStream(
            self,
            path,
            since=since,
            params=params,
            backoff=backoff,
            on_reconnect=on_reconnect,
            give_up=give_up,
        )


@dataclass
class SseFrame:
    """One dispatched Server-Sent Events frame."""

    data: str
    event: str = "message"
    id: str | None = None


@dataclass
class SseParser:
    """Sans-I/O SSE parser (the WHATWG event-stream format), fed one decoded line at a time.

    `retry_ms` holds the server's last `retry:` hint. Comments (`:` keep-alives) are ignored.
    """

    retry_ms: int | None = None
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _id: str | None = None

    def feed(self, line: str) -> SseFrame | None:
        """Consume one line (without its terminator); a frame when a blank line ends one."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            frame = SseFrame(
                data="\n".join(self._data), event=self._event or "message", id=self._id
            )
            self._data, self._event, self._id = [], "", None
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


@dataclass
class Backoff:
    """Reconnect delays: `initial` doubling up to `maximum`, with jitter so that many clients
    dropped at once do not reconnect in lockstep. `reset()` after a successful event."""

    initial: float = 0.25
    maximum: float = 5.0
    _next: float | None = None

    def next_delay(self) -> float:
        delay = self.initial if self._next is None else self._next
        self._next = min(self.maximum, delay * 2)
        return delay * random.uniform(0.75, 1.0)

    def reset(self) -> None:
        self._next = None


def _id_key(event_id: str | None) -> tuple[str, int] | None:
    """`(epoch, seq)` from `"<epoch>-<seq>"`, or None for anything else."""
    if not event_id:
        return None
    epoch, sep, seq = event_id.rpartition("-")
    if not sep or not seq.isdigit():
        return None
    return epoch, int(seq)


class _RetryableStatus(Exception):
    """A 5xx answer to a reconnect: retried like a dropped connection."""


class EventStream:
    """Iterate the events (decoded CloudEvents dicts) of one SSE endpoint, resuming after drops.

    The stream keeps the id of the last event it yielded. When the connection drops (a network
    error, a read timeout, or the server ending the stream, which it does to a subscriber that
    fell behind), it waits (`Backoff`, seeded from the server's `retry:` hint) and reconnects
    with `Last-Event-ID`, so the server replays exactly what was missed. An event whose seq is
    not above the last one of the same epoch is dropped, so nothing is yielded twice even if a
    server replays too much; `stream.gap` events are always passed on.

    The first connection failing raises `CliError` at once. Later failures are retried for as
    long as the caller keeps iterating; `on_reconnect(reason, delay_s)` reports each attempt.
    `give_up()`, if given, is asked when a connection was ended by the server without bringing
    any new event; returning True ends the iteration (for a finished run whose terminal event
    will not come, so that a misbehaving server cannot keep the client reconnecting forever).
    An HTTP 4xx answer on a reconnect raises `CliError` (the session or run is gone).
    """

    def __init__(
        self,
        client: RunwireClient,
        path: str,
        *,
        since: str | None = None,
        params: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        on_reconnect: Callable[[str, float], None] | None = None,
        give_up: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.params = dict(params or {})
        if since is not None:
            self.params["since"] = since
        self.backoff = backoff or Backoff()
        self.on_reconnect = on_reconnect
        self.give_up = give_up
        self.last_event_id: str | None = None
        self.connections = 0  # successful connections so far
        self.repeats_dropped = 0

    def _is_repeat(self, frame_id: str | None, event_type: str) -> bool:
        if event_type == STREAM_GAP:
            return False
        new, last = _id_key(frame_id), _id_key(self.last_event_id)
        return new is not None and last is not None and new[0] == last[0] and new[1] <= last[1]

    def _connect_headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def _frames(self) -> Iterator[SseFrame]:
        """One connection's frames; returns when the server ends the stream."""
        timeout = httpx.Timeout(STREAM_READ_TIMEOUT_S, connect=self.client.http.timeout.connect)
        with self.client.http.stream(
            "GET",
            self.client.url(self.path),
            params=self.params,
            headers=self._connect_headers(),
            timeout=timeout,
        ) as response:
            if response.status_code >= 400:
                response.read()
                if response.status_code >= 500 and self.connections > 0:
                    # A restarting server (503) is worth waiting for; a 4xx is not.
                    raise _RetryableStatus(f"HTTP {response.status_code}")
                raise problem_error(response)
            self.connections += 1
            parser = SseParser()
            for line in response.iter_lines():
                frame = parser.feed(line)
                if parser.retry_ms is not None:
                    self.backoff.initial = max(0.01, parser.retry_ms / 1000)
                if frame is not None:
                    yield frame

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import json

        while True:
            ended_cleanly = False
            new_events = 0
            try:
                for frame in self._frames():
                    if not frame.data:
                        continue
                    try:
                        event = json.loads(frame.data)
                    except ValueError:
                        continue  # not an envelope; nothing we can show or resume from
                    frame_id = frame.id or (event.get("id") if isinstance(event, dict) else None)
                    event_type = event.get("type", frame.event) if isinstance(event, dict) else ""
                    if self._is_repeat(frame_id, event_type):
                        self.repeats_dropped += 1
                        continue
                    if frame_id and _id_key(frame_id) is not None:
                        self.last_event_id = frame_id
                    new_events += 1
                    self.backoff.reset()
                    yield event
                ended_cleanly = True
                reason = "stream ended"
            except httpx.TransportError as exc:
                if self.connections == 0:
                    raise self.client.transport_error(exc) from exc
                reason = _one_line(str(exc)) or type(exc).__name__
            except _RetryableStatus as exc:
                reason = str(exc)
            if ended_cleanly and new_events == 0 and self.give_up is not None and self.give_up():
                return
            delay = self.backoff.next_delay()
            if self.on_reconnect is not None:
                self.on_reconnect(reason, delay)
            time.sleep(delay)
