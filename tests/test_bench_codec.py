"""bench_codec's re-implementations of the seed's loops store and decode what our seed method does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_codec  # noqa: E402
from edgecomp import codec  # noqa: E402


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (300, 6), (5, 4, 3)])
@pytest.mark.parametrize("lean", [False, True])
def test_seed_loops_match_the_seed_method(shape, lean):
    rng = np.random.default_rng(sum(shape))
    w = rng.normal(size=shape).astype(np.float32)
    w[np.abs(w) < 1.5] = 0
    if shape == (300, 6):                          # filter 0 is w[:, 0]: a gap of 291 (a filler)
        w[5:295, 0], w[4, 0], w[295, 0] = 0, 3.0, -3.0
    index, q, scale = bench_codec.seed_loop_encode(w)
    rec = codec.encode_tensor("w", w, "seed")
    assert rec.streams[0] == index.tobytes() and rec.streams[1] == q.tobytes()
    assert (index == 255).any() == (shape == (300, 6))
    back = bench_codec.seed_loop_decode(index, q, scale, shape, lean=lean)
    assert back.shape == shape
    np.testing.assert_array_equal(back, codec.decode_tensor(rec))
