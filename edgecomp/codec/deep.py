"""The ``deep`` coding method: Deep Compression's sparse, weight-shared storage (numpy only).

A pruned tensor whose nonzero weights take at most ``2**bits`` distinct values (the
codebook that weight sharing produced) is stored, in filter-major order
(:mod:`edgecomp.codec.seed_index`), as three streams:

* the codebook: ``k <= 2**bits`` float32 values, little-endian;
* the gap stream: relative indices in ``index_bits``-bit symbols with fillers, as in
  the paper. With ``M = 2**index_bits - 1``, a symbol ``s < M`` is a kept weight
  ``s + 1`` positions after the previous one (the first counts from position -1);
  ``s == M`` is a filler: advance ``M`` positions, no weight. A gap ``g`` is written
  as ``(g - 1) // M`` fillers, then ``(g - 1) % M``. Fillers carry no centroid index
  (the paper's filler has a zero index; here it costs nothing in the index stream);
* the index stream: each kept weight's codebook index.

Both symbol streams are entropy-coded with the record's coder: ``huffman`` (canonical
Huffman, :mod:`edgecomp.codec.huffman`) or ``fixed`` (plain fixed-width fields of
``index_bits`` and ``bits`` bits, the paper's uncoded baseline). The record's params are
``(bits, index_bits, coder id)``. Decoding reproduces the weight-shared input exactly.

    >>> w = np.array([[0, 0.5], [-0.25, 0], [0, 0.5]], np.float32)
    >>> rec = encode("fc", w, bits=2, index_bits=2)
    >>> decode_records([rec])[0].tolist()
    [[0.0, 0.5], [-0.25, 0.0], [0.0, 0.5]]
"""

from __future__ import annotations

import numpy as np

from edgecomp.codec import huffman
from edgecomp.codec.container import TensorRecord
from edgecomp.codec.seed_index import filter_major_axes, to_filter_major
from edgecomp.errors import ContainerError, EdgecompError

METHOD_ID = 2
#: Coder name -> id stored in the record's third param.
CODERS = {"fixed": 0, "huffman": 1}
CODER_NAMES = {v: k for k, v in CODERS.items()}
DEFAULT_BITS = 5
#: Default gap width: with Huffman, wide gaps cost little and leave few fillers.
DEFAULT_INDEX_BITS = 8
MAX_BITS = 8
#: The keyword options of :func:`encode`.
OPTIONS = ("bits", "index_bits", "coder", "codebook", "block")


def _check_option(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise EdgecompError(f"deep coding: {name} must be an integer in {lo}..{hi}, got {value!r}",
                            fix=f"pass {name} between {lo} and {hi}")
    return int(value)


def _codebook_indices(name: str, values: np.ndarray, bits: int, codebook) -> tuple[np.ndarray, np.ndarray]:
    """(float32 codebook, index of every value in it); every value must be a codebook entry."""
    distinct, inverse = np.unique(values, return_inverse=True)     # sorted; a sort beats a search
    if codebook is None:
        if len(distinct) > 1 << bits:
            raise EdgecompError(f"tensor {name} has {len(distinct)} distinct nonzero values, more than the "
                                f"{1 << bits} that {bits}-bit indices can address",
                                fix="weight-share it first (edgecomp.weight_sharing) or raise bits")
        return distinct.astype(np.float32), inverse.ravel()
    book = np.asarray(codebook, dtype=np.float32).ravel()
    if len(book) > 1 << bits:
        raise EdgecompError(f"tensor {name}: codebook has {len(book)} entries, more than 2**{bits}",
                            fix="pass a smaller codebook or raise bits")
    if not np.isfinite(book).all():
        raise EdgecompError(f"tensor {name}: codebook contains NaN or Inf", fix="pass a finite codebook")
    if not len(values):
        return book, np.zeros(0, dtype=np.int64)
    order = np.argsort(book, kind="stable")
    j = np.minimum(np.searchsorted(book[order], distinct), len(book) - 1) if len(book) else None
    if j is None or np.any(book[order][j] != distinct):
        bad = distinct[0] if j is None else distinct[np.flatnonzero(book[order][j] != distinct)[0]]
        raise EdgecompError(f"tensor {name}: weight {float(bad)!r} is not a codebook entry",
                            fix="pass the weight-shared tensor (codebook[assignment]) with its codebook")
    return book, order[j][inverse.ravel()]


def gap_symbols(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Sorted flat positions -> gap symbols (uint16) with fillers, for ``index_bits``-bit symbols.

    Example:
        >>> gap_symbols(np.array([0, 3, 20]), 3).tolist()    # M = 7: 20 is 17 after 3
        [0, 2, 7, 7, 2]
    """
    m = (1 << index_bits) - 1
    g = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1   # gap - 1 >= 0
    fillers = g // m
    if not fillers.any():
        return g.astype(np.uint16)
    out = np.full(len(g) + int(fillers.sum()), m, dtype=np.uint16)
    out[np.arange(len(g)) + np.cumsum(fillers)] = g - fillers * m
    return out


def encode(name: str, w: np.ndarray, *, bits: int = DEFAULT_BITS, index_bits: int | None = None,
           coder: str = "huffman", codebook=None, block: int = huffman.DEFAULT_BLOCK) -> TensorRecord:
    """Code a pruned, weight-shared float32 tensor ``w`` (zeros are pruned weights).

    ``codebook`` (optional, float32, at most ``2**bits`` entries) fixes the stored codebook;
    every nonzero of ``w`` must equal one of its entries exactly. Without it the codebook is
    the sorted distinct nonzero values of ``w``. ``index_bits`` (1..8, default 8) is the gap
    symbol width, ``coder`` one of ``huffman``, ``fixed`` and ``auto`` (whichever is smaller for
    this tensor: tiny tensors may not pay for Huffman's tables), ``block`` the Huffman block size.
    """
    bits = _check_option("bits", bits, 1, MAX_BITS)
    index_bits = _check_option("index_bits", DEFAULT_INDEX_BITS if index_bits is None else index_bits,
                               1, MAX_BITS)
    block = _check_option("block", block, 1, huffman.MAX_BLOCK)
    if coder not in CODERS and coder != "auto":
        raise EdgecompError(f"unknown entropy coder '{coder}'", fix=f"use one of: {', '.join(CODERS)}, auto")
    w = np.asarray(w, dtype=np.float32)
    # Compare in filter-major order (no float copy of the transposed tensor), then gather
    # the kept values from the tensor's own layout.
    positions = np.flatnonzero(to_filter_major(w) != 0)
    book, idx = _codebook_indices(name, w.ravel()[_flat_positions(positions, w.shape)], bits, codebook)
    gaps = gap_symbols(positions, index_bits)
    coded = {}
    if coder in ("huffman", "auto"):
        coded["huffman"] = (huffman.encode(gaps, block=block), huffman.encode(idx, block=block))
    if coder in ("fixed", "auto"):
        coded["fixed"] = (huffman.encode_fixed(gaps, index_bits), huffman.encode_fixed(idx, bits))
    coder = min(coded, key=lambda c: sum(map(len, coded[c])))      # "auto": the smaller one
    streams = coded[coder]
    return TensorRecord(name, tuple(int(d) for d in np.shape(w)), METHOD_ID,
                        (float(bits), float(index_bits), float(CODERS[coder])),
                        (book.astype("<f4").tobytes(),) + streams)


def _flat_positions(fm_pos: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Filter-major flat positions -> flat positions in the tensor's own (C) layout."""
    if len(shape) < 2:
        return fm_pos
    axes = filter_major_axes(len(shape))
    strides = np.cumprod((1,) + shape[:0:-1])[::-1]          # C strides in elements
    if len(shape) == 2:                                        # (in, out) stored as (out, in)
        o, i = np.divmod(fm_pos, shape[0])
        return i * shape[1] + o
    flat = np.zeros(len(fm_pos), dtype=np.int64)
    rem = fm_pos
    for k in range(len(shape) - 1, -1, -1):
        rem, r = np.divmod(rem, shape[axes[k]])
        flat += r * int(strides[axes[k]])
    return flat


class _Job:
    __slots__ = ("rec", "bits", "index_bits", "coder", "book", "gaps", "idx")


def _fail(rec: TensorRecord, what: str):
    raise ContainerError(f"corrupt container: tensor {rec.name!r}: {what}", fix="re-create the file")


def _start(rec: TensorRecord) -> _Job:
    """Validate a record's params and codebook."""
    if len(rec.params) != 3 or len(rec.streams) != 3:
        _fail(rec, f"deep method needs 3 params and 3 streams, found {len(rec.params)} and {len(rec.streams)}")
    bits, index_bits, coder = rec.params
    for label, v in (("bits", bits), ("index bits", index_bits)):
        if not np.isfinite(v) or v != int(v) or not 1 <= v <= MAX_BITS:
            _fail(rec, f"{label} {v} is not an integer in 1..{MAX_BITS}")
    if not np.isfinite(coder) or coder not in CODER_NAMES:
        _fail(rec, f"unknown entropy coder id {coder}")
    job = _Job()
    job.rec, job.bits, job.index_bits, job.coder = rec, int(bits), int(index_bits), CODER_NAMES[int(coder)]
    raw = rec.streams[0]
    if len(raw) % 4 or len(raw) // 4 > 1 << job.bits:
        _fail(rec, f"codebook holds {len(raw)} bytes, expected 4 per entry and at most {1 << job.bits} entries")
    job.book = np.frombuffer(raw, "<f4").astype(np.float32)
    if not np.isfinite(job.book).all():
        _fail(rec, "codebook contains NaN or Inf")
    return job


def _finish(job: _Job) -> np.ndarray:
    rec, m = job.rec, (1 << job.index_bits) - 1
    s = job.gaps
    filler = s == m
    if not filler.any():
        positions = np.cumsum(s, dtype=np.int64)
        positions += np.arange(len(s))                      # each kept weight advances s + 1
    else:
        if filler[-1]:
            _fail(rec, "gap stream ends in a filler")
        ends = np.cumsum(np.where(filler, m, s.astype(np.int64) + 1))
        positions = ends[~filler] - 1
    if len(positions) != len(job.idx):
        _fail(rec, f"gap stream has {len(positions)} kept weights, index stream {len(job.idx)}")
    if len(positions) and positions[-1] >= rec.size:
        _fail(rec, f"index runs to position {int(positions[-1])}, past the tensor's {rec.size} elements")
    out = np.zeros(rec.size, dtype=np.float32)
    out[_flat_positions(positions, rec.shape)] = job.book[job.idx]
    return out.reshape(rec.shape)


def decode_records(records: list[TensorRecord]) -> list[np.ndarray]:
    """Decode ``deep`` records; all Huffman streams are decoded in one lock-step pass.

    Raises ContainerError (naming the tensor) for anything invalid.
    """
    jobs = [_start(rec) for rec in records]
    coded = [j for j in jobs if j.coder == "huffman"]
    streams, limits, alphabets = [], [], []
    for j in coded:
        streams += [j.rec.streams[1], j.rec.streams[2]]
        limits += [j.rec.size, j.rec.size]
        alphabets += [1 << j.index_bits, len(j.book)]
    try:
        symbols = huffman.decode_many(streams, limits, alphabets)
    except ContainerError:
        # Error path only: decode the streams one by one to name the tensor and stream.
        for k, (data, limit, alphabet) in enumerate(zip(streams, limits, alphabets)):
            try:
                huffman.decode(data, max_symbols=limit, alphabet=alphabet)
            except ContainerError as inner:
                _fail(coded[k // 2].rec, f"{('gap', 'index')[k % 2]} stream: {inner.problem}")
        raise
    for n, j in enumerate(coded):
        j.gaps, j.idx = symbols[2 * n], symbols[2 * n + 1]
    for j in jobs:
        if j.coder == "fixed":
            try:
                j.gaps = huffman.decode_fixed(j.rec.streams[1], max_symbols=j.rec.size,
                                              alphabet=1 << j.index_bits)
                j.idx = huffman.decode_fixed(j.rec.streams[2], max_symbols=j.rec.size, alphabet=len(j.book))
            except ContainerError as exc:
                _fail(j.rec, f"fixed-width stream: {exc.problem}")
    return [_finish(j) for j in jobs]


__all__ = ["encode", "decode_records", "gap_symbols", "CODERS", "DEFAULT_BITS", "DEFAULT_INDEX_BITS"]
