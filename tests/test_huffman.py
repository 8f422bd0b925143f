import heapq
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgecomp.codec import huffman
from edgecomp.errors import ContainerError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _huffman_cost(freqs):
    """Total bits of an optimal (unlimited) Huffman code: the sum of all merged weights."""
    heap = [int(f) for f in freqs if f > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def _kraft(lengths, top=16):
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(np.left_shift(1, top - lengths[lengths > 0]).sum())


freq_lists = st.lists(st.integers(0, 10_000), min_size=1, max_size=300)


@FAST
@given(freqs=freq_lists)
def test_code_lengths_are_complete_and_optimal(freqs):
    lengths = huffman.code_lengths(freqs, max_len=16)
    f = np.asarray(freqs)
    assert np.all((lengths > 0) == (f > 0))
    if np.count_nonzero(f) >= 2:
        assert _kraft(lengths) == 1 << 16
        assert int((f * lengths).sum()) == _huffman_cost(f)


@FAST
@given(freqs=freq_lists, max_len=st.integers(1, 16))
def test_length_limit_keeps_code_complete(freqs, max_len):
    used = np.count_nonzero(freqs)
    if used > 1 << max_len:
        with pytest.raises(ValueError):
            huffman.code_lengths(freqs, max_len)
        return
    lengths = huffman.code_lengths(freqs, max_len)
    assert lengths.max(initial=0) <= max(max_len, 1)
    if used >= 2:
        assert _kraft(lengths) == 1 << 16


def test_length_limit_on_fibonacci_frequencies():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    for limit in (16, 12):                      # unlimited, the deepest code would be 29 bits
        lengths = huffman.code_lengths(fib, limit)
        assert lengths.max() == limit and _kraft(lengths) == 1 << 16
    # More frequent symbols never get longer codes.
    order = np.argsort(fib, kind="stable")
    assert np.all(np.diff(lengths[order][::-1].astype(int)) >= 0)


@FAST
@given(lengths=freq_lists.map(lambda f: huffman.code_lengths(f, 16)))
def test_canonical_codes_are_prefix_free_and_ordered(lengths):
    codes = huffman.canonical_codes(lengths)
    used = np.flatnonzero(lengths)
    words = sorted(format(int(codes[s]), f"0{int(lengths[s])}b") for s in used)
    for a, b in zip(words, words[1:]):
        assert not b.startswith(a)
    # Canonical: by (length, symbol), each code is the previous one plus one, shifted.
    order = used[np.lexsort((used, lengths[used]))]
    for a, b in zip(order, order[1:]):
        assert codes[b] == (codes[a] + 1) << int(lengths[b] - lengths[a])


def test_canonical_code_example_and_stream_bytes():
    assert [format(int(c), "b") for c in huffman.canonical_codes([1, 3, 3, 2])] == ["0", "110", "111", "10"]
    data = huffman.encode([0, 3, 1, 0, 0, 2, 3, 0, 0], block=16)     # frequencies 5, 1, 1, 2
    # mode 3, n=9, alphabet-1=3, max_len=3, block=min(16, 9); lengths 1,3,3,2 in 2-bit fields
    assert data[:10] == bytes([3]) + struct.pack("<IHBH", 9, 3, 3, 9)
    assert data[10] == 0b01_11_11_10
    # one block of 15 bits (base 15, width 0); payload 0 10 110 0 0 111 10 0 0, zero-padded
    assert data[11:16] == struct.pack("<IB", 15, 0)
    assert data[16:] == bytes([0b0101_1000, 0b1111_0000])


@st.composite
def symbol_streams(draw):
    alphabet = draw(st.integers(1, 300))
    n = draw(st.integers(0, 3000))
    skew = draw(st.floats(0.05, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, skew))
    return rng.choice(alphabet, size=n, p=p).astype(np.int64), alphabet


@FAST
@given(stream=symbol_streams(), block=st.integers(1, 400))
def test_round_trip(stream, block):
    s, alphabet = stream
    data = huffman.encode(s, block=block)
    out = huffman.decode(data, max_symbols=len(s), alphabet=alphabet)
    assert out.dtype == np.uint16 and np.array_equal(out, s)


def test_empty_and_single_symbol_streams():
    assert huffman.encode([]) == b"\x00"
    assert huffman.decode(b"\x00", max_symbols=0).size == 0
    data = huffman.encode(np.full(5000, 7))
    assert len(data) == 7
    assert huffman.decode(data, max_symbols=5000, alphabet=8).tolist() == [7] * 5000
    with pytest.raises(ContainerError, match="symbols"):
        huffman.decode(data, max_symbols=4999, alphabet=8)
    with pytest.raises(ContainerError, match="alphabet"):
        huffman.decode(data, max_symbols=5000, alphabet=7)


def test_decode_many_mixes_block_sizes_and_modes():
    rng = np.random.default_rng(0)
    streams = [rng.geometric(0.2, size=n) % 40 for n in (5000, 300, 17, 1, 0, 2000)]
    streams.append(np.full(9, 3))
    data = [huffman.encode(s, block=b) for s, b in zip(streams, (256, 256, 256, 64, 256, 100, 256))]
    out = huffman.decode_many(data, [len(s) for s in streams], [40] * len(streams))
    for a, b in zip(out, streams):
        assert np.array_equal(a, b)


def test_blocks_are_interleaved():
    # Block b of nb codes symbols b, b + nb, b + 2 nb, ...: the block table holds the sums
    # of their code lengths. 1005 symbols in blocks of at most 100: 11 blocks of 92 or 91.
    s = np.random.default_rng(5).geometric(0.3, size=1005) % 12
    data = huffman.encode(s, block=100)
    lengths = huffman.code_lengths(np.bincount(s))
    n, a1, top, block = struct.unpack_from("<IHBH", data, 1)
    assert data[0] == 3 and (n, block) == (1005, 100)
    pos = 1 + 9 + ((a1 + 1) * int(top).bit_length() + 7) // 8
    base, width = struct.unpack_from("<IB", data, pos)
    table = base + huffman._unpack_fields(data[pos + 5:], 11, width)
    assert table.tolist() == [int(lengths[s[b::11]].sum()) for b in range(11)]
    assert np.array_equal(huffman.decode(data, max_symbols=len(s), alphabet=12), s)


def test_pre_release_contiguous_mode_is_refused():
    data = bytearray(huffman.encode(np.arange(1000) % 7))
    data[0] = 2
    with pytest.raises(ContainerError, match="mode 2"):
        huffman.decode(bytes(data), max_symbols=1000, alphabet=7)


def test_small_budgets_split_the_work(monkeypatch):
    # Passes and runs of lanes are cut by the step and table budgets; results must not change.
    rng = np.random.default_rng(2)
    streams = [rng.geometric(p, size=n) % 30 for p, n in ((0.2, 3000), (0.5, 700), (0.1, 40), (0.3, 5))]
    data = [huffman.encode(s, block=b) for s, b in zip(streams, (64, 128, 7, 300))]
    limits, alphabets = [len(s) for s in streams], [30] * len(streams)
    expected = huffman.decode_many(data, limits, alphabets)
    monkeypatch.setattr(huffman, "_STEP_BUDGET", 200)
    monkeypatch.setattr(huffman, "_LUT_BUDGET", 16)
    for got, want, s in zip(huffman.decode_many(data, limits, alphabets), expected, streams):
        assert np.array_equal(got, want) and np.array_equal(got, s)


def test_limits_are_enforced():
    s = np.arange(100) % 10
    data = huffman.encode(s)
    with pytest.raises(ContainerError, match="symbols"):
        huffman.decode(data, max_symbols=99, alphabet=10)
    with pytest.raises(ContainerError, match="alphabet"):
        huffman.decode(data, max_symbols=100, alphabet=9)


def test_coded_size_close_to_entropy_on_a_geometric_stream():
    s = np.minimum(np.random.default_rng(1).geometric(0.12, size=50_000) - 1, 255)
    bits = 8 * len(huffman.encode(s))
    assert bits <= 1.05 * huffman.entropy_bits(s)
    assert bits <= 0.85 * 8 * len(huffman.encode_fixed(s, 8))


@FAST
@given(values=st.lists(st.integers(0, 2**16 - 1), max_size=500), width=st.integers(1, 16))
def test_fixed_round_trip(values, width):
    s = np.asarray(values, dtype=np.int64) & ((1 << width) - 1)
    data = huffman.encode_fixed(s, width)
    assert len(data) == 5 + (len(s) * width + 7) // 8
    assert np.array_equal(huffman.decode_fixed(data, max_symbols=len(s)), s)


# ----------------------------------------------------------------------------- hostile input

def _decode_all_ways(data: bytes):
    """Every decoder on ``data``: each must return or raise ContainerError, nothing else."""
    for fn in (lambda: huffman.decode(data, max_symbols=10_000, alphabet=300),
               lambda: huffman.decode_many([data, huffman.encode([1, 2, 2, 1] * 50)], [10_000, 200], [300, 3]),
               lambda: huffman.decode_fixed(data, max_symbols=10_000, alphabet=300)):
        try:
            out = fn()
        except ContainerError:
            continue
        out = out if isinstance(out, np.ndarray) else out[0]
        assert out.dtype == np.uint16 and len(out) <= 10_000 and (not len(out) or out.max() < 300)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_container_error_only(data):
    _decode_all_ways(data)


@settings(max_examples=150, deadline=None)
@given(head=st.sampled_from([b"\x01", b"\x02", b"\x03"]), data=st.binary(max_size=120))
def test_random_bytes_behind_a_valid_mode_raise_container_error_only(head, data):
    _decode_all_ways(head + data)


@FAST
@given(stream=symbol_streams(), flips=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
       cut=st.integers(0, 10**6))
def test_flipped_and_truncated_streams(stream, flips, cut):
    s, _ = stream
    data = huffman.encode(s, block=64)
    flipped = bytearray(data)
    for f in flips:
        flipped[f % len(data)] ^= 1 << (f % 8)
    _decode_all_ways(bytes(flipped))
    cut %= len(data)
    if cut:
        with pytest.raises(ContainerError):
            huffman.decode(data[:-cut], max_symbols=len(s), alphabet=300)


def test_header_lies_are_named():
    data = bytearray(huffman.encode(np.arange(1000) % 7, block=100))
    bad = bytearray(data)
    bad[7] = 13                                   # max_len says 13, table says less
    with pytest.raises(ContainerError, match="code.length"):
        huffman.decode(bytes(bad), max_symbols=1000, alphabet=7)
    with pytest.raises(ContainerError, match="payload"):
        huffman.decode(bytes(data) + b"\0", max_symbols=1000, alphabet=7)
    with pytest.raises(ContainerError, match="mode"):
        huffman.decode(b"\x09" + bytes(data[1:]), max_symbols=1000, alphabet=7)
    huge = bytes([3]) + struct.pack("<IHBH", 2**32 - 1, 6, 3, 100) + bytes(data[10:])
    with pytest.raises(ContainerError, match="symbols"):
        huffman.decode(huge, max_symbols=2**40, alphabet=7)
