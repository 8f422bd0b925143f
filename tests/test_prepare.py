"""Calibrated exports convert a prepared copy (exporters.prepare): constant BatchNorm channels
settled, ReLU -> BatchNorm channel ranges equalized."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from exporters import check_parity, export  # noqa: E402
from exporters.prepare import (constant_channels, equalize_relu_batchnorm, relu_batchnorm_pairs,  # noqa: E402
                               settle_constant_channels)
from exporters.tflite import _convert  # noqa: E402
from exporters.variants import Variant  # noqa: E402

INT8 = Variant.parse("tflite", "int8")

DEAD = 24  # of 48 hidden units


def _dead_unit_model(seed: int = 0):
    """Dense+ReLU with DEAD units that never fire, BatchNorm after it (as a trained net's BN
    holds for such units: moving variance ~0), then a Dense head: PointNet's T-net/head shape."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((16,), name="x")
    h = keras.layers.Dense(48, activation="relu", name="fc1")(inputs)
    h = keras.layers.BatchNormalization(name="fc1_bn")(h)
    outputs = keras.layers.Dense(10, name="head")(h)
    model = keras.Model(inputs, outputs)
    kernel = rng.normal(0, 0.5, (16, 48)).astype("float32")
    bias = np.full(48, 0.1, "float32")
    kernel[:, :DEAD], bias[:DEAD] = 0.0, -1.0  # relu(0 - 1) = 0 for every input
    model.get_layer("fc1").set_weights([kernel, bias])
    var = np.concatenate([np.full(DEAD, 1e-8), rng.uniform(0.5, 2, 48 - DEAD)]).astype("float32")
    mean = np.concatenate([np.zeros(DEAD), rng.uniform(0, 1, 48 - DEAD)]).astype("float32")
    model.get_layer("fc1_bn").set_weights([rng.uniform(0.5, 1.5, 48).astype("float32"),
                                           rng.normal(0, 0.2, 48).astype("float32"), mean, var])
    model.get_layer("head").set_weights([rng.normal(0, 0.3, (48, 10)).astype("float32"), np.zeros(10, "float32")])
    return model, rng.normal(0, 1, (256, 16)).astype("float32")


def test_finds_exactly_the_dead_units():
    model, x = _dead_unit_model()
    found = constant_channels(model, x)
    assert list(found) == ["fc1_bn"]
    mask, value = found["fc1_bn"]
    assert mask[:DEAD].all() and not mask[DEAD:].any()
    assert np.all(value[:DEAD] == 0)


def test_settled_copy_computes_the_same_and_leaves_the_model_alone():
    model, x = _dead_unit_model()
    before = [w.copy() for w in model.get_weights()]
    clean = settle_constant_channels(model, x[:128])
    assert clean is not model
    np.testing.assert_allclose(clean.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    gamma = clean.get_layer("fc1_bn").gamma.numpy()
    assert np.all(gamma[:DEAD] == 0) and np.all(gamma[DEAD:] != 0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_no_constant_channel_returns_the_model_itself():
    model, x = _dead_unit_model()
    model.get_layer("fc1").set_weights([np.ones((16, 48), "float32"), np.zeros(48, "float32")])
    x = np.abs(x) + 0.1  # every unit fires, with varying values
    assert settle_constant_channels(model, x) is model


def _int8_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    """Run an int8-I/O .tflite on ``x`` one sample at a time; dequantized outputs."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = i["quantization"], o["quantization"]
    out = []
    for k in range(len(x)):
        it.set_tensor(i["index"], np.clip(np.round(x[k:k + 1] / si + zi), -128, 127).astype(np.int8))
        it.invoke()
        out.append((it.get_tensor(o["index"]).astype(np.float32) - zo) * so)
    return np.concatenate(out)


def test_int8_export_error_shrinks_when_dead_channels_are_settled(tmp_path):
    """Without settling, the converter folds the ~1/sqrt(eps) gains of the dead channels into
    the head's weights and their int8 scale crushes the live ones."""
    model, x = _dead_unit_model()
    ref = model.predict(x, verbose=0)

    def max_err(data: bytes) -> float:
        return float(np.abs(_int8_outputs(data, x[:64]) - ref[:64]).max())

    raw = max_err(_convert(model, INT8, x[:128]))
    art = export(model, "tflite", "int8", tmp_path / "m.tflite", calibration=x[:128])
    settled = max_err((tmp_path / "m.tflite").read_bytes())
    assert settled < raw / 2, (settled, raw)
    assert check_parity(model, art, x[128:], np.argmax(ref[128:], -1), variant="int8")["top1_agreement"] >= 0.95


def test_probe_batches_shrink_to_the_memory_bound(monkeypatch):
    import exporters.prepare as prepare

    model, x = _dead_unit_model()
    seen = []
    real = keras.Model.__call__

    def spy(self, inputs, *args, **kwargs):
        seen.append(len(inputs[0]) if isinstance(inputs, list) else len(inputs))
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(prepare, "_PROBE_BYTES", 4 * 48 * 10)  # ten samples' BN inputs
    monkeypatch.setattr(keras.Model, "__call__", spy)
    found = prepare.constant_channels(model, x[:35])
    assert max(seen) == 10 and sum(seen) == 35
    assert found["fc1_bn"][0][:DEAD].all()


def _spread_range_model(seed: int = 0, spread: float = 1000.0):
    """Conv1D+ReLU whose channels' ranges span ``spread``x, a BatchNorm that normalises them
    (as a trained net's does), max over points, a Dense head: PointNet's per-point MLP."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((32, 3), name="points")
    h = keras.layers.Conv1D(24, 1, activation="relu", name="mlp_conv")(inputs)
    h = keras.layers.BatchNormalization(name="mlp_bn")(h)
    h = keras.layers.GlobalMaxPooling1D(name="pool")(h)
    outputs = keras.layers.Dense(10, name="head")(h)
    model = keras.Model(inputs, outputs)
    gain = np.geomspace(1.0, spread, 24).astype("float32")
    model.get_layer("mlp_conv").set_weights([(rng.normal(0, 1, (1, 3, 24)) * gain).astype("float32"),
                                             (0.1 * gain).astype("float32")])
    model.get_layer("mlp_bn").set_weights([rng.uniform(0.5, 1.5, 24).astype("float32"),
                                           rng.normal(0, 0.2, 24).astype("float32"),
                                           (0.8 * gain).astype("float32"), (gain ** 2).astype("float32")])
    model.get_layer("head").set_weights([rng.normal(0, 0.5, (24, 10)).astype("float32"), np.zeros(10, "float32")])
    return model, rng.normal(0, 1, (320, 32, 3)).astype("float32")


def test_equalized_copy_computes_the_same_with_one_range_per_tensor():
    model, x = _spread_range_model()
    before = [w.copy() for w in model.get_weights()]
    assert [(a.name, b.name) for a, b in relu_batchnorm_pairs(model)] == [("mlp_conv", "mlp_bn")]
    eq = equalize_relu_batchnorm(model, x[:128])
    assert eq is not model
    np.testing.assert_allclose(eq.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)

    def channel_max(m):
        probe = keras.Model(m.inputs, m.get_layer("mlp_bn").input)
        return np.asarray(probe.predict(x[:128], verbose=0)).reshape(-1, 24).max(0)

    top = channel_max(eq)
    assert channel_max(model).max() / channel_max(model).min() > 100          # spread before
    np.testing.assert_allclose(top, top.max(), rtol=1e-4)                    # one range after
    for a, b in zip(before, model.get_weights()):                            # model untouched
        np.testing.assert_array_equal(a, b)


def test_only_relu_outputs_that_feed_just_a_batchnorm_are_equalized():
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    inputs = keras.Input((8,))
    linear = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="fc")(inputs))   # no ReLU
    model = keras.Model(inputs, linear)
    assert relu_batchnorm_pairs(model) == [] and equalize_relu_batchnorm(model, x) is model
    h = keras.layers.Dense(8, activation="relu", name="fc_relu")(inputs)
    also_output = keras.Model(inputs, [keras.layers.BatchNormalization(name="bn2")(h), h])
    assert relu_batchnorm_pairs(also_output) == []                          # h is a model output too
    g = keras.layers.Dense(8, activation="relu", name="fc_relu2")(inputs)
    second = keras.Model(inputs, keras.layers.Add()([keras.layers.BatchNormalization(name="bn3")(g), g]))
    assert relu_batchnorm_pairs(second) == []                               # h feeds an Add as well
    assert equalize_relu_batchnorm(second, x) is second


def test_int8_export_error_shrinks_when_ranges_are_equalized(tmp_path):
    """One int8 scale for the ReLU output leaves the narrow channels a few levels, and the BN
    (folded into the conv by the converter) multiplies their error back up."""
    model, x = _spread_range_model()
    ref = model.predict(x[128:], verbose=0)

    def mean_err(data: bytes) -> float:
        return float(np.abs(_int8_outputs(data, x[128:]) - ref).mean())

    raw = mean_err(_convert(model, INT8, x[:128]))
    export(model, "tflite", "int8", tmp_path / "m.tflite", calibration=x[:128])
    equalized = mean_err((tmp_path / "m.tflite").read_bytes())
    print(f"int8 mean abs error: {raw:.4f} as is, {equalized:.4f} equalized")
    assert equalized < raw / 3, (equalized, raw)
