"""The seed's Inception-v3-style net for 32x32 images (``models/inception.py``).

Two 3x3 stem convs (32), then three stages of two Inception modules each, with
2x2 max-pooling between stages (32x32 -> 16x16 -> 8x8 at 32x32 input):

- stage 1 (x``width`` 32): 1x1 | 1x1 -> 5x5 (16) | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1
- stage 2 (64): 1x1 | 1x1 -> 5x1 -> 1x5 | 1x1 -> (7x1 -> 1x7) x 2 | avg-pool -> 1x1
- stage 3 (128): 1x1 | 1x1 -> 5x1 -> 1x5 | 1x1 -> 3x3 -> 3x1 -> 1x3 | avg-pool -> 1x1

Every conv is "conv - BN - ReLU" (no bias, He-normal, L2 1e-4); the pool branch
is a 2x2 stride-1 "same" average pool. The head is global average pooling -
Dense softmax. ``width`` scales every channel count and ``modules`` sets the
modules per stage (the seed's net is ``width=1, modules=2``; tests use small ones).

Example:
    >>> from edgecomp.models import build_model
    >>> build_model("inception", (32, 32, 3), 10).count_params()
    1730282
"""

from __future__ import annotations

from edgecomp.errors import EdgecompError
from edgecomp.models.base import register_model

# Per stage: branches of (filters, kernel) chains; "pool" marks the avg-pool branch.
_STAGES = (
    (32, (((1, 1),), ((1, 1), (5, 5)), ((1, 1), (3, 3), (3, 3)), "pool")),
    (64, (((1, 1),), ((1, 1), (5, 1), (1, 5)), ((1, 1), (7, 1), (1, 7), (7, 1), (1, 7)), "pool")),
    (128, (((1, 1),), ((1, 1), (5, 1), (1, 5)), ((1, 1), (3, 3), (3, 1), (1, 3)), "pool")),
)


@register_model("inception")
def inception(input_shape, num_classes, width: float = 1.0, modules: int = 2, weight_decay: float = 1e-4,
              bn_momentum: float = 0.99):
    """Build the seed's Inception net; ``width`` scales the channels, ``modules`` per stage (the seed: 2).

    ``bn_momentum``: BatchNorm's moving-average momentum (0.99 as in the seed; 0.9 for short runs).
    """
    import keras
    from keras import layers

    if not float(width) > 0:
        raise EdgecompError(f"inception width must be > 0, got {width}", fix="pass e.g. 1.0 or 0.25")
    if int(modules) < 1:
        raise EdgecompError(f"inception modules must be >= 1, got {modules}", fix="pass 2 (the seed's) or 1")
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None

    def ch(n):
        return max(1, int(round(n * float(width))))

    def conv_bn_relu(x, filters, size, name):
        x = layers.Conv2D(ch(filters), size, padding="same", use_bias=False, kernel_initializer="he_normal",
                          kernel_regularizer=reg, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv_bn_relu(inputs, 32, 3, "stem1")
    x = conv_bn_relu(x, 32, 3, "stem2")
    for s, (filters, branches) in enumerate(_STAGES, start=1):
        for m in range(1, int(modules) + 1):
            prefix = f"stage{s}_module{m}"
            outs = []
            for b, chain in enumerate(branches, start=1):
                if chain == "pool":
                    y = layers.AveragePooling2D(2, strides=1, padding="same", name=f"{prefix}_pool")(x)
                    y = conv_bn_relu(y, filters, 1, f"{prefix}_b{b}_1")
                else:
                    y = x
                    for i, size in enumerate(chain, start=1):
                        # Stage 1's 5x5 branch narrows to half the stage's width, as in the seed.
                        n = filters // 2 if s == 1 and size == (5, 5) else filters
                        y = conv_bn_relu(y, n, size, f"{prefix}_b{b}_{i}")
                outs.append(y)
            x = layers.Concatenate(name=f"{prefix}_concat")(outs)
        if s < 3:
            x = layers.MaxPooling2D(2, strides=2, name=f"stage{s}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, bias_regularizer=reg,
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name="inception")
