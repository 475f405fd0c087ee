"""sha256 of source files for the NXcanSAS provenance, computed off the run's critical path.

The contract puts each source file's sha256 in `sasprocess01`. Hashing a new 16.8-Mpx sample
costs ~140 ms, as much as reading and reducing it, so the runner calls `prefetch` as soon as a
run that will write provenance starts: each source is hashed in a small thread pool (hashlib and
file reads release the GIL) while the steps read and reduce, and the writer's `source_sha256`
only waits for a result that is usually ready.

Honesty of a digest. A digest is filed under the file's *identity* (absolute path, size, mtime,
ctime, inode) taken on the open descriptor before the first byte is hashed, and kept only if
the identity is the same after the last byte: a file rewritten while it was hashed gets no
digest (the next lookup hashes it again), so a digest never describes bytes the identity does
not name. The writer looks the file up by its identity *when it writes*: a source replaced
after the run started (a new inode, or new mtime/ctime) is hashed anew, never given the old
file's digest. What is recorded is the sha256 of the file as it is when the curve is written
(the same as before this module existed); a source rewritten in place between the reading step
and the writer is the user's race, and its new digest at least says that the file changed.

`prefetch` itself only queues a job: the `stat` of each source (the identity) happens in a
hashing thread too, so that a run's first step never waits on the file system (or on the GIL
a `stat` gives up) for provenance.

Bounded: at most `_WORKERS` hashing threads (created on first use, idle otherwise), at most
`_MAX_PENDING` files queued and as many prefetch jobs (beyond that `prefetch` leaves the work to
the writer), and at most
`_CACHE_SIZE` digests kept (least recently used goes). A cancelled run leaves at most its own
files' hashing to finish; nobody waits for it. Pure standard library; usable from any thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from .safeio import NotRegularFileError, open_regular

__all__ = ["prefetch", "source_sha256"]

_WORKERS = 2
_MAX_PENDING = 16
_CACHE_SIZE = 256
_HASH_CHUNK = 1 << 20
_WAIT_S = 0.05

Identity = tuple[str, int, int, int, int]

_lock = threading.Lock()
_digests: OrderedDict[Identity, str] = OrderedDict()
_pending: dict[Identity, Future[str]] = {}
_executor: ThreadPoolExecutor | None = None
_queued = 0  # prefetch jobs submitted and not finished


def _identity(path: str, st: os.stat_result) -> Identity:
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _unavailable(exc: OSError) -> str:
    if isinstance(exc, NotRegularFileError):
        return "unavailable: not a regular file"
    return f"unavailable: {exc.strerror or type(exc).__name__}"


def _hash(path: str) -> tuple[Identity | None, str]:
    """(identity, sha256) of the file at `path`; identity None when there is no honest digest
    to keep (unreadable, not a regular file, changed while hashed)."""
    try:
        with open_regular(path) as f:
            before = _identity(path, os.fstat(f.fileno()))
            h = hashlib.sha256()
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
            after = _identity(path, os.fstat(f.fileno()))
    except OSError as exc:
        return None, _unavailable(exc)
    if after != before:
        return None, "unavailable: the file changed while it was hashed"
    return before, h.hexdigest()


def _remember(identity: Identity, digest: str) -> None:
    with _lock:
        _digests[identity] = digest
        _digests.move_to_end(identity)
        while len(_digests) > _CACHE_SIZE:
            _digests.popitem(last=False)


def _current_identity(location: str) -> Identity | str:
    path = os.path.abspath(location)
    try:
        st = os.stat(path)
    except OSError as exc:
        return _unavailable(exc)
    if not stat.S_ISREG(st.st_mode):
        return "unavailable: not a regular file"
    return _identity(path, st)


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="runwire-sha256")
    return _executor


def _job(identity: Identity) -> str:
    """The digest of the file with `identity`, or "unavailable..." if it is no longer that file."""
    try:
        found, digest = _hash(identity[0])
        if found is not None:
            _remember(found, digest)
        return digest if found == identity else "unavailable: the file changed"
    finally:
        with _lock:
            _pending.pop(identity, None)


def prefetch(locations: Iterable[str]) -> None:
    """Start hashing the files at `locations` that have no digest yet (returns at once: even
    the `stat` of each file happens in a hashing thread, off the caller's critical path)."""
    paths = list(locations)
    with _lock:
        global _queued
        if not paths or _queued >= _MAX_PENDING:
            return  # beyond the bound the writer hashes what it needs itself
        _queued += 1
    _pool().submit(_prefetch_job, paths)


def _prefetch_job(locations: list[str]) -> None:
    """Queue the hashing of each file that has no digest and is not being hashed."""
    global _queued
    try:
        for location in locations:
            identity = _current_identity(location)
            if isinstance(identity, str):
                continue  # nothing to hash: the writer records why
            with _lock:
                if identity in _digests or identity in _pending or len(_pending) >= _MAX_PENDING:
                    continue
                _pending[identity] = _pool().submit(_job, identity)
    finally:
        with _lock:
            _queued -= 1


def source_sha256(location: str, raise_if_cancelled: Callable[[], None] | None = None) -> str:
    """sha256 of the source file at `location` as it is now, or a short reason why there is none.

    Uses a digest already computed for the same identity, waits for one being computed (calling
    `raise_if_cancelled` every `_WAIT_S` so that a cancelled run stops waiting), and otherwise
    hashes the file in the calling thread. Only regular files are opened.
    """
    identity = _current_identity(location)
    if isinstance(identity, str):
        return identity
    with _lock:
        known = _digests.get(identity)
        if known is not None:
            _digests.move_to_end(identity)
            return known
        running = _pending.get(identity)
    if running is not None:
        waited = _wait(running, raise_if_cancelled)
        if not waited.startswith("unavailable"):
            return waited  # the digest of exactly the identity we found
    found, digest = _hash(identity[0])
    if found is not None:
        _remember(found, digest)
    return digest


def _wait(running: Future[str], raise_if_cancelled: Callable[[], None] | None) -> str:
    while True:
        if raise_if_cancelled is not None:
            raise_if_cancelled()
        try:
            return running.result(timeout=_WAIT_S)
        except TimeoutError:
            continue
