"""`runwire events tail` and the SSE client's resume logic, against a scripted SSE server.

The server here is a real TCP server speaking HTTP/1.1 (not a mock of our code): it serves a
fixed event log, honours `Last-Event-ID` / `?since=` like the contract says, and cuts
connections where a test asks it to — abruptly (mid-chunk, as a crashed proxy would) or
cleanly (as the server does to a subscriber that fell behind). That makes the drop points
deterministic, which a real server cannot promise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from service.cli import main
from service.cli.api_client import Backoff, RunwireClient, SseParser
from service.cli.errors import CliError
from service.cli.format import EventPrinter, event_line, progress_bar

RUNWIRE = Path(sys.executable).with_name("runwire")
EPOCH = "e1"
RUN = "run-1"


def make_events(
    n: int, *, terminal: str = "run.finished", status: str = "succeeded"
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for seq in range(1, n + 1):
        etype, data = (
            "step.progress",
            {"step": "emit", "fraction": seq / n, "message": f"tick {seq}"},
        )
        if seq == n:
            etype, data = terminal, {"status": status, "elapsed_s": 0.5, "dirty_steps": ["emit"]}
        events.append(
            {
                "specversion": "1.0",
                "id": f"{EPOCH}-{seq}",
                "source": "/v1/sessions/s1",
                "type": etype,
                "time": f"2024-05-01T12:00:{seq % 60:02d}.123456Z",
                "datacontenttype": "application/json",
                "sessionid": "s1",
                "subject": RUN,
                "runid": RUN,
                "seq": seq,
                "data": data,
            }
        )
    return events


@dataclass
class Connection:
    """What one SSE connection does: send `count` events (None: all), then end `how`."""

    count: int | None = None
    how: str = "clean"  # clean: chunked terminator; abrupt: close mid-chunk; hold: stay open
    ignore_resume: bool = False  # replay from the start regardless of Last-Event-ID


@dataclass
class ScriptedSseServer:
    """Serves `events` at every `/events` path and `run` as JSON at `/v1/runs/<id>`."""

    events: list[dict[str, Any]]
    script: list[Connection]
    run: dict[str, Any] = field(default_factory=dict)
    status_for_events: int = 200
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(5)

    def _handle(self, conn: socket.socket) -> None:
        # The client going away mid-answer is what some tests do on purpose.
        with contextlib.suppress(OSError):
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode()
            request_line, *header_lines = head.split("\r\n")
            target = request_line.split()[1]
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            self.requests.append((target, headers.get("last-event-id")))
            url = urlsplit(target)
            if url.path.endswith("/events"):
                self._sse(conn, headers, parse_qs(url.query))
            else:
                body = json.dumps(self.run).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def _sse(
        self, conn: socket.socket, headers: dict[str, str], query: dict[str, list[str]]
    ) -> None:
        if self.status_for_events != 200:
            body = json.dumps(
                {"code": "RUN_NOT_FOUND", "detail": "no run 'x'", "status": 404}
            ).encode()
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\n"
                + f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        number = self._connections
        self._connections += 1
        plan = self.script[number] if number < len(self.script) else Connection()
        after = headers.get("last-event-id") or query.get("since", ["0"])[0]
        start_seq = 0 if plan.ignore_resume or after == "0" else int(after.rpartition("-")[2])
        pending = [e for e in self.events if e["seq"] > start_seq]
        if plan.count is not None:
            pending = pending[: plan.count]
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )

        def chunk(payload: bytes) -> bytes:
            return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"

        conn.sendall(chunk(b"retry: 10\n\n: keep-alive\n\n"))
        for event in pending:
            frame = f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
            conn.sendall(chunk(frame.encode()))
        if plan.how == "hold":
            self._stop.wait()  # until the test ends: a held stream never drops by itself
        elif plan.how == "abrupt":
            conn.sendall(b"400\r\nid: partial")  # a chunk cut short: the peer vanished
            conn.shutdown(socket.SHUT_RDWR)
        else:
            conn.sendall(b"0\r\n\r\n")


@pytest.fixture
def sse_server() -> Iterator[Callable[..., ScriptedSseServer]]:
    servers: list[ScriptedSseServer] = []

    def start(**kwargs: Any) -> ScriptedSseServer:
        server = ScriptedSseServer(**kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def follow(server: ScriptedSseServer, **kwargs: Any) -> list[dict[str, Any]]:
    with RunwireClient(server.url) as client:
        received = []
        for event in client.events(
            f"/runs/{RUN}/events", since="0", backoff=Backoff(0.01, 0.05), **kwargs
        ):
            received.append(event)
            if event["type"].startswith("run.") and event["type"] != "run.started":
                break
        return received


# --- the SSE parser ---------------------------------------------------------------------------


def test_sse_parser_joins_data_lines_and_keeps_id_event_and_retry() -> None:
    parser = SseParser()
    lines = [
        ": keep-alive",
        "retry: 250",
        "id: e-7",
        "event: step.progress",
        'data: {"a":',
        "data: 1}",
        "",
    ]
    frames = [f for f in (parser.feed(line) for line in lines) if f is not None]
    assert len(frames) == 1
    assert frames[0].id == "e-7" and frames[0].event == "step.progress"
    assert json.loads(frames[0].data) == {"a": 1}
    assert parser.retry_ms == 250
    # A blank line without data dispatches nothing; fields do not leak into the next frame.
    assert parser.feed("") is None
    assert parser.feed("data:x") is None
    frame = parser.feed("")
    assert frame is not None and frame.id is None and frame.event == "message" and frame.data == "x"


# --- resume -----------------------------------------------------------------------------------


def test_abrupt_drop_resumes_with_last_event_id_losing_and_repeating_nothing(
    sse_server: Any,
) -> None:
    events = make_events(12)
    server = sse_server(
        events=events, script=[Connection(3, "abrupt"), Connection(4, "abrupt"), Connection()]
    )
    received = follow(server)
    assert ids(received) == ids(events)
    # The reconnects asked for exactly what was missed.
    assert [last for _, last in server.requests] == [None, "e1-3", "e1-7"]


def test_clean_end_of_stream_before_the_run_ended_is_resumed(sse_server: Any) -> None:
    events = make_events(6)
    server = sse_server(events=events, script=[Connection(2, "clean"), Connection()])
    assert ids(follow(server)) == ids(events)
    assert server.requests[1][1] == "e1-2"


def test_a_server_that_replays_too_much_still_yields_each_event_once(sse_server: Any) -> None:
    events = make_events(8)
    server = sse_server(
        events=events, script=[Connection(5, "abrupt"), Connection(ignore_resume=True)]
    )
    with RunwireClient(server.url) as client:
        stream = client.events(f"/runs/{RUN}/events", since="0", backoff=Backoff(0.01, 0.05))
        received = []
        for event in stream:
            received.append(event)
            if event["type"] == "run.finished":
                break
    assert ids(received) == ids(events)
    assert stream.repeats_dropped == 5


def test_give_up_ends_a_stream_that_keeps_ending_without_new_events(sse_server: Any) -> None:
    events = make_events(4)[:3]  # the terminal event never comes
    server = sse_server(events=events, script=[Connection(), Connection()])
    asked = []

    def finished() -> bool:
        asked.append(True)
        return True

    with RunwireClient(server.url) as client:
        got = list(
            client.events(
                "/runs/x/events", since="0", backoff=Backoff(0.01, 0.05), give_up=finished
            )
        )
    assert ids(got) == ids(events)
    assert len(asked) == 1  # asked only after a reconnection brought nothing new


def test_reconnects_are_reported(sse_server: Any) -> None:
    events = make_events(5)
    server = sse_server(events=events, script=[Connection(2, "abrupt"), Connection()])
    reports: list[tuple[str, float]] = []
    received = follow(server, on_reconnect=lambda reason, delay: reports.append((reason, delay)))
    assert ids(received) == ids(events)
    assert len(reports) == 1 and reports[0][1] <= 0.05


def test_first_connection_refused_is_one_line_error() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with RunwireClient(f"http://127.0.0.1:{port}") as client, pytest.raises(CliError) as info:
        list(client.events("/events"))
    assert str(info.value).startswith(f"cannot reach http://127.0.0.1:{port}: ")
    assert info.value.exit_code == 69


def test_problem_answer_on_connect_is_code_and_detail(sse_server: Any) -> None:
    server = sse_server(events=[], script=[], status_for_events=404)
    with RunwireClient(server.url) as client, pytest.raises(CliError) as info:
        list(client.events("/runs/x/events"))
    assert str(info.value) == "RUN_NOT_FOUND: no run 'x'"


# --- `runwire events tail --run` --------------------------------------------------------------


@pytest.mark.parametrize(
    ("terminal", "status", "run", "expected"),
    [
        ("run.finished", "succeeded", {"status": "succeeded"}, 0),
        ("run.finished", "failed", {"status": "failed", "error": {"code": "STEP_EXCEPTION"}}, 2),
        ("run.cancelled", "cancelled", {"status": "cancelled"}, 5),
    ],
)
def test_tail_run_exits_with_the_runs_outcome(
    sse_server: Any,
    capsys: pytest.CaptureFixture[str],
    terminal: str,
    status: str,
    run: dict[str, Any],
    expected: int,
) -> None:
    events = make_events(4, terminal=terminal, status=status)
    server = sse_server(
        events=events, script=[Connection(2, "abrupt"), Connection()], run={"run_id": RUN, **run}
    )
    code = main(["events", "--url", server.url, "tail", "--run", RUN, "--json"])
    out, err = capsys.readouterr()
    assert code == expected
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids(events)
    assert "reconnecting" in err


def test_tail_human_output_is_one_line_per_event(
    sse_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_events(3)
    server = sse_server(
        events=events, script=[Connection()], run={"run_id": RUN, "status": "succeeded"}
    )
    assert main(["events", "tail", "--url", server.url, "--run", RUN]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # not a terminal: progress as plain lines too
    assert lines[0].split()[:6] == ["12:00:01.123", "s1", RUN, "step.progress", "emit", "33%"]
    assert lines[-1].split() == [
        "12:00:03.123",
        "s1",
        RUN,
        "run.finished",
        "-",
        "succeeded",
        "0.500s",
    ]


def test_tail_of_an_unknown_run_is_one_line_error(
    sse_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = sse_server(events=[], script=[], status_for_events=404)
    assert main(["events", "--url", server.url, "tail", "--run", "x"]) == 1
    assert capsys.readouterr().err == "error: RUN_NOT_FOUND: no run 'x'\n"


def read_lines(stream: Any, count: int, timeout: float = 60.0) -> list[str]:
    """`count` lines from a child's stdout pipe, failing (not hanging) after `timeout` s."""
    import selectors

    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while len(lines) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(lines)} of {count} lines came: {lines!r}"
            if not selector.select(remaining):
                continue
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"the child closed stdout after {lines!r}"
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
    return lines


def test_ctrl_c_ends_a_follow_quietly_with_status_0(sse_server: Any) -> None:
    events = make_events(3)
    server = sse_server(events=events, script=[Connection(how="hold")])
    proc = subprocess.Popen(
        [str(RUNWIRE), "events", "--url", server.url, "tail", "s1", "--since", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # Every event printed: the tail is now inside its loop, waiting on the held stream
        # (which the server keeps open until the test ends, so nothing else can happen).
        lines = read_lines(proc.stdout, len(events))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert err == b"" and out == b""
        assert [json.loads(line)["id"] for line in lines] == ids(events)
        assert server.requests[0][0] == "/v1/sessions/s1/events?since=0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_closed_stdout_exits_quietly(sse_server: Any) -> None:
    events = make_events(3000)  # far more than a pipe buffer holds
    server = sse_server(events=events, script=[Connection(how="hold")])
    proc = subprocess.Popen(
        [str(RUNWIRE), "events", "--url", server.url, "tail", "--since", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["id"] == "e1-1"
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(30) == 141
    assert err == b""


# --- event formatting -------------------------------------------------------------------------


class FakeTty:
    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, text: str) -> int:
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_redraws_one_status_line_on_a_terminal() -> None:
    out = FakeTty()
    printer = EventPrinter(out, tty=True)  # type: ignore[arg-type]
    for event in make_events(4):
        printer.print(event)
    printer.close()
    text = "".join(out.written)
    # Three progress events redraw one line; the run.finished line replaces it.
    assert text.count("\n") == 1
    assert text.count("\r\x1b[K") == 4
    assert f"run-1 emit {progress_bar(2 / 4, 30)} tick 2" in text
    assert text.rsplit("\r\x1b[K", 1)[1].split()[3] == "run.finished"


def test_progress_bar_is_clamped() -> None:
    assert progress_bar(0.5, 10) == "[#####.....]  50%"
    assert progress_bar(1.7, 4) == "[####] 100%"
    assert progress_bar(-1, 4) == "[....]   0%"


def test_event_line_shows_step_status_and_duration() -> None:
    event = make_events(2)[0] | {
        "type": "step.finished",
        "data": {"step": "reduce.bin", "status": "failed", "duration_s": 12.25},
    }
    assert event_line(event).split() == [
        "12:00:01.123",
        "s1",
        RUN,
        "step.finished",
        "reduce.bin",
        "failed",
        "12.2s",
    ]
    gap = make_events(1)[0] | {
        "type": "stream.gap",
        "runid": None,
        "data": {"requested": "e0-5", "oldest_available": "e1-1"},
    }
    assert "gap: requested e0-5, oldest e1-1" in event_line(gap)
