"""Compact storage of the small tensors: BN folded form before storage, fp16 / 8-bit / const
records within their bound, stream shares, and bounded decoding of the new records."""

import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecomp import codec, store
from edgecomp.codec import compact
from edgecomp.codec.container import TensorRecord, write_container
from edgecomp.errors import ContainerError, EdgecompError
from edgecomp.fold import storage_form, unit_variance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from fuzz_container import fix_checksums, mutate  # noqa: E402


def _bound_holds(w, rec, tol):
    q = codec.decode_tensor(rec).astype(np.float64)
    mag = np.abs(w.astype(np.float64))
    return bool(np.all(np.abs(q - w) <= tol * np.maximum(mag, np.median(mag))))


@pytest.mark.parametrize("kind, want", [("normal", "f16"), ("narrow", "q8"), ("constant", "const")])
def test_compact_record_meets_its_bound_and_is_the_smallest(kind, want):
    rng = np.random.default_rng(1)
    w = {"normal": rng.normal(0, 1, 300), "narrow": rng.uniform(0.9, 1.1, 300),
         "constant": np.full(300, 0.75)}[kind].astype(np.float32)
    rec = codec.encode_tensor("t", w, "compact")
    assert codec.METHOD_NAMES[rec.method] == want
    assert _bound_holds(w, rec, codec.COMPACT_TOL)
    assert rec.stream_bytes == {"f16": 600, "q8": 300, "const": 0}[want]


def test_a_tensor_outside_the_bound_stays_float32():
    w = np.array([1e5, 1.0001, -3e-3, 7.0], np.float32)   # past fp16's range, too wide for 8 bits
    assert compact.choose(w) == "raw"
    assert compact.choose(w, tol=0.01) == "raw"            # a bound relative to max|w| would take 8 bits
    rec = codec.encode_tensor("t", w, "compact")
    assert rec.method == codec.RAW and np.array_equal(codec.decode_tensor(rec), w)
    noisy = np.random.default_rng(2).normal(size=64).astype(np.float32)
    assert compact.choose(noisy, tol=1e-6) == "raw"          # tighter than fp16 can hold
    assert compact.choose(noisy, tol=1e-6, allow=("f16",)) == "raw"
    assert compact.choose(np.array([0.5, 0.25, -3.0], np.float32), tol=0, allow=("f16",)) == "f16"   # exact


def test_bad_bounds_and_methods_are_one_line_errors():
    with pytest.raises(EdgecompError, match="bound"):
        codec.encode_tensor("t", np.ones(3, np.float32), "compact", tol=-1)
    with pytest.raises(EdgecompError, match="compact method"):
        codec.encode_tensor("t", np.ones(3, np.float32), "compact", allow=("int4",))
    with pytest.raises(EdgecompError, match="float16 range"):
        codec.encode_tensor("t", np.array([1e6], np.float32), "f16")
    with pytest.raises(EdgecompError, match="small-tensor storage"):
        store.encode_model(_bn_model(), small="bf16")


def test_unit_variance_makes_the_bn_scale_exactly_one():
    for eps in (1e-3, 1e-5, 1.001e-5, 0.1, 1e-9):
        v = unit_variance(eps)
        assert np.float32(v + np.float32(eps)) == np.float32(1)


def _bn_model():
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(i)                 # has a bias
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, depth_multiplier=2, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 1, use_bias=False, name="pw")(x)                 # coded: keeps its values
    x = keras.layers.BatchNormalization(name="bn3", epsilon=1e-5)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(i, keras.layers.Dense(4, name="fc")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, .3, n), rng.normal(0, .5, n),
                               rng.uniform(0.05, 2, n)])
    return model


@pytest.fixture(scope="module")
def bn_model():
    return _bn_model()


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(3).normal(size=(8, 10, 10, 3)).astype(np.float32)


def test_bn_folding_before_storage_round_trips_and_shrinks(bn_model, xs):
    from edgecomp.train import predict

    methods = {"pw/kernel": "seed"}
    before = store.encode_model(bn_model, methods)                       # small tensors as float32
    folded = store.encode_model(bn_model, methods, small="fold")         # folded form, float32 values
    ref, back = store.decode_model(before), store.decode_model(folded)
    assert np.abs(predict(back, xs) - predict(ref, xs)).max() < 1e-5
    assert len(folded) < len(before)
    # Same layers (the BNs stay), the coded kernel untouched, folded BNs are identities.
    assert [type(layer).__name__ for layer in back.layers] == [type(layer).__name__ for layer in ref.layers]
    assert np.array_equal(back.get_layer("pw").kernel.numpy(), ref.get_layer("pw").kernel.numpy())
    for name in ("bn1", "bn2"):
        bn = back.get_layer(name)
        assert np.all(bn.gamma.numpy() == 1) and np.all(bn.moving_mean.numpy() == 0)
    assert np.all(back.get_layer("bn1").beta.numpy() == 0)                # c went into c1's bias
    bn3 = back.get_layer("bn3")                                           # after a coded kernel: affine form
    assert not np.all(bn3.gamma.numpy() == 1) and np.all(bn3.moving_mean.numpy() == 0)
    kinds = {r.name: codec.METHOD_NAMES[r.method] for r in codec.tensor_records(folded)}
    assert kinds["bn1/gamma"] == kinds["bn1/moving_variance"] == kinds["bn2/moving_mean"] == "const"
    assert codec.decode_weights(folded)[0]["storage"] == {"small": "fold", "tol": codec.COMPACT_TOL,
                                                          "bn_affine": 3, "bn_folded": 2}


def test_storage_form_folds_where_the_kernel_is_free(bn_model):
    weights = store.model_weights(bn_model)
    _, _, summary = storage_form(bn_model, weights, coded={"pw/kernel"})
    assert summary == {"bn_affine": 3, "bn_folded": ["bn1", "bn2"]}
    _, _, summary = storage_form(bn_model, weights, coded={"pw/kernel", "dw/kernel"})
    assert summary["bn_folded"] == ["bn1"]
    _, _, summary = storage_form(bn_model, weights, coded={"c1/bias"})      # a kernel without its bias: no fold
    assert "bn1" not in summary["bn_folded"] and "bn3" in summary["bn_folded"]
    folded, scales, _ = storage_form(bn_model, weights)
    assert folded.keys() == weights.keys() and set(scales) >= {"bn3/gamma", "bn3/beta", "c1/bias"}


def test_compact_small_tensors_keep_parity_and_coded_records(bn_model, xs):
    from edgecomp.train import predict

    before = store.encode_model(bn_model, {"pw/kernel": "seed"})
    ref = predict(store.decode_model(before), xs)
    sizes = {}
    for small in ("fp16", "compact"):
        data = store.compact_container(before, small)
        sizes[small] = sum(r.stream_bytes for r in codec.tensor_records(data))
        assert np.abs(predict(store.decode_model(data), xs) - ref).max() < 1e-2 * np.abs(ref).max()
        kept = {r.name: r for r in codec.tensor_records(before) if r.method != codec.RAW}
        after = {r.name: r for r in codec.tensor_records(data)}
        assert all(after[n] == r for n, r in kept.items())                  # seed record byte-identical
        assert not any(r.method == codec.RAW for r in after.values())
    folded = store.encode_model(bn_model, {"pw/kernel": "seed"}, small="fold")
    assert sizes["compact"] <= sizes["fp16"] < sum(r.stream_bytes for r in codec.tensor_records(folded))
    assert store.compact_container(before, "compact") == store.encode_model(bn_model, {"pw/kernel": "seed"},
                                                                            small="compact")


def test_versions_and_stream_shares(bn_model):
    raw = store.encode_model(bn_model)
    small = store.encode_model(bn_model, small="compact")
    assert struct.unpack_from("<HH", raw, 8) == (2, 0)       # old features only: written as before
    assert struct.unpack_from("<HH", small, 8) == (2, 1)
    for data in (raw, small):
        shares = codec.stream_shares(data)
        assert sum(shares.values()) == len(data)
        assert shares["description"] > 0 and shares["header"] == 20 + 9 * (1 + len(codec.tensor_records(data)))
    assert "raw:values" not in codec.stream_shares(small) and codec.stream_shares(small)["f16:values"] > 0


def _records_container():
    rng = np.random.default_rng(4)
    weights = {"a": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.uniform(0.9, 1.1, 40).astype(np.float32),
               "c": np.full(7, 0.5, np.float32), "d": rng.normal(size=9).astype(np.float32)}
    return codec.encode_weights(weights, {"a": "f16", "b": "q8", "c": "const", "d": "compact"}, {"m": 1})


def test_hostile_compact_records_are_refused_before_allocation():
    big = TensorRecord("c", (1 << 14, 1 << 14), compact.CONST, (1.0,), ())
    with pytest.raises(ContainerError, match="over"):
        codec.decode_weights(write_container({}, [big]))
    for rec in (TensorRecord("q", (4,), compact.Q8, (0.0, float("nan")), (bytes(4),)),
                TensorRecord("q", (4,), compact.Q8, (3e38, 3e38), (b"\xff" * 4,)),
                TensorRecord("h", (4,), compact.F16, (), (bytes(6),)),
                TensorRecord("k", (3,), compact.CONST, (float("inf"),), ())):
        with pytest.raises(ContainerError, match="corrupt container"):
            codec.decode_weights(write_container({}, [rec]))


def test_mutated_compact_containers_decode_or_raise_container_error():
    seeds = [_records_container()]
    assert codec.decode_weights(seeds[0])[1]["c"].tolist() == [0.5] * 7
    rng = random.Random(5)
    for _ in range(1500):
        data = mutate(rng, seeds)
        for d in (data, bytes(fix_checksums(bytearray(data)))):
            try:
                codec.decode_weights(d, max_elements=1 << 20)
            except ContainerError:
                pass


def test_a_bn_shift_that_cancels_its_mean_stays_float32():
    import keras

    i = keras.Input((6,))
    h = keras.layers.Dense(4, name="d1")(i)
    model = keras.Model(i, keras.layers.Dense(2, name="d2")(keras.layers.BatchNormalization(name="bn")(h)))
    model.get_layer("bn").set_weights([np.ones(4), np.zeros(4), np.array([100.0, 90.0, 110.0, 95.0]), np.full(4, 1e-2)])
    data = store.encode_model(model, {"d1/kernel": "seed"}, small="compact")
    kinds = {r.name: codec.METHOD_NAMES[r.method] for r in codec.tensor_records(data)}
    # c = -a * 100 with the output spread a * 0.1: fp16's error on c would be ~1% of the spread.
    assert kinds["bn/beta"] == "raw" and kinds["bn/moving_mean"] == "const"
    assert compact.choose(store.decode_model(data).get_layer("bn").beta.numpy()) != "raw"   # its values alone: compact


def test_compress_stores_small_tensors_folded_by_default():
    from edgecomp import codec, compress

    x = np.random.default_rng(4).normal(size=(64, 10, 10, 3)).astype(np.float32)
    y = np.arange(len(x)) % 4
    default = compress(_bn_model(), (x, y), rate=0.5, fine_tune_epochs=0, verbose=0)
    raw = compress(_bn_model(), (x, y), rate=0.5, fine_tune_epochs=0, verbose=0, small_tensors="raw")
    assert default.recipe.coding.small == "fold" and "small" not in default.recipe.get_config()["coding"]
    assert raw.recipe.get_config()["coding"]["small"] == "raw"
    assert len(default.container) < len(raw.container)
    assert codec.read_container(default.container)[0]["storage"]["small"] == "fold"
    a = np.asarray(default.decode()(x, training=False))
    b = np.asarray(raw.decode()(x, training=False))
    assert np.abs(a - b).max() < 1e-4
