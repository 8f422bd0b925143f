"""The seed's DenseNet for 32x32 images (``models/densenet.py``).

A 3x3 stem conv with ``2 * growth_rate`` filters, then three dense blocks of
``(depth - 4) / 3`` layers each, with a transition (1x1 conv to half the
channels, 2x2 average pooling) after the first two. Every conv is "conv - BN -
ReLU" (no bias, He-normal, L2 1e-4, BN epsilon 1.1e-5); a dense layer adds
``growth_rate`` channels by concatenation. The head is BN - ReLU - global
average pooling - Dense softmax.

The seed wraps its convs and the classifier in a DropConnect layer (weights
dropped at random while training; no extra weights). Here they are plain Keras
layers, so the parameter count is the same and the model exports as it is.

Example:
    >>> from edgecomp.models import build_model
    >>> build_model("densenet", (32, 32, 3), 10, depth=40, growth_rate=12).count_params()
    591310
"""

from __future__ import annotations

from edgecomp.errors import EdgecompError
from edgecomp.models.base import register_model


@register_model("densenet")
def densenet(input_shape, num_classes, depth: int = 40, growth_rate: int = 12, reduce_rate: float = 0.5,
             weight_decay: float = 1e-4, bn_momentum: float = 0.99):
    """Build the seed's DenseNet; ``depth=7, growth_rate=4`` is a tiny one (one layer per block).

    ``bn_momentum``: BatchNorm's moving-average momentum (0.99 as in the seed; 0.9 for short runs).
    """
    import keras
    from keras import layers

    depth, growth_rate = int(depth), int(growth_rate)
    if depth < 7 or (depth - 4) % 3:
        raise EdgecompError(f"densenet depth {depth} is not supported",
                            fix="use depth = 3n + 4 with n >= 1 (e.g. 40, 100, 7)")
    if growth_rate < 1 or not 0 < float(reduce_rate) <= 1:
        raise EdgecompError(f"densenet growth_rate={growth_rate}, reduce_rate={reduce_rate} are invalid",
                            fix="use growth_rate >= 1 and 0 < reduce_rate <= 1")
    per_block = (depth - 4) // 3
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv_bn_relu(x, filters, size, name):
        x = layers.Conv2D(filters, size, padding="same", use_bias=False, kernel_initializer="he_normal",
                          kernel_regularizer=reg, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=1.1e-5, momentum=bn_momentum, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    inputs = keras.Input(shape=input_shape, name="input")
    channels = 2 * growth_rate
    x = conv_bn_relu(inputs, channels, 3, "stem")
    for block in range(1, 4):
        features = [x]
        for i in range(1, per_block + 1):
            features.append(conv_bn_relu(x, growth_rate, 3, f"block{block}_layer{i}"))
            x = layers.Concatenate(name=f"block{block}_concat{i}")(features)
            channels += growth_rate
        if block < 3:
            channels = int(channels * reduce_rate)
            x = conv_bn_relu(x, channels, 1, f"transition{block}")
            x = layers.AveragePooling2D(2, strides=2, name=f"transition{block}_pool")(x)
    x = layers.BatchNormalization(epsilon=1.1e-5, momentum=bn_momentum, name="head_bn")(x)
    x = layers.Activation("relu", name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, bias_regularizer=reg,
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name="densenet")
