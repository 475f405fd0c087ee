"""Stateful property test of the broker core (no sockets): random publishes (in and out of seq
order), subscribes, consumes, disconnects, resumes, evictions of events and of whole session
buffers (capped count, dropped on `session.deleted`).

Invariants, per logical client (a chain of connections, each resuming from the last id the
previous one received): events in strictly increasing seq order, no duplicates, only matching
events, and no silent gaps (every matching event missed lies inside a `stream.gap` range).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streaming.broker import Broker
from streaming.envelope import SESSION_DELETED, STREAM_GAP, Event, parse_id
from streaming.subscription import Subscription

SESSIONS = ("a", "b", "c")
T = TypeVar("T")


class ListHistory:
    """A HistorySource over every event published (what the service keeps on disk)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def events_after(
        self, seq: int, sessions: Collection[str] | None, run_id: str | None
    ) -> Iterable[bytes]:
        for e in sorted(self.events, key=lambda e: e.seq):
            if (
                e.seq > seq
                and (sessions is None or e.session_id in sessions)
                and (run_id is None or e.run_id == run_id)
            ):
                yield e.raw


@dataclass
class Client:
    sessions: frozenset[str] | None
    start: int  # matching events above this seq are owed to the client
    sub: Subscription
    received: list[Event] = field(default_factory=list)

    def wants(self, event: Event) -> bool:
        return self.sessions is None or event.session_id in self.sessions

    @property
    def last_id(self) -> str | None:
        return self.received[-1].id if self.received else None


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.published: list[Event] = []
        self.clients: list[Client] = []
        self.history: ListHistory | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        # Let the broker's call_soon(_drain) callbacks run.
        for _ in range(3):
            self.run(asyncio.sleep(0))

    @initialize(
        with_history=st.booleans(), replay_size=st.integers(1, 4), buffers=st.integers(1, 4)
    )
    def start(self, with_history: bool, replay_size: int, buffers: int) -> None:
        self.history = ListHistory() if with_history else None
        # Fewer buffers than sessions: whole sessions' buffers get evicted (and dropped on
        # session.deleted) and resumes must still be complete or announce a gap.
        self.broker = Broker(
            epoch="E", replay_size=replay_size, subscriber_queue_size=3, history=self.history,
            max_session_buffers=buffers,
        )  # fmt: skip
        self.run(self.broker.start())

    def _published(self, event: Event) -> None:
        self.published.append(event)
        if self.history is not None:
            self.history.events.append(event)

    @rule(session=st.sampled_from(SESSIONS))
    def emit(self, session: str) -> None:
        self._published(self.broker.emit("step.progress", session, {"n": len(self.published)}))
        self.settle()

    @rule(session=st.sampled_from(SESSIONS))
    def delete_session(self, session: str) -> None:
        self._published(self.broker.emit(SESSION_DELETED, session, {}))
        self.settle()
        assert self.broker.session_buffer_count <= self.broker.max_session_buffers

    @rule(s1=st.sampled_from(SESSIONS), s2=st.sampled_from(SESSIONS))
    def publish_out_of_order(self, s1: str, s2: str) -> None:
        first = self.broker.stamp("step.progress", s1, {})
        second = self.broker.stamp("step.progress", s2, {})
        self._published(second)
        self.broker.publish(second)
        self.settle()  # `second` must wait for `first`
        self._published(first)
        self.broker.publish(first)
        self.settle()

    @rule(
        sessions=st.none() | st.frozensets(st.sampled_from(SESSIONS), min_size=1),
        replay=st.booleans(),
    )
    def subscribe(self, sessions: frozenset[str] | None, replay: bool) -> None:
        since = "0" if replay else None
        sub = self.run(self.broker.subscribe(sessions=sessions, since=since))
        assert sub.info is not None
        start = 0 if replay else sub.info.top_seq
        self.clients.append(Client(sessions, start, sub))

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self.clients))
        client.received.extend(client.sub.queue.get_nowait(10**6))  # type: ignore[arg-type]

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def disconnect_and_resume(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self.clients))
        client.received.extend(client.sub.queue.get_nowait(10**6))  # type: ignore[arg-type]
        client.sub.close()
        since = client.last_id or ("0" if client.start == 0 else f"E-{client.start}")
        client.sub = self.run(self.broker.subscribe(sessions=client.sessions, since=since))

    @rule(epoch=st.sampled_from(["E", "OLD"]), ahead=st.integers(1, 50))
    def resume_from_unknown_id(self, epoch: str, ahead: int) -> None:
        """A foreign-epoch id or an id above the top: a gap first, then everything retained."""
        since = f"{epoch}-{self.broker.top_seq + ahead if epoch == 'E' else 1}"
        sub = self.run(self.broker.subscribe(since=since))
        events = [e for e in sub.queue.get_nowait(10**6) if isinstance(e, Event)]
        sub.close()
        assert events[0].type == STREAM_GAP
        assert events[0].envelope.data["requested"] == since
        assert sub.info is not None and not sub.info.recovered
        oldest = events[0].envelope.data["oldest_available"]
        owed = sorted(e.seq for e in self.published if oldest and e.seq >= parse_id(oldest)[1])
        assert [e.seq for e in events[1:]] == owed
        if self.history is not None:
            assert owed == sorted(e.seq for e in self.published)

    @invariant()
    def streams_are_ordered_complete_and_announce_gaps(self) -> None:
        top = self.broker.top_seq
        for client in self.clients:
            seqs = [e.seq for e in client.received]
            assert seqs == sorted(set(seqs)), "out of order or duplicated"
            gaps: list[tuple[int, int]] = []
            got: set[int] = set()
            for e in client.received:
                if e.type == STREAM_GAP:
                    req = e.envelope.data["requested"]
                    low = 0 if req == "0" else parse_id(req)[1]
                    oldest = e.envelope.data["oldest_available"]
                    high = parse_id(oldest)[1] if oldest else top + 1
                    gaps.append((low, high))
                else:
                    assert client.wants(e)
                    got.add(e.seq)
            # Owed up to the top while connected; up to the last received once cut off.
            end = top if not client.sub.closed else (seqs[-1] if seqs else client.start)
            for e in self.published:
                if client.start < e.seq <= end and client.wants(e) and e.seq not in got:
                    if e.seq > (seqs[-1] if seqs else client.start):
                        continue  # still queued, not consumed yet
                    assert any(lo < e.seq < hi for lo, hi in gaps), f"silent gap at {e.seq}"
                    assert self.history is None, "history should have filled it"

    def teardown(self) -> None:
        self.run(self.broker.aclose())
        self.loop.close()


BrokerMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, derandomize=True
)
TestBrokerStateful = BrokerMachine.TestCase
