"""The event broker: one server-wide seq, per-session replay, fan-out to bounded subscribers.

Threads and the loop. `stamp`, `publish` and `emit` may be called from any thread and never
block (apart from `reserve_seq`, see below): `publish` appends to a lock-protected list and
schedules ONE `call_soon_threadsafe` per batch, when that list goes from empty to non-empty.
Everything else (replay buffers, subscriber queues, subscriptions) lives on the event loop.

Order. Seqs are handed out by `stamp`; the service then writes the event to disk and
`publish`es it, so two threads may publish out of seq order. The loop releases events strictly
in seq order: an event waits while a lower seq is stamped but not yet published. A stamp never
published within `stamp_timeout` seconds is given up (logged); if it is published later it goes
to nobody live (it is in the history on disk), because delivering it late would break the
order clients resume by.

Resume (`Subscription.add`) is atomic on the loop: history is read first (in a worker thread,
up to the seq `top` the loop had delivered when the read began), then, without an await, the
subscription is registered and the in-memory buffers snapshotted and merged by seq with that
history. Events published during the history read are in the buffers; events published after
the registration arrive live; none is lost or sent twice. Sessions a subscription already
receives live are left out of a later resume's replay (it has had those events already).

Memory. Each session's replay buffer holds at most `replay_size` events, and at most
`max_session_buffers` buffers exist: a session's buffer is dropped when its `session.deleted`
event has been delivered, and when a new session would exceed the cap the buffer whose newest
event is oldest goes. A resume that needs a dropped buffer's events reads them from the
history (or, without one, gets a `stream.gap`): the highest seq each dropped buffer held is
remembered (for the last `max_session_buffers * 8` dropped sessions; beyond that one
broker-wide high-water mark stands in for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable
from typing import Any

import anyio.to_thread

from streaming.envelope import Event, parse_since
from streaming.errors import BrokerClosed, BrokerNotStarted
from streaming.events import RUN_QUEUED, SESSION_DELETED
from streaming.replay import HistorySource, ReplayBuffer, make_gap_event, read_history
from streaming.subscription import CloseReason, ReplayInfo, Subscription

__all__ = ["Broker", "HistorySource", "ReplayInfo", "Subscription"]

log = logging.getLogger(__name__)


class Broker:
    """Fans events out to subscriptions; see the module docstring for threads and order.

    `replay_size`: events kept per session. `subscriber_queue_size`: live events a subscriber
    may fall behind before it is cut off. `reserve_seq(upto)` is called synchronously, from the
    stamping thread, before any seq above the current reserved block is handed out, so the
    service can persist a high-water mark and restart above it; blocks are `seq_block` long.
    `replay_limit` bounds one replay (older events are announced by a `stream.gap`).
    `on_overflow(subscription)` is called on the loop when a subscriber is cut off for being
    too slow (metrics, benchmarks); `overflow_count` counts those. `max_session_buffers`
    bounds how many per-session replay buffers exist (see the module docstring).
    """

    def __init__(
        self,
        *,
        epoch: str,
        start_seq: int = 1,
        replay_size: int = 1000,
        subscriber_queue_size: int = 1024,
        history: HistorySource | None = None,
        reserve_seq: Callable[[int], None] | None = None,
        seq_block: int = 100_000,
        stamp_timeout: float = 5.0,
        replay_limit: int = 100_000,
        on_overflow: Callable[[Subscription], None] | None = None,
        max_session_buffers: int = 256,
    ) -> None:
        if start_seq < 1 or seq_block < 1 or replay_size < 1 or max_session_buffers < 1:
            raise ValueError(
                "start_seq, seq_block, replay_size and max_session_buffers must be >= 1"
            )
        self.epoch = epoch
        self.replay_size = replay_size
        self.subscriber_queue_size = subscriber_queue_size
        self.replay_limit = replay_limit
        self.stamp_timeout = stamp_timeout
        self._history = history
        self._on_overflow = on_overflow
        self.overflow_count = 0
        self._reserve_seq = reserve_seq
        self._seq_block = seq_block
        # Shared with other threads, under `_lock`.
        self._lock = threading.Lock()
        self._next_seq = start_seq
        self._reserved = start_seq - 1 if reserve_seq is not None else 1 << 62
        self._unpublished: dict[int, float] = {}  # stamped, not yet published: seq -> when
        # The same seqs in stamp (= seq) order, with lazy deletion: its first entry still in
        # `_unpublished` is the lowest seq in flight, found in O(1) amortised.
        self._stamped: deque[int] = deque()
        self._pending: list[Event] = []
        # Loop only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self._floor = start_seq - 1  # memory never held anything at or below this seq
        self._top = start_seq - 1  # highest seq delivered on the loop
        self._held: list[tuple[int, Event]] = []  # heap: published, waiting for a lower seq
        self._retry: asyncio.TimerHandle | None = None
        self._buffers: dict[str, ReplayBuffer] = {}
        self.max_session_buffers = max_session_buffers
        # Dropped buffers: session -> the highest seq its buffer held (bounded, oldest drop
        # forgotten first, its seq then folded into `_dropped_floor`, which stands in for
        # every forgotten session).
        self._dropped: OrderedDict[str, int] = OrderedDict()
        self._dropped_limit = max_session_buffers * 8
        self._dropped_floor = self._floor
        self._evicted_max = self._floor
        self._subs: set[Subscription] = set()
        self._by_session: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._by_run: dict[str, set[Subscription]] = {}
        self._dead: list[Subscription] = []
        # run id -> (session, seq, type) of the first event of that run seen here; bounded
        # (oldest forgotten first): it only lets a run subscription skip the history read.
        self._runs: OrderedDict[str, tuple[str, int, str]] = OrderedDict()
        self._runs_limit = 10_000
        # Called on the loop with every event as it is released, in seq order, after local
        # delivery (`streaming.backends`: the Redis writer). Must not block or raise.
        self.on_release: Callable[[Event], None] | None = None

    # -- any thread -------------------------------------------------------------------------

    @property
    def top_seq(self) -> int:
        """Highest seq delivered to subscribers so far."""
        return self._top

    @property
    def subscriber_count(self) -> int:
        """Open subscriptions (each ends up unregistered once closed)."""
        return len(self._subs)

    @property
    def closed(self) -> bool:
        """True once `aclose` has run: nothing more is delivered or subscribed."""
        return self._closed

    def stamp(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> Event:
        """Assign the next seq and encode the event once; does not publish it."""
        with self._lock:
            seq = self._next_seq
            if seq > self._reserved:
                upto = self._reserved + self._seq_block
                assert self._reserve_seq is not None
                self._reserve_seq(upto)  # may raise: then no seq is consumed
                self._reserved = upto
            self._next_seq = seq + 1
            self._unpublished[seq] = time.monotonic()
            self._stamped.append(seq)
        try:
            return Event.create(
                epoch=self.epoch, seq=seq, type=type, session_id=session_id, data=data,
                run_id=run_id,
            )  # fmt: skip
        except BaseException:
            with self._lock:
                self._unpublished.pop(seq, None)
            self._wake()  # events held behind this seq may go now
            raise

    def publish(self, event: Event) -> None:
        """Hand a stamped event to the loop. Never blocks; dropped once the broker is closed."""
        with self._lock:
            self._unpublished.pop(event.seq, None)
            if self._closed:
                return  # nobody left to deliver to (it is in the history on disk)
            first = not self._pending
            self._pending.append(event)
        if first:
            self._wake()

    def emit(
        self, type: str, session_id: str, data: dict[str, Any], run_id: str | None = None
    ) -> Event:
        """`stamp` + `publish`."""
        event = self.stamp(type, session_id, data, run_id)
        self.publish(event)
        return event

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._drain)
        else:
            # RuntimeError: the loop is closed, the process is shutting down.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain)

    # -- loop -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the running loop; events published before are delivered now."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._loop.call_soon(self._drain)

    async def aclose(self) -> None:
        """Deliver what was published, then end every subscription (`BROKER_CLOSED`)."""
        if self._closed:
            return
        if self._loop is not None:
            self._drain()
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for sub in list(self._subs):
            sub.queue.close(CloseReason.BROKER_CLOSED)
            self.unregister(sub)

    def _drain(self) -> None:
        if self._closed:
            return
        with self._lock:
            batch, self._pending = self._pending, []
            low = self._lowest_unpublished()
        held = self._held
        if low is None and not held:
            # The common case: nothing in flight, release the batch in seq order.
            if len(batch) > 1:
                batch.sort(key=_seq)
            release = batch
        else:
            for event in batch:
                heapq.heappush(held, (event.seq, event))
            release = []
            while held and (low is None or held[0][0] < low):
                release.append(heapq.heappop(held)[1])
            if held and self._retry is None and self._loop is not None:
                self._retry = self._loop.call_later(self.stamp_timeout / 4, self._retry_drain)
        for event in release:
            self._deliver(event)
        if self._dead:
            for sub in self._dead:
                self.unregister(sub)
            self._dead.clear()

    def _retry_drain(self) -> None:
        self._retry = None
        self._drain()

    def _lowest_unpublished(self) -> int | None:
        """The lowest seq stamped but not published (under `_lock`); stamps older than
        `stamp_timeout` are given up on."""
        stamped, unpublished = self._stamped, self._unpublished
        deadline = 0.0
        while stamped:
            seq = stamped[0]
            when = unpublished.get(seq)
            if when is None:
                stamped.popleft()  # published since
                continue
            if not deadline:
                deadline = time.monotonic() - self.stamp_timeout
            if when > deadline:
                return seq
            log.warning("event seq %d was stamped but not published in time; skipping it", seq)
            del unpublished[seq]
            stamped.popleft()
        return None

    def _deliver(self, event: Event) -> None:
        if event.seq <= self._top:
            log.warning("event seq %d published too late for live delivery", event.seq)
            return
        self._top = event.seq
        sid = event.session_id
        buf = self._buffers.get(sid)
        if buf is None:
            buf = self._new_buffer(sid)
        buf.append(event)
        if buf.evicted_upto > self._evicted_max:
            self._evicted_max = buf.evicted_upto
        subs = self._by_session.get(sid)
        if subs:
            for sub in subs:
                sub.deliver(event)
        for sub in self._all:
            sub.deliver(event)
        if event.run_id is not None:
            if event.run_id not in self._runs:
                self._runs[event.run_id] = (sid, event.seq, event.type)
                if len(self._runs) > self._runs_limit:
                    self._runs.popitem(last=False)
            subs = self._by_run.get(event.run_id)
            if subs:
                for sub in subs:
                    sub.deliver(event)
        if event.type == SESSION_DELETED:
            self._drop_buffer(sid)  # the session is gone: its history is on disk
        if self.on_release is not None:
            self.on_release(event)

    def _new_buffer(self, sid: str) -> ReplayBuffer:
        """A buffer for `sid`, evicting the stalest buffer beyond `max_session_buffers`."""
        if len(self._buffers) >= self.max_session_buffers:
            # Rare (a new session at the cap): a linear scan beats bookkeeping per event.
            stalest = min(self._buffers.items(), key=lambda item: item[1].newest_seq or 0)[0]
            self._drop_buffer(stalest)
        lost = self._dropped.pop(sid, self._dropped_floor)
        buf = self._buffers[sid] = ReplayBuffer(
            self.replay_size, evicted_upto=max(self._floor, lost)
        )
        return buf

    def _drop_buffer(self, sid: str) -> None:
        """Forget `sid`'s replay buffer, remembering the highest seq it held (see
        `_floor_for`): a resume into that range goes to the history or gets a gap."""
        buf = self._buffers.pop(sid, None)
        if buf is None:
            return
        held = max(buf.newest_seq or 0, buf.evicted_upto)
        self._dropped[sid] = held
        self._dropped.move_to_end(sid)
        if len(self._dropped) > self._dropped_limit:
            _, seq = self._dropped.popitem(last=False)
            self._dropped_floor = max(self._dropped_floor, seq)
        if held > self._evicted_max:
            self._evicted_max = held

    @property
    def session_buffer_count(self) -> int:
        """How many per-session replay buffers are held (at most `max_session_buffers`)."""
        return len(self._buffers)

    # -- subscriptions (loop) ---------------------------------------------------------------

    def open(self, queue_size: int | None = None) -> Subscription:
        """A subscription to nothing yet; `Subscription.add` subscribes it to sessions."""
        self.check_open()
        sub = Subscription(self, queue_size or self.subscriber_queue_size)
        self._subs.add(sub)
        return sub

    async def subscribe(
        self,
        *,
        sessions: Collection[str] | None = None,
        run_id: str | None = None,
        since: str | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        """Subscribe to `sessions` (None: all), or to run `run_id` (which ends after its
        terminal event and, without `since`, replays the run from its beginning).

        `since`: None (live only), "0" (everything retained) or an event id. Raises
        `InvalidEventId` before subscribing anything when `since` is malformed. Its
        `ReplayInfo` is in `Subscription.info`.
        """
        target = parse_since(since)
        sub = self.open(queue_size)
        try:
            if run_id is not None:
                await sub.add_run(run_id, target)
            else:
                await sub.add(sessions, target)
        except BaseException:
            sub.close()
            raise
        return sub

    # -- for `Subscription` (its `SubscriptionHost`; consumers call the subscription) --------

    def check_open(self) -> None:
        """Raise `BrokerClosed` / `BrokerNotStarted` unless subscriptions can be made now."""
        if self._closed:
            raise BrokerClosed("the broker is closed")
        if self._loop is None:
            raise BrokerNotStarted("await Broker.start() first")

    def _floor_for(self, sessions: Collection[str] | None, run_id: str | None = None) -> int:
        """Memory holds every event after this seq of `sessions` (None: of all sessions), or
        of run `run_id`."""
        if run_id is not None:
            first = self._runs.get(run_id)
            if first is not None and first[2] == RUN_QUEUED:
                buf = self._buffers.get(first[0])
                if buf is not None and buf.covers(first[1] - 1):
                    return 0  # the run's first event onwards is all in memory
            return self._evicted_max
        if sessions is None:
            return self._evicted_max
        floor = self._floor
        for sid in sessions:
            buf = self._buffers.get(sid)
            lost = (
                buf.evicted_upto if buf is not None
                else self._dropped.get(sid, self._dropped_floor)
            )  # fmt: skip
            if lost > floor:
                floor = lost
        return floor

    async def replay(
        self,
        sessions: Collection[str] | None,
        run_id: str | None,
        target: tuple[str | None, int],
        register: Callable[[], None],
        exclude: Collection[str] = (),
    ) -> tuple[list[Event], Event | None]:
        """Everything retained after `target` (plus a `stream.gap` event when something is
        missing), computed atomically with `register()`; see the module docstring.
        Events of the sessions in `exclude` are left out (with `sessions` None: "every other
        session")."""
        epoch, seq = target
        gap = epoch is not None and (epoch != self.epoch or seq > self._top)
        after = 0 if gap else seq
        history: list[Event] | None = None
        covered = 0
        if after < self._floor_for(sessions, run_id) and self._history is not None:
            covered = self._top
            source = self._history
            history = await anyio.to_thread.run_sync(
                read_history, source, after, covered, sessions, run_id
            )
            self.check_open()
        # From here on, no await: registration and snapshot are atomic.
        floor = self._floor_for(sessions, run_id)
        cut = after
        if history is None:
            if after < floor:
                gap, cut = True, floor
        elif floor > covered:
            # Evicted during the read: history stops at `covered`, memory starts above `floor`.
            gap, cut = True, floor
        merged: dict[int, Event] = {}
        if history:
            for event in history:
                merged[event.seq] = event
        for buf in self._buffers_of(sessions):
            for event in buf.after(cut, run_id):
                merged[event.seq] = event
        # After a gap, only what is complete: every matching event above `cut` (a session
        # whose buffer reaches further back would otherwise hide another's hole).
        events = [merged[s] for s in sorted(merged) if s > cut]
        if exclude:
            events = [e for e in events if e.session_id not in exclude]
        if len(events) > self.replay_limit:
            events = events[-self.replay_limit :]
            gap = True
        register()
        gap_event = (
            make_gap_event(self.epoch, self._top, target, sessions, run_id, events) if gap else None
        )
        return events, gap_event

    def _buffers_of(self, sessions: Collection[str] | None) -> Iterable[ReplayBuffer]:
        if sessions is None:
            return self._buffers.values()
        return [b for b in (self._buffers.get(s) for s in sessions) if b is not None]

    def register(self, sub: Subscription, sessions: Collection[str] | None) -> None:
        """Deliver live events of `sessions` (None: all) to `sub`."""
        if sessions is None:
            self._all.add(sub)
        else:
            for sid in sessions:
                self._by_session.setdefault(sid, set()).add(sub)

    def register_run(self, sub: Subscription, run_id: str) -> None:
        """Deliver run `run_id`'s live events to `sub`."""
        self._by_run.setdefault(run_id, set()).add(sub)

    def unregister_sessions(self, sub: Subscription, sessions: Collection[str] | None) -> None:
        """Stop delivering `sessions` (None: the "all sessions" registration) to `sub`."""
        if sessions is None:
            self._all.discard(sub)
            return
        for sid in sessions:
            subs = self._by_session.get(sid)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_session[sid]

    def unregister(self, sub: Subscription) -> None:
        """Forget `sub` entirely (it was closed)."""
        self._subs.discard(sub)
        self._all.discard(sub)
        self.unregister_sessions(sub, sub.sessions_list())
        if sub.run_id is not None:
            subs = self._by_run.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[sub.run_id]

    def mark_dead(self, sub: Subscription) -> None:
        """`sub` ended during a delivery (overflow, run completed): unregister it after the
        batch; counts an overflow and calls `on_overflow`."""
        self._dead.append(sub)
        if sub.queue.reason is CloseReason.TOO_SLOW:
            self.overflow_count += 1
            if self._on_overflow is not None:
                try:
                    self._on_overflow(sub)
                except Exception:
                    log.exception("on_overflow callback failed")


def _seq(event: Event) -> int:
    return event.seq
