"""Encode named weight tensors into an ``.ecz`` container and decode them back (numpy only).

    >>> data = encode_weights({"fc/kernel": w, "fc/bias": b}, methods={"fc/kernel": "seed"})
    >>> meta, weights = decode_weights(data)

Methods (one byte in each tensor record):

* ``raw``  (0): float32 values, little-endian.
* ``seed`` (1): the seed's sparse int8 storage — uint8 relative index + int8 value per kept
  weight, fillers for gaps over 255, one float32 scale (see :mod:`edgecomp.codec.seed_index`).
"""

from __future__ import annotations

import numpy as np

from edgecomp.codec import seed_index
from edgecomp.codec.container import (MAX_ELEMENTS, TensorRecord, read_container,
                                      write_container)
from edgecomp.errors import ContainerError, EdgecompError
from edgecomp.quantization import dequantize_linear, quantize_linear

RAW, SEED = 0, 1
METHOD_IDS = {"raw": RAW, "seed": SEED}
METHOD_NAMES = {v: k for k, v in METHOD_IDS.items()}


def _encode_raw(name, w) -> TensorRecord:
    return TensorRecord(name, w.shape, RAW, (), (np.ascontiguousarray(w, "<f4").tobytes(),))


def _decode_raw(rec: TensorRecord) -> np.ndarray:
    if len(rec.streams) != 1 or len(rec.streams[0]) != 4 * rec.size:
        raise ContainerError(f"corrupt container: tensor {rec.name!r}: raw stream holds "
                             f"{sum(map(len, rec.streams))} bytes, expected {4 * rec.size}",
                             fix="re-create the file")
    return np.frombuffer(rec.streams[0], "<f4").astype(np.float32).reshape(rec.shape)


def _encode_seed(name, w) -> TensorRecord:
    t = seed_index.to_filter_major(w).ravel()
    positions = np.flatnonzero(t)
    q, scale = quantize_linear(t[positions], bits=8)
    gaps, slots = seed_index.encode_gaps(positions)
    values = np.zeros(len(gaps), dtype=np.int8)
    values[slots] = q
    return TensorRecord(name, w.shape, SEED, (float(scale),), (gaps.tobytes(), values.tobytes()))


def _decode_seed(rec: TensorRecord) -> np.ndarray:
    def bad(what):
        raise ContainerError(f"corrupt container: tensor {rec.name!r}: {what}", fix="re-create the file")

    if len(rec.streams) != 2 or len(rec.params) != 1:
        bad("seed method needs 2 streams and 1 scale")
    gaps = np.frombuffer(rec.streams[0], np.uint8)
    values = np.frombuffer(rec.streams[1], np.int8)
    if len(gaps) != len(values):
        bad(f"{len(gaps)} index entries but {len(values)} values")
    scale = np.float32(rec.params[0])
    if not np.isfinite(scale):
        bad("scale is not finite")
    positions = seed_index.decode_positions(gaps)
    if len(positions) and positions[-1] >= rec.size:
        bad(f"index runs to position {positions[-1]}, past the tensor's {rec.size} elements")
    fm_shape = tuple(rec.shape[a] for a in seed_index.filter_major_axes(len(rec.shape)))
    flat = np.zeros(rec.size, dtype=np.float32)
    flat[positions] = dequantize_linear(values, scale)
    return seed_index.from_filter_major(flat.reshape(fm_shape))


_ENCODERS = {"raw": _encode_raw, "seed": _encode_seed}
_DECODERS = {RAW: _decode_raw, SEED: _decode_seed}


def encode_tensor(name: str, w: np.ndarray, method: str = "raw") -> TensorRecord:
    if method not in _ENCODERS:
        raise EdgecompError(f"unknown coding method '{method}'", fix=f"use one of: {', '.join(_ENCODERS)}")
    w = np.asarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise EdgecompError(f"tensor {name} contains NaN or Inf", fix="compress a model with finite weights")
    return _ENCODERS[method](name, w)


def decode_tensor(rec: TensorRecord) -> np.ndarray:
    if rec.method not in _DECODERS:
        raise ContainerError(f"corrupt container: tensor {rec.name!r}: unknown method {rec.method}",
                             fix="decode it with the edgecomp version that wrote it")
    return _DECODERS[rec.method](rec)


def quantized_reference(w: np.ndarray, method: str) -> np.ndarray:
    """What decoding returns for ``w`` under ``method`` (for tests and reports)."""
    return decode_tensor(encode_tensor("w", w, method))


def encode_weights(weights: dict[str, np.ndarray], methods: dict[str, str] | None = None,
                   meta: dict | None = None) -> bytes:
    """Encode ``{name: array}`` (in order); ``methods`` maps names to a method (default ``raw``)."""
    methods = methods or {}
    records = [encode_tensor(name, w, methods.get(name, "raw")) for name, w in weights.items()]
    return write_container(dict(meta or {}), records)


def decode_weights(data: bytes, max_elements: int = MAX_ELEMENTS) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode container bytes into ``(meta, {name: float32 array})``; raises ContainerError only."""
    meta, records = read_container(data, max_elements=max_elements)
    out = {}
    for rec in records:
        if rec.name in out:
            raise ContainerError(f"corrupt container: tensor {rec.name!r} appears twice", fix="re-create the file")
        out[rec.name] = decode_tensor(rec)
    return meta, out


def tensor_records(data: bytes) -> list[TensorRecord]:
    """The validated tensor records of a container (for per-tensor size reports)."""
    return read_container(data)[1]


__all__ = ["encode_weights", "decode_weights", "encode_tensor", "decode_tensor", "tensor_records",
           "quantized_reference", "METHOD_IDS", "METHOD_NAMES"]
