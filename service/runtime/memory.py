"""Memory: the incremental caches' budget, its LRU eviction order, and giving memory back.

The sessions' incremental caches (`pipeline.incremental.IncrementalCache`, one per session) hold
step outputs between runs: for a 1-Mpx frame a few tens of MB per session, so a hundred
sessions would take gigabytes if nothing bounded them. The service keeps their sum (counted as
the arrays' `nbytes`, measured at the end of each run) under `--cache-memory` bytes: when over,
whole caches are evicted, least recently used first (a session whose run is in flight keeps its
cache); an evicted session's next run is full with `fallback_reason: "cache_evicted"`.

Freed numpy buffers do not go back to the operating system by themselves: glibc keeps them in
its heaps (one arena per worker thread), so a server that created, ran and deleted sessions
looked as big as at its peak. `release_memory()` calls glibc's `malloc_trim(0)` after a session
is deleted and after an eviction (from a worker thread: it walks every arena), and is a no-op
where the C library has no such function (musl, macOS).

Pure functions except `release_memory`; the scheduler does the bookkeeping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
from collections.abc import Callable, Hashable, Iterable
from functools import cache
from typing import TypeVar

__all__ = [
    "CACHE_EVICTED",
    "choose_evictions",
    "default_cache_memory",
    "parse_byte_size",
    "physical_memory",
    "release_memory",
]

log = logging.getLogger("service.runtime.memory")

CACHE_EVICTED = "cache_evicted"

# Used when the machine's RAM cannot be read (no sysconf names): a budget that fits any
# machine the service is meant for.
FALLBACK_CACHE_MEMORY = 1 << 30

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

K = TypeVar("K", bound=Hashable)


def parse_byte_size(text: str) -> int:
    """Bytes from `"1073741824"`, `"512M"`, `"2G"`, `"1.5GiB"` (binary multiples: 1K = 1024).

    Raises ValueError with a message fit for a one-line CLI error."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"expected a byte size such as 512M or 2G, got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    return int(value)


def physical_memory() -> int | None:
    """The machine's RAM in bytes, or None where `os.sysconf` cannot tell."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return int(pages) * int(page_size)


def default_cache_memory() -> int:
    """A quarter of physical memory (1 GiB when it cannot be read)."""
    ram = physical_memory()
    return ram // 4 if ram is not None else FALLBACK_CACHE_MEMORY


def choose_evictions(caches: Iterable[tuple[K, int, float, bool]], budget: int) -> list[K]:
    """Which caches to drop so the total fits `budget`: least recently used first.

    `caches` are `(key, bytes, last_used, busy)`; a busy cache (its run is in flight) counts
    towards the total but is never chosen. Returns the keys to evict, in eviction order; the
    total may still exceed the budget when busy caches alone do.
    """
    items = list(caches)
    total = sum(size for _, size, _, _ in items)
    victims: list[K] = []
    for key, size, _, busy in sorted(items, key=lambda item: item[2]):
        if total <= budget:
            break
        if busy or size <= 0:
            continue
        victims.append(key)
        total -= size
    return victims


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        log.debug("malloc_trim is not available: freed memory stays with the allocator")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    fn: Callable[[int], int] = trim
    return fn


def release_memory() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`); False where unsupported.

    Blocking (it walks every malloc arena): call it from a worker thread, never on the loop.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
