"""The seed's VGG-like net: three blocks of two 3x3 convs (32, 64, 128) with max-pooling,
then Dense 512 - Dropout - Dense 512 - Dropout - Dense softmax.

This is the seed's ``models/vggnet.py`` (1.6 M params at 32x32x3 or 28x28x1, 10 classes).
With ``fc_layers=1`` it is the seed's ``models/cnn.py`` layout (one Dense 512), the 1.34 M-param
"VGG like net" of the seed's CIFAR-10 table.
"""

from edgecomp.models.base import register_model


@register_model("vgg")
def vgg(input_shape, num_classes, width: float = 1.0, dropout: float = 0.5, fc_layers: int = 2):
    """Build the VGG-like net; ``width`` scales every layer's channel count (tests use small ones)."""
    import keras
    from keras import layers

    def ch(n):
        return max(1, int(round(n * width)))

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        for i in (1, 2):
            x = layers.Conv2D(ch(filters), 3, padding="same", activation="relu",
                              name=f"block{block}_conv{i}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in range(1, fc_layers + 1):
        x = layers.Dense(ch(512), activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"drop{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg")
