"""`SubscriberQueue`: the bounded queue between the broker and one subscriber's sender.

Overflow policy: the broker never waits for a subscriber and never drops single events. When a
live event finds the queue full, the queue is closed with `CloseReason.TOO_SLOW` and its
content discarded at once (memory is freed immediately); the channel then ends that subscriber
(WebSocket 1013, or an abort when the close frame cannot be written; the SSE stream ends) and
the client resumes from the last id it received, losing and repeating nothing.

Replayed events (a resume) are enqueued in one go and do not count against the bound: the bound
protects the server from a reader slower than the live rate, and a replay is bounded by the
broker's `replay_limit` instead.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from streaming.envelope import Event, parse_since
from streaming.events import TERMINAL_RUN_TYPES

# What a channel sends: an event, or (WebSocket) an already-encoded text frame such as a reply,
# queued so that it is sent in order with the events around it.
QueueItem = Event | bytes


class CloseReason(enum.Enum):
    """Why a subscriber queue was closed; the channel maps it to a close code."""

    CLIENT = "client"  # the consumer closed it (disconnect, unsubscribe): discard the rest
    TOO_SLOW = "too_slow"  # overflow: discard the rest, WebSocket 1013
    BROKER_CLOSED = "broker_closed"  # server shutdown: discard the rest, WebSocket 1001
    COMPLETED = "completed"  # run subscription saw the run's terminal event: deliver the rest


class SubscriberQueue:
    """A bounded FIFO of `QueueItem`s with one consumer, fed from the event loop.

    `put` never blocks: it returns False and closes the queue when it is full. `get_batch`
    returns every ready item at once (so a sender writes a burst in one go) and an empty list
    once the queue is closed and, for `COMPLETED`, drained. Not thread-safe: loop only.
    """

    __slots__ = ("_closed_event", "_credit", "_items", "_waiter", "maxsize", "on_close", "reason")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.maxsize = maxsize
        self.reason: CloseReason | None = None
        self._items: deque[QueueItem] = deque()
        self._credit = 0  # replayed items not yet consumed: allowed beyond `maxsize`
        self._waiter: asyncio.Future[None] | None = None
        self._closed_event: asyncio.Event | None = None
        # Called (on the loop) when the queue is closed, e.g. to interrupt a blocked writer.
        self.on_close: Callable[[CloseReason], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self.reason is not None

    def put(self, item: QueueItem) -> bool:
        """Enqueue a live item; on overflow close with `TOO_SLOW` and return False."""
        if self.reason is not None:
            return False
        if len(self._items) >= self.maxsize + self._credit:
            self.close(CloseReason.TOO_SLOW)
            return False
        self._items.append(item)
        self._wake()
        return True

    def put_replay(self, items: Iterable[QueueItem]) -> int:
        """Enqueue a replay beyond the bound; returns how many were added."""
        if self.reason is not None:
            return 0
        before = len(self._items)
        self._items.extend(items)
        added = len(self._items) - before
        self._credit += added
        if added:
            self._wake()
        return added

    def close(self, reason: CloseReason) -> None:
        """Close (first reason wins). Unless `COMPLETED`, queued items are discarded now."""
        if self.reason is not None:
            return
        self.reason = reason
        if reason is not CloseReason.COMPLETED:
            self._items.clear()
            self._credit = 0
        self._wake()
        if self._closed_event is not None:
            self._closed_event.set()
        if self.on_close is not None:
            self.on_close(reason)

    async def wait_closed(self) -> CloseReason:
        """Wait until the queue is closed; returns why."""
        if self.reason is None:
            if self._closed_event is None:
                self._closed_event = asyncio.Event()
            await self._closed_event.wait()
        assert self.reason is not None
        return self.reason

    def get_nowait(self, max_items: int = 4096) -> list[QueueItem]:
        """Up to `max_items` ready items (possibly none)."""
        items = self._items
        n = min(len(items), max_items)
        if n == len(items):
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(n)]
        self._credit = max(0, self._credit - n)
        return batch

    async def get_batch(self, max_items: int = 4096) -> list[QueueItem]:
        """Wait for items; return up to `max_items` of them, or [] once closed (and drained).

        Cancel-safe: a cancelled wait loses no item.
        """
        while not self._items:
            if self.reason is not None:
                return []
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self.get_nowait(max_items)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SubscriptionHost(Protocol):
    """What a `Subscription` needs from its broker: public methods of `streaming.broker.Broker`,
    declared here so that this module does not import the broker (which imports it)."""

    @property
    def epoch(self) -> str: ...

    @property
    def top_seq(self) -> int: ...

    def check_open(self) -> None: ...

    def register(self, sub: Subscription, sessions: Collection[str] | None) -> None: ...

    def register_run(self, sub: Subscription, run_id: str) -> None: ...

    def unregister_sessions(self, sub: Subscription, sessions: Collection[str] | None) -> None: ...

    def unregister(self, sub: Subscription) -> None: ...

    def mark_dead(self, sub: Subscription) -> None: ...

    async def replay(
        self,
        sessions: Collection[str] | None,
        run_id: str | None,
        target: tuple[str | None, int],
        register: Callable[[], None],
        exclude: Collection[str] = (),
    ) -> tuple[list[Event], Event | None]: ...


@dataclass(frozen=True, slots=True)
class ReplayInfo:
    """What one `Subscription.add` did: the WebSocket `subscribe` reply's result."""

    sessions: list[str] | None  # the subscription's sessions after the add; None: all
    epoch: str
    top_seq: int  # the broker's top when the subscription was registered
    replayed: int  # events queued before live ones (the stream.gap not counted)
    recovered: bool  # False when a stream.gap was queued first

    def as_result(self) -> dict[str, Any]:
        return {
            "sessions": "*" if self.sessions is None else self.sessions,
            "epoch": self.epoch,
            "top_seq": self.top_seq,
            "replayed": self.replayed,
            "recovered": self.recovered,
        }


class Subscription:
    """One subscriber: its session filter (or run) and its bounded `SubscriberQueue`.

    Created by `Broker.subscribe` / `Broker.open`; used on the loop only. Always `close()` it
    (or use `async with`) when the consumer goes away: that unregisters it at once.
    """

    __slots__ = ("__weakref__", "_broker", "_sessions", "info", "queue", "run_id", "sink")

    def __init__(self, broker: SubscriptionHost, queue_size: int) -> None:
        self._broker = broker
        self.queue = SubscriberQueue(queue_size)
        self._sessions: set[str] | None = set()  # None: every session
        self.run_id: str | None = None
        self.info: ReplayInfo | None = None  # of the latest add
        # Set by a channel: writes a live event straight to its socket, returning False when
        # it can't right now (sender busy, socket buffer full). Only used while the queue is
        # empty, so order is kept; anything it declines is queued as usual.
        self.sink: Callable[[Event], bool] | None = None

    @property
    def sessions(self) -> frozenset[str] | None:
        return None if self._sessions is None else frozenset(self._sessions)

    def sessions_list(self) -> Collection[str] | None:
        return self._sessions

    @property
    def closed(self) -> bool:
        return self.queue.closed

    @property
    def reason(self) -> CloseReason | None:
        return self.queue.reason

    async def add(
        self,
        sessions: Collection[str] | None,
        since: str | tuple[str | None, int] | None = None,
        *,
        before_replay: Callable[[ReplayInfo], None] | None = None,
    ) -> ReplayInfo:
        """Also receive `sessions` (None: all), replaying what is retained after `since`.

        Only sessions not subscribed before are replayed: the others were delivered live
        already, so a repeated `subscribe` with `since` never repeats an event.

        `before_replay(info)` runs synchronously after registration and before the replay is
        queued (the WebSocket queues its reply there, so the reply precedes the replay).
        Raises `InvalidEventId` (nothing subscribed) for a malformed `since`.
        """
        target = parse_since(since) if isinstance(since, str) or since is None else since
        broker = self._broker
        broker.check_open()
        wanted = None if sessions is None else list(dict.fromkeys(sessions))

        def register() -> None:
            if self.queue.closed:
                return
            if wanted is None:
                if self._sessions:
                    broker.unregister_sessions(self, self._sessions)
                if self._sessions is not None:
                    broker.register(self, None)
                self._sessions = None
            elif self._sessions is not None:
                new = [s for s in wanted if s not in self._sessions]
                self._sessions.update(new)
                broker.register(self, new)

        if target is None:
            register()
            return self._queued([], None, before_replay)
        # Sessions already subscribed have been delivered live all along: replaying them
        # again would repeat events (the contract: no duplicates). Replay only the new ones.
        current = self._sessions
        exclude: Collection[str] = ()
        if current is None:
            replay_for: list[str] | None = []  # already every session: nothing to replay
        elif wanted is None:
            replay_for, exclude = None, frozenset(current)
        else:
            replay_for = [s for s in wanted if s not in current]
        if replay_for == []:
            register()
            return self._queued([], None, before_replay)
        events, gap = await broker.replay(replay_for, None, target, register, exclude)
        return self._queued(events, gap, before_replay)

    async def add_run(
        self, run_id: str, target: tuple[str | None, int] | None = None
    ) -> ReplayInfo:
        """Receive run `run_id`'s events, from its beginning unless `target` says otherwise;
        the queue is closed (`COMPLETED`) after the run's terminal event."""
        broker = self._broker
        broker.check_open()
        self.run_id = run_id

        def register() -> None:
            if not self.queue.closed:
                broker.register_run(self, run_id)

        events, gap = await broker.replay(None, run_id, target or (None, 0), register)
        for i, event in enumerate(events):
            if event.type in TERMINAL_RUN_TYPES:
                events = events[: i + 1]
                info = self._queued(events, gap, None)
                self.queue.close(CloseReason.COMPLETED)
                broker.unregister(self)
                return info
        return self._queued(events, gap, None)

    def _queued(
        self,
        events: list[Event],
        gap: Event | None,
        before_replay: Callable[[ReplayInfo], None] | None,
    ) -> ReplayInfo:
        broker = self._broker
        info = ReplayInfo(
            sessions=None if self._sessions is None else sorted(self._sessions),
            epoch=broker.epoch,
            top_seq=broker.top_seq,
            replayed=len(events),
            recovered=gap is None,
        )
        self.info = info
        if before_replay is not None:
            before_replay(info)
        if gap is not None:
            self.queue.put_replay([gap])
        self.queue.put_replay(events)
        return info

    def remove(self, sessions: Collection[str] | None) -> None:
        """Stop receiving `sessions` (None: everything subscribed so far).

        A subscription to every session can't exclude a few ("all but a" is not a filter it
        has): any `remove` on it ends everything, which is why the WebSocket refuses such an
        `unsubscribe` before calling this."""
        if sessions is None or self._sessions is None:
            self._broker.unregister_sessions(self, self._sessions)
            self._sessions = set()
            return
        gone = [s for s in sessions if s in self._sessions]
        self._sessions.difference_update(gone)
        self._broker.unregister_sessions(self, gone)

    def deliver(self, event: Event) -> None:
        """Broker -> queue, on the loop. Overflow closes the queue (see `SubscriberQueue`)."""
        queue = self.queue
        if queue.reason is not None:
            return  # ended earlier in this batch; the broker unregisters it after the batch
        sink = self.sink
        if sink is not None and not queue._items and sink(event):
            pass  # written to the socket already: no queue, no task switch
        elif not queue.put(event):
            if queue.reason is CloseReason.TOO_SLOW:
                self._broker.mark_dead(self)
            return
        if self.run_id is not None and event.type in TERMINAL_RUN_TYPES:
            queue.close(CloseReason.COMPLETED)
            self._broker.mark_dead(self)

    def put_reply(self, item: bytes) -> None:
        """Queue an encoded reply (WebSocket) in order with the events around it.

        Counted against the bound: a client that sends ops without ever reading the replies
        is cut off (`TOO_SLOW`) like any other slow reader, and counted as one."""
        queue = self.queue
        if queue.reason is None and not queue.put(item):
            self._broker.mark_dead(self)

    async def get_batch(self, max_items: int = 4096) -> list[QueueItem]:
        """Ready items, or [] once the subscription has ended (see `reason`)."""
        return await self.queue.get_batch(max_items)

    def close(self, reason: CloseReason = CloseReason.CLIENT) -> None:
        """End the subscription now and unregister it; idempotent."""
        self.queue.close(reason)
        self._broker.unregister(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
