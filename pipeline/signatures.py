"""Signatures: short content hashes that say whether a step's result can be reused.

- A *source signature* covers the file's path, size and mtime (ns), the source type and options
  (dataset...), and, with `options: {"hash": true}`, the file's content.
- A *step signature* covers the step's registry name, its params (msgspec-encoded with sorted
  keys), its code and file versions, the enclosing pipelines' versions, and the signatures of
  its inputs (and of the sources it reads).
- A *value signature* signs an output value by its content: scalars, strings, containers (up to
  `_SMALL_CONTAINER_ITEMS` leaf items), numpy arrays of any size, and objects that list their
  content through `signature_items()` (`UArray`, `Curve`, `Binning`). An upstream rerun that
  yields the same value (new sample, same geometry metadata, same 16.8-Mpx mask) then leaves its
  consumers clean: early cutoff. Only opaque values (unknown types, object arrays, very long
  Python containers) are signed by their producer's signature and output name.

Arrays are hashed with xxh3-128 (`xxhash`, about 10 GB/s, the GIL released), and the digest of a
read-only array is remembered by identity (`_ArrayDigests`), so an array is hashed once however
many values hold it: a frame read once is hashed once even though the lazily normalised frames
built on it (`pipeline.uarray`) sign themselves from it. Signing is done once per produced value
(the runner signs each step's outputs when it stores them); a skipped step's outputs keep the
signatures stored in the cache, so values of unchanged sources are never hashed again.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np
import xxhash

from .safeio import open_regular
from .step import SourceSpec

# Arrays up to this size were once the only ones signed by content; kept for callers and tests
# that name it. Every array is now signed by content (see the module docstring).
SMALL_ARRAY_ELEMENTS = 65_536
# Containers are hashed by content only up to this many leaf items; beyond, they count as large.
_SMALL_CONTAINER_ITEMS = 4_096
_HASH_CHUNK = 1 << 20

ABSENT = "absent"  # signature of an optional input or source that has no value


def digest(*parts: bytes | str) -> str:
    """A 128-bit blake2b hex digest of the parts (separated, so ("ab","c") != ("a","bc"))."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def encode_params(params: msgspec.Struct) -> bytes:
    """Params as canonical JSON (sorted keys): equal params give equal bytes."""
    return msgspec.json.encode(msgspec.to_builtins(params), order="sorted")


def source_signature(spec: SourceSpec) -> str:
    """Signature of a registered source from its file's identity (and content, if asked).

    The identity is path, size, mtime, ctime and inode: a file rewritten in place with its size
    and mtime restored (`os.utime`) still gets a new ctime, and one replaced by a rename a new
    inode, so neither is mistaken for the file already processed.
    """
    options = msgspec.json.encode(spec.options, order="sorted")
    try:
        st = os.stat(spec.location)
    except OSError:
        # The reading step will fail with a clear error; the signature just has to differ.
        return digest("missing", spec.type, spec.location, options)
    parts: list[bytes | str] = [spec.type, os.path.abspath(spec.location), str(st.st_size),
                                str(st.st_mtime_ns), str(st.st_ctime_ns), str(st.st_ino),
                                options]  # fmt: skip
    if spec.options.get("hash"):
        try:
            parts.append(file_digest(spec.location))
        except OSError as exc:
            # Replaced by a FIFO, a directory, unreadable...: like a missing file, the reading
            # step fails with a clear error (a step error, not a crash of the planner); the
            # signature only has to differ from any readable content's.
            return digest("unreadable", spec.type, spec.location, options, type(exc).__name__)
    return digest(*parts)


def file_digest(path: str) -> str:
    """blake2b of a file's content, read in 1 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open_regular(path) as f:  # a FIFO or device swapped in is refused, never read
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@runtime_checkable
class SignedByContent(Protocol):
    """A value that lists what its content is made of (arrays, numbers, strings, containers)."""

    def signature_items(self) -> tuple[Any, ...]: ...


def _immutable(array: np.ndarray) -> bool:
    """True when neither `array` nor any array it views can be written to: its bytes are fixed."""
    a: Any = array
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, bytes)


class _ArrayDigests:
    """xxh3-128 digests of read-only arrays, remembered by identity (weak, bounded LRU).

    An entry is valid while its array is alive (the weak reference proves the id was not reused)
    and the array cannot change (`_immutable`), so a digest is computed once per array.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[weakref.ref[np.ndarray], bytes]] = OrderedDict()

    def digest(self, array: np.ndarray) -> bytes:
        cacheable = _immutable(array)
        if cacheable:
            with self._lock:
                hit = self._entries.get(id(array))
                if hit is not None and hit[0]() is array:
                    self._entries.move_to_end(id(array))
                    return hit[1]
        contiguous = np.ascontiguousarray(array)
        h = xxhash.xxh3_128()
        h.update(f"nd:{array.dtype.str}:{array.shape}:".encode())
        # Hash the raw buffer (a uint8 view: no copy); xxhash releases the GIL on large inputs.
        if contiguous.size:
            h.update(contiguous.reshape(-1).view(np.uint8).data)
        result = h.digest()
        if cacheable:
            with self._lock:
                self._entries[id(array)] = (weakref.ref(array), result)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return result


ARRAY_DIGESTS = _ArrayDigests()


def array_digest(array: np.ndarray) -> bytes:
    """The 16-byte content digest of a numeric array (dtype, shape and bytes)."""
    return ARRAY_DIGESTS.digest(array)


def value_signature(value: Any) -> str | None:
    """Content signature of a value, or None when the value is opaque (signed by its producer)."""
    h = xxhash.xxh3_128()
    budget = [_SMALL_CONTAINER_ITEMS]
    if not _feed(h, value, budget):
        return None
    return h.hexdigest()


def _feed(h: Any, value: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if value is None or isinstance(value, bool | int | float | complex):
        h.update(f"{type(value).__name__}:{value!r};".encode())
        return True
    if isinstance(value, str):
        data = value.encode()
        h.update(b"s%d:" % len(data) + data)
        return True
    if isinstance(value, bytes):
        h.update(b"b%d:" % len(value) + value)
        return True
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return False
        h.update(b"nd" + array_digest(value))
        return True
    if isinstance(value, np.generic):
        h.update(f"np:{value.dtype.str}:".encode() + value.tobytes())
        return True
    if isinstance(value, list | tuple):
        h.update(f"{type(value).__name__}{len(value)}[".encode())
        return all(_feed(h, item, budget) for item in value)
    if isinstance(value, Mapping):
        h.update(f"map{len(value)}{{".encode())
        try:
            items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        except Exception:  # keys whose repr fails: sign the value as large (by its producer)
            return False
        return all(_feed(h, k, budget) and _feed(h, v, budget) for k, v in items)
    if isinstance(value, SignedByContent):
        h.update(f"obj:{type(value).__module__}.{type(value).__qualname__}(".encode())
        return _feed(h, value.signature_items(), budget)
    return False


def output_signature(step_signature: str, output_key: str, value: Any) -> str:
    """Signature of an output value: its content, or producer + key for an opaque value."""
    sig = value_signature(value)
    return sig if sig is not None else digest("out", step_signature, output_key)


def combine(static_signature: str, input_signatures: Iterable[str]) -> str:
    """A step's execution signature: its static part plus its actual inputs' signatures."""
    return digest(static_signature, *input_signatures)
