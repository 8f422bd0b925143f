"""Models defined only here: MobileNet-style, 1-D conv, nested, and the layer kinds edgecomp prunes."""

import numpy as np
import pytest

from edgecomp import store, train
from edgecomp.errors import EdgecompError
from edgecomp.pipeline import compress
from edgecomp.pruning import (compute_masks, filter_mask, prunable_weights, register_prunable,
                              unsupported_layers)


def mobilenet_like(shape=(16, 16, 3), classes=4):
    import keras
    from keras import layers
    inp = keras.Input(shape)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    for filters in (16, 24):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
    x = layers.SeparableConv2D(16, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inp, out, name="mobilenet_like")


def conv1d_model(length=64, classes=3):
    import keras
    from keras import layers
    inp = keras.Input((length, 2))
    x = layers.Conv1D(16, 5, activation="relu")(inp)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(32, 3, activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    out = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inp, out, name="audio_like")


def _data_2d(n=192):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.3, (n, 16, 16, 3)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, (c // 2) * 8:(c // 2) * 8 + 8, (c % 2) * 8:(c % 2) * 8 + 8, :] += 1.0
    return x, y


def _data_1d(n=192):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, 64)
    x = np.stack([np.stack([np.sin(2 * np.pi * (c + 1) * 3 * t), np.cos(2 * np.pi * (c + 1) * 3 * t)], -1)
                  for c in y]).astype(np.float32)
    return x + rng.normal(0, 0.2, x.shape).astype(np.float32), y


def test_layer_kinds_are_found_with_their_filter_axes():
    import keras
    from keras import layers
    inp = keras.Input((8, 8, 4))
    x = layers.Conv2DTranspose(6, 3, padding="same")(inp)
    x = layers.SeparableConv2D(5, 3, padding="same")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.Flatten()(x)
    model = keras.Model(inp, layers.Dense(3)(x))
    found = {v.path: axes for v, axes in prunable_weights(model, skip_first=False)}
    kinds = sorted(p.split("/")[-1] for p in found)
    assert kinds == ["depthwise_kernel", "kernel", "kernel", "kernel", "pointwise_kernel"]
    masks = compute_masks(model, 0.5, skip_first=False)
    for path, mask in masks.items():
        axes = tuple(a % mask.ndim for a in found[path])
        rest = tuple(a for a in range(mask.ndim) if a not in axes)
        per_filter = np.transpose(mask, rest + axes).reshape(-1, int(np.prod([mask.shape[a] for a in axes])))
        assert np.all(per_filter.shape[0] - per_filter.sum(0) == int(per_filter.shape[0] * 0.5)), path


def test_filter_mask_transpose_axis():
    w = np.random.default_rng(0).normal(size=(3, 3, 6, 4))   # Conv2DTranspose: (h, w, out, in)
    m = filter_mask(w, 0.75, axes=(-2,))
    assert np.all((~m).sum(axis=(0, 1, 3)) == int(3 * 3 * 4 * 0.75))


def test_nested_model_and_embedding():
    import keras
    from keras import layers
    inner = keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(4)], name="inner")
    inp = keras.Input((5,), dtype="int32")
    x = layers.Embedding(50, 6)(inp)
    x = layers.Flatten()(x)
    model = keras.Model(inp, inner(x))
    paths = [v.path for v, _ in prunable_weights(model, skip_first=False)]
    assert len(paths) == 3 and any("embeddings" in p for p in paths)


def test_custom_layer_left_dense_then_registered():
    import keras

    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1], 4), initializer="ones")

        def call(self, x):
            return keras.ops.matmul(x, self.kernel)

    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(2)(Scale(name="scale")(inp)))
    assert unsupported_layers(model) == ["scale (Scale)"]
    assert len(prunable_weights(model, skip_first=False)) == 1
    register_prunable(Scale, {"kernel": (-1,)})
    try:
        assert unsupported_layers(model) == []
        assert len(prunable_weights(model, skip_first=False)) == 2
    finally:
        from edgecomp.pruning import PRUNABLE
        PRUNABLE.pop(Scale)


@pytest.mark.parametrize("kind", ["mobilenet", "conv1d"])
def test_compress_export_in_parity_and_bench(kind, tmp_path):
    import exporters
    import runtime_bench

    model, (x, y) = (mobilenet_like(), _data_2d()) if kind == "mobilenet" else (conv1d_model(), _data_1d())
    train.fit(model, x, y, epochs=4, batch_size=32, verbose=0, learning_rate=3e-3)
    result = compress(model, (x, y), rate=0.5, method="deep", fine_tune_epochs=1, centroid_epochs=1,
                      batch_size=32, verbose=0, bits="conv=6,dense=5")
    decoded = result.decode()
    assert {r["name"] for r in result.report if r["pruned"]}  # something was pruned
    arts = [exporters.export_and_check(decoded, fmt, "fp32", tmp_path / f"m.{fmt}", calibration=x[:32],
                                       check_x=x[:64], check_y=y[:64]) for fmt in ("tflite", "onnx")]
    for a in arts:
        assert a.parity["top1_agreement"] == 1.0 and a.parity["max_abs_diff"] <= 1e-4
    recs = runtime_bench.bench_files([a.path for a in arts], x[:64], y[:64], runs=5, warmup=1, min_time_s=0.0,
                                     isolate=False, progress=False)
    assert all(r["error"] is None and r["median_ms"] > 0 for r in recs)
