"""The seed's model zoo: parameter counts at the seed's settings, and each model (tiny) through
a masked training step, the container round trip and a TFLite fp32 export in parity."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from edgecomp import pruning
from edgecomp.data import load_dataset
from edgecomp.errors import EdgecompError
from edgecomp.models import build_model, load_keras_model, model_names
from edgecomp.pipeline import compress
from edgecomp.zoo import evaluate


@pytest.mark.parametrize("name, shape, classes, options, params", [
    ("resnet", (32, 32, 3), 10, {"depth": 50}, 762_170),           # seed table: ResNet-50 0.762M
    ("unet", (256, 256, 3), 2, {}, 9_553_474),                      # seed table: Unet 9.55M
    ("pointnet", (2048, 3), 40, {}, 3_492_209),                     # seed table: PointNet 3.49M
    ("vgg", (32, 32, 3), 10, {"fc_layers": 1}, 1_341_226),          # seed table: VGG like net 1.34M
])
def test_param_counts_match_the_seed_table(name, shape, classes, options, params):
    assert build_model(name, shape, classes, **options).count_params() == params


def test_zoo_registry_and_option_errors():
    assert {"vgg", "resnet", "densenet", "inception", "unet", "pointnet"} <= set(model_names())
    for name, shape, options, message in [
        ("resnet", (32, 32, 3), {"depth": 21}, "resnet depth 21 is not supported"),
        ("densenet", (32, 32, 3), {"depth": 41}, "densenet depth 41 is not supported"),
        ("unet", (30, 30, 3), {}, "multiples of 32"),
        ("pointnet", (32, 32, 3), {}, "pointnet input shape"),
        ("inception", (32, 32, 3), {"modules": 0}, "inception modules must be >= 1"),
    ]:
        with pytest.raises(EdgecompError, match=message):
            build_model(name, shape, 4, **options)


@contextlib.contextmanager
def eager():
    """Run Keras's train step eagerly: for one step on a tiny model, tracing it costs 5x the step."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


def _tiny(name):
    """(dataset, model options) at test size."""
    if name == "unet":
        return load_dataset("synthetic_segmentation", n_train=8, n_test=4, size=32), {"width": 0.0625}
    if name == "pointnet":
        return (load_dataset("synthetic_pointclouds", n_train=8, n_test=8, num_points=32, num_classes=4),
                {"width": 0.0625})
    ds = load_dataset("synthetic_images", n_train=8, n_test=8, shape=(32, 32, 3), num_classes=4)
    return ds, {"resnet": {"depth": 8}, "densenet": {"depth": 7, "growth_rate": 4},
                "inception": {"width": 0.0625, "modules": 1}}[name]


@pytest.mark.filterwarnings("ignore:Even though the:UserWarning")  # tf.data under run_functions_eagerly
@pytest.mark.parametrize("name", ["resnet", "densenet", "inception", "unet", "pointnet"])
def test_model_trains_compresses_decodes_and_exports(tmp_path, name):
    from exporters import export_and_check

    ds, options = _tiny(name)
    model = build_model(name, ds.input_shape, ds.num_classes, **options)
    kinds = {type(layer).__name__ for layer in model.layers}
    kernels = pruning.prunable_kernels(model, skip_first=False)
    # Every Conv/Dense kernel is found (and nothing else has weights but BatchNorm).
    assert len(kernels) == sum(type(l).__name__ in pruning.PRUNABLE_LAYERS for l in model.layers)
    assert pruning.unsupported_layers(model) == []
    before = {v.path: v.numpy().copy() for v in kernels}

    with eager():
        result = compress(model, ds, rate=0.8, fine_tune_epochs=1, batch_size=8, verbose=0)  # one masked step
    for var in pruning.prunable_kernels(model):
        w, mask = var.numpy(), result.masks[var.path]
        assert not w[~mask].any()                                   # pruned weights stay exactly 0
        per_filter = mask.reshape(-1, mask.shape[-1])
        n = per_filter.shape[0]
        assert (per_filter.sum(axis=0) == n - int(n * 0.8)).all()   # the seed's per-filter rate
    trained = [p for p, w in before.items() if p in result.masks]
    assert any(not np.allclose(before[p][result.masks[p]], model.get_layer(p.split("/")[0]).kernel.numpy()[result.masks[p]])
               for p in trained)                                      # the training step moved kept weights

    decoded = result.decode()
    x = ds.x_test
    ref = np.asarray(model(x, training=False))
    got = np.asarray(decoded(x, training=False))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.05                           # int8 values, as the seed stores them
    score = evaluate(decoded, ds.x_test, ds.y_test, task=ds.task)
    assert 0.0 <= score["accuracy"] <= 1.0

    art = export_and_check(decoded, "tflite", "fp32", tmp_path / f"{name}.tflite", check_x=x, check_y=ds.y_test)
    assert art.parity["passed"] and art.parity["top1_agreement"] == 1.0
    if name == "unet":
        assert "Conv2DTranspose" not in kinds and got.shape == (len(x), 32, 32, 2)
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5)   # per-pixel softmax


def test_pointnet_matmul_is_plain_keras_saves_safely_and_converts_to_onnx(tmp_path):
    from exporters import export_and_check

    ds, options = _tiny("pointnet")
    model = build_model("pointnet", ds.input_shape, ds.num_classes, **options)
    dots = [l for l in model.layers if isinstance(l, keras.layers.Dot)]
    assert len(dots) == 2
    # Fresh transforms are the identity: the first Dot returns its input points.
    probe = keras.Model(model.inputs, dots[0].output)
    np.testing.assert_allclose(np.asarray(probe(ds.x_test[:2])), ds.x_test[:2], atol=1e-6)
    path = tmp_path / "pointnet.keras"
    model.save(path)
    loaded = load_keras_model(path)                                 # safe mode, no custom objects
    np.testing.assert_allclose(np.asarray(loaded(ds.x_test)), np.asarray(model(ds.x_test)), atol=1e-6)
    art = export_and_check(loaded, "onnx", "fp32", tmp_path / "pointnet.onnx", check_x=ds.x_test)
    assert art.parity["passed"] and "MatMul" in art.ops


def test_prunable_kernels_finds_nested_zoo_kernels():
    inner = build_model("densenet", (32, 32, 3), 4, depth=7, growth_rate=4)
    inputs = keras.Input((32, 32, 3))
    outer = keras.Model(inputs, keras.layers.Dense(3, name="extra")(inner(inputs)))
    flat = pruning.prunable_kernels(inner, skip_first=False)
    nested = pruning.prunable_kernels(outer, skip_first=False)
    assert [v.path for v in nested] == [v.path for v in flat] + ["extra/kernel"]
