"""Constant BatchNorm channels are settled before calibrated exports (exporters.prepare)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from exporters import check_parity, export  # noqa: E402
from exporters.prepare import constant_channels, settle_constant_channels  # noqa: E402
from exporters.tflite import _convert  # noqa: E402

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


def test_int8_export_error_shrinks_when_dead_channels_are_settled(tmp_path):
    """Without settling, the converter folds the ~1/sqrt(eps) gains of the dead channels into
    the head's weights and their int8 scale crushes the live ones."""
    from ai_edge_litert.interpreter import Interpreter

    model, x = _dead_unit_model()
    ref = model.predict(x, verbose=0)

    def max_err(data: bytes) -> float:
        it = Interpreter(model_content=data)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        (si, zi), (so, zo) = i["quantization"], o["quantization"]
        errs = []
        for k in range(64):
            it.set_tensor(i["index"], np.clip(np.round(x[k:k + 1] / si + zi), -128, 127).astype(np.int8))
            it.invoke()
            errs.append(np.abs((it.get_tensor(o["index"]).astype(np.float32) - zo) * so - ref[k]).max())
        return float(max(errs))

    raw = max_err(_convert(model, "int8", x[:128]))
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
