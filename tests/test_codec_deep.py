import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgecomp import codec
from edgecomp.codec import deep, huffman
from edgecomp.codec.container import TensorRecord, write_container
from edgecomp.errors import ContainerError, EdgecompError
from edgecomp.pruning import filter_mask
from edgecomp.weight_sharing import share_tensor


def _shared(shape, rate, bits, seed=0, kind="normal"):
    """A pruned, weight-shared tensor with at most 2**bits distinct nonzero values."""
    rng = np.random.default_rng(seed)
    if kind == "zero":
        return np.zeros(shape, np.float32)
    if kind == "const":
        return np.full(shape, np.float32(-0.37))
    w = rng.normal(size=shape).astype(np.float32)
    if len(shape) >= 2 and rate:
        w *= filter_mask(w, rate)
    book = np.linspace(-2.5, 2.5, 1 << bits).astype(np.float32)
    book = book[book != 0]
    return np.where(w != 0, book[np.abs(w[..., None] - book).argmin(-1)], np.float32(0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 9), min_size=0, max_size=4), rate=st.floats(0, 0.99),
       bits=st.integers(1, 8), index_bits=st.integers(1, 8), coder=st.sampled_from(["huffman", "fixed"]),
       kind=st.sampled_from(["normal", "normal", "zero", "const"]), with_book=st.booleans(),
       seed=st.integers(0, 2**16))
def test_round_trip_is_exact(shape, rate, bits, index_bits, coder, kind, with_book, seed):
    w = _shared(tuple(shape), rate, bits, seed, kind)
    opts = {"bits": bits, "index_bits": index_bits, "coder": coder}
    if with_book:
        extra = np.random.default_rng(seed).normal(size=(1 << bits) - 1).astype(np.float32)
        book = np.unique(np.concatenate([w[w != 0], extra]))[:1 << bits]
        if np.count_nonzero(np.isin(w[w != 0], book)) == np.count_nonzero(w):
            opts["codebook"] = np.random.default_rng(seed).permutation(book)
    _, out = codec.decode_weights(codec.encode_weights({"w": w}, {"w": codec.MethodSpec("deep", opts)}))
    assert out["w"].shape == w.shape and out["w"].dtype == np.float32
    assert np.array_equal(out["w"], w)
    assert out["w"].flags.c_contiguous


def test_gap_symbols_use_fillers_and_decode_back():
    # M = 3: gaps of 1..3 fit one symbol, 4 needs a filler; the first gap counts from -1.
    pos = np.array([0, 3, 4, 10, 13])
    g = deep.gap_symbols(pos, 2)
    assert g.tolist() == [0, 2, 0, 3, 2, 2]
    w = np.zeros(14, np.float32)
    w[pos] = 1.5
    for coder in ("huffman", "fixed"):
        rec = deep.encode("w", w, bits=1, index_bits=2, coder=coder)
        assert np.array_equal(deep.decode_records([rec])[0], w)


def test_lone_weight_at_the_far_end_of_a_large_tensor():
    w = np.zeros((3000, 40), np.float32)
    w[-1, -1] = 0.25
    for ib in (1, 2, 8):
        rec = codec.encode_tensor("w", w, "deep", bits=1, index_bits=ib)
        assert np.array_equal(codec.decode_tensor(rec), w)


def test_weight_sharing_result_goes_straight_in():
    w = np.random.default_rng(3).normal(size=(3, 3, 16, 32)).astype(np.float32)
    w *= filter_mask(w, 0.8)
    st_ = share_tensor(w, 4)
    spec = codec.deep_spec(st_, index_bits=5)
    data = codec.encode_weights({"k": st_.weights(), "b": np.ones(32, np.float32)}, {"k": spec})
    rec = codec.tensor_records(data)[0]
    assert codec.METHOD_NAMES[rec.method] == "deep" and rec.params == (4.0, 5.0, 1.0)
    assert np.array_equal(np.frombuffer(rec.streams[0], "<f4"), st_.codebook.astype(np.float32))
    _, out = codec.decode_weights(data)
    assert np.array_equal(out["k"], st_.weights()) and np.array_equal(out["b"], np.ones(32))


def test_mixed_methods_in_one_container():
    ws = {f"t{i}": _shared((64, 32 + i), 0.8, 5, seed=i) for i in range(4)}
    methods = {"t0": "deep", "t1": codec.MethodSpec("deep", {"coder": "fixed", "bits": 5}),
               "t2": "seed", "t3": codec.deep_spec(bits=5, index_bits=3)}
    _, out = codec.decode_weights(codec.encode_weights(ws, methods))
    for name in ("t0", "t1", "t3"):
        assert np.array_equal(out[name], ws[name])
    assert np.array_equal(out["t2"], codec.quantized_reference(ws["t2"], "seed"))


def test_many_tensors_decode_together():
    # One batch: different gap widths (fillers differ), empty and one-weight tensors, both coders.
    ws, methods = {}, {}
    for i, (shape, rate, ib, coder) in enumerate([((300, 20), 0.9, 1, "huffman"), ((8,), 0, 8, "huffman"),
                                                  ((3, 3, 4, 8), 0.5, 2, "fixed"), ((50, 40), 0.97, 8, "huffman"),
                                                  ((40, 30), 0.0, 3, "huffman"), ((2000, 2), 0.99, 5, "huffman")]):
        w = _shared(shape, rate, 4, seed=i)
        if i == 1:
            w = np.zeros(shape, np.float32)
        if i == 3:
            w = np.zeros(shape, np.float32)
            w[-1, -1] = 0.5
        ws[f"t{i}"] = w
        methods[f"t{i}"] = codec.deep_spec(bits=4, index_bits=ib, coder=coder)
    _, out = codec.decode_weights(codec.encode_weights(ws, methods))
    for name, w in ws.items():
        assert np.array_equal(out[name], w) and out[name].flags.c_contiguous


def test_realistic_stream_is_near_entropy_and_beats_fixed_width():
    # Trained weights are heavier-tailed than a Gaussian: a Laplace stand-in.
    w = np.random.default_rng(7).laplace(size=(512, 512)).astype(np.float32)
    w *= filter_mask(w, 0.9)
    shared = share_tensor(w, 5).weights()
    rec = codec.encode_tensor("fc", shared, "deep", bits=5, index_bits=5)
    fixed = codec.encode_tensor("fc", shared, "deep", bits=5, index_bits=5, coder="fixed")
    gaps = huffman.decode(rec.streams[1], max_symbols=w.size, alphabet=32)
    idx = huffman.decode(rec.streams[2], max_symbols=w.size, alphabet=32)
    coded = 8 * (len(rec.streams[1]) + len(rec.streams[2]))
    entropy = huffman.entropy_bits(gaps) + huffman.entropy_bits(idx)
    assert entropy <= coded <= 1.05 * entropy
    assert coded <= 0.85 * 8 * (len(fixed.streams[1]) + len(fixed.streams[2]))


def test_auto_coder_picks_the_smaller_streams():
    tiny = _shared((3, 3, 1, 4), 0.5, 8, seed=2)   # 20 weights: Huffman tables do not pay
    big = _shared((256, 128), 0.9, 5, seed=2)
    for w in (tiny, big):
        rec = codec.encode_tensor("w", w, "deep", bits=8, coder="auto")
        sizes = {c: codec.encode_tensor("w", w, "deep", bits=8, coder=c).stream_bytes for c in deep.CODERS}
        assert rec.stream_bytes == min(sizes.values())
        assert deep.CODER_NAMES[int(rec.params[2])] == min(sizes, key=sizes.get)
        assert np.array_equal(codec.decode_tensor(rec), w)
    assert deep.CODER_NAMES[int(codec.encode_tensor("w", tiny, "deep", bits=8, coder="auto").params[2])] != "huffman"


def test_encoder_refuses_what_it_cannot_store():
    w = np.linspace(0.1, 1, 40, dtype=np.float32).reshape(8, 5)
    with pytest.raises(EdgecompError, match="distinct nonzero values"):
        codec.encode_tensor("w", w, "deep", bits=5)
    with pytest.raises(EdgecompError, match="not a codebook entry"):
        codec.encode_tensor("w", w, "deep", bits=8, codebook=w.ravel()[:-1])
    with pytest.raises(EdgecompError, match="index_bits"):
        codec.encode_tensor("w", w, "deep", bits=8, index_bits=9)
    with pytest.raises(EdgecompError, match="coder"):
        codec.encode_tensor("w", w, "deep", bits=8, coder="lzma")
    with pytest.raises(EdgecompError, match="takes no options"):
        codec.encode_tensor("w", w, "seed", bits=8)
    with pytest.raises(EdgecompError, match="blocks"):
        codec.encode_tensor("w", w, "deep", bits=8, blocks=3)


def _container(params, streams, shape=(4, 4)):
    return write_container({}, [TensorRecord("bad", shape, deep.METHOD_ID, params, streams)])


def test_records_that_pass_the_checksum_but_lie_are_refused():
    good = deep.encode("w", _shared((16, 8), 0.5, 3), bits=3, index_bits=3)
    cases = {
        "3 params": ((3.0, 3.0), good.streams),
        "bits": ((9.0, 3.0, 1.0), good.streams),
        "index bits": ((3.0, 2.5, 1.0), good.streams),
        "coder": ((3.0, 3.0, 7.0), good.streams),
        "codebook": (good.params, (b"\0" * 3,) + good.streams[1:]),
        "NaN": (good.params, (np.float32([np.nan]).tobytes(),) + good.streams[1:]),
        "gap stream": (good.params, good.streams[:1] + (b"\x07",) + good.streams[2:]),
        "kept weights": (good.params, good.streams[:2] + (huffman.encode([0, 1]),)),
        "past the tensor": (good.params, good.streams[:1] + (huffman.encode([6] * 20), huffman.encode([0] * 20))),
        "ends in a filler": (good.params, good.streams[:1] + (huffman.encode([0, 7]),)
                             + (huffman.encode([0]),)),
    }
    for match, (params, streams) in cases.items():
        with pytest.raises(ContainerError, match=match):
            codec.decode_weights(_container(params, streams, good.shape))


@settings(max_examples=80, deadline=None)
@given(pos=st.integers(0, 10**6), mask=st.integers(1, 255), stream=st.integers(0, 2))
def test_corrupt_streams_raise_container_error_only(pos, mask, stream):
    good = deep.encode("w", _shared((24, 16), 0.7, 4, seed=1), bits=4, index_bits=3)
    streams = list(good.streams)
    s = bytearray(streams[stream])
    if s:
        s[pos % len(s)] ^= mask
    streams[stream] = bytes(s)
    try:
        out = codec.decode_weights(_container(good.params, tuple(streams), good.shape))[1]["bad"]
    except ContainerError:
        return
    assert out.shape == good.shape and np.isfinite(out).all()


def test_flipped_container_bytes_raise_container_error():
    data = codec.encode_weights({"w": _shared((32, 16), 0.8, 4)}, {"w": codec.deep_spec(bits=4)})
    for pos in range(0, len(data), 5):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        with pytest.raises(ContainerError):
            codec.decode_weights(bytes(flipped))


def test_container_v2_is_written_and_v1_still_read():
    data = codec.encode_weights({"w": np.ones((4, 4), np.float32)}, {"w": "seed"})
    assert struct.unpack_from("<HH", data, 8) == (2, 0)

    def with_major(major):
        head = data[:8] + struct.pack("<HH", major, 0) + data[12:16]
        return head + struct.pack("<I", zlib.crc32(head)) + data[20:]

    _, out = codec.decode_weights(with_major(1))          # v1: raw and seed, same layout
    assert np.allclose(out["w"], 1, atol=0.01)
    for major in (0, 3):
        with pytest.raises(ContainerError, match="version"):
            codec.decode_weights(with_major(major))


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_deflate_coder_round_trip_and_rejects_damage(inflater):
    from edgecomp import codec
    from edgecomp.codec import deep
    from edgecomp.codec.deep import deflate_decode, deflate_encode
    from edgecomp.errors import ContainerError
    from edgecomp.weight_sharing import share_tensor

    default = deep.inflater()
    assert deep.inflater(inflater) == inflater     # both are installed (isal is a dependency)
    try:
        _check_deflate_coder(codec, deflate_decode, deflate_encode, ContainerError, share_tensor)
    finally:
        deep.inflater(default)
    with pytest.raises(EdgecompError, match="not available"):
        deep.inflater("brotli")


def _check_deflate_coder(codec, deflate_decode, deflate_encode, ContainerError, share_tensor):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    w[np.abs(w) < 1.2] = 0
    st = share_tensor(w, 4)
    data = codec.encode_weights({"w": st.weights()}, {"w": codec.deep_spec(st, coder="deflate")})
    _, out = codec.decode_weights(data)
    assert np.array_equal(out["w"], st.weights())
    sym = rng.integers(0, 16, 5000).astype(np.uint8)
    enc = deflate_encode(sym)
    assert np.array_equal(deflate_decode(enc, max_symbols=5000, alphabet=16), sym)
    for bad in (enc[:-3], enc + b"x", bytes(len(enc))):
        with pytest.raises(ContainerError):
            deflate_decode(bad, max_symbols=5000, alphabet=16)
    with pytest.raises(ContainerError):           # more symbols than the tensor can hold
        deflate_decode(enc, max_symbols=100, alphabet=16)
    with pytest.raises(ContainerError):           # symbol outside the alphabet
        deflate_decode(enc, max_symbols=5000, alphabet=8)
    # zlib Huffman-only: no LZ77 matches, so a repetitive stream is not smaller than its entropy allows
    rep = np.tile(np.arange(16, dtype=np.uint8), 500)
    assert len(deflate_encode(rep)) >= 0.9 * len(rep) * 4 / 8


def test_decoded_tensors_share_one_block_but_not_values():
    """deep tensors are decoded into one zeroed block: each array is its own slice."""
    from edgecomp import codec
    from edgecomp.weight_sharing import share_tensor

    rng = np.random.default_rng(5)
    ws = {}
    for name, shape in (("a", (3, 3, 4, 8)), ("b", (32, 16)), ("c", (5, 7))):
        w = rng.normal(size=shape).astype(np.float32)
        w[np.abs(w) < 1.0] = 0
        ws[name] = share_tensor(w, 3)
    data = codec.encode_weights({k: s.weights() for k, s in ws.items()},
                                {k: codec.deep_spec(s, coder="deflate") for k, s in ws.items()})
    _, out = codec.decode_weights(data)
    for k, s in ws.items():
        assert out[k].shape == s.weights().shape and np.array_equal(out[k], s.weights())
    out["a"][...] = 7.0                       # writing one tensor leaves the others as decoded
    assert np.array_equal(out["b"], ws["b"].weights()) and np.array_equal(out["c"], ws["c"].weights())


def test_zero_blocks_shared_up_to_the_bound_then_one_each(monkeypatch):
    import types

    recs = [TensorRecord(n, s, deep.METHOD_ID) for n, s in (("a", (4, 5)), ("b", (3, 3)), ("c", (7,)))]
    shared = deep._zeroed(recs)
    assert [len(b) for b in shared] == [20, 9, 7] and all(not b.any() for b in shared)
    assert shared[0].base is shared[1].base is not None               # one block
    monkeypatch.setattr(deep, "SHARED_BLOCK_ELEMENTS", 30)            # 36 elements in all: over the bound
    apart = deep._zeroed(recs)
    assert [len(b) for b in apart] == [20, 9, 7] and all(b.base is None for b in apart)

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(deep, "np", types.SimpleNamespace(zeros=no_memory, float32=np.float32))
    with pytest.raises(ContainerError, match="3 coded tensors declare 36 elements"):
        deep._zeroed(recs)


def test_deflate_stream_of_an_empty_tensor_is_bounded():
    from edgecomp.codec.deep import deflate_decode, deflate_encode

    assert len(deflate_decode(deflate_encode(np.zeros(0, np.uint8)), max_symbols=0, alphabet=4)) == 0
    with pytest.raises(ContainerError, match="too long"):            # 0 is not "no limit"
        deflate_decode(deflate_encode(np.zeros(1000, np.uint8)), max_symbols=0, alphabet=4)
