"""Signatures: short content hashes that say whether a step's result can be reused.

- A *source signature* covers the file's path, size and mtime (ns), the source type and options
  (dataset...), and, with `options: {"hash": true}`, the file's content.
- A *step signature* covers the step's registry name, its params (msgspec-encoded with sorted
  keys), its code and file versions, the enclosing pipelines' versions, and the signatures of
  its inputs (and of the sources it reads).
- A *value signature* signs an output value. A small value (scalars, strings, small containers,
  numpy arrays up to `SMALL_ARRAY_ELEMENTS` elements) is signed by its content, so an upstream
  rerun that yields the same value (new sample, same geometry metadata) leaves its consumers
  clean: early cutoff. A large value is signed by its producer's signature and output name:
  hashing megabytes on every run would cost more than the cutoff saves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import numpy as np

from .safeio import open_regular
from .step import SourceSpec

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
        parts.append(file_digest(spec.location))
    return digest(*parts)


def file_digest(path: str) -> str:
    """blake2b of a file's content, read in 1 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open_regular(path) as f:  # a FIFO or device swapped in is refused, never read
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def value_signature(value: Any) -> str | None:
    """Content signature of a small value, or None when the value is large (or opaque)."""
    h = hashlib.blake2b(digest_size=16)
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
        if value.size > SMALL_ARRAY_ELEMENTS or value.dtype.hasobject:
            return False
        h.update(f"nd:{value.dtype.str}:{value.shape}:".encode())
        h.update(np.ascontiguousarray(value).tobytes())
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
    return False


def output_signature(step_signature: str, output_key: str, value: Any) -> str:
    """Signature of an output value: its content when small, else producer + key."""
    sig = value_signature(value)
    return sig if sig is not None else digest("out", step_signature, output_key)


def combine(static_signature: str, input_signatures: Iterable[str]) -> str:
    """A step's execution signature: its static part plus its actual inputs' signatures."""
    return digest(static_signature, *input_signatures)
