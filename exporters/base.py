"""The exporter interface: one :class:`Exporter` per file format, one :func:`export` call.

An exporter turns a Keras model into the bytes of one file format (``tflite``,
``onnx``) in one variant (``fp32``, ``int8``, ...) and says what the bytes hold
(the op names) and what running them needs (runtime, I/O dtypes, opset).
:func:`export` writes the file atomically and returns an :class:`Artifact`.

    >>> from exporters import export
    >>> art = export(model, "tflite", "int8", "out/model_int8.tflite", calibration=x_train[:200])
    >>> art.bytes, art.gzip_bytes, art.ops[:3]
    (10344, 7101, ['CONV_2D', 'FULLY_CONNECTED', 'MAX_POOL_2D'])
"""

from __future__ import annotations

import gzip
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgecomp import io
from edgecomp.errors import EdgecompError

from .variants import SUFFIXES, VARIANTS, Variant


@dataclass
class Artifact:
    """One exported model file and what is known about it.

    ``bytes`` is the file size, ``gzip_bytes`` the size after ``gzip`` level 9
    (a proxy for download size), ``ops`` the sorted unique operator names in the
    file, ``needs`` what running it takes (runtime, I/O dtypes, opset, the
    runtime setting it loads with: ``resolver`` for LiteRT, ``optimization``
    for ONNX Runtime; ``load_check`` has each setting tried) and ``parity``
    the figures of :func:`exporters.check_parity` once checked.

    Example:
        >>> json.dumps(art.to_dict())   # paths become strings
    """

    path: Path
    format: str
    variant: str
    bytes: int
    gzip_bytes: int
    ops: list[str] = field(default_factory=list)
    needs: dict = field(default_factory=dict)
    parity: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``path`` as a string)."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class Exporter(Protocol):
    """What a format module registers with :func:`register`.

    ``variants`` are the names it offers; ``convert`` gets one of them as a
    :class:`~exporters.variants.Variant` and returns the file's bytes; ``describe``
    reads those bytes back and returns ``(ops, needs)``.
    """

    format: str
    suffix: str
    variants: tuple[str, ...]

    def convert(self, model, variant: Variant, calibration: np.ndarray | None) -> bytes: ...

    def describe(self, data: bytes, reference=None) -> tuple[list[str], dict]: ...


_REGISTRY: dict[str, Exporter] = {}


def register(exporter: Exporter) -> Exporter:
    """Add ``exporter`` under its ``format`` name (a later one replaces an earlier)."""
    _REGISTRY[exporter.format] = exporter
    VARIANTS[exporter.format] = tuple(exporter.variants)
    SUFFIXES[exporter.format] = exporter.suffix
    return exporter


def get_exporter(fmt: str, variant: str | Variant | None = None) -> Exporter:
    """The exporter for ``fmt``; a one-line EdgecompError for unknown formats/variants."""
    if variant is not None:
        Variant.parse(fmt, variant)
    exporter = _REGISTRY.get(fmt)
    if exporter is None:
        raise EdgecompError(f"unknown export format '{fmt}'",
                            fix=f"use one of: {', '.join(sorted(_REGISTRY))}")
    return exporter


def gzip_size(data: bytes) -> int:
    """Length of ``data`` gzipped at level 9 (mtime fixed, so it is reproducible)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def build_artifact(exporter: Exporter, variant: str | Variant, path: Path, data: bytes, reference=None) -> Artifact:
    """Describe ``data`` (to be written, or already written, at ``path``) as an :class:`Artifact`;
    ``reference``: the outputs the file must give on the load probe's inputs (a QAT model's)."""
    ops, needs = exporter.describe(data, reference=reference)
    return Artifact(path=Path(path), format=exporter.format, variant=str(variant), bytes=len(data),
                    gzip_bytes=gzip_size(data), ops=ops, needs=needs, parity=None)


def check_calibration(model, calibration, variant: Variant) -> np.ndarray:
    """``calibration`` as float32 ``(N, *input shape)``, or a one-line EdgecompError.

    Example:
        >>> x = check_calibration(model, x_train[:200], Variant.parse("onnx", "int8"))
    """
    if calibration is None:
        raise EdgecompError(f"the {variant.format} {variant.name} variant needs calibration data",
                            fix="pass calibration= a float32 array of ~200 training inputs")
    x = np.asarray(calibration, dtype=np.float32)
    want = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(want) + 1 or any(w is not None and w != g for w, g in zip(want, x.shape[1:])):
        raise EdgecompError(f"calibration data has shape {x.shape}, the model takes (N, {', '.join(map(str, want))})",
                            fix="pass inputs shaped like the model's, N first")
    if len(x) == 0:
        raise EdgecompError("calibration data is empty", fix="pass ~200 training inputs")
    return x


#: Precisions a quantization-aware-trained model exports on its trained ranges (no calibration).
QAT_PRECISIONS = ("int8", "int8-floatio")


def model_for(model, variant: Variant) -> tuple[object, bool]:
    """``(the model variant's file is made from and compared with, on trained QAT ranges?)``.

    A QAT model (:func:`edgecomp.qat.quantize_model`) exports its int8 variants as it is, and
    every other variant from the float model it wraps (fp16, dynamic and int16x8 have numerics
    of their own, which the int8 simulation does not describe).
    """
    from edgecomp.qat import float_model, is_qat

    if not is_qat(model):
        return model, False
    if variant.precision in QAT_PRECISIONS:
        return model, True
    return float_model(model), False


def convert_to_bytes(model, fmt: str, variant: str | Variant,
                     calibration: np.ndarray | None = None) -> tuple[Exporter, bytes]:
    """Convert without writing; returns the exporter used and the file's bytes.

    Calibrated variants (``int8*``, ``int16x8``) convert a copy with constant BatchNorm channels
    settled and ReLU -> BatchNorm channel ranges equalized (:mod:`exporters.prepare` says why).
    A QAT model's int8 variants use its trained ranges instead (:func:`model_for`).
    """
    variant = Variant.parse(fmt, variant)
    exporter = get_exporter(fmt)
    model, trained = model_for(model, variant)
    if trained:
        return exporter, exporter.convert(model, variant, None)
    if variant.calibrated and calibration is not None:
        from .prepare import equalize_relu_batchnorm, settle_constant_channels
        x = check_calibration(model, calibration, variant)
        model = equalize_relu_batchnorm(settle_constant_channels(model, x), x)
    return exporter, exporter.convert(model, variant, calibration)


def _probe_reference(model, variant: Variant):
    """A QAT model's outputs on the load probe's inputs, for its int8 files (else None)."""
    model, trained = model_for(model, variant)
    if not trained:
        return None
    from edgecomp.train import predict

    from .probe import probe_inputs
    return predict(model, probe_inputs(model.inputs[0].shape))


def export(model, fmt: str, variant: str | Variant, out_path: str | os.PathLike,
           calibration: np.ndarray | None = None) -> Artifact:
    """Convert ``model`` to ``fmt``/``variant`` and write it atomically to ``out_path``.

    ``calibration`` (float32, shaped like the model input, N first; e.g. 200
    training images) is needed by the statically quantized variants (``int8*``, ``int16x8``).

    Example:
        >>> art = export(model, "onnx", "fp32", "out/model.onnx")
        >>> art.ops
        ['Conv', 'MatMul', 'MaxPool', ...]
    """
    exporter, data = convert_to_bytes(model, fmt, variant, calibration)
    reference = _probe_reference(model, Variant.parse(fmt, variant))
    # Described (and load-probed) before writing, so a file no runtime setting
    # loads is never written.
    artifact = build_artifact(exporter, variant, Path(out_path), data, reference=reference)
    io.write_bytes(out_path, data)
    return artifact


def suffix_of(fmt: str) -> str:
    """File suffix for ``fmt`` (``.tflite``, ``.onnx``)."""
    return get_exporter(fmt).suffix
