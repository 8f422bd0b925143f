"""The two Keras layers quantization-aware training inserts (see :mod:`edgecomp.qat`).

- :class:`FakeQuant`: per-tensor asymmetric int8 fake quantization of an activation, with
  moving-average min/max (or a fixed range, for softmax/sigmoid/tanh outputs, whose int8
  scale the TFLite kernels fix).
- :class:`QuantWrapper`: a Conv/Dense layer whose kernel is fake-quantized per output channel
  (symmetric, narrow range: int8 in [-127, 127], the TFLite int8 spec) after folding the
  BatchNorm beside it, from the BN's frozen statistics, on the fly. The wrapped layer's own
  variables are what trains, so masks and codebooks held on them stay held, and the unfolded
  weights are what a container stores.

Both call ``keras.quantizers.fake_quant_with_min_max_vars``, which on the TensorFlow backend is
TensorFlow's ``FakeQuantWithMinMaxVars(PerChannel)`` op: the op the TFLite converter reads as a
trained range (and tf2onnx turns into QuantizeLinear/DequantizeLinear). Gradients are
straight-through inside the range.

Example:
    >>> fq = FakeQuant(name="in_fq")
    >>> y = fq(np.linspace(-1, 1, 9, dtype="float32")[None], training=True)   # range set by the batch
    >>> fq.range()
    (-1.0, 1.0)
"""

from __future__ import annotations

import contextlib

import numpy as np

from edgecomp.distribute import sync_range
from edgecomp.errors import EdgecompError
from edgecomp.qat import WEIGHTED


def _keras():
    import keras
    return keras


def _bn_affine(bn):
    """The frozen BatchNorm as ``(a, c)`` tensors with ``y = a * x + c``."""
    ops = _keras().ops
    a = ops.rsqrt(bn.moving_variance + bn.epsilon)
    if bn.gamma is not None:
        a = a * bn.gamma
    c = -a * bn.moving_mean
    if bn.beta is not None:
        c = c + bn.beta
    return a, c


def weight_range(kernel, bits: int, channel_axis):
    """The symmetric range ``R`` (per channel, or one) the kernel is fake-quantized on: the int8
    narrow grid has step ``R / 127``, which is ``max|w| / (2**(bits-1) - 1)``, so a ``bits``-bit
    grid lies inside int8 and the largest weight of each channel sits exactly on it."""
    ops = _keras().ops
    shape = tuple(kernel.shape)
    if channel_axis == "tensor":
        reduce = None
    else:
        axis = (len(shape) - 1) if channel_axis is None else channel_axis % len(shape)
        reduce = tuple(i for i in range(len(shape)) if i != axis)
    m = ops.max(ops.abs(kernel), axis=reduce)
    return ops.stop_gradient(ops.maximum(m, 1e-8) * (127.0 / (2 ** (bits - 1) - 1)))


def fake_quant_weights(kernel, bits: int, channel_axis):
    """``kernel`` fake-quantized symmetrically (narrow range) per channel of ``channel_axis``.

    ``channel_axis=None`` is a depthwise kernel ``(*k, in, mult)``: its channels are ``in * mult``;
    ``"tensor"``: one range for the whole kernel. ``bits`` < 8 trains on a coarser grid inside
    int8 (:func:`weight_range`).
    """
    keras = _keras()
    ops = keras.ops
    shape = tuple(kernel.shape)
    if channel_axis is None:   # depthwise: one channel per (input, multiplier) pair, as LiteRT stores it
        flat = ops.reshape(kernel, shape[:-2] + (1, shape[-2] * shape[-1]))
        return ops.reshape(fake_quant_weights(flat, bits, -1), shape)
    r = weight_range(kernel, bits, channel_axis)
    axis = None if channel_axis == "tensor" else channel_axis % len(shape)
    return keras.quantizers.fake_quant_with_min_max_vars(kernel, -r, r, num_bits=8, narrow_range=True, axis=axis)


def _layer_base():
    return _keras().layers.Layer


class FakeQuant(_layer_base()):
    """Per-tensor asymmetric fake quantization with a moving-average (or fixed) range.

    Args:
        bits: activation bits (8 for int8 kernels).
        decay: moving-average decay of the range while training; the first batch sets it.
        fixed: ``(min, max)`` for an output range the int8 kernel fixes (softmax, ...).

    The range always holds 0 (the zero point must be exact). In inference the stored
    range is used as it is.
    """

    def __init__(self, bits: int = 8, decay: float = 0.99, fixed=None, **kwargs):
        super().__init__(**kwargs)
        self.bits, self.decay = int(bits), float(decay)
        self.fixed = None if fixed is None else (float(fixed[0]), float(fixed[1]))
        self.supports_masking = True

    def build(self, input_shape):
        lo, hi = self.fixed or (0.0, 0.0)
        self.min = self.add_weight(shape=(), initializer=_keras().initializers.Constant(lo), trainable=False,
                                   name="min")
        self.max = self.add_weight(shape=(), initializer=_keras().initializers.Constant(hi), trainable=False,
                                   name="max")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=False):
        keras = _keras()
        ops = keras.ops
        if training and self.fixed is None:
            lo = ops.minimum(ops.min(ops.stop_gradient(x)), 0.0)
            hi = ops.maximum(ops.max(ops.stop_gradient(x)), 0.0)
            lo, hi = sync_range(lo, hi)   # over the global batch when training on several replicas
            first = ops.equal(self.seen, 0.0)
            self.min.assign(ops.where(first, lo, self.decay * self.min + (1 - self.decay) * lo))
            self.max.assign(ops.where(first, hi, self.decay * self.max + (1 - self.decay) * hi))
            self.seen.assign(self.seen + 1.0)
        hi = ops.maximum(self.max, self.min + 1e-6)   # an all-zero tensor still gets a valid range
        return keras.quantizers.fake_quant_with_min_max_vars(x, self.min, hi, num_bits=self.bits)

    def range(self) -> tuple[float, float]:
        """The stored ``(min, max)``."""
        return float(self.min.numpy()), float(self.max.numpy())

    def set_range(self, lo: float, hi: float) -> None:
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= 0 <= hi):
            raise EdgecompError(f"{self.name}: activation range ({lo}, {hi}) must be finite and hold 0",
                                fix="pass ranges a QAT run stored")
        self.min.assign(lo)
        self.max.assign(hi)
        self.seen.assign(1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "decay": self.decay, "fixed": self.fixed}


class TiedFakeQuant(_layer_base()):
    """Fake quantization on another :class:`FakeQuant`'s range, never updating it.

    For ops LiteRT's int8 kernels run on their input's scale but whose output leaves the
    input's grid (average pooling): the kernel rounds back onto it, and so does this.
    """

    def __init__(self, source: FakeQuant, **kwargs):
        super().__init__(**kwargs)
        self.__dict__["_source"] = source   # not tracked: its variables belong to ``source``

    @property
    def source(self) -> FakeQuant:
        return self.__dict__["_source"]

    def call(self, x):
        src = self.source
        hi = _keras().ops.maximum(src.max, src.min + 1e-6)
        return _keras().quantizers.fake_quant_with_min_max_vars(x, src.min, hi, num_bits=src.bits)

    def compute_output_shape(self, input_shape):
        return input_shape


class QuantWrapper(_layer_base()):
    """A Conv/Dense ``layer`` computed with its BatchNorm(s) folded in and its kernel fake-quantized.

    Args:
        layer: the wrapped layer (its variables train).
        bn_after: a BatchNorm right after it (folded into its output channels), or None.
        bn_before: a BatchNorm right before it (folded into its input channels; Dense and 1x1
            convs only), or None.
        activation: the activation fused into the op (``linear``, ``relu``, ``relu6``).
        bits: weight bits.
        input_quantizer: the :class:`FakeQuant` whose grid the input is on, if known: the bias
            is then rounded to the int32 grid the int8 kernel adds it on.
    """

    def __init__(self, layer, bn_after=None, bn_before=None, activation: str = "linear", bits: int = 8,
                 input_quantizer=None, **kwargs):
        kind = type(layer).__name__
        if kind not in WEIGHTED:
            raise EdgecompError(f"QAT cannot wrap a {kind} layer ({layer.name})",
                                fix=f"wrap one of: {', '.join(WEIGHTED)}")
        super().__init__(name=kwargs.pop("name", f"{layer.name}_qat"), **kwargs)
        self.layer, self.bn_after, self.bn_before = layer, bn_after, bn_before
        self.kind, self.activation_name, self.bits = kind, activation, int(bits)
        self.activation = _keras().activations.get(activation)
        self.__dict__["_input_quantizer"] = input_quantizer   # not tracked: its variables are its own

    def folded(self):
        """The kernel and bias the op runs with (BN folded in, kernel not yet quantized)."""
        ops = _keras().ops
        layer = self.layer
        kernel = layer.kernel
        depthwise = self.kind.startswith("Depthwise")
        channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
        bias = layer.bias if layer.use_bias else ops.zeros((channels,))
        if self.bn_before is not None:
            a, c = _bn_affine(self.bn_before)
            rows = ops.reshape(kernel, (-1, kernel.shape[-2], kernel.shape[-1]))   # 1x1: one spatial position
            bias = bias + ops.einsum("kio,i->o", rows, c)
            kernel = kernel * ops.reshape(a, (1,) * (len(kernel.shape) - 2) + (-1, 1))
        if self.bn_after is not None:
            a, c = _bn_affine(self.bn_after)
            kernel = kernel * (ops.reshape(a, tuple(kernel.shape[-2:])) if depthwise else a)
            bias = a * bias + c
        return kernel, bias

    def quantized(self):
        """The kernel as the int8 op sees it (folded, on its grid; a Conv1D's as the 2-D conv's
        ``(1, k, in, out)`` kernel) and the folded bias on the int32 grid of ``input scale x
        weight scale`` the int8 kernels add it on."""
        ops = _keras().ops
        kernel, bias = self.folded()
        axis = WEIGHTED[self.kind]
        if self.kind == "Conv1D":
            kernel, axis = ops.expand_dims(kernel, 0), -1
        src = self.__dict__.get("_input_quantizer")
        if src is not None:
            flat = kernel if axis is not None else ops.reshape(kernel, tuple(kernel.shape[:-2]) + (1, -1))
            s_in = ops.maximum(src.max - src.min, 1e-6) / (2 ** src.bits - 1)
            step = ops.stop_gradient(s_in * weight_range(flat, self.bits, -1 if axis is None else axis) / 127.0)
            bias = bias + ops.stop_gradient(ops.round(bias / step) * step - bias)
        return fake_quant_weights(kernel, self.bits, axis), bias

    def call(self, x):
        ops = _keras().ops
        layer = self.layer
        baked = self.__dict__.get("_baked")
        kq, bias = (ops.convert_to_tensor(baked[0]), ops.convert_to_tensor(baked[1])) if baked else self.quantized()
        if self.kind == "Conv1D":
            # As a 2-D conv on a (1, k, in, out) kernel quantized on its last axis: TF's conv1d
            # expands a quantized 3-D kernel itself, and TF 2.21's converter then loses the
            # per-channel axis when in == out ("tfl.reshape op requires ... cast compatible").
            y = ops.squeeze(ops.conv(ops.expand_dims(x, 1), kq, strides=(1,) + tuple(layer.strides),
                                     padding=layer.padding, dilation_rate=(1,) + tuple(layer.dilation_rate),
                                     data_format=layer.data_format), axis=1)
        elif self.kind == "Dense":
            y = ops.matmul(x, kq)
        elif self.kind.startswith("Depthwise"):
            y = ops.depthwise_conv(x, kq, strides=layer.strides, padding=layer.padding,
                                   data_format=layer.data_format, dilation_rate=layer.dilation_rate)
        else:
            y = layer.convolution_op(x, kq)
        return self.activation(y + bias)

    def bake(self, on: bool = True) -> None:
        """Run on constants (the current quantized kernel and folded bias) instead of the
        fake-quant op: for converters that cannot read per-channel fake quantization (tf2onnx)."""
        self.__dict__["_baked"] = tuple(np.asarray(t, np.float32) for t in self.quantized()) if on else None

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


@contextlib.contextmanager
def baked(qmodel):
    """Inside the block the QAT model's weighted layers run on constant quantized kernels
    (no weight fake-quant op in a traced graph); activations keep their fake quantization."""
    wrappers = [layer for layer in qmodel.layers if isinstance(layer, QuantWrapper)]
    for w in wrappers:
        w.bake(True)
    try:
        yield qmodel
    finally:
        for w in wrappers:
            w.bake(False)


def weight_bits(qmodel) -> int:
    """The weight grid's bits of a QAT model."""
    bits = {layer.bits for layer in qmodel.layers if isinstance(layer, QuantWrapper)}
    return bits.pop() if len(bits) == 1 else 8
