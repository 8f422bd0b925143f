import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgecomp.codec import decode_weights, encode_weights, quantized_reference
from edgecomp.codec.container import read_container
from edgecomp.codec.seed_index import decode_positions, encode_gaps, seed_storage_bytes
from edgecomp.errors import ContainerError
from edgecomp.pruning import filter_mask


def test_gaps_with_fillers_match_seed_rule():
    pos = np.array([0, 255, 256, 1000, 1255])
    gaps, slots = encode_gaps(pos)
    # 0 -> 0 ; 255 -> 255 ; 256 -> 1 ; 1000 is 744 after 256: two fillers then 234 ; 1255 -> 255
    assert gaps.tolist() == [0, 255, 1, 255, 255, 234, 255]
    assert slots.tolist() == [0, 1, 2, 5, 6]
    assert decode_positions(gaps)[slots].tolist() == pos.tolist()


def _pruned(shape, rate, seed=0):
    w = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return w * filter_mask(w, rate)


def test_round_trip_restores_kept_within_step_and_pruned_exactly_zero():
    w = _pruned((3, 3, 16, 32), 0.8)
    b = np.linspace(-1, 1, 32).astype(np.float32)
    meta, out = decode_weights(encode_weights({"k": w, "b": b}, {"k": "seed"}, {"a": [1, 2]}))
    assert meta == {"a": [1, 2]}
    step = np.abs(w).max() / 127
    assert np.abs(out["k"] - w).max() <= step / 2 + 1e-7
    assert np.all(out["k"][w == 0] == 0)
    assert np.array_equal(out["b"], b)


def test_container_size_matches_seed_format():
    w = _pruned((2048, 512), 0.8)
    data = encode_weights({"fc": w}, {"fc": "seed"})
    expected = seed_storage_bytes(w) + 4  # entries + scale
    assert expected <= len(data) <= expected + 100  # only headers on top


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=4),
       rate=st.floats(0, 0.99), seed=st.integers(0, 2**16), kind=st.sampled_from(["normal", "zero", "const"]))
def test_round_trip_property(shape, rate, seed, kind):
    if kind == "normal":
        w = _pruned(tuple(shape), rate, seed)
    elif kind == "zero":
        w = np.zeros(shape, np.float32)
    else:
        w = np.full(shape, 0.37, np.float32)
    _, out = decode_weights(encode_weights({"w": w}, {"w": "seed"}))
    assert np.array_equal(out["w"], quantized_reference(w, "seed"))
    assert np.all(out["w"][w == 0] == 0)
    step = max(float(np.abs(w).max()), 1e-30) / 127
    assert np.abs(out["w"] - w).max() <= step / 2 + 1e-6


def test_sparse_gap_over_many_fillers():
    w = np.zeros((5000, 2), np.float32)
    w[4999, 1] = 1.5
    w[0, 0] = -0.5
    _, out = decode_weights(encode_weights({"w": w}, {"w": "seed"}))
    assert out["w"][4999, 1] == pytest.approx(1.5) and out["w"][0, 0] == pytest.approx(-0.5, rel=0.01)
    assert np.count_nonzero(out["w"]) == 2


def test_foreign_and_truncated_and_flipped_files_raise_container_error():
    data = encode_weights({"w": _pruned((20, 8), 0.5)}, {"w": "seed"}, {"m": 1})
    with pytest.raises(ContainerError, match="magic"):
        read_container(b"PK\x03\x04 not ours" + data)
    for cut in (5, 20, 30, len(data) - 1):
        with pytest.raises(ContainerError):
            decode_weights(data[:cut])
    for pos in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        with pytest.raises(ContainerError):
            decode_weights(bytes(flipped))
    with pytest.raises(ContainerError, match="trailing"):
        decode_weights(data + b"\x00")


def test_oversized_declared_tensor_refused_before_allocation():
    data = encode_weights({"w": np.ones((4, 4), np.float32)})
    with pytest.raises(ContainerError, match="over the limit"):
        decode_weights(data, max_elements=10)
