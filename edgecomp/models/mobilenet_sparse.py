"""A MobileNet-style net laid out for XNNPACK's sparse NCHW path on ARM (``"mobilenet_sparse"``).

A 3x3 stride-2 stem on the 3 input channels, then depthwise-separable blocks
(depthwise 3x3 + BatchNorm + ReLU6, pointwise 1x1 + BatchNorm + ReLU6), ending in a
global average pooling and the classifier. Every spatial convolution is padded
explicitly (``ZeroPadding2D`` then ``padding="valid"``), because XNNPACK's sparse
path refuses TensorFlow SAME padding (see :mod:`edgecomp.pruning_policy`). Pruned
with ``policy="xnnpack-sparse"`` and exported as ``tflite:fp32-sparse``, it runs
XNNPACK's SpMM kernels on arm64.
"""

from edgecomp.models.base import register_model


@register_model("mobilenet_sparse")
def mobilenet_sparse(input_shape, num_classes, width: float = 1.0, blocks=((32, 1), (64, 2), (64, 1), (128, 2)),
                     bn_momentum: float = 0.99):
    """Build it; ``blocks`` are ``(pointwise filters, depthwise stride)``, ``width`` scales the channels,
    ``bn_momentum`` is every BatchNorm's (0.9 settles within a short training)."""
    import keras
    from keras import layers

    def ch(n):
        return max(4, int(round(n * width)))

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.ZeroPadding2D(1, name="stem_pad")(inputs)
    x = layers.Conv2D(ch(16), 3, strides=2, use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate(blocks, start=1):
        x = layers.ZeroPadding2D(1, name=f"dw{i}_pad")(x)
        x = layers.DepthwiseConv2D(3, strides=stride, use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = layers.Conv2D(ch(filters), 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"pw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"pw{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name="mobilenet_sparse")
