"""Sparse exports: block masks, what LiteRT runs sparse (no DENSIFY), resolver marking, ONNX sparse initializers."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")

from edgecomp.errors import EdgecompError  # noqa: E402
from edgecomp.pruning import block_mask, filter_mask  # noqa: E402
from exporters import VARIANTS, ParityError, export_and_check  # noqa: E402
from exporters.base import get_exporter  # noqa: E402
from exporters.onnx import sparsify_initializers  # noqa: E402
from runtime_bench.runners import open_runner  # noqa: E402

# -- block_mask ------------------------------------------------------------------


@pytest.mark.parametrize("shape,block", [((64, 10), (16, 1)), ((48, 6), (4, 1)), ((3, 3, 16, 8), (16, 1)),
                                         ((40, 12), (16, 1)), ((32, 12), (4, 3))])
@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8])
def test_block_mask_prunes_whole_blocks_per_output(shape, block, rate):
    w = np.random.default_rng(0).normal(size=shape)
    mask = block_mask(w, rate, block=block)
    assert mask.shape == w.shape and mask.dtype == bool
    flat, m = w.reshape(-1, shape[-1]), mask.reshape(-1, shape[-1])
    br, bc = block
    n_blocks = -(-flat.shape[0] // br)
    starts = range(0, flat.shape[0], br)
    for c0 in range(0, flat.shape[1], bc):
        blocks = [m[r0:r0 + br, c0:c0 + bc] for r0 in starts]
        assert all(b.all() or not b.any() for b in blocks)  # kept or pruned as a whole
        kept = [b.all() for b in blocks]
        assert len(kept) - sum(kept) == int(n_blocks * rate)  # the rate, per column of blocks
        rms = [np.sqrt(np.mean(flat[r0:r0 + br, c0:c0 + bc] ** 2)) for r0 in starts]
        if 0 < sum(kept) < len(kept):  # the kept blocks are the strongest
            assert min(r for r, k in zip(rms, kept) if k) >= max(r for r, k in zip(rms, kept) if not k)


def test_block_mask_example_norms_and_nesting():
    w = np.array([[0.1], [0.2], [3.0], [-4.0]])
    assert block_mask(w, 0.5, block=(2, 1))[:, 0].tolist() == [False, False, True, True]
    # l1 and l2 can disagree: [3, 0] vs [2, 2] (l1 4 > 3; l2 sqrt(8) < 3)
    w = np.array([[3.0], [0.0], [2.0], [2.0]])
    assert block_mask(w, 0.5, block=(2, 1), norm="l2")[:, 0].tolist() == [True, True, False, False]
    assert block_mask(w, 0.5, block=(2, 1), norm="l1")[:, 0].tolist() == [False, False, True, True]
    # a (16, 1) mask is also a (4, 1) mask: what LiteRT's float 1x4 kernel needs
    m = block_mask(np.random.default_rng(1).normal(size=(64, 8)), 0.75)
    assert all(b.all() or not b.any() for b in m.reshape(16, 4, 8).transpose(0, 2, 1).reshape(-1, 4))


@pytest.mark.parametrize("kwargs,match", [({"rate": 1.0}, "compress rate"), ({"block": (0, 1)}, "block sizes"),
                                          ({"block": 16}, "two sizes"), ({"norm": "l3"}, "unknown block norm")])
def test_block_mask_refuses_bad_arguments(kwargs, match):
    args = {"rate": 0.5, **kwargs}
    with pytest.raises(EdgecompError, match=match):
        block_mask(np.ones((16, 4)), **args)
    with pytest.raises(EdgecompError, match="1-d"):
        block_mask(np.ones(16), 0.5)


# -- a tiny model, block-pruned and randomly pruned --------------------------------

def _synthetic(n: int, rng: np.random.Generator):
    """12x12x1 images, 4 classes: a bright 5x5 patch in quadrant ``k``, plus noise."""
    y = rng.integers(0, 4, n)
    x = rng.uniform(0.0, 0.3, (n, 12, 12, 1)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 6 * r:6 * r + 5, 6 * c:6 * c + 5, 0] += 0.7
    return x, y.astype(np.int64)


def _tiny_model(filters: int = 8, padding: str = "same"):
    inp = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(filters, 3, padding=padding, activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)  # 6*6*8 = 288 inputs: a multiple of 16
    h = keras.layers.Dense(32, activation="relu")(h)
    out = keras.layers.Dense(4, activation="softmax")(h)
    return keras.Model(inp, out)


def _pruned(model, mask_fn):
    """A copy of ``model`` with every Dense kernel (and the conv for 'filter') masked."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if type(layer).__name__ in ("Dense", "Conv2D"):
            w = layer.kernel.numpy()
            mask = mask_fn(w, type(layer).__name__)
            if mask is not None:
                layer.kernel.assign(np.where(mask, w, 0).astype(w.dtype))
    return copy


@pytest.fixture(scope="module")
def data():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = _synthetic(640, rng)
    x_test, y_test = _synthetic(300, rng)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    block = _pruned(model, lambda w, kind: block_mask(w, 0.75) if kind == "Dense" else None)
    random = _pruned(model, lambda w, kind: filter_mask(w, 0.5))
    return {"block": block, "random": random, "x_train": x_train, "x_test": x_test, "y_test": y_test}


def _export(data, name, fmt, variant, folder):
    return export_and_check(data[name], fmt, variant, folder / f"{name}_{variant}.{fmt}",
                            calibration=data["x_train"][:100], check_x=data["x_test"], check_y=data["y_test"])


@pytest.fixture(scope="module")
def block_files(data, tmp_path_factory):
    """The block-pruned model in the dense and sparse variants LiteRT runs correctly."""
    out = tmp_path_factory.mktemp("block")
    wanted = [("tflite", v) for v in ("fp32", "fp32-sparse", "int8", "int8-sparse", "int8-floatio-sparse",
                                      "dynamic-sparse")]
    wanted += [("onnx", v) for v in ("fp32", "fp32-sparse", "int8-sparse", "dynamic-sparse")]
    return {key: _export(data, "block", *key, out) for key in wanted}


def test_sparse_variants_registered():
    for fmt in ("tflite", "onnx"):
        for v in VARIANTS[fmt]:
            if not v.endswith("-sparse"):               # int16x8 alone has no sparse form
                assert (f"{v}-sparse" in VARIANTS[fmt]) == (v != "int16x8"), (fmt, v)


def test_block_sparse_fully_connected_runs_without_densify(block_files):
    for variant, block in (("fp32-sparse", [1, 4]), ("int8-sparse", [1, 16]), ("int8-floatio-sparse", [1, 16]),
                           ("dynamic-sparse", [1, 16])):
        art = block_files["tflite", variant]
        assert "DENSIFY" not in art.ops, variant
        rows = art.needs["sparse_weights"]
        assert [(r["op"], r["shape"]) for r in rows] == [("FULLY_CONNECTED", [32, 288]), ("FULLY_CONNECTED", [4, 32])]
        for r in rows:  # int8 weights in 1x16 blocks, float ones (dynamic-range leaves tiny tensors float) in 1x4
            assert r["kernel"] == "sparse" and r["via"] == [], (variant, r)
            assert r["block"] == (block if r["dtype"] == "int8" else [1, 4]), (variant, r)
        assert 0.2 < rows[0]["stored_fraction"] <= 0.3  # 25% of the 18 blocks per unit kept
        assert rows[1]["stored_fraction"] == 0.5  # 1 of 2 blocks per unit kept
        assert art.bytes < block_files["tflite", "fp32" if variant == "fp32-sparse" else "int8"].bytes
    assert block_files["tflite", "int8-sparse"].needs["input"]["dtype"] == "int8"
    assert block_files["tflite", "int8-floatio-sparse"].needs["input"]["dtype"] == "float32"


def test_block_sparse_int8_computes_what_dense_int8_does(block_files, data):
    x = data["x_test"]
    dense = open_runner(block_files["tflite", "int8"].path).predict(x)
    sparse = open_runner(block_files["tflite", "int8-sparse"].path, resolver="default").predict(x)
    step = block_files["tflite", "int8"].needs["output"]["scale"]
    assert np.abs(dense - sparse).max() <= step + 1e-7  # same integers, at most one rounding step
    fp32 = open_runner(block_files["tflite", "fp32"].path).predict(x)
    fp32_sparse = open_runner(block_files["tflite", "fp32-sparse"].path).predict(x)
    assert np.abs(fp32 - fp32_sparse).max() <= 1e-5


def test_resolvers_are_chosen_and_marked(block_files):
    for variant in ("fp32-sparse", "int8-sparse", "int8-floatio-sparse"):
        needs = block_files["tflite", variant].needs
        assert needs["resolver"] == "default" and needs["load_check"] == {"resolver=default": "ok"}
    # ai-edge-litert 2.3: XNNPACK loads a dynamic-range block-sparse FC and computes it wrongly
    # (outputs off by their own size, or NaN, depending on the weights)
    needs = block_files["tflite", "dynamic-sparse"].needs
    assert needs["resolver"] == "builtin"
    assert needs["load_check"]["resolver=default"].startswith("loads, but its outputs")
    assert needs["load_check"]["resolver=builtin"] == "ok"


def test_random_sparsity_goes_through_densify_and_needs_builtin(data, tmp_path):
    art = _export(data, "random", "tflite", "int8-sparse", tmp_path)
    assert "DENSIFY" in art.ops
    assert {r["kernel"] for r in art.needs["sparse_weights"]} == {"densify"}
    assert {r["op"] for r in art.needs["sparse_weights"]} == {"CONV_2D", "FULLY_CONNECTED"}
    assert art.needs["resolver"] == "builtin" and art.parity["passed"]
    assert art.needs["load_check"]["resolver=default"] != "ok"
    # what the mark is for: ai-edge-litert 2.3 applies XNNPACK at the first invoke, so that is where it fails
    with pytest.raises((EdgecompError, RuntimeError), match="failed to delegate FULLY_CONNECTED"):
        open_runner(art.path, resolver="default").predict(data["x_test"][:1])
    assert open_runner(art.path, resolver="builtin").predict(data["x_test"][:3]).shape == (3, 4)


def test_a_variant_no_resolver_runs_is_refused(data, tmp_path):
    # ai-edge-litert 2.3: fp16 weights stored block-sparse give NaN under every resolver
    with pytest.raises(EdgecompError, match="no LiteRT op resolver runs .*not finite"):
        _export(data, "block", "tflite", "fp16-sparse", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ragged_blocks_are_refused(tmp_path):
    """LiteRT computes 1x16 block-sparse FC weights wrongly when the input size is not a multiple of 16."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((40,))
    model = keras.Model(inp, keras.layers.Dense(8)(inp))
    w = model.layers[1].kernel.numpy()
    keep = np.zeros((3, 8), bool)
    keep[-1] = True  # the short last block (rows 32..39) stays
    keep[0, :4] = True
    model.layers[1].kernel.assign(w * np.repeat(keep, 16, axis=0)[:40])
    x = np.random.default_rng(0).normal(size=(64, 40)).astype(np.float32)
    with pytest.raises(EdgecompError, match="input size 40 is not a multiple of the 16-wide blocks"):
        export_and_check(model, "tflite", "int8-sparse", tmp_path / "m.tflite", calibration=x, check_x=x)
    assert list(tmp_path.iterdir()) == []


def test_parity_gate_refuses_a_broken_sparse_artifact(data, tmp_path, monkeypatch):
    exporter = get_exporter("tflite")
    real = exporter.convert
    broken = keras.models.clone_model(data["block"])
    rng = np.random.default_rng(2)
    broken.set_weights([np.where(w != 0, w + rng.normal(0, 0.5, w.shape), 0).astype(w.dtype)
                        for w in data["block"].get_weights()])  # same zeros, wrong values
    monkeypatch.setattr(exporter, "convert", lambda model, variant, calibration=None: real(broken, variant, calibration))
    target = tmp_path / "m.tflite"
    with pytest.raises(ParityError, match="fp32-sparse parity: max_abs_diff"):
        export_and_check(data["block"], "tflite", "fp32-sparse", target, check_x=data["x_test"],
                         check_y=data["y_test"])
    assert list(tmp_path.iterdir()) == []


# -- ONNX sparse initializers --------------------------------------------------------

def test_onnx_sparse_initializers_only_where_smaller(block_files, data):
    fp32, sparse = block_files["onnx", "fp32"], block_files["onnx", "fp32-sparse"]
    rows = sparse.needs["sparse_initializers"]
    assert [r["shape"] for r in rows] == [[288, 32]]  # 25% dense fp32: 12 B per nonzero < 4 B per weight
    assert sparse.bytes < fp32.bytes
    proto = onnx.load(str(sparse.path))
    assert len(proto.graph.sparse_initializer) == 1
    assert proto.graph.sparse_initializer[0].indices.data_type == onnx.TensorProto.INT64
    onnx.checker.check_model(proto)  # structural check (see exporters.onnx._check for full_check)
    x = data["x_test"]
    assert np.abs(open_runner(fp32.path).predict(x) - open_runner(sparse.path).predict(x)).max() <= 1e-6
    # int8 weights at 25% density: 9 B per nonzero > 1 B per weight, so nothing is converted
    for variant in ("int8-sparse", "dynamic-sparse"):
        assert block_files["onnx", variant].needs["sparse_initializers"] == []
        assert not onnx.load(str(block_files["onnx", variant].path)).graph.sparse_initializer


def test_sparsify_initializers_measures_each_tensor():
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    sparse_w = np.where(rng.random((64, 32)) < 0.05, rng.normal(size=(64, 32)), 0).astype(np.float32)
    dense_w = np.where(rng.random((32, 8)) < 0.5, rng.normal(size=(32, 8)), 0).astype(np.float32)
    bias = np.zeros(8, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["h2"]),
         helper.make_node("Add", ["h2", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(sparse_w, "w1"), numpy_helper.from_array(dense_w, "w2"),
         numpy_helper.from_array(bias, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = proto.ByteSize()
    rows = sparsify_initializers(proto)
    assert [r["name"] for r in rows] == ["w1"] and rows[0]["sparse_bytes"] < rows[0]["dense_bytes"]
    assert rows[0]["density"] == pytest.approx(np.count_nonzero(sparse_w) / sparse_w.size, abs=1e-4)
    assert [i.name for i in proto.graph.initializer] == ["w2", "b"]  # 50% dense and 1-d stay dense
    assert proto.ByteSize() < before
    onnx.checker.check_model(proto)
    import onnxruntime as ort

    x = rng.normal(size=(5, 64)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, x @ sparse_w @ dense_w + bias, atol=1e-5)
