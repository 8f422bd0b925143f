"""Encode named weight tensors into an ``.ecz`` container and decode them back (numpy only).

    >>> data = encode_weights({"fc/kernel": w, "fc/bias": b}, methods={"fc/kernel": "seed"})
    >>> meta, weights = decode_weights(data)

Methods (one byte in each tensor record; ``docs/FORMAT.md`` has the byte map):

* ``raw``  (0): float32 values, little-endian.
* ``seed`` (1): the seed's sparse int8 storage — uint8 relative index + int8 value per kept
  weight, fillers for gaps over 255, one float32 scale (see :mod:`edgecomp.codec.seed_index`).
* ``deep`` (2): Deep Compression — a float32 codebook, then relative-index gaps with
  fillers and per-weight codebook indices, both Huffman-coded (see :mod:`edgecomp.codec.deep`).
  Takes options: ``bits``, ``index_bits``, ``coder`` and ``codebook``:

    >>> encode_tensor("fc/kernel", shared_w, "deep", bits=5, index_bits=8, coder="huffman")
    >>> encode_weights(weights, {"fc/kernel": deep_spec(shared)})   # a SharedTensor

* ``f16`` (3), ``q8`` (4), ``const`` (5): compact storage of small dense tensors (half
  floats; 8-bit affine codes; one value). The pseudo-method ``compact`` (options ``tol``,
  ``allow``, ``scale``) picks the smallest of them whose decode keeps every value within ``tol``
  (relative, floored at the tensor's median magnitude), else ``raw`` (see
  :mod:`edgecomp.codec.compact`). Files that use them are version 2.1; a file without them is
  written as 2.0, byte for byte as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from edgecomp.codec import compact, deep, seed_index
from edgecomp.codec.container import (KIND_TENSOR, MAX_ELEMENTS, TensorRecord, read_container,
                                      write_container)
from edgecomp.errors import ContainerError, EdgecompError
from edgecomp.quantization import dequantize_linear, quantize_linear

RAW, SEED, DEEP = 0, 1, deep.METHOD_ID
F16, Q8, CONST = compact.F16, compact.Q8, compact.CONST
METHOD_IDS = {"raw": RAW, "seed": SEED, "deep": DEEP, "f16": F16, "q8": Q8, "const": CONST}
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


#: Method name -> encoder(name, w, **options). A new method takes the next free id.
_ENCODERS = {"raw": _encode_raw, "seed": _encode_seed, "deep": deep.encode, **compact.ENCODERS}
#: Method id -> decoder for a list of records (``deep`` decodes a batch in one pass).
_BATCH_DECODERS = {RAW: lambda recs: [_decode_raw(r) for r in recs],
                   SEED: lambda recs: [_decode_seed(r) for r in recs],
                   DEEP: deep.decode_records,
                   **{m: (lambda recs, f=f: [f(r) for r in recs]) for m, f in compact.DECODERS.items()}}
def _encode_compact(name, w, tol=compact.DEFAULT_TOL, allow=compact.ORDER, scale=None) -> TensorRecord:
    return compact.choose_record(name, w, tol, tuple(allow), scale) or _encode_raw(name, w)


_ENCODERS["compact"] = _encode_compact
#: Method name -> the options its encoder takes.
_OPTIONS = {"raw": (), "seed": (), "deep": deep.OPTIONS, "f16": (), "q8": (), "const": (),
            "compact": ("tol", "allow", "scale")}
#: Method name -> the names of its record's streams, in order (for size reports).
STREAM_NAMES = {"raw": ("values",), "seed": ("gaps", "values"), "deep": ("codebook", "gaps", "indices"),
                "f16": ("values",), "q8": ("codes",), "const": ()}
#: The bound compact storage holds by default (see :mod:`edgecomp.codec.compact`).
COMPACT_TOL = compact.DEFAULT_TOL


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A coding method with its options, usable wherever a method name is.

    Example:
        >>> encode_weights(weights, {"fc/kernel": MethodSpec("deep", {"bits": 5, "index_bits": 8})})
    """

    method: str
    options: Mapping = dataclasses.field(default_factory=dict)


def deep_spec(shared=None, *, bits: int | None = None, index_bits: int | None = None,
              coder: str = "huffman", codebook=None) -> MethodSpec:
    """The ``deep`` method for one kernel, from its weight-sharing result.

    ``shared`` is an :class:`edgecomp.weight_sharing.SharedTensor` (or anything with
    ``codebook`` and ``bits``): its codebook is stored as is, and the tensor coded must be
    its ``weights()``. ``index_bits=None`` takes the codec's default (8).

    Example:
        >>> specs = {path: deep_spec(st, coder="huffman") for path, st in shared.items()}
        >>> data = encode_weights(weights, specs)
    """
    opts = {"coder": coder}
    if shared is not None:
        opts.update(bits=int(shared.bits), codebook=np.asarray(shared.codebook, dtype=np.float32))
    if bits is not None:
        opts["bits"] = bits
    if codebook is not None:
        opts["codebook"] = np.asarray(codebook, dtype=np.float32)
    if index_bits is not None:
        opts["index_bits"] = index_bits
    return MethodSpec("deep", opts)


def encode_tensor(name: str, w: np.ndarray, method: str | MethodSpec = "raw", **options) -> TensorRecord:
    """Code one tensor with ``method`` (a name or a :class:`MethodSpec`) and its options.

    Example:
        >>> rec = encode_tensor("fc/kernel", w, "deep", bits=5, index_bits=8, coder="huffman")
    """
    if isinstance(method, MethodSpec):
        options = {**method.options, **options}
        method = method.method
    if method not in _ENCODERS:
        raise EdgecompError(f"unknown coding method '{method}'", fix=f"use one of: {', '.join(_ENCODERS)}")
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        takes = ", ".join(_OPTIONS[method])
        raise EdgecompError(f"method '{method}' " + (f"takes no options (got {', '.join(unknown)})" if not takes
                            else f"has no option {', '.join(unknown)}"),
                            fix=f"its options are: {takes}" if takes else "pass options to the deep method only")
    w = np.asarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise EdgecompError(f"tensor {name} contains NaN or Inf", fix="compress a model with finite weights")
    return _ENCODERS[method](name, w, **options)


def decode_tensor(rec: TensorRecord) -> np.ndarray:
    """Decode one record; raises ContainerError only."""
    return _decode_records([rec])[0]


def _decode_records(records: list[TensorRecord]) -> list[np.ndarray]:
    by_method: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        if rec.method not in _BATCH_DECODERS:
            raise ContainerError(f"corrupt container: tensor {rec.name!r}: unknown method {rec.method}",
                                 fix="decode it with the edgecomp version that wrote it")
        by_method.setdefault(rec.method, []).append(i)
    out: list = [None] * len(records)
    for method, idx in by_method.items():
        for i, arr in zip(idx, _BATCH_DECODERS[method]([records[i] for i in idx])):
            out[i] = arr
    return out


def quantized_reference(w: np.ndarray, method: str | MethodSpec, **options) -> np.ndarray:
    """What decoding returns for ``w`` under ``method`` (for tests and reports)."""
    return decode_tensor(encode_tensor("w", w, method, **options))


def encode_weights(weights: dict[str, np.ndarray], methods: Mapping[str, str | MethodSpec] | None = None,
                   meta: dict | None = None) -> bytes:
    """Encode ``{name: array}`` (in order); ``methods`` maps names to a method name or
    :class:`MethodSpec` (default ``raw``)."""
    methods = methods or {}
    records = [encode_tensor(name, w, methods.get(name, "raw")) for name, w in weights.items()]
    return write_container(dict(meta or {}), records)


def decode_weights(data: bytes, max_elements: int = MAX_ELEMENTS) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode container bytes into ``(meta, {name: float32 array})``; raises ContainerError only."""
    meta, records = read_container(data, max_elements=max_elements)
    return meta, weights_from_records(records)


def weights_from_records(records: list[TensorRecord]) -> dict[str, np.ndarray]:
    """``{name: float32 array}`` from parsed records (:func:`read_container`'s), names checked unique."""
    names = set()
    for rec in records:
        if rec.name in names:
            raise ContainerError(f"corrupt container: tensor {rec.name!r} appears twice", fix="re-create the file")
        names.add(rec.name)
    return {rec.name: arr for rec, arr in zip(records, _decode_records(records))}


def tensor_records(data: bytes) -> list[TensorRecord]:
    """The validated tensor records of a container (for per-tensor size reports)."""
    return read_container(data)[1]


def stream_shares(data: bytes) -> dict[str, int]:
    """A container's bytes by stream, summing to ``len(data)``: ``header`` (file and section
    headers), ``description`` (the deflated META), ``records`` (each tensor's name, shape,
    method, params and stream lengths) and ``METHOD:STREAM`` for every coded stream
    (``deep:codebook``, ``deep:gaps``, ``deep:indices``, ``seed:gaps``, ``raw:values``,
    ``f16:values``, ``q8:codes``, ...).

    Example:
        >>> shares = stream_shares(data)
        >>> sum(shares.values()) == len(data)
        True
    """
    from edgecomp.codec.container import section_spans
    out = {"header": 0, "description": 0, "records": 0}
    records = iter(read_container(data)[1])
    for kind, head, length in section_spans(data):
        out["header"] += head
        if kind == KIND_TENSOR:
            rec = next(records)
            method = METHOD_NAMES.get(rec.method, str(rec.method))
            names = STREAM_NAMES.get(method, ())
            for i, s in enumerate(rec.streams):
                key = f"{method}:{names[i] if i < len(names) else i}"
                out[key] = out.get(key, 0) + len(s)
            out["records"] += length - rec.stream_bytes
        else:
            out["description"] += length
    return out


__all__ = ["encode_weights", "decode_weights", "weights_from_records", "read_container", "encode_tensor", "decode_tensor", "tensor_records",
           "quantized_reference", "deep_spec", "MethodSpec", "METHOD_IDS", "METHOD_NAMES", "STREAM_NAMES",
           "COMPACT_TOL", "stream_shares"]
