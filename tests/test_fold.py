"""BatchNorm folding: the folded model computes the same inference function without the folded BNs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from edgecomp import pruning, store
from edgecomp.errors import EdgecompError
from edgecomp.fold import bn_affine, fold_batchnorm, folded_summary
from edgecomp.models import build_model

RNG = np.random.default_rng(11)


def randomize_bn(model) -> None:
    """Give every BN non-trivial statistics and affine weights (fresh ones are the identity)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(RNG.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(RNG.uniform(0.3, 2.0, n).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(RNG.normal(1.0, 0.3, n).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(RNG.normal(0, 0.3, n).astype("float32"))


def bn_count(model) -> int:
    return sum(isinstance(layer, layers.BatchNormalization) for layer in model.layers)


@pytest.mark.parametrize("name, shape, options, bn_left", [
    ("densenet", (32, 32, 3), {"depth": 7, "growth_rate": 4}, 1),   # conv-BN-ReLU: all but the head's BN
    ("inception", (32, 32, 3), {"width": 0.0625, "modules": 1}, 0),  # every BN follows a conv
    ("resnet", (32, 32, 3), {"depth": 8}, 6),                        # pre-activation: one BN per block folds
    ("pointnet", (32, 3), {"width": 0.0625}, 4),                     # BN before a 1x1 conv / dense folds forward
])
def test_fold_zoo_models_in_inference_mode(name, shape, options, bn_left):
    model = build_model(name, shape, 4, **options)
    randomize_bn(model)
    pruning.prune(model, 0.8)                       # folding keeps the pruned zeros
    zeros_before = sum(int((k.numpy() == 0).sum()) for k in pruning.prunable_kernels(model))
    x = RNG.normal(size=(4,) + shape).astype("float32")
    folded = fold_batchnorm(model)
    assert bn_count(folded) == bn_left < bn_count(model)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)), atol=1e-4)
    zeros_after = sum(int((k.numpy() == 0).sum()) for k in pruning.prunable_kernels(folded))
    assert zeros_after >= zeros_before
    summary = folded_summary(model, folded)
    assert summary["bn_before"] - summary["bn_after"] == bn_count(model) - bn_left
    assert summary["params_after"] < summary["params_before"]
    # The folded model is plain Keras: it round-trips through the container (safe mode).
    restored = store.decode_model(store.encode_model(folded))
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(folded(x)), atol=1e-6)


def test_fold_backward_and_forward_math_and_what_stays():
    inputs = keras.Input((6, 6, 3))
    a = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv_a")(inputs)
    a = layers.BatchNormalization(name="bn_a")(a)                    # back-folds into conv_a (adds a bias)
    r = layers.ReLU(name="relu")(a)
    b = layers.BatchNormalization(name="bn_b")(r)                    # forward-folds through the Dropout into conv_b
    b = layers.Dropout(0.3, name="drop")(b)
    b = layers.Conv2D(5, 1, name="conv_b")(b)
    c = layers.BatchNormalization(name="bn_c")(r)                    # feeds a 3x3 conv (padding): stays
    c = layers.Conv2D(5, 3, padding="same", name="conv_c")(c)
    d = layers.Conv2D(5, 3, padding="same", activation="relu", name="conv_d")(inputs)
    d = layers.BatchNormalization(name="bn_d")(d)                    # after a ReLU, then an output: stays
    out = layers.Concatenate(name="cat")([b, c, d])
    model = keras.Model(inputs, out)
    randomize_bn(model)
    folded = fold_batchnorm(model)
    names = {layer.name for layer in folded.layers}
    assert "bn_a" not in names and "bn_b" not in names and {"bn_c", "bn_d", "drop"} <= names
    assert folded.get_layer("conv_a").use_bias
    x = RNG.normal(size=(3, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)), atol=1e-4)
    a_, c_ = bn_affine(model.get_layer("bn_a"))
    np.testing.assert_allclose(folded.get_layer("conv_a").bias.numpy(), c_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded.get_layer("conv_a").kernel.numpy(),
                               model.get_layer("conv_a").kernel.numpy() * a_, rtol=1e-5, atol=1e-6)
    assert model.get_layer("bn_a") is not None                       # the original is unchanged


def test_fold_sequential_nothing_to_fold_and_subclassed():
    seq = keras.Sequential([keras.Input((5,)), layers.Dense(4, name="d1"), layers.BatchNormalization(name="bn"),
                            layers.Dense(2, name="d2")])
    randomize_bn(seq)
    x = RNG.normal(size=(3, 5)).astype("float32")
    folded = fold_batchnorm(seq)
    assert bn_count(folded) == 0
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(seq(x, training=False)), atol=1e-5)
    plain = build_model("vgg", (8, 8, 1), 3, width=0.125)
    copy = fold_batchnorm(plain)
    assert copy is not plain and [l.name for l in copy.layers] == [l.name for l in plain.layers]
    x = RNG.normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(np.asarray(copy(x)), np.asarray(plain(x)))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(EdgecompError, match="subclassed model"):
        fold_batchnorm(Sub())
