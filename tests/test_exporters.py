"""exporters: every dense variant converts, describes itself, runs, and passes (or fails) its parity gate.

The ``-sparse`` variants need pruned weights; they are tested in test_exporters_sparse.py.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")

from edgecomp.errors import EdgecompError  # noqa: E402
from exporters import VARIANTS, Artifact, ParityError, check_parity, export, export_and_check  # noqa: E402
from exporters.base import get_exporter  # noqa: E402
from runtime_bench.runners import open_runner  # noqa: E402

ALL = [(fmt, v) for fmt, variants in VARIANTS.items() for v in variants if not v.endswith("-sparse")]
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}


def _synthetic(n: int, rng: np.random.Generator):
    """12x12x1 images, 4 classes: a bright 5x5 patch in quadrant ``k``, plus noise."""
    y = rng.integers(0, 4, n)
    x = rng.uniform(0.0, 0.3, (n, 12, 12, 1)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 6 * r:6 * r + 5, 6 * c:6 * c + 5, 0] += 0.7
    return x, y.astype(np.int64)


def _tiny_model():
    inp = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu")(h)  # 200x16 kernel: big enough to be quantized
    out = keras.layers.Dense(4, activation="softmax")(h)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def data():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = _synthetic(640, rng)
    x_test, y_test = _synthetic(300, rng)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    return {"model": model, "x_train": x_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="module")
def artifacts(data, tmp_path_factory):
    """Every registered variant, exported and checked once."""
    out = tmp_path_factory.mktemp("artifacts")
    arts = {}
    for fmt, variant in ALL:
        arts[fmt, variant] = export_and_check(
            data["model"], fmt, variant, out / f"m_{variant}{SUFFIX[fmt]}",
            calibration=data["x_train"][:200], check_x=data["x_test"], check_y=data["y_test"])
    return arts


def test_trained_model_is_meaningful(data):
    pred = np.argmax(data["model"].predict(data["x_test"], verbose=0), axis=-1)
    assert np.mean(pred == data["y_test"]) > 0.9


def test_required_variants_registered():
    dense = {"fp32", "fp16", "dynamic", "int8", "int8-floatio"}
    assert set(VARIANTS["tflite"]) == dense | {f"{v}-sparse" for v in dense} | {"int16x8"}
    assert set(VARIANTS["onnx"]) == {"fp32", "int8", "dynamic", "fp32-sparse", "int8-sparse", "dynamic-sparse",
                                     "int16x8"}


def test_every_variant_has_thresholds():
    from exporters.parity import default_thresholds

    for variants in VARIANTS.values():
        for v in variants:
            limits = default_thresholds(v)
            assert limits["top1_agreement"] >= 0.99
            if v.startswith("fp32"):
                assert limits == {"max_abs_diff": 1e-4, "top1_agreement": 1.0}
            if v.startswith(("int8", "dynamic", "int16x8")):
                assert limits["accuracy_delta"] == -0.005


@pytest.mark.parametrize("fmt,variant", ALL)
def test_artifact_fields(artifacts, fmt, variant):
    art = artifacts[fmt, variant]
    assert isinstance(art, Artifact)
    assert art.format == fmt and art.variant == variant
    assert art.path.name == f"m_{variant}{SUFFIX[fmt]}" and art.path.is_file()
    raw = art.path.read_bytes()
    assert art.bytes == len(raw) == art.path.stat().st_size
    assert 0 < art.gzip_bytes == len(gzip.compress(raw, 9))
    assert art.ops and art.ops == sorted(set(art.ops))
    assert art.parity["passed"] and not art.parity["failures"]
    assert art.parity["n"] == 300
    # no temporary files left beside the published one
    assert not [p for p in art.path.parent.iterdir() if p.name.startswith(".")]


def test_to_dict_is_json(artifacts):
    for art in artifacts.values():
        d = json.loads(json.dumps(art.to_dict()))
        assert d["path"] == str(art.path) and d["bytes"] == art.bytes
        assert set(d) == {"path", "format", "variant", "bytes", "gzip_bytes", "ops", "needs", "parity"}


def test_ops(artifacts):
    for fmt, variant in ALL:
        if fmt != "tflite":
            continue
        ops = artifacts[fmt, variant].ops
        assert {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "SOFTMAX"} <= set(ops), ops
        assert "DENSIFY" not in ops
    onnx_ops = artifacts["onnx", "fp32"].ops
    assert {"Conv", "MaxPool", "Softmax"} <= set(onnx_ops), onnx_ops
    assert {"MatMul", "Gemm"} & set(onnx_ops), onnx_ops
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(artifacts["onnx", "int8"].ops)
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= set(artifacts["onnx", "dynamic"].ops)


def test_runtime_setting_is_recorded(artifacts):
    for (fmt, variant), art in artifacts.items():
        if fmt == "tflite":  # dense files load with XNNPACK, checked in a fresh process
            assert art.needs["resolver"] == "default"
            assert art.needs["load_check"] == {"resolver=default": "ok"}
            assert art.needs["sparse_weights"] == []
        else:
            assert art.needs["optimization"] == "all"
            assert art.needs["load_check"] == {"optimization=all": "ok"}
            assert art.needs["sparse_initializers"] == []


@pytest.mark.parametrize("variant", ["fp32", "int8", "dynamic"])
def test_onnx_file_is_valid_with_dynamic_batch(artifacts, data, variant):
    art = artifacts["onnx", variant]
    onnx.checker.check_model(str(art.path), full_check=True)
    proto = onnx.load(str(art.path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert art.needs["opset"] == 17 and art.needs["runtime"] == "onnxruntime"
    assert art.needs["input"]["dtype"] == art.needs["output"]["dtype"] == "float32"
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    runner = open_runner(art.path)
    for n in (1, 7):
        assert runner.predict(data["x_test"][:n]).shape == (n, 4)


def test_onnx_int8_is_per_channel_qdq(artifacts):
    from onnx import numpy_helper

    proto = onnx.load(str(artifacts["onnx", "int8"].path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].ndim >= 2]
    assert len(weights) == 3  # one conv and two dense kernels
    for node in weights:
        assert inits[node.input[0]].dtype == np.int8
        assert inits[node.input[1]].ndim == 1 and inits[node.input[1]].size > 1  # a scale per channel


def test_calibration_reader_feeds_every_sample_once():
    from onnxruntime.quantization import CalibrationDataReader

    from exporters.onnx import ArrayCalibrationReader

    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    reader = ArrayCalibrationReader("input", x, batch=20)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3
    got = [b["input"] for b in iter(reader.get_next, None)]
    assert [len(b) for b in got] == [20, 20, 10] and np.array_equal(np.concatenate(got), x)
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["input"].shape == (20, 3)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_fp32_parity_is_tight(artifacts, data, fmt):
    art = artifacts[fmt, "fp32"]
    assert art.parity["max_abs_diff"] <= 1e-4 and art.parity["top1_agreement"] == 1.0
    # recomputed here, independent of check_parity
    ref = data["model"].predict(data["x_test"], verbose=0)
    got = open_runner(art.path).predict(data["x_test"])
    assert np.abs(ref - got).max() <= 1e-4
    assert np.array_equal(ref.argmax(-1), got.argmax(-1))


def test_int8_has_int8_io_and_runs(artifacts, data):
    from ai_edge_litert.interpreter import Interpreter

    art = artifacts["tflite", "int8"]
    assert art.needs["input"]["dtype"] == "int8" and art.needs["output"]["dtype"] == "int8"
    assert "scale" in art.needs["input"] and "zero_point" in art.needs["output"]
    interp = Interpreter(model_path=str(art.path))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    got = open_runner(art.path).predict(data["x_test"])
    ref = data["model"].predict(data["x_test"], verbose=0)
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.99
    assert art.parity["top1_agreement"] >= 0.99 and art.parity["accuracy_delta"] >= -0.005
    assert np.mean(got.argmax(-1) == data["y_test"]) > 0.9


def test_float_variants_keep_float_io(artifacts):
    for variant in ("fp32", "fp16", "dynamic", "int8-floatio"):
        needs = artifacts["tflite", variant].needs
        assert needs["input"]["dtype"] == needs["output"]["dtype"] == "float32"
        assert needs["input"]["shape"][0] == -1  # dynamic batch


def test_int8_floatio_is_integer_inside(artifacts):
    art = artifacts["tflite", "int8-floatio"]
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(art.ops)
    # same integer graph as int8, plus the float edges: top-1 agrees with it everywhere
    assert art.parity["top1_agreement"] >= 0.99 and art.parity["accuracy_delta"] >= -0.005


def test_int16x8_has_int16_activations_and_int8_weights(artifacts, data):
    from ai_edge_litert.interpreter import Interpreter

    art = artifacts["tflite", "int16x8"]
    assert art.needs["input"]["dtype"] == art.needs["output"]["dtype"] == "float32"
    interp = Interpreter(model_path=str(art.path))
    dtypes = {d["dtype"] for d in interp.get_tensor_details()}
    assert {np.int16, np.int8} <= dtypes and np.uint8 not in dtypes
    assert art.parity["top1_agreement"] >= 0.99 and art.parity["max_abs_diff"] < 0.02

    proto = onnx.load(str(artifacts["onnx", "int16x8"].path))
    assert {(o.domain, o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {("", 21)}
    assert artifacts["onnx", "int16x8"].needs["opset"] == 21
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(n.domain in ("", "ai.onnx") for n in quantize)   # standard ops, any runtime
    zero_points = {i.name: i for i in proto.graph.initializer}
    types = {zero_points[n.input[2]].data_type for n in quantize if len(n.input) > 2 and n.input[2] in zero_points}
    assert types == {onnx.TensorProto.INT16}            # every activation quantized to int16
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert weights                                       # int8 kernels
    assert artifacts["onnx", "int16x8"].parity["top1_agreement"] >= 0.99


def test_quantized_variants_are_smaller(artifacts):
    for fmt, variants in (("tflite", ("int8", "int8-floatio", "dynamic", "fp16", "int16x8")),
                          ("onnx", ("int8", "dynamic", "int16x8"))):
        fp32 = artifacts[fmt, "fp32"].bytes
        for variant in variants:
            assert artifacts[fmt, variant].bytes < fp32, (fmt, variant)


def _perturbed(model):
    broken = keras.models.clone_model(model)
    rng = np.random.default_rng(1)
    broken.set_weights([w + rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    return broken


def test_parity_gate_refuses_a_broken_artifact(data, tmp_path, monkeypatch):
    exporter = get_exporter("tflite")
    real = exporter.convert
    broken = _perturbed(data["model"])
    # The exporter converts a perturbed copy; the gate checks against the original.
    monkeypatch.setattr(exporter, "convert", lambda model, variant, calibration=None: real(broken, variant, calibration))
    target = tmp_path / "m.tflite"
    with pytest.raises(ParityError) as info:
        export_and_check(data["model"], "tflite", "fp32", target, check_x=data["x_test"], check_y=data["y_test"])
    msg = str(info.value)
    assert "\n" not in msg and "fp32" in msg and "max_abs_diff" in msg and "0.0001" in msg
    assert isinstance(info.value, EdgecompError) and info.value.figures["passed"] is False
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_threshold_override_can_fail_a_good_int8_file(data, tmp_path):
    target = tmp_path / "m.tflite"
    with pytest.raises(ParityError, match=r"int8.*top1_agreement .* < 1\.01"):
        export_and_check(data["model"], "tflite", "int8", target, calibration=data["x_train"][:50],
                         check_x=data["x_test"][:50], thresholds={"top1_agreement": 1.01})
    assert list(tmp_path.iterdir()) == []


def test_check_parity_on_a_path(artifacts, data, tmp_path):
    bad = export(_perturbed(data["model"]), "onnx", "fp32", tmp_path / "bad.onnx")
    assert bad.parity is None and bad.path.is_file()
    r = check_parity(data["model"], bad.path, data["x_test"], data["y_test"], variant="fp32")
    assert r["passed"] is False and any("max_abs_diff" in f for f in r["failures"])
    assert set(r) >= {"n", "max_abs_diff", "mean_abs_diff", "top1_agreement",
                      "accuracy_keras", "accuracy_artifact", "accuracy_delta"}
    assert r["accuracy_delta"] == pytest.approx(r["accuracy_artifact"] - r["accuracy_keras"])
    relaxed = check_parity(data["model"], bad.path, data["x_test"], variant="fp32",
                           thresholds={"max_abs_diff": None, "top1_agreement": 0.0})
    assert relaxed["passed"] and "accuracy_delta" not in relaxed
    # thresholds are applied exactly, in the right direction
    v = r["max_abs_diff"]
    assert not check_parity(data["model"], bad.path, data["x_test"], thresholds={"max_abs_diff": v * 0.99})["passed"]
    assert check_parity(data["model"], bad.path, data["x_test"], thresholds={"max_abs_diff": v * 1.01})["passed"]
    a = r["top1_agreement"]
    assert check_parity(data["model"], bad.path, data["x_test"], thresholds={"top1_agreement": a})["passed"]
    assert not check_parity(data["model"], bad.path, data["x_test"], thresholds={"top1_agreement": a + 1e-3})["passed"]
    good = check_parity(data["model"], artifacts["onnx", "fp32"], data["x_test"])
    assert good["variant"] == "fp32" and good["passed"]
    with pytest.raises(EdgecompError, match="unknown parity figure"):
        check_parity(data["model"], bad.path, data["x_test"], thresholds={"max_diff": 1})


def test_tflite_falls_back_to_the_saved_model_route(data, tmp_path, monkeypatch):
    import tensorflow as tf

    def refuse(model):
        raise AttributeError("'Functional' object has no attribute '_get_save_spec'")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", staticmethod(refuse))
    art = export_and_check(data["model"], "tflite", "int8", tmp_path / "m.tflite",
                           calibration=data["x_train"][:50], check_x=data["x_test"], check_y=data["y_test"])
    assert art.parity["passed"] and art.needs["input"]["dtype"] == "int8"


def test_mistakes_are_one_line_errors(data, tmp_path):
    m = data["model"]
    with pytest.raises(EdgecompError, match="needs calibration"):
        export(m, "tflite", "int8", tmp_path / "a.tflite")
    with pytest.raises(EdgecompError, match="calibration data has shape"):
        export(m, "tflite", "int8", tmp_path / "a.tflite", calibration=np.zeros((4, 10, 10, 1), np.float32))
    with pytest.raises(EdgecompError, match="unknown export format"):
        export(m, "coreml", "fp32", tmp_path / "a.mlmodel")
    with pytest.raises(EdgecompError, match="onnx int8 variant needs calibration"):
        export(m, "onnx", "int8", tmp_path / "a.onnx")
    with pytest.raises(EdgecompError, match="no variant 'fp16'"):
        export(m, "onnx", "fp16", tmp_path / "a.onnx")
    with pytest.raises(EdgecompError, match="must end in .onnx"):
        export_and_check(m, "onnx", "fp32", tmp_path / "a.tflite", check_x=data["x_test"])
    assert list(tmp_path.iterdir()) == []


def test_probe_survives_a_file_no_runtime_can_load(tmp_path):
    from exporters.probe import choose_setting, probe

    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"TFL3 but not a model")
    status, out = probe(junk, {"resolver": "default"})
    assert status != "ok" and out is None and "\n" not in status
    setting, tried = choose_setting(b"not onnx", ".onnx", [{"optimization": "all"}, {"optimization": "disable"}])
    assert setting is None and set(tried) == {"optimization=all", "optimization=disable"}
    assert all(v != "ok" for v in tried.values())


def test_cli_export_writes_a_manifest(tmp_path):
    """``edgecomp export`` on a tiny .keras file with synthetic data: files plus export.json."""
    from edgecomp.cli import main
    from edgecomp.data import load_dataset

    ds = load_dataset("synthetic_images", n_train=512, n_test=256)
    keras.utils.set_random_seed(0)
    inp = keras.Input(ds.input_shape)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inp, keras.layers.Dense(ds.num_classes, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(ds.x_train, ds.y_train, batch_size=32, epochs=6, verbose=0)
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    out = tmp_path / "out"
    assert main(["export", str(model_path), "--format", "tflite,onnx", "--variants", "fp32,int8",
                 "--data", "synthetic_images", "-o", str(out)]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["model"] == str(model_path)
    arts = {(a["format"], a["variant"]): a for a in manifest["artifacts"]}
    assert set(arts) == {("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8")}
    for (fmt, variant), a in arts.items():
        path = Path(a["path"])
        assert path.is_file() and path.stat().st_size == a["bytes"] and path.suffix == f".{fmt}"
        assert a["parity"]["passed"] and a["parity"]["variant"] == variant and a["parity"]["n"] == 256
        assert a["needs"]["load_check"] and all(v == "ok" for v in a["needs"]["load_check"].values())
    assert arts["tflite", "int8"]["needs"]["input"]["dtype"] == "int8"
    assert arts["onnx", "int8"]["needs"]["input"]["dtype"] == "float32"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["export.json", "tiny_fp32.tflite", "tiny_int8.tflite", "tiny_fp32.onnx", "tiny_int8.onnx"])


def test_a_limit_met_up_to_float_rounding_passes():
    from exporters.parity import judge_figures
    one_of_200 = (190 - 191) / 200               # one sample lost of 200: exactly the limit
    assert judge_figures({"accuracy_delta": 0.955 - 0.96}, {"accuracy_delta": -0.005}, "int8") == []
    assert judge_figures({"accuracy_delta": one_of_200}, {"accuracy_delta": -0.005}, "int8") == []
    assert judge_figures({"accuracy_delta": -0.0051}, {"accuracy_delta": -0.005}, "int8") == \
        ["int8: accuracy_delta -0.0051 < -0.005 required"]
    assert judge_figures({"max_abs_diff": float("nan")}, {"max_abs_diff": 1e-4}, "fp32") != []
