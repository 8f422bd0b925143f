"""Quantization-aware training: fake quantization where the converter quantizes, exact BN
folding, masks and codebooks held, int8 files on the trained ranges in parity, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

keras = pytest.importorskip("keras")

from edgecomp import qat  # noqa: E402
from edgecomp.errors import EdgecompError  # noqa: E402
from edgecomp.qat_layers import QuantWrapper  # noqa: E402

L = keras.layers


def _graph_model():
    """conv-BN-ReLU, depthwise, 1x1 conv, Add, average and max pooling, Concatenate, GAP, dense."""
    inp = keras.Input((12, 12, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = L.BatchNormalization(momentum=0.8, name="bn1")(x)
    x = L.Activation("relu", name="r1")(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu", name="dw")(x)
    y = L.Conv2D(8, 1, name="pw")(y)
    z = L.ReLU(name="r3")(L.Add(name="add")([x, y]))
    c = L.Concatenate(name="cat")([L.AveragePooling2D(2, name="ap")(z), L.MaxPooling2D(2, name="mp")(z)])
    g = L.GlobalAveragePooling2D(name="gap")(c)
    h = L.Dense(12, activation="relu", name="fc1")(g)
    h = L.BatchNormalization(momentum=0.8, name="bn2")(h)       # folds forward into fc2
    return keras.Model(inp, L.Dense(4, activation="softmax", name="fc2")(h))


def _data(n, seed):
    """4 classes: a 5x5 patch anywhere, as bright as its class (global pooling can tell them apart)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.uniform(0.0, 0.3, (n, 12, 12, 1)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = rng.integers(0, 8, 2)
        x[i, r:r + 5, c:c + 5, 0] += 0.25 * (int(k) + 1)
    return x, y


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path or "gamma" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path or "beta" in w.path:
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = _data(512, 0)
    xt, yt = _data(400, 1)
    model = _graph_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    return model, (x, y), (xt, yt)


def test_placement_and_report(trained):
    model, (x, y), _ = trained
    qmodel, report = qat.quantize_model(model)
    assert report["float"] == []
    assert set(report["quantized"]) == {"c1", "dw", "pw", "fc1", "fc2"}
    assert report["folded"] == {"bn1": "c1", "bn2": "fc2"}
    # after the activation the op fuses (r1, dw's relu, r3), not before it; none after max pooling
    names = set(report["ranges"])
    assert {"image_fq", "r1_fq", "dw_fq", "pw_fq", "r3_fq", "cat_fq", "gap_fq", "fc1_fq",
            "fc2_preact_fq", "fc2_fq"} <= names
    assert not {"c1_fq", "add_fq", "mp_fq"} & names
    qat.calibrate(qmodel, x, 32, 2)
    assert qat.activation_ranges(qmodel)["fc2_fq"] == [0.0, 255 / 256]   # softmax: LiteRT's fixed range


def test_bn_folding_is_exact(trained):
    from edgecomp.fold import fold_batchnorm

    model, _, _ = trained
    _randomize_bn(model)
    folded = fold_batchnorm(model)
    qmodel, _ = qat.quantize_model(model)
    wrappers = {w.layer.name: w for w in qmodel.layers if isinstance(w, QuantWrapper)}
    for name in ("c1", "fc2"):
        k, b = (np.asarray(t) for t in wrappers[name].folded())
        np.testing.assert_allclose(k, folded.get_layer(name).kernel.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, folded.get_layer(name).bias.numpy(), rtol=1e-5, atol=1e-5)


def _tflite_params(data):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=data)
    out = {}
    for d in it.get_tensor_details():
        q = d["quantization_parameters"]
        out[d["name"]] = (np.asarray(q["scales"]), np.asarray(q["zero_points"]))
    return out


def test_file_holds_the_trained_ranges(trained):
    """Each trained range is the scale/zero point of the tensor its op writes, within one step; each
    conv kernel's per-channel scales are the trained weight grid's."""
    from exporters.base import convert_to_bytes

    model, (x, y), _ = trained
    qmodel, _ = qat.quantize_model(model)
    qat.fine_tune(qmodel, x[:128], y[:128], qat.QAT(epochs=1), batch_size=32, verbose=0)
    _, data = convert_to_bytes(qmodel, "tflite", "int8")
    params = _tflite_params(data)
    checked = 0
    quantizers = qat.quantizers_of(qmodel)
    for name, (lo, hi) in qat.activation_ranges(qmodel).items():
        layer = quantizers[name].input._keras_history.operation.name     # the op whose output it quantizes
        layer = "image" if layer.startswith("image") else layer.removesuffix("_qat")
        scale = (hi - lo) / 255
        zp = round(-lo / scale) - 128
        hits = [k for k in params if f"/{layer}_1/" in k or f"/{layer}_qat_1/" in k or (layer == "image" and "image" in k)]
        hits = [k for k in hits if params[k][0].size == 1]
        assert hits, f"no tensor of {layer} in the file"
        best = min(abs(float(params[k][0][0]) - scale) / scale for k in hits)
        assert best < 1 / 127, f"{name}: file scale off the trained range"
        assert any(abs(int(params[k][1][0]) - zp) <= 1 for k in hits)
        checked += 1
    assert checked >= 9
    wrappers = {w.layer.name: w for w in qmodel.layers if isinstance(w, QuantWrapper)}
    for name in ("c1", "pw"):
        k = np.asarray(wrappers[name].folded()[0])
        want = np.abs(k).reshape(-1, k.shape[-1]).max(0) / 127
        got = [v[0] for key, v in params.items() if v[0].size == k.shape[-1] and f"{name}_qat" in key]
        assert any(np.allclose(g, want, rtol=1e-4) for g in got), name


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_files_agree_with_the_qat_model(trained, tmp_path, fmt):
    from exporters import export_and_check

    model, (x, y), (xt, yt) = trained
    qmodel, _ = qat.quantize_model(model)
    qat.fine_tune(qmodel, x, y, qat.QAT(epochs=1), batch_size=32, verbose=0)
    art = export_and_check(qmodel, fmt, "int8", tmp_path / f"m.{fmt}", check_x=xt, check_y=yt)
    assert art.parity["passed"] and art.parity["thresholds"]["top1_agreement"] == 0.995
    assert art.parity["top1_agreement"] >= 0.995
    if fmt == "onnx":   # every trained range is a QuantizeLinear scale in the file
        import onnx
        from onnx import numpy_helper
        proto = onnx.load(str(art.path))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        scales = [float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"]
        for lo, hi in qat.activation_ranges(qmodel).values():
            assert min(abs(s - (hi - lo) / 255) for s in scales) < 1e-6 * max(1.0, hi - lo)
    fp32 = export_and_check(qmodel, fmt, "fp32", tmp_path / f"f.{fmt}", check_x=xt)   # the float model's file
    assert fp32.parity["max_abs_diff"] <= 1e-4


def test_masks_and_codebooks_held(trained):
    from edgecomp import pruning
    from edgecomp.weight_sharing import share_weights

    model, (x, y), _ = trained
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    masks = pruning.prune(m, 0.7, skip_first=False)
    qmodel, _ = qat.quantize_model(m)
    qat.fine_tune(qmodel, x[:128], y[:128], qat.QAT(epochs=1), batch_size=32, masks=masks, verbose=0)
    by_path = {v.path: v.numpy() for v in m.weights}
    for path, mask in masks.items():
        assert np.all(by_path[path][~mask] == 0), path
    shared = share_weights(m, bits={"conv": 4, "dense": 3})
    before = {p: st.codebook.copy() for p, st in shared.items()}
    qmodel, _ = qat.quantize_model(m)
    qat.fine_tune(qmodel, x[:128], y[:128], qat.QAT(epochs=1), batch_size=32, shared=shared, verbose=0)
    by_path = {v.path: v.numpy() for v in m.weights}
    moved = 0
    for p, st in shared.items():
        np.testing.assert_array_equal(by_path[p], st.weights())      # every weight on its (trained) codebook
        assert np.all(by_path[p][st.assignment < 0] == 0)
        moved += not np.array_equal(before[p], st.codebook)
    assert moved > 0


def test_onnx_rewrite_refuses_weights_off_their_grid(trained):
    """The int8 weight rewrite is for a QAT model's baked kernels only: a float kernel would change."""
    from exporters.onnx import _tf2onnx
    from exporters.onnx_qat import quantize_weights
    from exporters.variants import Variant

    model, _, _ = trained
    proto = _tf2onnx(model, Variant.parse("onnx", "int8"))
    with pytest.raises(EdgecompError, match="not on its int8 grid"):
        quantize_weights(proto, 8)


def test_unwrappable_layer_is_reported_and_left_float():
    inp = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="d1")(inp)
    h = L.LayerNormalization(name="ln")(h)
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="d2")(h))
    _, report = qat.quantize_model(model)
    assert report["float"] == [{"layer": "ln", "kind": "LayerNormalization", "why": "no int8 rule for it"}]


@pytest.mark.parametrize("kwargs,word", [({"epochs": 0}, "epochs"), ({"weight_bits": 9}, "bits"),
                                         ({"weight_bits": 1}, "bits"), ({"learning_rate": -1}, "learning rate"),
                                         ({"ema_decay": 1.0}, "decay")])
def test_bad_settings_are_one_line_errors(kwargs, word):
    with pytest.raises(EdgecompError, match=word) as info:
        qat.QAT(**kwargs)
    assert "\n" not in str(info.value)


def test_ranges_round_trip_and_refuse_a_mismatch(trained):
    model, (x, y), _ = trained
    qmodel, _ = qat.quantize_model(model)
    qat.calibrate(qmodel, x, 32, 2)
    ranges = qat.activation_ranges(qmodel)
    again, _ = qat.quantize_model(model, ranges=ranges)
    assert qat.activation_ranges(again) == ranges
    with pytest.raises(EdgecompError, match="do not fit"):
        qat.quantize_model(model, ranges={"nope_fq": (0.0, 1.0)})


def test_cli_compress_qat_then_export_on_the_trained_ranges(tmp_path):
    """compress --qat-epochs stores the ranges; export makes int8 files on them, in parity with the QAT model."""
    import json

    from edgecomp import codec, train
    from edgecomp.cli import main
    from edgecomp.data import load_dataset
    from edgecomp.models import build_model

    keras.utils.set_random_seed(0)
    ds = load_dataset("synthetic_images", n_train=400, n_test=200)
    model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.25)
    train.fit(model, ds.x_train, ds.y_train, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    ecz = tmp_path / "m.ecz"
    data = ["--data", "synthetic_images", "--test-size", "200"]
    assert main(["compress", str(tmp_path / "m.keras"), *data, "--method", "deep", "--qat-epochs", "1",
                 "-o", str(ecz), "--report", str(tmp_path / "r.json")]) == 0
    meta, _ = codec.decode_weights(ecz.read_bytes())
    stored = meta["info"]["qat"]
    assert stored["config"]["epochs"] == 1 and stored["ranges"] and stored["float_layers"] == []
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["qat"]["epochs"] == 1
    out = tmp_path / "x"
    assert main(["export", str(ecz), *data, "--format", "tflite,onnx", "--variants", "int8", "-o", str(out)]) == 0
    arts = json.loads((out / "export.json").read_text())["artifacts"]
    assert {a["format"] for a in arts} == {"tflite", "onnx"}
    for a in arts:
        assert a["parity"]["passed"] and a["parity"]["thresholds"] == {"top1_agreement": 0.995, "accuracy_delta": -0.003}
    # the TFLite input scale is the stored input range's, not a calibration's
    from ai_edge_litert.interpreter import Interpreter
    tfl = next(a for a in arts if a["format"] == "tflite")
    scale, _ = Interpreter(model_path=tfl["path"]).get_input_details()[0]["quantization"]
    lo, hi = stored["ranges"][f"{model.layers[0].name}_fq"]     # the model input's quantizer
    assert abs(scale - (hi - lo) / 255) < 1e-6


def test_recipe_stage_options_and_round_trip():
    from edgecomp.recipe import Recipe

    r = Recipe.from_options(method="deep", qat_epochs=2, qat_distill="off", qat_weight_bits=7)
    assert r.qat == qat.QAT(epochs=2, distill=None, weight_bits=7)
    assert r.stages == ["pruning", "sharing", "qat", "coding"]
    assert "QAT 2 epochs" in r.describe()
    assert Recipe.from_config(r.get_config()) == r
    assert Recipe.from_options(r, qat_epochs=0).qat is None          # 0 epochs drops the stage
    assert Recipe.from_options(qat_epochs=1).qat.distill.temperature == 4.0   # distilled by default


def test_input_ranges_pair_by_position_when_keras_renames_the_input():
    """keras.applications' MobileNetV2: its input quantizer was 'keras_tensor_fq' when compressed
    and is 'input_layer_fq' once rebuilt from the container; the ranges still load."""
    import keras

    from edgecomp import qat
    from edgecomp.errors import EdgecompError

    inp = keras.Input((8,), name="first_name")
    model = keras.Model(inp, keras.layers.Dense(3, activation="relu", name="fc")(keras.layers.Dense(4, name="d")(inp)))
    qmodel, _ = qat.quantize_model(model)
    ranges = {name: [-1.0 - i, 2.0 + i] for i, name in enumerate(qat.activation_ranges(qmodel))}
    assert "first_name_fq" in ranges
    renamed = {("keras_tensor_fq" if k == "first_name_fq" else k): v for k, v in ranges.items()}
    qat.set_ranges(qmodel, renamed)
    got = qat.activation_ranges(qmodel)
    assert {k: pytest.approx(v) for k, v in ranges.items()} == got
    other = next(k for k in ranges if k != "first_name_fq")
    with pytest.raises(EdgecompError, match="QAT ranges do not fit this model"):
        qat.set_ranges(qmodel, {("elsewhere_fq" if k == other else k): v for k, v in ranges.items()})


def _stem_model():
    """keras.applications' stem: float Rescaling and a Normalization holding its statistics as
    variables (as adapt() leaves them) before the first conv; a depthwise conv with its
    BatchNorm after it (EfficientNet's and MobileNetV2's blocks)."""
    inp = keras.Input((12, 12, 3), name="pixels")
    x = L.Rescaling(2.0, name="rescale")(inp)
    norm = L.Normalization(axis=-1, name="norm")
    x = norm(x)
    norm.set_weights([np.array([0.3, 0.2, 0.4], "float32"), np.array([0.09, 0.05, 0.2], "float32"),
                      np.array(1.0, "float32")])
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    x = L.Activation("relu", name="r1")(L.BatchNormalization(momentum=0.8, name="bn1")(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.Activation("relu", name="r2")(L.BatchNormalization(momentum=0.8, name="dw_bn")(x))
    return keras.Model(inp, L.Dense(4, activation="softmax", name="fc")(L.GlobalAveragePooling2D(name="gap")(x)))


def _rgb(xy):
    x, y = xy
    return np.concatenate([x, 0.5 * x, 1.5 * x], -1), y


def test_float_stem_gets_a_range_and_depthwise_bn_folds(tmp_path):
    """The conv after float layers reads them on a trained range of their own (without one, TF
    2.21's converter fed this stem's conv garbage: 25-33% agreement), and a depthwise
    conv's BatchNorm folds into it as the int8 kernels run it."""
    from exporters import export_and_check

    keras.utils.set_random_seed(1)
    (x, y), (xt, yt) = _rgb(_data(512, 0)), _rgb(_data(400, 1))
    model = _stem_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    qmodel, report = qat.quantize_model(model)
    assert report["folded"] == {"bn1": "c1", "dw_bn": "dw"}
    assert [f["layer"] for f in report["float"]] == ["rescale", "norm"]
    assert {"rescale_fq", "norm_fq"} <= set(report["ranges"])
    qat.fine_tune(qmodel, x, y, qat.QAT(epochs=1), batch_size=32, verbose=0)
    art = export_and_check(qmodel, "tflite", "int8", tmp_path / "stem.tflite", check_x=xt, check_y=yt)
    assert art.parity["passed"] and art.parity["top1_agreement"] >= 0.995


def test_a_container_trained_in_the_earlier_layout_still_restores():
    """Ranges trained before Dec 2026 (depthwise BN unfolded, no range after a float layer) fit
    the layout they were trained in; restore() rebuilds that one."""
    x, _ = _rgb(_data(64, 0))
    model = _stem_model()
    old, report = qat.quantize_model(model, legacy=True)
    assert report["folded"] == {"bn1": "c1"} and "norm_fq" not in report["ranges"]
    qat.calibrate(old, x, 32, 2)
    info = {"config": qat.QAT().get_config(), "ranges": qat.activation_ranges(old)}
    again = qat.restore(model, info)
    got, want = qat.activation_ranges(again), qat.activation_ranges(old)
    assert got.keys() == want.keys() and all(np.allclose(got[k], want[k]) for k in want)
    with pytest.raises(EdgecompError, match="QAT ranges do not fit"):
        qat.restore(model, {**info, "ranges": {**info["ranges"], "stray_fq": [0.0, 1.0]}})
