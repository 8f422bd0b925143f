"""ONNX quirks in tracing: Keras TF-backend calls that tf2onnx can't convert, swapped while it traces.

Within :func:`convertible_calls` (the ONNX exporter traces the model inside it), two Keras calls
compute the same function by ops tf2onnx 1.17 converts:

- **Grouped convolutions** (``Conv2D(groups > 1)``, e.g. ConvNeXt's 7x7 depthwise convs written as
  ``groups=channels``). Keras 3.15's TensorFlow backend runs them inside
  ``tf.function(jit_compile=True)`` (``keras/src/backend/tensorflow/nn.py``, ``conv``: "grouped
  convolutions are broken on CPU without XLA"). Traced for export, that call stays a nested
  ``StatefulPartitionedCall``, which tf2onnx does not inline ("No Op registered for
  StatefulPartitionedCall with domain_version of 17"). Here: the same ``tf.nn.convolution``
  without the wrapper; tracing runs no kernel.
- **Exact GELU** (``gelu(approximate=False)``, ConvNeXt's): TF 2.21's ``tf.nn.gelu`` lowers it to
  ``Erfc``, which tf2onnx has no handler for. Here: ``0.5 x (1 + erf(x / sqrt 2))``, the same
  function, with ONNX's ``Erf``.

The TFLite converter needs neither. The parity check runs the converted file as usual.
Versions that need it: Keras 3.15.1 on TensorFlow 2.21.0, tf2onnx 1.17.0.
"""

from __future__ import annotations

import contextlib
import math


@contextlib.contextmanager
def convertible_calls():
    """Within this block, Keras's TF backend traces grouped convs and exact GELU as tf2onnx converts them."""
    import tensorflow as tf
    from keras.src import backend
    from keras.src.backend.tensorflow import nn as tf_nn

    conv, gelu = tf_nn.conv, tf_nn.gelu

    def grouped_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        fmt = backend.standardize_data_format(data_format)
        channels = inputs.shape[-1] if fmt == "channels_last" else inputs.shape[1]
        if channels == kernel.shape[-2]:              # not grouped: Keras's own path
            return conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                 data_format=tf_nn._convert_data_format(fmt, len(inputs.shape)),  # noqa: SLF001
                                 dilations=dilation_rate)

    def erf_gelu(x, approximate=True):
        if approximate:
            return gelu(x, approximate=True)
        x = tf.convert_to_tensor(x)
        return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))

    tf_nn.conv, tf_nn.gelu = grouped_conv, erf_gelu
    try:
        yield
    finally:
        tf_nn.conv, tf_nn.gelu = conv, gelu
