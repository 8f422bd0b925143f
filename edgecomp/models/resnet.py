"""The seed's pre-activation ResNet for 32x32 images (``models/resnet.py``).

Three stages of basic blocks (BN - ReLU - 3x3 conv, twice, no biases) with
16/32/64 x ``wide_factor`` filters; stages 2 and 3 start with a stride-2 block
whose shortcut is BN - ReLU - 1x1 stride-2 conv. The head is BN - ReLU -
global average pooling - Dense softmax. L2 weight decay 1e-4 on every kernel.

Blocks per stage for ``depth``: 20 -> 3/3/3, 28 -> 4/5/4, 40 -> 6/7/6,
56 -> 9/9/9, 110 -> 18/18/18 (the seed's table); any other ``depth = 6n + 2``
gives n/n/n, so ``depth=50`` is the seed's "ResNet-50" (8/8/8, 0.762 M params).
As in the seed, stage 3 repeats stage 2's block count (a quirk of the seed that
changes the count only for depth 28 and 40).

Example:
    >>> from edgecomp.models import build_model
    >>> build_model("resnet", (32, 32, 3), 10, depth=50).count_params()
    762170
"""

from __future__ import annotations

from edgecomp.errors import EdgecompError
from edgecomp.models.base import register_model

#: The seed's explicit block counts per stage; other depths use (depth - 2) / 6 per stage.
SEED_BLOCKS = {20: (3, 3, 3), 28: (4, 5, 4), 40: (6, 7, 6), 56: (9, 9, 9), 110: (18, 18, 18)}


def stage_blocks(depth: int) -> tuple[int, int, int]:
    """Blocks per stage for ``depth`` (the seed's table, else ``6n + 2``).

    Example:
        >>> stage_blocks(50)
        (8, 8, 8)
    """
    depth = int(depth)
    if depth in SEED_BLOCKS:
        return SEED_BLOCKS[depth]
    if depth < 8 or (depth - 2) % 6:
        raise EdgecompError(f"resnet depth {depth} is not supported",
                            fix="use 20, 28, 40, 56, 110 or any 6n+2 (e.g. 50, 8)")
    n = (depth - 2) // 6
    return n, n, n


@register_model("resnet")
def resnet(input_shape, num_classes, depth: int = 50, wide_factor: int = 1, weight_decay: float = 1e-4,
           bn_momentum: float = 0.99):
    """Build the seed's ResNet; ``depth=8`` with ``wide_factor=1`` is the smallest (one block per stage).

    ``bn_momentum`` is BatchNorm's moving-average momentum (Keras's and the seed's 0.99; 0.9 lets
    the statistics settle within a short training run).
    """
    import keras
    from keras import layers

    if int(wide_factor) < 1:
        raise EdgecompError(f"resnet wide_factor must be >= 1, got {wide_factor}", fix="pass 1, 2, 4, ...")
    blocks = stage_blocks(depth)
    widths = [w * int(wide_factor) for w in (16, 32, 64)]
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None

    def conv(x, filters, size, strides, name):
        return layers.Conv2D(filters, size, strides=strides, padding="same" if size > 1 else "valid",
                             use_bias=False, kernel_initializer="he_normal", kernel_regularizer=reg,
                             name=name)(x)

    def bn_relu(x, name):
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    def block(x, filters, strides, name):
        x = conv(bn_relu(x, f"{name}_a"), filters, 3, strides, f"{name}_conv_a")
        return conv(bn_relu(x, f"{name}_b"), filters, 3, 1, f"{name}_conv_b")

    inputs = keras.Input(shape=input_shape, name="input")
    y = conv(inputs, widths[0], 3, 1, "stem_conv")
    # Stage 3 repeats stage 2's count, as the seed's loop does.
    counts = (blocks[0], blocks[1], blocks[1])
    for stage, (filters, count) in enumerate(zip(widths, counts), start=1):
        for i in range(count):
            name = f"stage{stage}_block{i + 1}"
            strides = 2 if stage > 1 and i == 0 else 1
            x = block(y, filters, strides, name)
            if strides > 1:
                y = conv(bn_relu(y, f"{name}_short"), filters, 1, 2, f"{name}_short_conv")
            y = layers.Add(name=f"{name}_add")([x, y])
    x = bn_relu(y, "head")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, bias_regularizer=reg,
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet")
