"""Azimuthal integration: the mean of unmasked pixel values in equal-width q bins.

The work is split in two steps so that a new frame costs only a pass over its pixels:
`integrate.prepare_bins` (depends on q, mask and `n_bins` only: rerun when the geometry or the
mask changes) assigns every pixel a bin index, and `integrate.azimuthal` sums each frame into
those bins.

For bin k with n_k unmasked pixels: I_k = Σ v / n_k and Idev_k = sqrt(Σ var) / n_k (the
standard error of the mean given per-pixel variances). Empty bins are left out of the curve.

A normalised frame arrives as a lazy linear form (`pipeline.uarray.LinearForm`): ``(Σ c_i ·
v_i) / d``. Sums over bins are linear, so the bin sums are ``Σ c_i · Σ_bin(v_i / d)`` and the
variance sums ``Σ c_i² · Σ_bin(var_i / d²)``: each term is summed straight from the array it
was built on (the raw counts), and the sums of a term the binning has seen before (the dark
frame's, in every partial run) are reused.

The sums visit the binned pixels in bin order (computed once per binning), 65,536 pixels at a
time: gather the raw counts, multiply by 1/d (or 1/d², kept in the same order), and add each
bin's run with `np.add.reduceat`, all while the chunk sits in the CPU cache, on two threads
(numpy releases the GIL in each call). This costs less than the two weighted `np.bincount`s over
the whole frame it replaced (4.7 against 10 ms at 1 Mpx on one core; see
docs/performance.md), and gives the same sums up to rounding (a relative 1e-14: a bin's pixels
are added in another grouping). `Binning` keeps, per binning: the bin-sorted pixel order (8 bytes
a binned pixel), the reciprocals 1/d and 1/d² in that order (16 bytes a binned pixel), and the
bin sums of the last `_MEMO_SIZE` terms.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import numpy as np

from ..errors import StepFailure
from ..signatures import _immutable
from ..step import Step, StepContext, register
from ..uarray import Curve, LinearForm, UArray, as_uarray
from .masks import as_mask

_MEMO_SIZE = 16  # bin sums of this many terms per binning (a few hundred floats each)


_CHUNK = 65536  # pixels gathered per pass: the chunk's weights stay in the L2 cache


class _TermSums:
    """Per-binning memo of weighted bin sums, the bin-sorted pixel order and divisor reciprocals.

    Entries are keyed by the identity of read-only arrays and checked with weak references, so an
    entry is used only while the very arrays it was computed from are alive and unchanged.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sums: OrderedDict[tuple[int, int, int], tuple[Any, Any, np.ndarray]] = OrderedDict()
        self.reciprocals: dict[tuple[int, int], tuple[Any, list[np.ndarray]]] = {}
        self.order: _Order | None = None


@dataclass(frozen=True, slots=True)
class _Chunk:
    """`_CHUNK` consecutive pixels of the bin-sorted order: which pixels, which bins they
    start, and where each of those bins' runs starts inside the chunk."""

    pixels: np.ndarray  # intp indices into the flattened frame
    bins: np.ndarray  # the bins of this chunk's runs, ascending
    starts: np.ndarray  # offset of each run in the chunk (for np.add.reduceat)


@dataclass(frozen=True, slots=True)
class _Order:
    """The binned (unmasked, finite-q) pixels sorted by bin, in chunks."""

    chunks: tuple[_Chunk, ...]

    @property
    def nbytes(self) -> int:
        return sum(c.pixels.nbytes + c.bins.nbytes + c.starts.nbytes for c in self.chunks)

    @classmethod
    def of(cls, index: np.ndarray, counts: np.ndarray) -> _Order:
        n_binned = int(counts.sum())
        pixels = np.argsort(index, kind="stable")[:n_binned]  # stable: pixel order within a bin
        bounds = np.concatenate(([0], np.cumsum(counts)))  # bin k is pixels[bounds[k]:bounds[k+1]]
        chunks = []
        for lo in range(0, n_binned, _CHUNK):
            hi = min(lo + _CHUNK, n_binned)
            # Bins with pixels in [lo, hi): the one holding `lo`, then every bin starting inside.
            first = int(np.searchsorted(bounds, lo, side="right")) - 1
            last = int(np.searchsorted(bounds, hi, side="left"))
            bins = np.arange(first, last, dtype=np.intp)
            bins = bins[counts[bins] > 0]
            starts = np.maximum(bounds[bins] - lo, 0).astype(np.intp)
            chunks.append(_Chunk(pixels[lo:hi].copy(), bins, starts))
        return cls(tuple(chunks))


SumRequest = tuple[np.ndarray, "np.ndarray | None", int]  # array, divisor, power of the divisor
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """A thread summing chunks alongside the caller's thread."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)),
                                       thread_name_prefix="runwire-weights")  # fmt: skip
        return _POOL


def _ref(array: np.ndarray | None) -> Any:
    return None if array is None else weakref.ref(array)


def _alive(ref: Any, array: np.ndarray | None) -> bool:
    return (ref is None and array is None) or (ref is not None and ref() is array)


class _ChunkWork:
    """Chunks handed out one at a time to the threads summing them (whoever is free takes the
    next), each chunk's sums stored at its index: the totals do not depend on who did what."""

    def __init__(self, chunks: Sequence[_Chunk]) -> None:
        self.chunks = chunks
        self.parts: list[list[np.ndarray] | None] = [None] * len(chunks)
        self._next = itertools.count()  # next() on a count is atomic under the GIL

    def take(self) -> int | None:
        c = next(self._next)
        return c if c < len(self.chunks) else None


def _sum_chunks(
    work: _ChunkWork,
    arrays: Sequence[np.ndarray],
    jobs: Sequence[tuple[int, int, Sequence[np.ndarray] | None]],
) -> None:
    """Take chunks until none is left; per chunk, per job (array number, request number, sorted
    reciprocals per chunk or None): the sums of each bin's run in the chunk. numpy releases the
    GIL in all of these calls."""
    longest = max(c.pixels.size for c in work.chunks)
    gathered = [np.empty(longest, dtype=a.dtype) for a in arrays]
    weights = np.empty(longest, dtype=np.float64)
    while (c := work.take()) is not None:
        chunk = work.chunks[c]
        n = chunk.pixels.size
        for a, array in enumerate(arrays):
            np.take(array, chunk.pixels, out=gathered[a][:n])
        parts = []
        for a, _, recips in jobs:
            values = gathered[a][:n]
            if recips is None:
                parts.append(np.add.reduceat(values, chunk.starts, dtype=np.float64))
            else:
                np.multiply(values, recips[c], out=weights[:n])
                parts.append(np.add.reduceat(weights[:n], chunk.starts))
        work.parts[c] = parts


@dataclass(frozen=True, slots=True, eq=False)
class Binning:
    """Bin index per pixel (flattened; `n_bins` marks excluded pixels), edges, centres, counts."""

    index: np.ndarray  # intp, one per pixel, in 0..n_bins (n_bins = masked or non-finite q)
    n_bins: int
    edges: np.ndarray  # n_bins + 1 edges in 1/nm
    centres: np.ndarray  # n_bins centres in 1/nm
    counts: np.ndarray  # unmasked pixels per bin
    shape: tuple[int, ...]  # frame shape the index was built for
    memo: _TermSums = field(default_factory=_TermSums, repr=False)

    def signature_items(self) -> tuple[Any, ...]:
        return (self.index, self.n_bins, self.edges, self.counts)

    @property
    def nbytes(self) -> int:
        """Bytes held: the index and arrays, plus the memo's pixel order and reciprocals."""
        held = [self.index, self.edges, self.centres, self.counts]
        for _, recips in self.memo.reciprocals.values():
            held += recips
        order = self.memo.order
        return sum(a.nbytes for a in held) + (order.nbytes if order is not None else 0)

    def term_sums(self, array: np.ndarray, divisor: np.ndarray | None, power: int) -> np.ndarray:
        """Σ over each bin of ``array / divisor**power`` (float64, `n_bins + 1` sums, the last,
        for excluded pixels, always 0)."""
        return self.sums_of([(array, divisor, power)])[0]

    def sums_of(self, requests: Sequence[SumRequest]) -> list[np.ndarray]:
        """`term_sums` of several requests; sums of arrays seen before come from the memo.

        The binned pixels are visited in bin order (`_Order`), `_CHUNK` at a time: each array is
        gathered once per chunk, multiplied by the divisor's reciprocal (kept in the same order)
        and summed run by run with `np.add.reduceat`, while the chunk is in the cache. Every call
        releases the GIL, so a worker thread takes chunks too (whichever thread is free takes
        the next: on a busy machine the caller alone does them all). Sums are deterministic: a
        bin's total adds its chunks' partial sums in chunk order.
        """
        memo = self.memo
        size = self.n_bins + 1
        with memo.lock:
            results: list[np.ndarray | None] = [self._memo_get(*r) for r in requests]
            todo = [k for k, hit in enumerate(results) if hit is None]
            if not todo:
                return [r for r in results if r is not None]
            if memo.order is None:
                memo.order = _Order.of(self.index, self.counts)
            chunks = memo.order.chunks
            sources: list[np.ndarray] = []  # distinct arrays (value and Poisson variance agree)
            arrays: list[np.ndarray] = []
            jobs: list[tuple[int, int, Sequence[np.ndarray] | None]] = []
            for k in todo:
                array, divisor, power = requests[k]
                a = next((n for n, seen in enumerate(sources) if seen is array), None)
                if a is None:
                    if array.size != self.index.size:
                        raise StepFailure(
                            f"array of {array.size} values for a binning of {self.index.size}"
                        )
                    sources.append(array)
                    arrays.append(np.ravel(array))
                    a = len(arrays) - 1
                recips = None if divisor is None else self._reciprocal(divisor, power)
                jobs.append((a, k, recips))
            totals = [np.zeros(size, dtype=np.float64) for _ in todo]
            if chunks:
                work = _ChunkWork(chunks)
                helper = (
                    _pool().submit(_sum_chunks, work, arrays, jobs) if len(chunks) > 1 else None
                )
                try:
                    _sum_chunks(work, arrays, jobs)
                finally:
                    # A helper that never got a core is not waited for; one that did is (it
                    # writes into `work` and reads our arrays).
                    if helper is not None and not helper.cancel():
                        helper.result()
                for chunk, chunk_parts in zip(chunks, work.parts, strict=True):
                    assert chunk_parts is not None
                    for total, part in zip(totals, chunk_parts, strict=True):
                        total[chunk.bins] += part
            for k, sums in zip(todo, totals, strict=True):
                results[k] = sums
                self._memo_put(*requests[k], sums)
        return [r for r in results if r is not None]

    def _memo_get(
        self, array: np.ndarray, divisor: np.ndarray | None, power: int
    ) -> np.ndarray | None:
        hit = self.memo.sums.get((id(array), 0 if divisor is None else id(divisor), power))
        if hit is not None and _alive(hit[0], array) and _alive(hit[1], divisor):
            self.memo.sums.move_to_end((id(array), 0 if divisor is None else id(divisor), power))
            return hit[2]
        return None

    def _memo_put(
        self, array: np.ndarray, divisor: np.ndarray | None, power: int, sums: np.ndarray
    ) -> None:
        if not (_immutable(array) and (divisor is None or _immutable(divisor))):
            return
        key = (id(array), 0 if divisor is None else id(divisor), power)
        self.memo.sums[key] = (_ref(array), _ref(divisor), sums)
        while len(self.memo.sums) > _MEMO_SIZE:
            self.memo.sums.popitem(last=False)

    def _reciprocal(self, divisor: np.ndarray, power: int) -> list[np.ndarray]:
        """1/divisor**power (float64) in the pixel order's chunks; kept while `divisor` is the
        same array."""
        key = (id(divisor), power)
        hit = self.memo.reciprocals.get(key)
        if hit is not None and hit[0]() is divisor:
            return hit[1]
        assert self.memo.order is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            recip: np.ndarray = np.divide(1.0, divisor.reshape(-1), dtype=np.float64)
            if power == 2:
                np.multiply(recip, recip, out=recip)
        recips = [recip[c.pixels] for c in self.memo.order.chunks]
        if _immutable(divisor):
            # Only the current divisor's reciprocals are kept: a new geometry replaces them.
            self.memo.reciprocals = {
                k: v for k, v in self.memo.reciprocals.items() if v[0]() is divisor
            }
            self.memo.reciprocals[key] = (weakref.ref(divisor), recips)
        return recips


def make_binning(q: np.ndarray, mask: np.ndarray | None, n_bins: int) -> Binning:
    """Assign each pixel to one of `n_bins` equal-width bins between the extreme unmasked q."""
    q = np.asarray(q)
    valid = np.isfinite(q)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != q.shape:
            raise StepFailure(f"mask shape {mask.shape} differs from q shape {q.shape}")
        valid &= ~mask
    if not valid.any():
        raise StepFailure("every pixel is masked: nothing to integrate")
    # Extremes over the valid pixels without copying them out (`where=`), then the bin of every
    # pixel in whole-frame passes: no boolean gather or scatter, which cost more than the
    # arithmetic at 1 Mpx. Same numbers as `((q[valid] - q_min) / width).astype(intp)`
    # capped at n_bins - 1 (the cap is applied before truncation, which is equivalent).
    q_min = float(np.min(q, where=valid, initial=np.inf))
    q_max = float(np.max(q, where=valid, initial=-np.inf))
    if q_max <= q_min:
        q_max = q_min + 1e-12  # a single unmasked q value: one bin holding it
    width = (q_max - q_min) / n_bins
    work = np.subtract(q, q_min)
    work /= width
    np.minimum(work, n_bins - 1, out=work)  # the pixel at q_max belongs to the last bin
    np.copyto(work, n_bins, where=~valid)  # masked or non-finite q: the overflow bin
    index = work.reshape(-1).astype(np.intp)
    counts = np.bincount(index, minlength=n_bins + 1)[:n_bins]
    edges = q_min + width * np.arange(n_bins + 1, dtype=np.float64)
    edges[-1] = q_max
    centres = 0.5 * (edges[:-1] + edges[1:])
    for array in (index, counts, edges, centres):
        array.flags.writeable = False
    return Binning(index, n_bins, edges, centres, counts, tuple(q.shape))


def integrate(frame: UArray, binning: Binning) -> Curve:
    """Mean and standard error of the frame per bin; empty bins are dropped."""
    if frame.shape != binning.shape:
        raise StepFailure(f"frame shape {frame.shape} differs from binning shape {binning.shape}")
    sums, var = bin_sums(frame.linear_form, binning)
    keep = binning.counts > 0
    n = binning.counts[keep].astype(np.float64)
    mean = sums[: binning.n_bins][keep] / n
    idev = np.zeros_like(mean) if var is None else np.sqrt(var[: binning.n_bins][keep]) / n
    return Curve(binning.centres[keep], mean, idev, binning.counts[keep])


def bin_sums(form: LinearForm, binning: Binning) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-bin sums of a linear form's value and variance (`n_bins + 1` each, float64)."""
    requests: list[SumRequest] = []
    for term in form.terms:
        requests.append((term.value, form.divisor, 1))
        term_var = term.variance_array()
        if term_var is not None:
            requests.append((term_var, form.divisor, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        parts = iter(binning.sums_of(requests))
        sums: np.ndarray | None = None
        var: np.ndarray | None = None
        for term in form.terms:
            part = term.coef * next(parts)
            sums = part if sums is None else sums + part
            if term.variance_array() is not None:
                vpart = (term.coef * term.coef) * next(parts)
                var = vpart if var is None else var + vpart
    assert sums is not None
    return sums, var


@register
class PrepareBins(Step):
    """Precompute the q bin of every pixel from q, the mask and the number of bins.

    Bins are `n_bins` equal-width intervals between the smallest and largest unmasked pixel q;
    masked pixels and pixels with non-finite q belong to no bin.
    """

    name = "integrate.prepare_bins"
    input_names = ("q",)
    optional_inputs = ("mask",)
    output_names = ("bins",)

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        n_bins: Annotated[
            int, msgspec.Meta(ge=1, le=1_000_000, description="Number of q bins.")
        ] = 200

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        p = self.params
        assert isinstance(p, PrepareBins.Params)
        return {"bins": make_binning(inputs["q"], as_mask(inputs.get("mask")), p.n_bins)}


@register
class Azimuthal(Step):
    """Average a frame azimuthally into the prepared q bins: I(q) with Idev.

    I is the mean of the unmasked pixel values in each bin, Idev = sqrt(sum of variances) / n.
    An absent frame gives an absent curve.
    """

    name = "integrate.azimuthal"
    input_names = ("frame", "bins")
    output_names = ("curve",)

    def compute(self, inputs: dict[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        frame, binning = inputs.get("frame"), inputs["bins"]
        if frame is None:
            return {"curve": None}
        if not isinstance(binning, Binning):
            raise StepFailure(
                f"input bins must come from integrate.prepare_bins, not {type(binning).__name__}"
            )
        return {"curve": integrate(as_uarray(frame, "frame"), binning)}
