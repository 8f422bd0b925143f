"""The seed's U-Net for 256x256 person segmentation (``models/unet.py``).

Encoder: five levels of two 3x3 convs (64, 128, 256, 256, 256; ReLU,
orthogonal init, Dropout 0.2 between the two) each followed by 2x2
max-pooling. Decoder: five levels of 2x upsampling, concatenation with the
matching encoder level, and two 3x3 convs (256, 256, 256, 128, 64). A 1x1 conv
to ``num_classes`` channels (L2 5e-3) and a per-pixel softmax give
``(H, W, num_classes)`` class probabilities. ``width`` scales every channel
count (the seed's net is ``width=1``: 9.55 M params; tests use e.g. 0.0625).
The input's height and width must be multiples of 32.

Differences from the seed, none of which changes the parameter count: the
seed's last conv has a ReLU before the softmax (it clamps negative logits;
here the logits are linear), and the seed flattens the output with
``Reshape((C, H*W))`` then ``Permute``, which reinterprets the (H, W, C) memory
rather than transposing it, so its "pixel i" rows do not line up with image
pixels; here the softmax is over the channel axis of each pixel.

Example:
    >>> from edgecomp.models import build_model
    >>> build_model("unet", (256, 256, 3), 2).count_params()
    9553474
"""

from __future__ import annotations

from edgecomp.errors import EdgecompError
from edgecomp.models.base import register_model

ENCODER = (64, 128, 256, 256, 256)
DECODER = (256, 256, 256, 128, 64)


@register_model("unet")
def unet(input_shape, num_classes, width: float = 1.0, dropout: float = 0.2):
    """Build the seed's U-Net; the output is ``(H, W, num_classes)`` softmax scores per pixel."""
    import keras
    from keras import layers

    height, width_px = input_shape[0], input_shape[1]
    if len(input_shape) != 3 or height % 32 or width_px % 32:
        raise EdgecompError(f"unet input shape {tuple(input_shape)} is not supported",
                            fix="use (H, W, C) with H and W multiples of 32, e.g. (256, 256, 3) or (32, 32, 3)")
    if not float(width) > 0:
        raise EdgecompError(f"unet width must be > 0, got {width}", fix="pass e.g. 1.0 or 0.0625")

    def ch(n):
        return max(1, int(round(n * float(width))))

    def double_conv(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(ch(filters), 3, padding="same", activation="relu",
                              kernel_initializer="orthogonal", name=f"{name}_conv{i}")(x)
            if i == 1 and dropout:
                x = layers.Dropout(dropout, name=f"{name}_drop")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    skips = []
    for level, filters in enumerate(ENCODER, start=1):
        x = double_conv(x, filters, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    for level, filters in enumerate(DECODER, start=1):
        x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[-level]])
        x = double_conv(x, filters, f"up{level}")
    x = layers.Conv2D(num_classes, 1, padding="same", kernel_initializer="he_normal",
                      kernel_regularizer=keras.regularizers.L2(5e-3), name="logits")(x)
    outputs = layers.Softmax(axis=-1, name="softmax")(x)
    return keras.Model(inputs, outputs, name="unet")
