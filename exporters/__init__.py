"""Keras model -> .tflite / .onnx files, each checked against the Keras model.

    >>> from exporters import export_and_check
    >>> art = export_and_check(model, "tflite", "int8", "out/m_int8.tflite",
    ...                        calibration=x_train[:200], check_x=x_test[:500], check_y=y_test[:500])
    >>> art.parity["top1_agreement"]
    0.998

Formats and their variants are in :data:`VARIANTS`, named
``<precision>[-floatio][-sparse]`` (``fp32``, ``fp16``, ``dynamic``, ``int8``,
``int8-floatio``, each also ``-sparse``; ONNX has ``fp32``, ``int8``, ``dynamic``
and their ``-sparse`` forms; both have ``int16x8``: int8 weights, int16 activations).
A name means the same precision in every format,
so one ``--variants`` list can be applied to each format that offers it. Every
file is load-probed in a fresh process before it is written:
``art.needs["resolver"]`` (LiteRT) or ``art.needs["optimization"]`` (ONNX
Runtime) is the setting it runs correctly with, ``art.needs["load_check"]``
what each setting tried gave.
"""

from .base import VARIANTS, Artifact, export
from . import onnx as _onnx  # noqa: F401  (registers the "onnx" exporter)
from . import tflite as _tflite  # noqa: F401  (registers the "tflite" exporter)
from .parity import ParityError, check_parity, export_and_check

__all__ = ["Artifact", "export", "export_and_check", "check_parity", "ParityError", "VARIANTS"]
