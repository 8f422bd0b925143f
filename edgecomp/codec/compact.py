"""Compact storage for the small float tensors a pruned net keeps dense (numpy only).

BatchNorm parameters, biases and any kernel the recipe left uncoded are stored as raw float32
unless a smaller form reproduces them within a bound. Three methods, each one record:

* ``f16``   (3): IEEE half floats, little-endian; one stream of ``2 * size`` bytes, no params.
* ``q8``    (4): 8-bit affine: one stream of ``size`` uint8 codes, params ``(low, step)``;
  a value decodes as ``float32(low) + float32(code) * float32(step)``.
* ``const`` (5): every element the same: no stream, params ``(value,)``; at most
  :data:`MAX_CONST_ELEMENTS` elements (a few bytes must not declare a huge tensor).

:func:`choose` picks, per tensor, the smallest of those whose decoded values ``q`` meet the
bound ``|q_i - w_i| <= tol * max(|w_i|, median|w|)`` for every element, measured on the real
decode: each value keeps its own relative precision, and values below the tensor's median
magnitude are held to the median's (one outlier cannot loosen the bound for the rest, as a
bound relative to ``max|w|`` would). A tensor none of them meets stays ``raw``. The default
``tol = 2**-10`` admits fp16 for any tensor in its normal range (its error is at most
``2**-11`` of each value), 8-bit only for a tensor whose values span about half its median
magnitude or less (e.g. variances near 1), and ``const`` for a constant one.

    >>> choose(np.array([0.5, 0.25, -1.0], np.float32))
    'f16'
    >>> choose(np.ones(16, np.float32))
    'const'
"""

from __future__ import annotations

import numpy as np

from edgecomp.codec.container import TensorRecord
from edgecomp.errors import ContainerError, EdgecompError

F16, Q8, CONST = 3, 4, 5
#: The bound :func:`choose` applies unless told otherwise (see :func:`within`).
DEFAULT_TOL = 2.0 ** -10
#: A ``const`` record holds no bytes per element: it may declare at most this many.
MAX_CONST_ELEMENTS = 1 << 20
_F16_MAX = float(np.finfo(np.float16).max)
#: Smallest first: the order :func:`choose` tries.
ORDER = ("const", "q8", "f16")


def _bad(rec: TensorRecord, what: str):
    raise ContainerError(f"corrupt container: tensor {rec.name!r}: {what}", fix="re-create the file")


def encode_f16(name: str, w: np.ndarray) -> TensorRecord:
    if w.size and float(np.abs(w).max()) > _F16_MAX:
        raise EdgecompError(f"tensor {name} holds values past the float16 range (±{_F16_MAX:g})",
                            fix="store it raw (method 'raw'), or let compact.choose pick")
    return TensorRecord(name, w.shape, F16, (), (np.ascontiguousarray(w, "<f2").tobytes(),))


def decode_f16(rec: TensorRecord) -> np.ndarray:
    if len(rec.streams) != 1 or rec.params or len(rec.streams[0]) != 2 * rec.size:
        _bad(rec, f"f16 method needs 1 stream of {2 * rec.size} bytes and no params")
    return np.frombuffer(rec.streams[0], "<f2").astype(np.float32).reshape(rec.shape)


def _q8_grid(w: np.ndarray) -> tuple[np.float32, np.float32]:
    lo, hi = (np.float32(w.min()), np.float32(w.max())) if w.size else (np.float32(0), np.float32(0))
    step = np.float32((np.float64(hi) - np.float64(lo)) / 255.0)
    return lo, step


def encode_q8(name: str, w: np.ndarray) -> TensorRecord:
    lo, step = _q8_grid(w)
    if not np.isfinite(step):
        raise EdgecompError(f"tensor {name} spans too wide a range for 8-bit storage", fix="store it raw")
    codes = np.zeros(w.shape, np.uint8) if step == 0 else np.clip(
        np.rint((w.astype(np.float64) - np.float64(lo)) / np.float64(step)), 0, 255).astype(np.uint8)
    return TensorRecord(name, w.shape, Q8, (float(lo), float(step)), (codes.tobytes(),))


def decode_q8(rec: TensorRecord) -> np.ndarray:
    if len(rec.streams) != 1 or len(rec.params) != 2 or len(rec.streams[0]) != rec.size:
        _bad(rec, f"q8 method needs 1 stream of {rec.size} bytes and 2 params (low, step)")
    lo, step = np.float32(rec.params[0]), np.float32(rec.params[1])
    if not (np.isfinite(lo) and np.isfinite(step)) or step < 0:
        _bad(rec, "q8 low/step are not finite, or the step is negative")
    codes = np.frombuffer(rec.streams[0], np.uint8).astype(np.float32)
    with np.errstate(over="ignore"):
        out = (lo + codes * step).reshape(rec.shape)
    if not np.isfinite(out).all():
        _bad(rec, "q8 values overflow float32")
    return out


def encode_const(name: str, w: np.ndarray, value: float | None = None) -> TensorRecord:
    if w.size > MAX_CONST_ELEMENTS:
        raise EdgecompError(f"tensor {name} has {w.size} elements, over the const method's {MAX_CONST_ELEMENTS}",
                            fix="store it with another method")
    if value is None:
        value = float(w.flat[0]) if w.size else 0.0
    return TensorRecord(name, w.shape, CONST, (float(np.float32(value)),), ())


def decode_const(rec: TensorRecord) -> np.ndarray:
    if rec.streams or len(rec.params) != 1:
        _bad(rec, "const method needs no streams and 1 param")
    if rec.size > MAX_CONST_ELEMENTS:
        _bad(rec, f"const tensor declares {rec.size} elements, over {MAX_CONST_ELEMENTS}")
    value = np.float32(rec.params[0])
    if not np.isfinite(value):
        _bad(rec, "const value is not finite")
    return np.full(rec.shape, value, np.float32)


ENCODERS = {"f16": encode_f16, "q8": encode_q8, "const": encode_const}
DECODERS = {F16: decode_f16, Q8: decode_q8, CONST: decode_const}


def _fits(name: str, w: np.ndarray, method: str, tol: float, scale=None) -> TensorRecord | None:
    """``method``'s record for ``w`` if its decode meets the bound, else None."""
    if method == "const":
        if w.size > MAX_CONST_ELEMENTS:
            return None
        # The value nearest every element: the midrange (the bound is on the worst element).
        value = float(np.float32((np.float64(w.min()) + np.float64(w.max())) / 2)) if w.size else 0.0
        rec = encode_const(name, w, value)
    elif method == "f16":
        if w.size and float(np.abs(w).max()) > _F16_MAX:
            return None
        rec = encode_f16(name, w)
    else:
        lo, step = _q8_grid(w)
        if not np.isfinite(step):
            return None
        rec = encode_q8(name, w)
    return rec if within(w, DECODERS[rec.method](rec), tol, scale) else None


def within(w: np.ndarray, q: np.ndarray, tol: float, scale=None) -> bool:
    """Whether ``q`` meets the bound for ``w``: ``|q_i - w_i| <= tol * max(|w_i|, median|w|)``,
    or ``<= tol * scale_i`` where the caller knows each element's own error scale (e.g. a
    BatchNorm shift's, in units of its channel's output spread: :func:`edgecomp.fold.storage_form`)."""
    if not w.size:
        return True
    if scale is None:
        mag = np.abs(w.astype(np.float64))
        limit = tol * np.maximum(mag, float(np.median(mag)))
    else:
        limit = tol * np.broadcast_to(np.asarray(scale, np.float64), w.shape)
    return bool(np.all(np.abs(q.astype(np.float64) - w.astype(np.float64)) <= limit))


def choose_record(name: str, w: np.ndarray, tol: float = DEFAULT_TOL,
                  allow: tuple[str, ...] = ORDER, scale=None) -> TensorRecord | None:
    """The smallest allowed compact record for ``w`` within the bound (:func:`within`, with
    ``scale`` when given), or None (store it raw).

    Example:
        >>> choose_record("bn/beta", np.linspace(-1, 1, 8, dtype=np.float32)).method   # f16
        3
    """
    tol = float(tol)
    if not np.isfinite(tol) or tol < 0:
        raise EdgecompError(f"compact-storage bound must be a finite number >= 0, got {tol}",
                            fix="pass e.g. tol=2**-10 (each value within 0.1%)")
    unknown = sorted(set(allow) - set(ORDER))
    if unknown:
        raise EdgecompError(f"unknown compact method {unknown[0]!r}", fix=f"use some of: {', '.join(ORDER)}")
    w = np.asarray(w, np.float32)
    for method in ORDER:
        if method in allow:
            rec = _fits(name, w, method, tol, scale)
            if rec is not None:
                return rec
    return None


def choose(w: np.ndarray, tol: float = DEFAULT_TOL, allow: tuple[str, ...] = ORDER) -> str:
    """The name of the method :func:`choose_record` picks for ``w`` (``raw`` when none fits)."""
    rec = choose_record("w", w, tol, allow)
    return "raw" if rec is None else {F16: "f16", Q8: "q8", CONST: "const"}[rec.method]
