"""Quantization-aware training (QAT) for Keras 3 conv nets: fine-tune with int8 simulated where
the int8 TFLite/ONNX kernels quantize, so the int8 file computes what the trained model does.

:func:`quantize_model` rebuilds a functional model with fake quantization placed as LiteRT's
int8 kernels quantize:

- **weights** of Conv1D/2D/3D and DepthwiseConv: per output channel, symmetric, narrow range
  (int8 in [-127, 127]); of Dense: per tensor (TF 2.21's converter takes no per-channel range
  there); after folding the BatchNorm beside them (the plan of :func:`edgecomp.fold.fold_plan`)
  from its frozen statistics (:class:`~edgecomp.qat_layers.QuantWrapper`); biases rounded to
  the int32 grid (input scale x weight scale) the kernels add them on;
- **activations**, per tensor, asymmetric, with moving-average min/max
  (:class:`~edgecomp.qat_layers.FakeQuant`): at each model input; after each conv/dense op
  *after* the activation the kernel fuses (ReLU/ReLU6: an op whose only reader is such an
  activation gets its range after it); after Add/Subtract/Multiply/Average/Maximum/Minimum,
  Concatenate, Dot, global average pooling and any BatchNorm that does not fold. Softmax,
  sigmoid and tanh outputs get the fixed range LiteRT's int8 kernels use (scale 1/256, 1/128),
  and their inputs a range of their own.
- Ops that keep their input's scale in the int8 kernels (max pooling, reshape, flatten,
  dropout, upsampling, padding, cropping, permute) get none: their output is on their input's
  grid already. Average pooling and bilinear upsampling run on their input's scale too, but
  leave its grid: their output is rounded back onto it (:class:`~edgecomp.qat_layers.TiedFakeQuant`).

Any other layer kind is left float and named in ``report["float"]``, with a range after it: the
converter then keeps that op in float between a dequantize and a quantize on that range (or fails
for int8-only files).

:func:`fine_tune` trains the result (masks held at exactly 0, shared weights kept on their
codebook: the centroids train, as in Deep Compression), :func:`activation_ranges` reads the
trained ranges and :func:`quantize_model` takes them back (``ranges=``), so a container can
carry them: the wrapped layers are the float model's own, and the float (unfolded) weights
are what is stored.

Example:
    >>> qmodel, report = quantize_model(model)
    >>> fine_tune(qmodel, x_train, y_train, QAT(epochs=1))
    >>> ranges = activation_ranges(qmodel)            # {"conv1_fq": (0.0, 5.2), ...}
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgecomp.distill import Distill
from edgecomp.errors import EdgecompError
from edgecomp.pruning_config import Config, whole_number

#: Layer kinds :class:`QuantWrapper` wraps, with the kernel axis that holds output channels
#: (None: a depthwise kernel; "tensor": one scale for the whole kernel). Dense is per tensor, as
#: in tfmot: TF 2.21's converter cannot carry a per-channel range through the transpose it puts
#: on FULLY_CONNECTED's weights ("tfl.transpose op has mismatched quantized axes").
WEIGHTED = {"Dense": "tensor", "Conv1D": -1, "Conv2D": -1, "Conv3D": -1, "DepthwiseConv1D": None, "DepthwiseConv2D": None}
#: Activations the int8 kernels fuse into the op before them (its output range clamps them).
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
#: Activations whose int8 output range LiteRT fixes: scale 1/256 (softmax, sigmoid) or 1/128 (tanh).
FIXED_RANGES = {"softmax": (0.0, 255.0 / 256.0), "sigmoid": (0.0, 255.0 / 256.0), "tanh": (-1.0, 127.0 / 128.0)}


__all__ = ["QAT", "quantize_model", "fine_tune", "activation_ranges", "is_qat", "float_model"]

#: Layers whose int8 kernel writes its own output scale: a range after each.
RESCALING = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
             "GlobalAveragePooling1D",
             "GlobalAveragePooling2D", "GlobalAveragePooling3D", "BatchNormalization", "Activation", "ReLU",
             "Softmax", "LeakyReLU", "ELU", "PReLU")
_FLOAT_BN = ("a BatchNorm with no conv/dense to fold into: the converters keep it in float between a dequantize "
             "and a quantize on its trained range")
#: The placement :func:`quantize_model` builds, stored with a container's ranges: 2 folds a
#: depthwise conv's BatchNorm and puts a range after each layer left float (1: neither).
LAYOUT = 2

#: Layers whose int8 kernel keeps its input's scale (or that vanish at inference).
SAME_SCALE = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
              "GlobalMaxPooling3D", "Reshape", "Flatten", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
              "GaussianNoise", "GaussianDropout", "AlphaDropout", "UpSampling1D", "UpSampling2D", "ZeroPadding1D",
              "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Permute", "Identity",
              "AveragePooling1D", "AveragePooling2D", "AveragePooling3D")
#: Of those, the ones whose output leaves the input's grid: LiteRT rounds back onto it.
ROUNDED_SAME_SCALE = ("AveragePooling1D", "AveragePooling2D", "AveragePooling3D")


@dataclasses.dataclass(frozen=True)
class QAT(Config):
    """The QAT stage: ``epochs`` of fine-tuning at ``learning_rate`` (Adam), distilled by default
    from the float model's own answers (``distill``: :class:`~edgecomp.distill.Distill`, None for
    labels only), activation ranges as moving averages with ``ema_decay``, set first from
    ``calibration_batches`` batches; ``weight_bits`` per-channel weight bits (8 for the int8
    kernels; fewer trains weights on a coarser grid inside int8).

    Self-distillation keeps the fine-tuning anchored to what the float model answers: on
    bench_zoo's 512-sample DenseNet, 4 epochs at 1e-4 on the labels alone lost 3 points of test
    accuracy (the float weights drifted too); distilled, it gained 2.
    """

    epochs: int = 1
    learning_rate: float = 1e-4
    ema_decay: float = 0.99
    weight_bits: int = 8
    calibration_batches: int = 4
    distill: object = Distill()

    def __post_init__(self):
        object.__setattr__(self, "distill", Distill.parse(self.distill))
        whole_number("QAT epochs", self.epochs, 1)
        whole_number("QAT calibration batches", self.calibration_batches, 1)
        lr = float(self.learning_rate) if isinstance(self.learning_rate, (int, float)) else float("nan")
        if not 0 < lr < 1:
            raise EdgecompError(f"QAT learning rate must be in (0, 1), got {self.learning_rate!r}",
                                fix="e.g. --qat-learning-rate 1e-4")
        decay = float(self.ema_decay) if isinstance(self.ema_decay, (int, float)) else float("nan")
        if not 0 <= decay < 1:
            raise EdgecompError(f"QAT range decay must be in [0, 1), got {self.ema_decay!r}", fix="e.g. 0.99")
        if isinstance(self.weight_bits, bool) or not isinstance(self.weight_bits, int) or not 2 <= self.weight_bits <= 8:
            raise EdgecompError(f"QAT weight bits must be in 2..8, got {self.weight_bits!r}",
                                fix="use 8 (the int8 kernels' grid)")
        object.__setattr__(self, "learning_rate", lr)
        object.__setattr__(self, "ema_decay", decay)


def _activation_name(layer) -> str:
    """The activation a Conv/Dense/Activation/ReLU/Softmax layer applies, by name."""
    kind = type(layer).__name__
    if kind == "Softmax":
        return "softmax"
    if kind == "ReLU":
        cfg = layer.get_config()
        plain = not cfg.get("negative_slope") and not cfg.get("threshold")
        return {None: "relu", 6.0: "relu6"}.get(cfg.get("max_value"), "other") if plain else "other"
    if kind == "Activation":
        return str(layer.get_config()["activation"])
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _functional(model):
    from edgecomp.fold import _functional_config
    return _functional_config(model)[0]


def quantize_model(model, config: QAT | None = None, ranges: dict | None = None, *, legacy: bool = False):
    """A QAT model over ``model``'s own layers, and a report of what was quantized.

    Args:
        model: a functional or Sequential Keras model (top-level layers; a nested model is
            left float and reported).
        config: the :class:`QAT` settings (weight bits, range decay).
        ranges: trained activation ranges (:func:`activation_ranges` of an earlier run) to
            start from; every range of the rebuilt model must be there.
        legacy: rebuild in layout 1 (:data:`LAYOUT`), as containers written before Dec 2026
            were trained: a BatchNorm after a depthwise conv left unfolded, and no range after
            a layer left float.

    Returns:
        ``(qmodel, report)``: ``report`` has ``quantized`` (wrapped layers), ``folded``
        (BN -> layer), ``ranges`` (the activation quantizers' names) and ``float``
        (``{"layer", "kind", "why"}`` for layers left float).

    Example:
        >>> qmodel, report = quantize_model(model)
        >>> report["float"]
        []
    """
    import keras

    from edgecomp.fold import fold_plan
    from edgecomp.graph import ModelGraph
    from edgecomp.qat_layers import FakeQuant, QuantWrapper, TiedFakeQuant

    config = config or QAT()
    model = _functional(model)
    plan = fold_plan(model, depthwise=not legacy)   # the int8 kernels fold a depthwise conv's BN too
    graph = ModelGraph(model, expand_nested=False)
    back = {target: bn for bn, (mode, target) in plan.items() if mode == "back"}
    forward = {target: bn for bn, (mode, target) in plan.items() if mode == "forward"}

    def readers(name: str) -> list:
        calls = graph.calls(name)
        outs = [t for call in calls for t in call.outputs]
        return [c for t in outs for c, _ in t.consumers] + [None for t in outs if graph.is_output(t)]

    def range_after(name: str) -> bool:
        """False when the layer's only reader is an activation the int8 op fuses (or a BN folding into it)."""
        rs = readers(back.get(name, name))
        if len(rs) == 1 and rs[0] is not None and rs[0].kind in ("Activation", "ReLU") \
                and _activation_name(rs[0].layer) in FUSED_ACTIVATIONS[1:]:
            return False
        return True

    report = {"quantized": [], "folded": {bn: t for bn, (_, t) in plan.items()}, "ranges": [], "float": []}
    quantizers: dict[str, object] = {}
    made: dict[int, object] = {}     # id(layer) -> its wrapper (a layer called twice keeps one)
    inputs_done: dict[int, object] = {}
    grid: dict[int, object] = {}   # id(tensor) -> the quantizer whose grid it lies on

    def fq(tensor, name: str, fixed=None):
        base, n = name, 1
        while name in quantizers:
            n += 1
            name = f"{base}{n}"
        q = FakeQuant(bits=8, decay=config.ema_decay, fixed=fixed, name=name)
        quantizers[name] = q
        report["ranges"].append(name)
        out = q(tensor)
        grid[id(out)] = q
        return out

    def quantize_inputs(value):
        def one(t):
            hist = getattr(t, "_keras_history", None)
            if hist is not None and isinstance(hist.operation, keras.layers.InputLayer):
                if id(t) not in inputs_done:
                    inputs_done[id(t)] = fq(t, f"{hist.operation.name}_fq")
                return inputs_done[id(t)]
            return t
        return keras.tree.map_structure(one, value)

    def call(layer, *args, **kwargs):
        args, kwargs = quantize_inputs(args), quantize_inputs(kwargs)
        kind, name = type(layer).__name__, layer.name
        if name in plan:                        # a folded BN: its layer does the work
            return args[0]
        if kind in WEIGHTED:
            act = _activation_name(layer)
            if id(layer) not in made:
                bn_after = model.get_layer(back[name]) if name in back else None
                bn_before = model.get_layer(forward[name]) if name in forward else None
                for bn in (bn_after, bn_before):
                    if bn is not None:
                        bn.trainable = False   # frozen statistics
                made[id(layer)] = QuantWrapper(layer, bn_after=bn_after, bn_before=bn_before,
                                               activation=act if act in FUSED_ACTIVATIONS else "linear",
                                               bits=config.weight_bits,
                                               input_quantizer=grid.get(id(keras.tree.flatten(args)[0])))
                report["quantized"].append(name)
            y = made[id(layer)](*args, **kwargs)
            if act not in FUSED_ACTIVATIONS:
                y = fq(y, f"{name}_preact_fq")
                y = keras.layers.Activation(act, name=f"{name}_{act}")(y)
                return fq(y, f"{name}_fq", FIXED_RANGES.get(act))
            return fq(y, f"{name}_fq") if range_after(name) else y
        if kind == "BatchNormalization":
            layer.trainable = False
            report["float"].append({"layer": name, "kind": kind, "why": _FLOAT_BN})
        y = layer(*args, **kwargs)
        if kind in SAME_SCALE:
            src = grid.get(id(keras.tree.flatten(args)[0]))
            off_grid = kind in ROUNDED_SAME_SCALE or getattr(layer, "interpolation", "nearest") != "nearest"
            if src is not None and off_grid:
                y = TiedFakeQuant(src, name=f"{name}_fq")(y)
            if src is not None:
                grid[id(y)] = src
            return y
        if kind in RESCALING:
            act = _activation_name(layer) if kind in ("Activation", "ReLU", "Softmax") else None
            if act in FIXED_RANGES:
                return fq(y, f"{name}_fq", FIXED_RANGES[act])
            return fq(y, f"{name}_fq") if range_after(name) else y
        why = "a nested model (QAT wraps top-level layers)" if hasattr(layer, "layers") else "no int8 rule for it"
        report["float"].append({"layer": name, "kind": kind, "why": why})
        if legacy or keras.tree.is_nested(y) or not keras.backend.is_float_dtype(y.dtype):
            return y
        # A range of its own: the int8 op that reads it needs its input's scale. Without one,
        # TF 2.21's converter fed keras.applications EfficientNetB0's stem conv (after its float
        # Rescaling and Normalization) garbage: 10% top-1 agreement (Dec 2026).
        return fq(y, f"{name}_fq")

    qmodel = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    qmodel._edgecomp_float = model
    if ranges is not None:
        set_ranges(qmodel, ranges)
    return qmodel, report


def quantizers_of(qmodel) -> dict:
    """``{name: FakeQuant}`` of a QAT model."""
    from edgecomp.qat_layers import FakeQuant
    return {layer.name: layer for layer in qmodel.layers if isinstance(layer, FakeQuant)}


def is_qat(model) -> bool:
    """True for a model :func:`quantize_model` built (it holds FakeQuant layers)."""
    from edgecomp.qat_layers import FakeQuant
    return bool(getattr(model, "layers", None)) and any(isinstance(layer, FakeQuant) for layer in model.layers)


def activation_ranges(qmodel) -> dict[str, list[float]]:
    """``{quantizer name: [min, max]}``: the trained activation ranges (JSON-ready)."""
    return {name: list(q.range()) for name, q in quantizers_of(qmodel).items()}


def _input_ranges_by_position(qmodel, quantizers: dict, ranges: dict) -> dict:
    """``ranges`` with the model inputs' quantizers matched by position where their names differ.

    An input quantizer is named after its InputLayer, and Keras 3.15 names those per process
    (``keras_tensor`` when keras.applications' MobileNetV2 was first cloned, ``input_layer`` once
    the model is rebuilt from its config); every other quantizer is named after its layer.
    """
    import keras

    def is_input(q) -> bool:
        node = q._inbound_nodes[0] if getattr(q, "_inbound_nodes", None) else None   # noqa: SLF001
        tensors = node.input_tensors if node is not None else ()
        hist = getattr(tensors[0], "_keras_history", None) if tensors else None
        return hist is not None and isinstance(hist.operation, keras.layers.InputLayer)

    ours = [n for n, q in quantizers.items() if n not in ranges and is_input(q)]
    theirs = [n for n in ranges if n not in quantizers and n.endswith("_fq")]
    if ours and len(ours) == len(theirs) == len(set(quantizers) - set(ranges)):
        for mine, stored in zip(ours, theirs):
            ranges[mine] = ranges.pop(stored)
    return ranges


def set_ranges(qmodel, ranges: dict) -> None:
    """Load ranges :func:`activation_ranges` returned; every quantizer must be there."""
    quantizers = quantizers_of(qmodel)
    ranges = _input_ranges_by_position(qmodel, quantizers, dict(ranges))
    missing = sorted(set(quantizers) - set(ranges))
    extra = sorted(set(ranges) - set(quantizers))
    if missing or extra:
        raise EdgecompError(f"QAT ranges do not fit this model (missing {missing[:3]}, unknown {extra[:3]})",
                            fix="use the ranges stored with this model")
    for name, (lo, hi) in ranges.items():
        quantizers[name].set_range(float(lo), float(hi))


def float_model(qmodel):
    """The float model a QAT model wraps (its layers, unwrapped): what fp32 exports and containers take."""
    source = getattr(qmodel, "_edgecomp_float", None)
    if source is None:
        raise EdgecompError("this model was not built by edgecomp.qat.quantize_model",
                            fix="pass the model quantize_model returned")
    return source


def calibrate(qmodel, x, batch_size: int, batches: int) -> int:
    """Set every activation range from up to ``batches`` batches (training-mode statistics, no
    weight update); returns how many batches ran."""
    n = min(batches, int(np.ceil(len(x) / batch_size)))
    for i in range(n):
        qmodel(np.asarray(x[i * batch_size:(i + 1) * batch_size], np.float32), training=True)
    return n


def fine_tune(qmodel, x, y, config: QAT | None = None, *, batch_size: int = 64, masks: dict | None = None,
              shared: dict | None = None, seed: int = 0, verbose: int = 1) -> dict:
    """Quantization-aware fine-tuning: ranges first set from a few batches, then ``config.epochs``
    of training with the ranges as moving averages.

    Args:
        qmodel: a model :func:`quantize_model` built.
        x, y: training data (integer labels).
        config: the :class:`QAT` settings.
        batch_size: samples per step.
        masks: ``{weight path: 0/1 mask}``: pruned weights held at exactly 0.
        shared: ``{weight path: SharedTensor}``: those kernels stay on their codebook (the
            centroids train, each by the sum of its weights' gradients); their codebooks are
            updated in place.
        seed: shuffling seed.
        verbose: Keras progress output.

    Returns:
        ``{"loss": [...per epoch], "calibrated_batches": n}``.

    Example:
        >>> qmodel, _ = quantize_model(model)
        >>> fine_tune(qmodel, x_train, y_train, QAT(epochs=2), masks=result.masks)
    """
    from edgecomp import train
    from edgecomp.distill import distillation_loss, label_accuracy, pack_targets
    from edgecomp.pruning import hold_masks
    from edgecomp.weight_sharing import fine_tune_centroids

    config = config or QAT()
    x = np.asarray(x, np.float32)
    if len(x) == 0:
        raise EdgecompError("QAT needs training data", fix="pass the training set QAT fine-tunes on")
    loss = metrics = None
    if config.distill is not None:   # the float model's answers, before anything trains
        y = pack_targets(y, train.predict(float_model(qmodel), x))
        loss = distillation_loss(config.distill.temperature, config.distill.weight)
        metrics = [label_accuracy]
    n_cal = calibrate(qmodel, x, batch_size, config.calibration_batches)
    if shared:
        losses = fine_tune_centroids(qmodel, shared, x, y, epochs=config.epochs, batch_size=batch_size,
                                     learning_rate=config.learning_rate, seed=seed, verbose=verbose, loss=loss,
                                     title="QAT (shared weights: centroids train)")
        return {"loss": losses, "calibrated_batches": n_cal}
    with hold_masks(qmodel, masks or {}):
        hist = train.fit(qmodel, x, y, epochs=config.epochs, batch_size=batch_size, seed=seed, verbose=verbose,
                         learning_rate=config.learning_rate, loss=loss, metrics=metrics)
    return {"loss": [float(v) for v in hist.get("loss", [])], "calibrated_batches": n_cal}


def container_info(qmodel, config: QAT, report: dict) -> dict:
    """What a container stores of a QAT run: the settings, the trained ranges and the report."""
    return {"config": config.get_config(), "ranges": activation_ranges(qmodel),
            "float_layers": report["float"], "folded": report["folded"], "layout": LAYOUT}


def restore(model, info: dict):
    """The QAT model of a decoded container's float ``model`` and its stored ``info["qat"]``."""
    try:
        config = QAT.from_config(info["config"])
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in dict(info["ranges"]).items()}
        # A container without a layout was trained before Dec 2026: its ranges fit that layout.
        legacy = int(info.get("layout", 1)) < LAYOUT
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EdgecompError(f"the container's QAT record is malformed ({type(exc).__name__})",
                            fix="re-create the container with edgecomp compress --qat-epochs") from None
    return quantize_model(model, config, ranges=ranges, legacy=legacy)[0]
