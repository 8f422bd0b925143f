"""ONNX export (variant ``fp32``) through tf2onnx, at a fixed opset with a dynamic batch dim.

    >>> from exporters import export
    >>> art = export(model, "onnx", "fp32", "model.onnx")
    >>> art.needs["opset"], "Conv" in art.ops
    (17, True)

Every file is checked with ``onnx.checker.check_model(full_check=True)`` before
it is written.
"""

from __future__ import annotations

import contextlib
import logging

from edgecomp.errors import EdgecompError

from . import base

#: The ONNX opset every file is converted to (ONNX Runtime 1.32 runs 7..23).
OPSET = 17


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


def _input_signature(model):
    import tensorflow as tf

    specs = []
    for i, t in enumerate(model.inputs):
        name = "input" if len(model.inputs) == 1 else f"input_{i}"
        specs.append(tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype), name=name))
    return specs


def _convert(model, variant: str) -> bytes:
    import onnx
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
        with _quiet_tf2onnx():
            proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        text = str(exc).strip().splitlines()
        raise EdgecompError(f"ONNX conversion ({variant}) failed: {text[0] if text else type(exc).__name__}",
                            fix="check that the model uses ops tf2onnx supports") from None
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgecompError(f"tf2onnx produced an invalid ONNX model: {str(exc).splitlines()[0]}",
                            fix="report the model; try another opset") from None
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
        >>> needs["opset"]
        17
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
    }
    return sorted(ops), needs


class OnnxExporter:
    """``onnx`` exporter (``fp32``)."""

    format = "onnx"
    suffix = ".onnx"
    variants = ("fp32",)

    def convert(self, model, variant: str, calibration=None) -> bytes:
        return _convert(model, variant)

    def describe(self, data: bytes) -> tuple[list[str], dict]:
        return read_onnx(data)


base.register(OnnxExporter())
