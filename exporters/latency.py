"""Measured latency of a Keras model as an exported file: what a latency target searches against.

The compression core runs no runtime, so a structured-pruning latency target gets its measure
from here: the model is exported (TFLite fp32 by default, the file every delegate runs), then
timed by :func:`runtime_bench.bench_file` in a fresh process under a target profile.

    >>> measure = latency_measure("mobile-big", x_test[:1])
    >>> measure(model)               # median ms at batch 1
    0.191
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgecomp.errors import EdgecompError

from .base import export


def latency_measure(profile: str, x: np.ndarray, *, fmt: str = "tflite", variant: str = "fp32",
                    runs: int = 100, min_time_s: float = 0.5, calibration: np.ndarray | None = None):
    """A function ``Keras model -> median ms`` (batch 1) on the runtime_bench target ``profile``.

    Args:
        profile: a :data:`runtime_bench.TARGETS` name (``desktop``, ``mobile-big``, ...); an
            unknown one raises here, before any work.
        x: inputs shaped like the model's (the first row is timed).
        fmt, variant: the file to time; calibrated variants need ``calibration``.
        runs, min_time_s: at least this many timed runs and seconds per measurement.
    """
    import runtime_bench

    from .variants import Variant

    v = Variant.parse(fmt, variant)
    target = runtime_bench.get_target(profile)
    x = np.asarray(x, np.float32)[:1]

    def measure(model) -> float:
        with tempfile.TemporaryDirectory(prefix="edgecomp-latency-") as tmp:
            path = Path(tmp) / v.filename("probe")
            export(model, v.format, v, path, calibration=calibration)
            rec = runtime_bench.bench_file(path, x, None, target=target, runs=runs, min_time_s=min_time_s,
                                           task=None)
        if rec.get("error") or rec.get("median_ms") is None:
            raise EdgecompError(f"could not time the {fmt} {variant} file on {profile}: {rec.get('error')}",
                                fix="check that the model exports, or use --target-macs instead")
        return float(rec["median_ms"])

    return measure
