"""In-process harness for runtime tests: store + broker + `Runtime`, and an event recorder.

Tests synchronise on events (`Recorder.wait_for`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
import yaml

from service.contract.errors import ServiceError
from service.contract.models import CreateSessionRequest, PipelineInput, ProcessRequest
from service.contract.records import RunRecord
from service.runtime.config import Config
from service.runtime.facade import Runtime
from service.storage.store import SessionStore
from streaming.broker import Broker
from streaming.envelope import TERMINAL_RUN_TYPES, Envelope, Event
from streaming.subscription import Subscription

WAIT_S = 20.0  # generous: a 2-core machine shared with other test runs


@dataclass
class Recorder:
    """Every event the broker delivers, in order."""

    events: list[Envelope] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def pump(self, sub: Subscription) -> None:
        while True:
            batch = await sub.get_batch()
            if not batch:
                return
            async with self.changed:
                for item in batch:
                    if isinstance(item, Event):
                        self.events.append(item.envelope)
                self.changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[list[Envelope]], Any], timeout: float = WAIT_S
    ) -> Any:
        """Wait until `predicate(events)` is truthy; returns its value."""
        with anyio.fail_after(timeout):
            async with self.changed:
                while not (result := predicate(self.events)):
                    await self.changed.wait()
                return result

    async def wait_event(
        self, type: str, run_id: str | None = None, timeout: float = WAIT_S
    ) -> Envelope:
        def find(events: list[Envelope]) -> Envelope | None:
            for e in events:
                if e.type == type and (run_id is None or e.runid == run_id):
                    return e
            return None

        found: Envelope = await self.wait_for(find, timeout)
        return found

    async def wait_terminal(self, run_id: str, timeout: float = WAIT_S) -> Envelope:
        """Wait for the run's terminal event (run.finished, run.cancelled or run.interrupted)."""

        def find(events: list[Envelope]) -> Envelope | None:
            for e in events:
                if e.runid == run_id and e.type in TERMINAL_RUN_TYPES:
                    return e
            return None

        found: Envelope = await self.wait_for(find, timeout)
        return found

    def of_run(self, run_id: str) -> list[str]:
        return [e.type for e in self.events if e.runid == run_id]


@dataclass
class Harness:
    runtime: Runtime
    broker: Broker
    store: SessionStore
    config: Config
    recorder: Recorder


@asynccontextmanager
async def running(config: Config, *, grace: float = 5.0) -> AsyncIterator[Harness]:
    """A started runtime over a fresh (or existing) data directory; shut down on exit."""
    store = await anyio.to_thread.run_sync(SessionStore, config.store_path)
    broker = Broker(
        epoch=store.epoch,
        start_seq=await anyio.to_thread.run_sync(store.seq_floor),
        reserve_seq=store.reserve_seq,
    )
    await broker.start()
    recorder = Recorder()
    # Subscribed before the runtime starts, so the recorder sees every event it publishes.
    pump = asyncio.create_task(recorder.pump(await broker.subscribe(queue_size=100_000)))
    runtime = Runtime(config, store, broker)
    try:
        await runtime.start()
        yield Harness(runtime, broker, store, config, recorder)
    finally:
        await runtime.shutdown(grace)
        await broker.aclose()
        await pump
        await anyio.to_thread.run_sync(store.close)


def pipeline_text(*steps: dict[str, Any], sources: dict[str, Any] | None = None) -> str:
    doc: dict[str, Any] = {"name": "t", "version": "1", "steps": list(steps)}
    if sources:
        doc["sources"] = sources
    return yaml.safe_dump(doc, sort_keys=False)


def sleep_step(id: str = "s", seconds: float = 0.05, ticks: int = 1) -> dict[str, Any]:
    return {"id": id, "use": "diag.sleep", "params": {"seconds": seconds, "ticks": ticks}}


def noop_step(id: str = "n") -> dict[str, Any]:
    return {"id": id, "use": "diag.noop"}


def fail_step(id: str = "f") -> dict[str, Any]:
    return {"id": id, "use": "diag.fail", "params": {"message": "boom"}}


def create_request(sid: str, text: str, **kw: Any) -> CreateSessionRequest:
    return CreateSessionRequest(session_id=sid, pipeline=PipelineInput(yaml_text=text), **kw)


def process(**kw: Any) -> ProcessRequest:
    return msgspec.convert(kw, ProcessRequest)


LONG = sleep_step(seconds=60, ticks=600)
JSON_PIPELINE = pipeline_text(
    {
        "id": "read",
        "use": "json.read",
        "params": {"source": "cfg"},
        "outputs": {"value": "cfg.value"},
    },
    {
        "id": "use",
        "use": "diag.noop",
        "inputs": {"value": "cfg.value"},
        "outputs": {"value": "out"},
    },
    sources={"cfg": {"required": True}},
)


def json_source(tmp_path: Path, value: object = 1, name: str = "cfg.json") -> Path:
    """A JSON source file `{"value": value}` under `tmp_path`."""
    path = tmp_path / name
    path.write_text(json.dumps({"value": value}))
    return path


async def wait_finished(h: Harness, run_id: str) -> RunRecord:
    """The run record once the run's terminal event has been published."""
    await h.recorder.wait_terminal(run_id)
    return await h.runtime.get_run(run_id)


def expect_problem(exc: pytest.ExceptionInfo[ServiceError], code: str) -> ServiceError:
    """Assert a raised `ServiceError` has `code`; return it."""
    assert exc.value.code == code, exc.value.detail
    return exc.value
