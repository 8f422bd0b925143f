"""TFLite (LiteRT) export: ``fp32``, ``fp16``, ``dynamic`` (dynamic-range int8) and ``int8``.

``int8`` is full-integer quantization with int8 input and output; it needs a
float32 calibration set shaped like the model input (e.g. 200 training images),
fed to the converter one image at a time.

    >>> from exporters import export
    >>> art = export(model, "tflite", "int8", "m_int8.tflite", calibration=x_train[:200])
    >>> art.needs["input_dtype"], "CONV_2D" in art.ops
    ('int8', True)

More variants (e.g. sparse ones via ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``)
go in :data:`_SETTINGS` and, if they need a converter option, :func:`_configure`.
Note for those: on ai-edge-litert 2.3 int8 + EXPERIMENTAL_SPARSITY files fail
to prepare under the default XNNPACK delegate and need the ``builtin`` op
resolver (``needs["resolver"] = "builtin"``).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings

import numpy as np

from edgecomp.errors import EdgecompError

from . import base

#: variant -> converter settings: optimize (Optimize.DEFAULT), float16 weights,
#: calibrate (representative dataset, int8 builtins only), int8_io (int8 input/output).
_SETTINGS: dict[str, dict] = {
    "fp32": {},
    "fp16": {"optimize": True, "float16": True},
    "dynamic": {"optimize": True},
    "int8": {"optimize": True, "calibrate": True, "int8_io": True},
}


def _calibration_feed(model, calibration):
    """A representative-dataset generator: each calibration sample as a batch of one."""
    if calibration is None:
        raise EdgecompError("the tflite int8 variant needs calibration data",
                            fix="pass calibration= a float32 array of ~200 training inputs")
    x = np.asarray(calibration, dtype=np.float32)
    want = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(want) + 1 or any(w is not None and w != g for w, g in zip(want, x.shape[1:])):
        raise EdgecompError(f"calibration data has shape {x.shape}, the model takes (N, {', '.join(map(str, want))})",
                            fix="pass inputs shaped like the model's, N first")
    if len(x) == 0:
        raise EdgecompError("calibration data is empty", fix="pass ~200 training inputs")

    def feed():
        for i in range(len(x)):
            yield [x[i:i + 1]]

    return feed


def _configure(converter, variant: str, model, calibration) -> None:
    import tensorflow as tf

    s = _SETTINGS[variant]
    if s.get("optimize"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if s.get("float16"):
        converter.target_spec.supported_types = [tf.float16]
    if s.get("calibrate"):
        converter.representative_dataset = _calibration_feed(model, calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if s.get("int8_io"):
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


@contextlib.contextmanager
def _saved_model(model):
    """Export ``model`` to a SavedModel in a temporary folder (removed afterwards)."""
    folder = tempfile.mkdtemp(prefix="edgecomp_sm_")
    try:
        model.export(folder, format="tf_saved_model", verbose=False)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(converter) -> bytes:
    # TF 2.21: from_keras_model saves a Keras 3 model through
    # keras.export.ExportArchive.write_out(), which prints the endpoints to
    # stdout on every conversion; a library should not.
    # TF 2.21 also warns "Statistics for quantized inputs were expected, but
    # not specified" on every int8-I/O conversion; the representative dataset
    # provides those statistics, so the warning says nothing here.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def _convert(model, variant: str, calibration) -> bytes:
    import tensorflow as tf

    # TF 2.21 + Keras 3.15: from_keras_model works on Keras 3 models (it
    # exports model.__call__(training=False)). TF 2.16-2.17 failed there on
    # Keras 3 ("_get_save_spec"), so on any error we fall back to Keras 3's own
    # route, model.export() to a SavedModel, then from_saved_model.
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        _configure(converter, variant, model, calibration)
        return _run(converter)
    except EdgecompError:
        raise
    except Exception as first:  # noqa: BLE001 - the converter raises many types
        try:
            with _saved_model(model) as folder:
                converter = tf.lite.TFLiteConverter.from_saved_model(folder)
                _configure(converter, variant, model, calibration)
                return _run(converter)
        except EdgecompError:
            raise
        except Exception as second:  # noqa: BLE001
            raise EdgecompError(
                f"TFLite conversion ({variant}) failed: {_first_line(second)} "
                f"(from_keras_model: {_first_line(first)})",
                fix="check that the model uses TFLite builtin ops") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- reading a .tflite flatbuffer back -------------------------------------

def _schema():
    # The flatbuffer schema module that ai-edge-litert ships (pure Python).
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _tensor_io(schema, subgraph, index: int, dtypes: dict[int, str]) -> dict:
    t = subgraph.Tensors(index)
    info = {"dtype": dtypes.get(t.Type(), str(t.Type())).lower(),
            "shape": [int(d) for d in (t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy())]}
    q = t.Quantization()
    if q is not None and q.ScaleLength() == 1:
        info["scale"] = float(q.Scale(0))
        info["zero_point"] = int(q.ZeroPoint(0))
    return info


def read_tflite(data: bytes) -> tuple[list[str], dict]:
    """Sorted unique op names used by the operators of ``data``, and what running it needs.

    Builtin ops are named as in the schema (``CONV_2D``); custom ops as
    ``CUSTOM:<code>``.

    Example:
        >>> ops, needs = read_tflite(Path("m.tflite").read_bytes())
        >>> needs["input"]["dtype"]
        'float32'
    """
    schema = _schema()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise EdgecompError("bytes are not a TFLite flatbuffer (no TFL3 identifier)",
                            fix="re-export the model")
    model = schema.Model.GetRootAs(data, 0)
    builtin = _enum_names(schema.BuiltinOperator)
    dtypes = _enum_names(schema.TensorType)
    codes = []
    for j in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(j)
        # Schema rule: the real code is the larger of the deprecated int8 field and the int32 one.
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(builtin.get(code, f"BUILTIN_{code}"))
    used = set()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            used.add(codes[sg.Operators(o).OpcodeIndex()])
    main = model.Subgraphs(0)
    needs = {
        "runtime": "ai-edge-litert",
        "resolver": "default",
        "input": _tensor_io(schema, main, int(main.Inputs(0)), dtypes),
        "output": _tensor_io(schema, main, int(main.Outputs(0)), dtypes),
        "schema_version": int(model.Version()),
    }
    return sorted(used), needs


class TFLiteExporter:
    """``tflite`` exporter; see the module docstring for the variants."""

    format = "tflite"
    suffix = ".tflite"
    variants = tuple(_SETTINGS)

    def convert(self, model, variant: str, calibration=None) -> bytes:
        return _convert(model, variant, calibration)

    def describe(self, data: bytes) -> tuple[list[str], dict]:
        return read_tflite(data)


base.register(TFLiteExporter())
