"""TFLite (LiteRT) export in eleven variants: ``<precision>[-floatio][-sparse]`` and ``int16x8``.

========================  =====================================================
``fp32``                  float32 weights and compute
``fp16``                  float16 weights (dequantized to float32 at load)
``dynamic``               dynamic-range: int8 weights, float I/O, int8 compute
                          where the kernel supports it
``int8``                  full integer: int8 weights and activations, int8 I/O
                          (calibrated on a representative set)
``int8-floatio``          full integer inside, float32 input and output
``<any>-sparse``          the same plus ``Optimize.EXPERIMENTAL_SPARSITY``:
                          weights with >= 30% zeros are stored sparse
``int16x8``               int8 weights, int16 activations, float32 I/O
                          (calibrated): for models whose class scores int8
                          activations cannot hold apart (LiteRT runs it on
                          reference kernels: slower than int8; no -sparse form)
========================  =====================================================

    >>> from exporters import export
    >>> art = export(model, "tflite", "int8-sparse", "m.tflite", calibration=x_train[:200])
    >>> art.needs["resolver"], art.needs["sparse_weights"][0]["kernel"]
    ('default', 'sparse')

What a ``-sparse`` file holds depends on the weights' zero pattern. A tensor
pruned in the blocks LiteRT's sparse FULLY_CONNECTED kernels run (float 1x4,
int8 1x16 along the input dimension; see :func:`edgecomp.pruning.block_mask`)
is used as it is stored (``kernel: "sparse"``). Any other pattern is stored as
CSR behind a DENSIFY op that rebuilds the dense tensor at load
(``kernel: "densify"``): smaller file, same compute, more memory.
``needs["sparse_weights"]`` lists each sparse tensor and which of the two it
got; ``needs["resolver"]`` the LiteRT op resolver the file runs correctly with
(tried in fresh processes at export, ``default`` first, its outputs compared
with ``builtin``'s; ``needs["load_check"]`` has each attempt; the LiteRT quirks
this catches are listed in :func:`loadable_resolver`). Block-sparse weights
whose input size is not a multiple of the block are refused
(:func:`check_block_shapes`).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings

import numpy as np

from edgecomp.errors import EdgecompError, first_line

from . import base, probe
from .variants import Variant

#: Precision -> converter settings: optimize (Optimize.DEFAULT), float16 weights, int8_io
#: (int8 input/output). Calibrated precisions (``Variant.calibrated``) also get a
#: representative dataset and integer builtins only.
_PRECISIONS: dict[str, dict] = {
    "fp32": {},
    "fp16": {"optimize": True, "float16": True},
    "dynamic": {"optimize": True},
    "int8": {"optimize": True, "int8_io": True},
    "int8-floatio": {"optimize": True},
}

#: Precisions without a ``-sparse`` form (``int16_activations``: the 16x8 op set instead of
#: the int8 one).
_DENSE_ONLY: dict[str, dict] = {
    "int16x8": {"optimize": True, "int16_activations": True},
}

#: The variant names offered: each precision, its ``-sparse`` form
#: (Optimize.EXPERIMENTAL_SPARSITY), and the dense-only ones.
VARIANTS = tuple(_PRECISIONS) + tuple(f"{name}-sparse" for name in _PRECISIONS) + tuple(_DENSE_ONLY)

#: LiteRT op resolvers tried at export, in order (runtime_bench.runners names).
RESOLVERS = ("default", "builtin")


def _calibration_feed(model, calibration, variant: Variant):
    """A representative-dataset generator: each calibration sample as a batch of one."""
    x = base.check_calibration(model, calibration, variant)

    def feed():
        for i in range(len(x)):
            yield [x[i:i + 1]]

    return feed


def _configure(converter, variant: Variant, model, calibration) -> None:
    import tensorflow as tf

    s = {**_PRECISIONS, **_DENSE_ONLY}[variant.precision]
    optimizations = []
    if s.get("optimize"):
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if variant.sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if s.get("float16"):
        converter.target_spec.supported_types = [tf.float16]
    from edgecomp.qat import is_qat
    # A QAT model's trained ranges are in the graph (FakeQuant ops) and the converter reads them:
    # no representative dataset. TF 2.21: supported_ops={TFLITE_BUILTINS_INT8} without one fails
    # before converting ("a representative_dataset must be specified": its metrics pass sees no
    # graph yet), so the default op set stays; ops QAT leaves float are named in its report.
    if variant.calibrated and not is_qat(model):
        converter.representative_dataset = _calibration_feed(model, calibration, variant)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            if s.get("int16_activations") else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
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


def _convert(model, variant: Variant, calibration) -> bytes:
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
                f"TFLite conversion ({variant}) failed: {first_line(second)} "
                f"(from_keras_model: {first_line(first)})",
                fix="check that the model uses TFLite builtin ops") from None


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


#: Bytes per element of the tensor types a weight can have.
_ITEM_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT8": 1, "UINT8": 1, "INT16": 2, "INT32": 4, "INT64": 8}


def _output_step(subgraph, op_names: list[str]) -> float | None:
    """The quantization step of the main output: its own scale, or that of the tensor its final
    DEQUANTIZE reads (float I/O around an int8 graph); None for a float output."""
    out = int(subgraph.Outputs(0))
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        if op_names[o] == "DEQUANTIZE" and out in op.OutputsAsNumpy():
            out = int(op.Inputs(0))
            break
    q = subgraph.Tensors(out).Quantization()
    return float(q.Scale(0)) if q is not None and q.ScaleLength() == 1 else None


def _block_shape(sparsity, rank: int) -> list[int] | None:
    """Block shape of a sparse tensor (e.g. ``[1, 16]``), or None for plain (unblocked) CSR."""
    if sparsity.BlockMapLength() == 0:
        return None
    block = [1] * rank
    for k in range(sparsity.BlockMapLength()):
        block[int(sparsity.BlockMap(k))] = int(sparsity.DimMetadata(rank + k).DenseSize())
    return block


def _sparse_weights(model, subgraph, op_names: list[str], dtypes: dict[int, str]) -> list[dict]:
    """One row per sparse weight tensor: the op that uses it and whether it runs sparse or densified.

    A weight reaches its op directly (``kernel: "sparse"``) or through a DENSIFY
    op and/or a DEQUANTIZE op (fp16 weights); ``via`` lists those in order.
    """
    consumers: dict[int, list[int]] = {}
    for o in range(subgraph.OperatorsLength()):
        for index in subgraph.Operators(o).InputsAsNumpy():
            consumers.setdefault(int(index), []).append(o)
    rows = []
    for index in range(subgraph.TensorsLength()):
        t = subgraph.Tensors(index)
        if t.Sparsity() is None:
            continue
        shape = [int(d) for d in t.ShapeAsNumpy()]
        dtype = dtypes.get(t.Type(), str(t.Type()))
        stored = model.Buffers(t.Buffer()).DataLength() // _ITEM_BYTES.get(dtype, 1)
        # Follow DENSIFY / DEQUANTIZE to the op that computes with the weight.
        frontier, via = [(o, []) for o in consumers.get(index, [])], None
        users = []
        while frontier:
            o, path = frontier.pop(0)
            if op_names[o] in ("DENSIFY", "DEQUANTIZE") and len(path) < 2:
                out = int(subgraph.Operators(o).Outputs(0))
                frontier += [(c, path + [op_names[o]]) for c in consumers.get(out, [])]
            else:
                users.append(op_names[o])
                via = path
        rows.append({"op": "/".join(sorted(set(users))) or "?", "tensor": t.Name().decode("utf-8", "replace"),
                     "shape": shape, "dtype": dtype.lower(),
                     "kernel": "densify" if via and "DENSIFY" in via else "sparse", "via": via or [],
                     "block": _block_shape(t.Sparsity(), len(shape)),
                     "stored_fraction": round(stored / max(1, int(np.prod(shape))), 4)})
    return rows


def read_tflite(data: bytes) -> tuple[list[str], dict]:
    """Sorted unique op names used by the operators of ``data``, and what running it needs.

    Builtin ops are named as in the schema (``CONV_2D``); custom ops as
    ``CUSTOM:<code>``. ``needs["sparse_weights"]`` has one row per sparse
    weight: the op using it, ``kernel`` (``"sparse"``: the op runs on the
    sparse tensor; ``"densify"``: a DENSIFY op rebuilds it at load), ``via``
    (the DENSIFY / DEQUANTIZE ops in between), ``block``
    (e.g. ``[1, 16]``, None for plain CSR) and ``stored_fraction`` (values
    stored / dense size). The resolver here is ``"default"``; the exporter's
    ``describe`` replaces it with the one that really loads the file.

    Example:
        >>> ops, needs = read_tflite(Path("m.tflite").read_bytes())
        >>> needs["input"]["dtype"], needs["sparse_weights"]
        ('float32', [])
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
    op_names = [codes[main.Operators(o).OpcodeIndex()] for o in range(main.OperatorsLength())]
    needs = {
        "runtime": "ai-edge-litert",
        "resolver": "default",
        "input": _tensor_io(schema, main, int(main.Inputs(0)), dtypes),
        "output": _tensor_io(schema, main, int(main.Outputs(0)), dtypes),
        "schema_version": int(model.Version()),
        "sparse_weights": _sparse_weights(model, main, op_names, dtypes),
        "output_step": _output_step(main, op_names),
    }
    return sorted(used), needs


def loadable_resolver(data: bytes, reference=None) -> tuple[str, dict[str, str]]:
    """The first of :data:`RESOLVERS` that runs ``data`` as the built-in kernels do (fresh processes).

    Quirks of ai-edge-litert 2.3 this catches:

    * the default XNNPACK delegate claims FULLY_CONNECTED and CONV_2D nodes whose
      int8 weights come from a DENSIFY op and then fails to prepare them
      ("failed to delegate ... failed to prepare"); such files need ``builtin``
      (BUILTIN_WITHOUT_DEFAULT_DELEGATES);
    * ``dynamic-sparse`` files whose FULLY_CONNECTED weights are block-sparse
      (per-channel int8, no DENSIFY) load under XNNPACK but give wrong outputs
      (about half the top-1 classes change); the built-in kernels are right, so
      these get ``builtin`` too;
    * ``fp16-sparse`` files with block-sparse FULLY_CONNECTED weights give NaN
      under both resolvers, so no setting is accepted and the export fails.

    Block-sparse int8 FULLY_CONNECTED weights (``int8-sparse``) are left to the
    built-in sparse kernel by XNNPACK and load with ``default``.

    ``reference``: the outputs on :func:`exporters.probe.probe_inputs` the file must give (a QAT
    model's): compared with it instead of with ``builtin``, whose int8 kernels round twice where
    XNNPACK and the QAT simulation round once (on PointNet the two resolvers differ by 22% of the
    output range on random inputs, so comparing them would pass over the default delegate).

    Example:
        >>> loadable_resolver(Path("m_int8-sparse.tflite").read_bytes())
        ('builtin', {'resolver=default': 'LiteRT cannot load ...', 'resolver=builtin': 'ok'})
    """
    setting, tried = probe.choose_setting(data, ".tflite", [{"resolver": r} for r in RESOLVERS], reference)
    if setting is None:
        raise EdgecompError("no LiteRT op resolver runs the converted file: "
                            + "; ".join(f"{k}: {v}" for k, v in tried.items()),
                            fix="export another variant (e.g. the dense one)")
    return setting["resolver"], tried


def check_block_shapes(data: bytes) -> None:
    """Refuse block-sparse FULLY_CONNECTED weights whose input size is not a multiple of the block.

    ai-edge-litert 2.3 (TF 2.21 converter): a float (1x4) or int8 (1x16)
    block-sparse FULLY_CONNECTED weight with a short last block (e.g. 75 inputs
    in 1x4 blocks, or 200 in 1x16 blocks) is written, loads, and computes wrong
    outputs (measured: errors as large as the outputs; on a small classifier
    top-1 still agreed, so the parity gate alone may miss it).
    """
    _, needs = read_tflite(data)
    for row in needs["sparse_weights"]:
        if row["kernel"] != "sparse" or not row["block"]:
            continue
        ragged = [(d, b) for d, b in zip(row["shape"], row["block"]) if b > 1 and d % b]
        if ragged:
            size, block = ragged[0]
            raise EdgecompError(
                f"LiteRT runs the block-sparse weight of {row['op']} '{row['tensor'].split(';')[0]}' wrongly: "
                f"its input size {size} is not a multiple of the {block}-wide blocks",
                fix="prune that layer with edgecomp.pruning.block_mask only where the size divides, "
                    "or export the dense variant")


class TFLiteExporter:
    """``tflite`` exporter; see the module docstring for the variants."""

    format = "tflite"
    suffix = ".tflite"
    variants = VARIANTS

    def convert(self, model, variant: Variant, calibration=None) -> bytes:
        variant = Variant.parse(self.format, variant)
        data = _convert(model, variant, calibration)
        if variant.sparse:
            check_block_shapes(data)
        return data

    def describe(self, data: bytes, reference=None) -> tuple[list[str], dict]:
        ops, needs = read_tflite(data)
        needs["resolver"], needs["load_check"] = loadable_resolver(data, reference)
        return ops, needs


base.register(TFLiteExporter())
