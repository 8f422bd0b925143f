"""The seed's PointNet classifier for ModelNet40 (``models/pointnet.py``).

Input ``(points, 3)`` (the seed: 2048 points). Three parts, every conv a 1x1
``Conv1D`` (a shared per-point MLP) with ReLU then BatchNorm:

- input transform net: convs 64, 128, 1024 - max over points - Dense 512,
  256 (ReLU, BN) - Dense 9 initialised to the identity (zero kernel, identity
  bias) - a 3x3 matrix that each point is multiplied by;
- convs 64, 64, then the feature transform net (convs 64, 128, 1024 - max -
  Dense 512, 256 - Dense 64x64 initialised to the identity), applied the same
  way to the 64 features of each point;
- convs 64, 128, 1024 - max over points (the global feature) - Dense 512, 256
  (ReLU, BN, Dropout 0.5) - Dense softmax.

The seed multiplies by the learned matrices with a custom ``MatMul`` layer.
Here it is Keras's own ``Dot(axes=(2, 1))`` layer (a batched matmul), so a
saved model loads in safe mode with no custom objects, and TFLite and tf2onnx
convert it to BATCH_MATMUL / MatMul. ``width`` scales every channel count and
the hidden sizes (the transform matrices stay 3x3; the feature one is
``ch(64)`` square); the seed's net is ``width=1``: 3.49 M params at 40 classes.

Example:
    >>> from edgecomp.models import build_model
    >>> build_model("pointnet", (2048, 3), 40).count_params()
    3492209
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import EdgecompError
from edgecomp.models.base import register_model


@register_model("pointnet")
def pointnet(input_shape, num_classes, width: float = 1.0, dropout: float = 0.5, bn_momentum: float = 0.99):
    """Build the seed's PointNet; input ``(points, channels)``, output class probabilities.

    ``bn_momentum``: BatchNorm's moving-average momentum (0.99 as in the seed; 0.9 for short runs).
    """
    import keras
    from keras import layers

    if len(input_shape) != 2 or input_shape[0] < 1 or input_shape[1] < 1:
        raise EdgecompError(f"pointnet input shape {tuple(input_shape)} is not supported",
                            fix="use (points, 3), e.g. (2048, 3)")
    if not float(width) > 0:
        raise EdgecompError(f"pointnet width must be > 0, got {width}", fix="pass e.g. 1.0 or 0.125")

    def ch(n):
        return max(1, int(round(n * float(width))))

    def conv_bn(x, filters, name):
        x = layers.Conv1D(ch(filters), 1, activation="relu", name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)

    def dense_bn(x, units, name, drop=0.0):
        x = layers.Dense(ch(units), activation="relu", name=f"{name}_dense")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
        return layers.Dropout(drop, name=f"{name}_drop")(x) if drop else x

    def transform(x, k, name):
        """A k x k matrix per sample from ``x``, initialised to the identity."""
        for i, filters in enumerate((64, 128, 1024), start=1):
            x = conv_bn(x, filters, f"{name}_{i}")
        x = layers.GlobalMaxPooling1D(name=f"{name}_max")(x)
        x = dense_bn(x, 512, f"{name}_fc1")
        x = dense_bn(x, 256, f"{name}_fc2")
        x = layers.Dense(k * k, kernel_initializer="zeros",
                         bias_initializer=keras.initializers.Constant(np.eye(k, dtype="float32").ravel().tolist()),
                         name=f"{name}_matrix")(x)
        return layers.Reshape((k, k), name=f"{name}_reshape")(x)

    channels = int(input_shape[1])
    inputs = keras.Input(shape=input_shape, name="input")
    g = layers.Dot(axes=(2, 1), name="input_transform_apply")([inputs, transform(inputs, channels, "input_tnet")])
    g = conv_bn(g, 64, "mlp1_1")
    g = conv_bn(g, 64, "mlp1_2")
    k = ch(64)
    g = layers.Dot(axes=(2, 1), name="feature_transform_apply")([g, transform(g, k, "feature_tnet")])
    for i, filters in enumerate((64, 128, 1024), start=1):
        g = conv_bn(g, filters, f"mlp2_{i}")
    x = layers.GlobalMaxPooling1D(name="global_max")(g)
    x = dense_bn(x, 512, "cls_fc1", dropout)
    x = dense_bn(x, 256, "cls_fc2", dropout)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="pointnet")
