"""Reading compressed HDF5 datasets with their chunks decompressed in parallel.

HDF5 serialises every call (h5py holds one lock around the library), so a compressed frame read
with `dset[()]` is decompressed on one core. Here the raw chunks are read as stored
(`read_direct_chunk`: plain I/O, quick even under that lock) and decompressed in a thread pool
by codecs that release the GIL:

- gzip (`deflate`, optionally after `shuffle`): `zlib`, one task per chunk;
- bitshuffle-LZ4 (filter 32008, as DECTRIS detectors write it, one chunk per frame): the
  `bitshuffle` package. A bitshuffle chunk is a sequence of independently compressed blocks
  (8 KiB of data each by default), so even a one-chunk frame is split into runs of whole blocks
  decoded side by side.

Any other filter chain (LZ4, Blosc, Zstandard..., registered by `hdf5plugin`), a chunk stored
with a filter skipped, or a dataset with unallocated chunks gives None: the caller reads with
h5py instead. The decoded arrays are identical to h5py's (the tests compare them).

The pool has `min(8, cpu_count)` threads; at most twice that many chunk tasks are in flight per
read, so a long stack of frames is not held raw in memory all at once.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import bitshuffle
import h5py
import hdf5plugin  # noqa: F401 - registers the LZ4, bitshuffle, Blosc and Zstandard filters
import numpy as np

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_BITSHUFFLE = 32008
_BSHUF_LZ4 = 2  # bitshuffle cd_values[4]: compression 0 none, 2 LZ4, 3 Zstandard
_BSHUF_HEADER = struct.Struct(">QI")  # total bytes, block size in bytes
_BLOCK_SIZE = struct.Struct(">I")
_MIN_SPLIT_BLOCKS = 8  # a bitshuffle chunk with fewer blocks is decoded in one task

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def workers() -> int:
    """Threads of the decompression pool."""
    return max(1, min(8, os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(workers(), thread_name_prefix="runwire-decompress")
        return _pool


Decoder = Callable[[bytes, np.ndarray], None]  # decode a raw chunk into a flat output array


def chunk_decoder(dset: h5py.Dataset) -> Decoder | None:
    """A parallel-safe decoder for the dataset's filter chain, or None when it has none here."""
    if dset.chunks is None or dset.dtype.kind not in "biuf":
        return None
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    codes = [f[0] for f in filters]
    itemsize = dset.dtype.itemsize
    if codes == [FILTER_DEFLATE]:
        return _inflate
    if codes == [FILTER_SHUFFLE, FILTER_DEFLATE]:
        return lambda raw, out: _unshuffle(zlib.decompress(raw), out, itemsize)
    if codes == [FILTER_BITSHUFFLE]:
        values = tuple(filters[0][2])
        if len(values) >= 5 and values[4] == _BSHUF_LZ4:
            return _bitshuffle_lz4
    return None


def _inflate(raw: bytes, out: np.ndarray) -> None:
    data = zlib.decompress(raw)
    out.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)


def _unshuffle(data: bytes, out: np.ndarray, itemsize: int) -> None:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    out.view(np.uint8).reshape(-1, itemsize)[:] = planes.T


def _bitshuffle_lz4(raw: bytes, out: np.ndarray) -> None:
    """Decode a whole bitshuffle-LZ4 chunk (header included) into `out`."""
    for segment in bitshuffle_segments(raw, out):
        segment()


def bitshuffle_segments(raw: bytes, out: np.ndarray, parts: int = 1) -> list[Callable[[], None]]:
    """Split a bitshuffle-LZ4 chunk into up to `parts` tasks, each decoding whole blocks.

    Format (bitshuffle's HDF5 filter): 8-byte big-endian total size in bytes, 4-byte block size in
    bytes, then per block a 4-byte big-endian compressed size and the LZ4 data. Every block holds
    `block_size` elements except the last (the remainder rounded down to a multiple of 8, then
    up to 7 elements stored raw); a run of whole blocks is thus itself a valid stream.
    """
    total_bytes, block_bytes = _BSHUF_HEADER.unpack_from(raw, 0)
    itemsize = out.dtype.itemsize
    n = out.size
    if total_bytes != n * itemsize:
        raise ValueError(f"bitshuffle chunk holds {total_bytes} bytes, expected {n * itemsize}")
    block = block_bytes // itemsize
    full_blocks = n // block if block else 0
    dtype = out.dtype
    buffer = np.frombuffer(raw, dtype=np.uint8)
    parts = max(1, min(parts, full_blocks // _MIN_SPLIT_BLOCKS))
    per_part = full_blocks // parts if parts > 1 else full_blocks
    tasks: list[Callable[[], None]] = []
    offset, start = _BSHUF_HEADER.size, 0
    for _ in range(parts - 1):
        begin = offset
        for _ in range(per_part):
            (size,) = _BLOCK_SIZE.unpack_from(raw, offset)
            offset += _BLOCK_SIZE.size + size
        tasks.append(
            _segment_task(buffer[begin:offset], out, start, per_part * block, dtype, block)
        )
        start += per_part * block
    tasks.append(_segment_task(buffer[offset:], out, start, n - start, dtype, block))
    return tasks


def _segment_task(
    data: np.ndarray, out: np.ndarray, start: int, count: int, dtype: Any, block: int
) -> Callable[[], None]:
    def run() -> None:
        decoded = bitshuffle.decompress_lz4(data, (count,), dtype, block)
        out[start : start + count] = decoded

    return run


def read_chunked(dset: h5py.Dataset) -> np.ndarray | None:
    """The whole dataset, its chunks decompressed in parallel; None when this cannot read it."""
    decoder = chunk_decoder(dset)
    if decoder is None:
        return None
    shape, chunks = tuple(dset.shape), tuple(dset.chunks)
    expected = 1
    for size, chunk in zip(shape, chunks, strict=True):
        expected *= -(-size // chunk)
    dsid = dset.id
    if expected == 0 or dsid.get_num_chunks() != expected:
        return None  # unallocated chunks read as the fill value: leave that to HDF5
    infos = [dsid.get_chunk_info(i) for i in range(expected)]
    if any(info.filter_mask for info in infos):
        return None
    out = np.empty(shape, dtype=dset.dtype)
    pool, limit = _executor(), 2 * workers()
    pending: list[Future[None]] = []
    whole = len(infos) == 1 and chunks == shape
    try:
        for info in infos:
            _, raw = dsid.read_direct_chunk(info.chunk_offset)
            if whole and decoder is _bitshuffle_lz4:
                # One chunk per frame (the Eiger layout): decode runs of blocks side by side.
                flat = out.reshape(-1)
                pending += [pool.submit(t) for t in bitshuffle_segments(raw, flat, workers())]
                continue
            pending.append(pool.submit(_decode_into, decoder, raw, out, info.chunk_offset, chunks))
            if len(pending) >= limit:
                pending.pop(0).result()
        for future in pending:
            future.result()
    finally:
        for future in pending:
            future.cancel()
    return out


def _decode_into(
    decoder: Decoder, raw: bytes, out: np.ndarray, offset: tuple[int, ...], chunks: tuple[int, ...]
) -> None:
    region = tuple(
        slice(o, min(o + c, s)) for o, c, s in zip(offset, chunks, out.shape, strict=True)
    )
    target = out[region]
    if target.shape == chunks and target.flags.c_contiguous:
        decoder(raw, target.reshape(-1))
        return
    # An edge chunk (or a chunk not contiguous in the output): decode whole, copy what is inside.
    full = np.empty(chunks, dtype=out.dtype)
    decoder(raw, full.reshape(-1))
    target[...] = full[tuple(slice(0, n) for n in target.shape)]
