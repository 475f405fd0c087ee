"""Changing a session's sources and sinks: validate first, commit, then announce.

Used by `Runtime.put_sources` and its siblings. Every file named is confined to the configured
roots and (for sources) checked readable off the I/O thread (`DurableIO.examine`) before the session changes; the
change is committed before `sources.changed` (sources) or `session.updated` (sinks) is published.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from service.contract.errors import ServiceError
from service.contract.models import SinkInput, SourceInput
from service.contract.records import SessionRecord, SourceRecord
from service.runtime.config import Config
from service.runtime.scheduler import Scheduler, SessionEntry
from service.runtime.validation import validate_sinks, validate_sources
from service.storage.io_thread import snapshot
from streaming import events as ev
from streaming.envelope import utc_now

__all__ = ["as_records", "change", "session_entry"]


def session_entry(sched: Scheduler, sid: str) -> SessionEntry:
    """The live session `sid`; SESSION_NOT_FOUND."""
    entry = sched.sessions.get(sid)
    if entry is None or entry.deleted:
        raise ServiceError("SESSION_NOT_FOUND", f"no session {sid!r}")
    return entry


def as_records(items: Iterable[SourceInput | SinkInput], what: str) -> dict[str, SourceRecord]:
    """Request items as records by ref; a ref given twice is a 422."""
    out: dict[str, SourceRecord] = {}
    for index, item in enumerate(items):
        if item.ref in out:
            raise ServiceError(
                "INVALID_REQUEST",
                f"{what} ref {item.ref!r} given twice",
                errors=[{"path": f"$.{what}s[{index}].ref", "message": "duplicate ref"}],
            )
        out[item.ref] = SourceRecord(
            type=item.type, location=item.location, options=dict(item.options)
        )
    return out


async def change(
    sched: Scheduler,
    config: Config,
    sid: str,
    kind: str,
    items: dict[str, SourceRecord],
    *,
    replace: bool = False,
    remove: str | None = None,
) -> SessionRecord:
    """Merge (or `replace` with, or `remove` one of) sources or sinks (`kind`)."""
    entry = session_entry(sched, sid)
    if kind == "source":
        checked = await sched.durable.examine(validate_sources, items, config.read_roots)
    else:
        checked = await sched.durable.examine(validate_sinks, items, config.write_roots)
    async with entry.lock:
        entry = session_entry(sched, sid)
        current = entry.record.sources if kind == "source" else entry.record.sinks
        if remove is not None and remove not in current:
            raise ServiceError("NOT_FOUND", f"session {sid!r} has no {kind} {remove!r}")
        updated = {} if replace else dict(current)
        updated.update(checked)
        if remove is not None:
            del updated[remove]
        changed = sorted(
            ref for ref in set(current) | set(updated) if current.get(ref) != updated.get(ref)
        )
        if kind == "source":
            entry.record.sources = updated
        else:
            entry.record.sinks = updated
        entry.record.updated_utc = utc_now()
        await sched.commit(sessions=(entry,))
        result = snapshot(entry.record)
    if kind == "source":
        data = {"changed": changed, "sources": msgspec.to_builtins(result.sources)}
        await sched.emit(ev.SOURCES_CHANGED, sid, data)
    else:
        data = {"changed": changed, "sinks": msgspec.to_builtins(result.sinks)}
        await sched.emit(ev.SESSION_UPDATED, sid, data)
    return result
