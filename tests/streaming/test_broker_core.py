"""Broker core behaviour, without sockets: seq allocation, thread hand-off, order, replay from
history after a restart, run subscriptions, overflow and close."""

from __future__ import annotations

import asyncio
import threading

import pytest
from liveserver import DiskHistory, drain

from streaming.broker import Broker
from streaming.envelope import STREAM_GAP, Event
from streaming.errors import BrokerClosed, BrokerNotStarted, InvalidEventId
from streaming.subscription import CloseReason, Subscription

pytestmark = pytest.mark.anyio


async def test_seq_is_reserved_in_blocks_before_use() -> None:
    reserved: list[int] = []
    broker = Broker(epoch="E", start_seq=11, reserve_seq=reserved.append, seq_block=5)
    seqs = [broker.stamp("session.updated", "s", {}).seq for _ in range(7)]
    assert seqs == list(range(11, 18))
    assert reserved == [15, 20]  # each called before a seq beyond the previous block


def test_failed_reservation_consumes_no_seq() -> None:
    calls = 0

    def reserve(upto: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    broker = Broker(epoch="E", reserve_seq=reserve, seq_block=10)
    with pytest.raises(OSError):
        broker.stamp("session.updated", "s", {})
    assert broker.stamp("session.updated", "s", {}).seq == 1


async def test_events_from_worker_threads_arrive_in_seq_order_without_loss() -> None:
    broker = Broker(epoch="E", subscriber_queue_size=6000)
    await broker.start()
    sub = await broker.subscribe()

    def work(sid: str) -> None:
        for i in range(2000):
            event = broker.stamp("step.progress", sid, {"i": i})
            broker.publish(event)  # stamp and publish apart: threads interleave in between

    threads = [threading.Thread(target=work, args=(f"s{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    got = await drain(sub, 6000)  # the loop keeps delivering while the threads publish
    for t in threads:
        t.join()
    assert [e.seq for e in got] == list(range(1, 6001))
    assert broker.top_seq == 6000
    await broker.aclose()


async def test_an_event_waits_for_a_lower_seq_still_in_flight() -> None:
    broker = Broker(epoch="E")
    await broker.start()
    sub = await broker.subscribe(sessions=["s"])
    first = broker.stamp("step.progress", "s", {})
    broker.emit("step.progress", "s", {})
    await asyncio.sleep(0)
    assert sub.queue.get_nowait() == []  # held back behind `first`
    broker.publish(first)
    assert [e.seq for e in await drain(sub, 2)] == [1, 2]
    await broker.aclose()


async def test_a_stamp_never_published_is_given_up_after_the_timeout() -> None:
    broker = Broker(epoch="E", stamp_timeout=0.05)
    await broker.start()
    sub = await broker.subscribe()
    lost = broker.stamp("step.progress", "s", {})
    broker.emit("step.progress", "s", {})
    assert [e.seq for e in await drain(sub, 1)] == [2]
    broker.publish(lost)  # too late: would break the order, so it is not delivered live
    broker.emit("step.progress", "s", {})
    assert [e.seq for e in await drain(sub, 1)] == [3]
    await broker.aclose()


async def test_unencodable_data_raises_and_does_not_stall_later_events() -> None:
    broker = Broker(epoch="E", stamp_timeout=60)
    await broker.start()
    sub = await broker.subscribe()
    with pytest.raises(TypeError):
        broker.stamp("step.progress", "s", {"x": object()})
    broker.emit("step.progress", "s", {})
    assert [e.seq for e in await drain(sub, 1)] == [2]
    await broker.aclose()


async def test_resume_after_restart_reads_history_then_continues_live() -> None:
    disk: list[bytes] = []
    first = Broker(epoch="E")
    await first.start()
    for i in range(5):
        disk.append(first.emit("step.progress", "s", {"i": i}).raw)
    await first.aclose()

    second = Broker(epoch="E", start_seq=100, history=DiskHistory(disk))
    await second.start()
    sub = await second.subscribe(sessions=["s"], since="E-2")
    assert sub.info is not None and sub.info.recovered and sub.info.replayed == 3
    disk.append(second.emit("step.progress", "s", {"i": 5}).raw)
    assert [e.seq for e in await drain(sub, 4)] == [3, 4, 5, 100]
    await second.aclose()


class RawLines:
    """A history of raw lines as they are on disk, damaged ones included."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def events_after(self, seq: int, sessions: object, run_id: object) -> list[bytes]:
        return self.lines


async def test_unreadable_history_lines_are_skipped() -> None:
    first = Broker(epoch="E")
    await first.start()
    lines = [first.emit("step.progress", "s", {"i": i}).raw for i in range(3)]
    await first.aclose()
    lines[1:1] = [b"not json", b'{"seq": 2}', lines[2][:-9]]  # foreign, partial and torn lines
    second = Broker(epoch="E", start_seq=10, history=RawLines(lines))
    await second.start()
    sub = await second.subscribe(sessions=["s"], since="0")
    assert [e.seq for e in await drain(sub, 3)] == [1, 2, 3]
    await second.aclose()


async def test_resume_without_history_announces_the_gap() -> None:
    broker = Broker(epoch="E", replay_size=2)
    await broker.start()
    for i in range(5):
        broker.emit("step.progress", "s", {"i": i})
    await asyncio.sleep(0)
    sub = await broker.subscribe(sessions=["s"], since="E-1")
    got = await drain(sub, 3)
    assert got[0].type == STREAM_GAP
    assert got[0].envelope.data == {"requested": "E-1", "oldest_available": "E-4", "epoch": "E"}
    assert got[0].id == "E-3"  # resuming from the gap's id continues with what follows it
    assert [e.seq for e in got[1:]] == [4, 5]
    assert sub.info is not None and not sub.info.recovered
    await broker.aclose()


async def test_run_subscription_replays_the_run_and_ends_after_its_terminal_event() -> None:
    broker = Broker(epoch="E")
    await broker.start()
    broker.emit("run.queued", "s", {}, run_id="r1")
    broker.emit("run.queued", "s", {}, run_id="r2")
    broker.emit("run.started", "s", {}, run_id="r1")
    await asyncio.sleep(0)
    sub = await broker.subscribe(run_id="r1")
    broker.emit("step.started", "s", {"step": "a"}, run_id="r1")
    broker.emit("run.finished", "s", {"status": "succeeded"}, run_id="r1")
    broker.emit("step.started", "s", {}, run_id="r1")  # never seen: the run ended
    got = await drain(sub, 4)
    assert [e.type for e in got] == ["run.queued", "run.started", "step.started", "run.finished"]
    assert await sub.get_batch() == []
    assert sub.reason is CloseReason.COMPLETED
    assert broker.subscriber_count == 0
    await broker.aclose()


async def test_a_slow_subscriber_is_cut_off_and_the_others_get_everything() -> None:
    cut_off: list[Subscription] = []
    broker = Broker(epoch="E", subscriber_queue_size=10, on_overflow=cut_off.append)
    await broker.start()
    slow = await broker.subscribe()
    fast = await broker.subscribe()
    got: list[Event] = []
    for i in range(50):
        broker.emit("step.progress", "s", {"i": i})
        await asyncio.sleep(0)
        got.extend(e for e in fast.queue.get_nowait() if isinstance(e, Event))
    assert len(got) == 50
    assert slow.reason is CloseReason.TOO_SLOW
    assert len(slow.queue) == 0  # memory released at once
    assert cut_off == [slow] and broker.overflow_count == 1
    assert broker.subscriber_count == 1
    await broker.aclose()


async def test_malformed_since_raises_before_anything_is_subscribed() -> None:
    broker = Broker(epoch="E")
    await broker.start()
    for bad in ["", "abc", "E-", "E-x", "-5", "E-1\n", "E\r-1"]:
        with pytest.raises(InvalidEventId):
            await broker.subscribe(since=bad)
    assert broker.subscriber_count == 0
    await broker.aclose()


async def test_subscribe_requires_a_started_open_broker() -> None:
    broker = Broker(epoch="E")
    with pytest.raises(BrokerNotStarted):
        await broker.subscribe()
    await broker.start()
    sub = await broker.subscribe()
    await broker.aclose()
    assert await sub.get_batch() == []
    assert sub.reason is CloseReason.BROKER_CLOSED
    with pytest.raises(BrokerClosed):
        await broker.subscribe()


async def test_a_run_subscription_resumes_mid_run_and_still_ends() -> None:
    broker = Broker(epoch="E")
    await broker.start()
    queued = broker.emit("run.queued", "s", {}, run_id="r1")
    broker.emit("run.started", "s", {}, run_id="r1")
    broker.emit("step.started", "s", {"step": "a"}, run_id="r1")
    await asyncio.sleep(0)
    sub = await broker.subscribe(run_id="r1", since=queued.id)
    broker.emit("run.finished", "s", {"status": "succeeded"}, run_id="r1")
    got = await drain(sub, 3)
    assert [e.type for e in got] == ["run.started", "step.started", "run.finished"]
    assert await sub.get_batch() == []
    await broker.aclose()


async def test_a_client_that_never_reads_its_replies_is_cut_off_as_too_slow() -> None:
    cut_off: list[Subscription] = []
    broker = Broker(epoch="E", subscriber_queue_size=3, on_overflow=cut_off.append)
    await broker.start()
    sub = broker.open()
    for _ in range(5):
        sub.put_reply(b'{"type":"reply"}')
    assert sub.reason is CloseReason.TOO_SLOW
    assert len(sub.queue) == 0  # memory released at once
    assert cut_off == [sub] and broker.overflow_count == 1  # counted once, like an event overflow
    await broker.aclose()


async def test_events_published_after_close_are_dropped() -> None:
    broker = Broker(epoch="E")
    await broker.start()
    sub = await broker.subscribe()
    await broker.aclose()
    event = broker.stamp("step.progress", "s", {})
    broker.publish(event)  # a worker finishing during shutdown: no error, nobody receives it
    await asyncio.sleep(0)
    assert broker.top_seq == 0
    assert await sub.get_batch() == []
