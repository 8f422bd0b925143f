"""Linear (symmetric, per-tensor) quantization, as in the seed: ``q = round(w / s)``,
``s = max|w| / (2**(bits-1) - 1)``. Numpy only.

    >>> q, s = quantize_linear(np.array([0.5, -1.0, 0.25], np.float32))
    >>> q, float(s)
    (array([  64, -127,   32], dtype=int8), 0.007874015718698502)
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import EdgecompError


def quantize_linear(values: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.float32]:
    """Quantize ``values`` to signed ``bits``-bit integers with one float32 scale."""
    if not 2 <= bits <= 8:
        raise EdgecompError(f"linear quantization bits must be in 2..8, got {bits}", fix="use --bits 8")
    v = np.asarray(values, dtype=np.float32)
    qmax = 2 ** (bits - 1) - 1
    vmax = float(np.max(np.abs(v))) if v.size else 0.0
    scale = np.float32(vmax / qmax) if vmax > 0 else np.float32(1.0)
    q = np.clip(np.rint(v / scale), -qmax, qmax).astype(np.int8)
    return q, scale


def dequantize_linear(q: np.ndarray, scale) -> np.ndarray:
    return q.astype(np.float32) * np.float32(scale)
