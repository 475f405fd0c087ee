"""Bin sums over the bin-sorted pixel order equal the plain weighted `np.bincount`."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import StepFailure
from pipeline.steps.integrate import _CHUNK, make_binning

RNG = np.random.default_rng(5)


def test_sums_across_chunks_equal_bincount_with_masked_pixels_and_empty_bins() -> None:
    shape = (700, 300)  # 210,000 pixels: several chunks, bins split between chunks
    assert shape[0] * shape[1] > 3 * _CHUNK
    q = np.hypot(*np.indices(shape)).astype(np.float64)
    q[q > 500] *= 3  # a gap in q: bins in between stay empty
    mask = RNG.random(shape) < 0.1
    q[5, 7] = np.nan  # a pixel without q belongs to no bin
    binning = make_binning(q, mask, 300)
    assert (binning.counts == 0).any()
    counts = RNG.poisson(40.0, size=shape).astype(np.int32)
    omega = RNG.uniform(0.5, 1.0, size=shape)
    omega.flags.writeable = False
    got_1, got_2, plain = binning.sums_of(
        [(counts, omega, 1), (counts, omega, 2), (counts, None, 1)]
    )
    index = binning.index
    want_1 = np.bincount(index, weights=counts.reshape(-1) / omega.reshape(-1), minlength=301)
    want_2 = np.bincount(index, weights=counts.reshape(-1) / omega.reshape(-1) ** 2, minlength=301)
    want_plain = np.bincount(index, weights=counts.reshape(-1), minlength=301)
    for got, want in ((got_1, want_1), (got_2, want_2), (plain, want_plain)):
        assert got.shape == (301,)
        np.testing.assert_allclose(got[:300], want[:300], rtol=1e-12)
        assert got[300] == 0.0  # excluded pixels are not summed
    # The same request again gives bit-identical sums (a fresh array: computed, not memoised).
    again = binning.term_sums(counts.copy(), omega, 1)
    assert again.tobytes() == got_1.tobytes()


def test_an_array_of_another_size_is_refused() -> None:
    binning = make_binning(np.hypot(*np.indices((20, 30))).astype(np.float64), None, 5)
    with pytest.raises(StepFailure, match="600"):
        binning.term_sums(np.ones(10), None, 1)
