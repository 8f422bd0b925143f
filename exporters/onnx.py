"""ONNX export through tf2onnx at a fixed opset with a dynamic batch dim, in seven variants.

=================  ==============================================================
``fp32``           tf2onnx's graph, float32
``int8``           static QDQ: per-channel int8 weights (7-bit range, see
                   :func:`_quantize`), int8 activations calibrated (MinMax) on
                   the calibration array; float I/O
``dynamic``        dynamic quantization: int8 weights, activations quantized
                   at run time (ConvInteger / MatMulInteger)
``<any>-sparse``   the same, with each pruned weight (an initializer of rank
                   >= 2) stored as a ``sparse_initializer`` where that makes it
                   smaller
``int16x8``        static QDQ like ``int8`` but with int16 activations and
                   full-range int8 weights; opset 21 (the first with int16
                   QuantizeLinear); no ``-sparse`` form
=================  ==============================================================

The quantized variants run ONNX Runtime's own pre-processing
(``quant_pre_process``) first. ONNX sparse tensors need int64 indices (8 bytes per
nonzero) and ONNX Runtime densifies them at load, so a ``-sparse`` file is only a
smaller file: it saves space below about 1/3 density for float32 weights and
1/9 for int8 ones (and gzip may undo it: int64 indices compress worse than runs
of zeros); ``needs["sparse_initializers"]`` lists what was converted.

    >>> from exporters import export
    >>> art = export(model, "onnx", "int8", "model.onnx", calibration=x_train[:200])
    >>> art.needs["opset"], "QuantizeLinear" in art.ops
    (17, True)

Every file is checked with ``onnx.checker`` before it is written (see
:func:`_check` for the sparse case) and load-probed in a fresh process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np

from edgecomp.errors import EdgecompError, first_line

from . import base, probe
from .onnx_captures import captured_constants, inline_captured_constants
from .onnx_trace import convertible_calls
from .variants import Variant

#: The ONNX opset every file is converted to (ONNX Runtime 1.32 runs 7..23); ``int16x8``
#: files end at 21, where ONNX Runtime's quantizer moves them for int16 QuantizeLinear.
OPSET = 17

PRECISIONS = ("fp32", "int8", "dynamic")
#: int16x8 (int8 weights, int16 activations, QDQ) has no -sparse form.
VARIANTS = PRECISIONS + tuple(f"{p}-sparse" for p in PRECISIONS) + ("int16x8",)

#: ONNX Runtime graph optimization levels tried at export, in order (runtime_bench.runners names).
OPTIMIZATIONS = ("all", "basic", "disable")

#: Initializers of at least this rank are weights and may become sparse (biases,
#: scales and zero points are 1-d and stay dense).
SPARSE_MIN_RANK = 2


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs each conversion at INFO; keep it to warnings while we convert."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _DropOpsetNotice(logging.Filter):
    # onnxruntime 1.32 logs to the root logger, on every int16 quantization of an opset < 21
    # graph, that it moves the graph to opset 21 and that the result should be verified: the
    # exporter verifies every file (load probe, parity), so the notice says nothing here.
    def filter(self, record: logging.LogRecord) -> bool:
        return "does not support 16-bit integer quantization natively" not in record.getMessage()


@contextlib.contextmanager
def _quiet_opset_notice():
    root, notice = logging.getLogger(), _DropOpsetNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _input_signature(model):
    import tensorflow as tf

    specs = []
    for i, t in enumerate(model.inputs):
        name = "input" if len(model.inputs) == 1 else f"input_{i}"
        specs.append(tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype), name=name))
    return specs


def _tf2onnx(model, variant: Variant):
    import tensorflow as tf
    import tf2onnx

    signature = _input_signature(model)

    # tf2onnx 1.17 is tested against TF 2.13-2.15 only; on TF 2.21 + Keras 3.15
    # its from_keras() reaches for tf.keras internals (trace_model_call /
    # _get_save_spec, gone since TF 2.16) before falling back to a tf.function.
    # We go straight to that: a tf.function over the Keras 3 call with an
    # explicit input signature (batch dim None -> dynamic 'unk__' dim in ONNX),
    # which is also how keras.Model.export(format="onnx") drives tf2onnx.
    @tf.function(input_signature=signature)
    def serve(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    try:
        # Traced first: tensors the call captures by value (Keras 3's Normalization mean and
        # variance) would be left as graph inputs by tf2onnx 1.17; see :mod:`.onnx_captures`.
        # Grouped convs and exact GELU traced as tf2onnx converts them; see :mod:`.onnx_trace`.
        with convertible_calls():
            constants = captured_constants(serve, signature)
            with _quiet_tf2onnx():
                proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        raise EdgecompError(f"ONNX conversion ({variant}) failed: {first_line(exc)}",
                            fix="check that the model uses ops tf2onnx supports") from None
    inline_captured_constants(proto, constants)
    return proto


class ArrayCalibrationReader:
    """A ``CalibrationDataReader`` over a float32 array: feeds it in batches, then ``None``.

    ``onnxruntime.quantization.CalibrationDataReader`` accepts any class with
    ``get_next`` (its ``__subclasshook__``), so this one needs no onnxruntime
    import until quantization runs.

    Example:
        >>> reader = ArrayCalibrationReader("input", x_train[:200], batch=20)
        >>> len(reader), reader.get_next()["input"].shape
        (10, (20, 28, 28, 1))
    """

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 20):
        self.input_name = input_name
        self.x = np.asarray(x, dtype=np.float32)
        self.batch = max(1, int(batch))
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.x):
            return None
        chunk = self.x[self._next:self._next + self.batch]
        self._next += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)


def _quantize(proto, variant: Variant, calibration):
    """The QDQ (``int8``, ``int16x8``) or dynamic (``dynamic``) quantization of ``proto``, after ORT's pre-processing."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgecomp_onnxq_") as tmp:
        fp32, pre, out = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "q.onnx"))
        onnx.save(proto, fp32)
        # onnxruntime 1.32: symbolic shape inference needs sympy, which the project
        # does not depend on. Our models have a dynamic batch dim only, which ONNX's
        # own shape inference (still run) propagates, so it is skipped.
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)
        if variant.calibrated:
            # reduce_range (7-bit weights): onnxruntime 1.32 on x86 CPUs without
            # VNNI (AVX2 only, like the measuring machine) computes QDQ Conv/MatMul
            # with 8-bit integer kernels whose pairwise int16 sums saturate with
            # full-range weights. Measured on the Fashion-MNIST VGG: at
            # optimization "all" top-1 agreement with the float-emulated QDQ
            # graph fell to 99.25% (max diff 0.19); with reduce_range the two
            # agree within 0.008 and accuracy is unchanged. ORT's own advice
            # for non-VNNI x86; VNNI CPUs lose at most the 8th weight bit.
            # int16x8: int16 activations need the QuantizeLinear/DequantizeLinear of opset
            # 21; onnxruntime 1.32's quantize_static converts the graph to it (standard ops,
            # no com.microsoft domain). No 8-bit integer kernel runs those Q/DQ pairs, so
            # full-range weights are safe (no reduce_range).
            wide = variant.precision == "int16x8"
            with _quiet_opset_notice():
                q.quantize_static(pre, out, ArrayCalibrationReader(proto.graph.input[0].name, calibration),
                                  quant_format=q.QuantFormat.QDQ, per_channel=True, reduce_range=not wide,
                                  activation_type=q.QuantType.QInt16 if wide else q.QuantType.QInt8,
                                  weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax)
        else:
            q.quantize_dynamic(pre, out, weight_type=q.QuantType.QInt8)
        return onnx.load(out)


def sparsify_initializers(proto, min_rank: int = SPARSE_MIN_RANK) -> list[dict]:
    """Move each initializer of rank >= ``min_rank`` to ``sparse_initializer`` where that is smaller.

    Sizes are the serialized protobuf sizes of the dense ``TensorProto`` and of the
    ``SparseTensorProto`` (values plus int64 linear indices, as ONNX requires),
    measured per initializer. Returns one row per converted initializer. Changes
    ``proto`` in place.

    Example:
        >>> rows = sparsify_initializers(proto)   # 80%-pruned fp32 VGG: 8 of 14 weights
        >>> [r["density"] for r in rows][:2], sum(r["dense_bytes"] - r["sparse_bytes"] for r in rows) > 0
        ([0.2014, 0.2014], True)
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    keep, rows = [], []
    for init in graph.initializer:
        if len(init.dims) < min_rank or init.data_location == init.EXTERNAL:
            keep.append(init)
            continue
        dense = numpy_helper.to_array(init)
        flat = dense.reshape(-1)
        index = np.flatnonzero(flat).astype(np.int64)
        sparse = helper.make_sparse_tensor(numpy_helper.from_array(flat[index], init.name),
                                           numpy_helper.from_array(index),
                                           list(dense.shape))
        if sparse.ByteSize() < init.ByteSize():
            graph.sparse_initializer.append(sparse)
            rows.append({"name": init.name, "dtype": dense.dtype.name, "shape": list(dense.shape),
                         "density": round(len(index) / max(1, flat.size), 4),
                         "dense_bytes": init.ByteSize(), "sparse_bytes": sparse.ByteSize()})
        else:
            keep.append(init)
    if rows:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return rows


def _check(proto, variant: Variant) -> None:
    """``onnx.checker`` on ``proto``: the full check, or for sparse files the structural one.

    onnx 1.23: ``full_check=True`` runs strict shape inference, which types a
    ``sparse_initializer`` as ``sparse_tensor(T)`` and then rejects it as the
    input of Conv/MatMul ("has unsupported type: sparse_tensor(float)"), although
    ONNX Runtime densifies it at load. Sparse files therefore get the structural
    check (which validates each sparse tensor: index range, order, shape), and
    :func:`_convert` full-checks the same graph before its weights go sparse.
    """
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=not len(proto.graph.sparse_initializer))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EdgecompError(f"the {variant} ONNX model is invalid: {first_line(exc)}",
                            fix="report the model; try another opset or variant") from None


def _convert_qat(model, variant: Variant):
    """A QAT model's int8 file: tf2onnx on the baked model, then int8 weights (:mod:`.onnx_qat`)."""
    from edgecomp.qat_layers import baked, weight_bits

    from .onnx_qat import quantize_weights

    with baked(model):
        proto = _tf2onnx(model, variant)
    quantize_weights(proto, weight_bits(model))
    return proto


def _convert(model, variant: Variant, calibration=None) -> bytes:
    from edgecomp.qat import is_qat
    if is_qat(model) and variant.precision == "int8":   # trained ranges: no calibration, no quantize_static
        proto = _convert_qat(model, variant)
    else:
        if variant.calibrated:
            calibration = base.check_calibration(model, calibration, variant)
        proto = _tf2onnx(model, variant)
        _check(proto, variant)
        if variant.precision != "fp32":
            try:
                proto = _quantize(proto, variant, calibration)
            except EdgecompError:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many types
                raise EdgecompError(f"ONNX {variant} quantization failed: {first_line(exc)}",
                                    fix="try the fp32 or dynamic variant") from None
    _check(proto, variant)
    if variant.sparse:
        sparsify_initializers(proto)
        _check(proto, variant)
    return proto.SerializeToString()


def _value_info(v) -> dict:
    import onnx

    t = v.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}


def read_onnx(data: bytes) -> tuple[list[str], dict]:
    """Sorted unique node op types of ``data`` (main graph and subgraphs), and what it needs.

    Example:
        >>> ops, needs = read_onnx(Path("m.onnx").read_bytes())
        >>> needs["opset"], needs["sparse_initializers"]
        (17, [])
    """
    import onnx

    proto = onnx.load_from_string(data)
    ops: set[str] = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(proto.graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    needs = {
        "runtime": "onnxruntime",
        "opset": opset,
        "ir_version": int(proto.ir_version),
        "input": _value_info(proto.graph.input[0]),
        "output": _value_info(proto.graph.output[0]),
        "sparse_initializers": [_sparse_info(t) for t in proto.graph.sparse_initializer],
        "output_step": _output_step(proto.graph),
    }
    return sorted(ops), needs


def _output_step(graph) -> float | None:
    """The scale of the DequantizeLinear that makes the main output (a QDQ file's int8/int16
    output step); None when the output is not dequantized there."""
    from onnx import numpy_helper

    name = graph.output[0].name
    node = next((n for n in graph.node if name in n.output), None)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
        return None
    scale = next((t for t in graph.initializer if t.name == node.input[1]), None)
    value = None if scale is None else numpy_helper.to_array(scale)
    return float(value) if value is not None and value.size == 1 else None


def _sparse_info(sparse) -> dict:
    size = int(np.prod(sparse.dims)) if len(sparse.dims) else 1
    nnz = int(np.prod(sparse.values.dims)) if len(sparse.values.dims) else 0
    return {"name": sparse.values.name, "shape": [int(d) for d in sparse.dims],
            "density": round(nnz / max(1, size), 4)}


def loadable_optimization(data: bytes) -> tuple[str, dict[str, str]]:
    """The first of :data:`OPTIMIZATIONS` under which ONNX Runtime runs ``data`` as with ``disable`` (fresh processes).

    Example:
        >>> loadable_optimization(Path("m.onnx").read_bytes())
        ('all', {'optimization=all': 'ok'})
    """
    setting, tried = probe.choose_setting(data, ".onnx", [{"optimization": o} for o in OPTIMIZATIONS])
    if setting is None:
        raise EdgecompError("ONNX Runtime runs the converted file at no optimization level: "
                            + "; ".join(f"{k}: {v}" for k, v in tried.items()),
                            fix="report the model; try another variant")
    return setting["optimization"], tried


class OnnxExporter:
    """``onnx`` exporter; see the module docstring for the variants."""

    format = "onnx"
    suffix = ".onnx"
    variants = VARIANTS

    def convert(self, model, variant: Variant, calibration=None) -> bytes:
        return _convert(model, Variant.parse(self.format, variant), calibration)

    def describe(self, data: bytes, reference=None) -> tuple[list[str], dict]:
        ops, needs = read_onnx(data)   # ONNX Runtime's optimization levels round alike: no reference needed
        needs["optimization"], needs["load_check"] = loadable_optimization(data)
        return ops, needs


base.register(OnnxExporter())
