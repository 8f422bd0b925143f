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
Huffman, :mod:`edgecomp.codec.huffman`, decoded by vectorised numpy), ``deflate``
(canonical Huffman as RFC 1951 defines it: a raw deflate stream written with zlib's
Huffman-only strategy, so no LZ77 matches; inflated by ISA-L, the ``isal`` package, where it
is installed, else by the standard library's zlib, which every device has) or ``fixed``
(plain fixed-width fields of ``index_bits`` and ``bits`` bits, the paper's uncoded baseline). The record's params are
``(bits, index_bits, coder id)``. Decoding reproduces the weight-shared input exactly.

    >>> w = np.array([[0, 0.5], [-0.25, 0], [0, 0.5]], np.float32)
    >>> rec = encode("fc", w, bits=2, index_bits=2)
    >>> decode_records([rec])[0].tolist()
    [[0.0, 0.5], [-0.25, 0.0], [0.0, 0.5]]
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from edgecomp.codec import huffman
from edgecomp.codec.container import TensorRecord
from edgecomp.codec.seed_index import filter_major_axes, to_filter_major
from edgecomp.errors import ContainerError, EdgecompError

# Inflating the raw deflate streams: ISA-L's inflate (package ``isal`` 1.9, pinned in
# pyproject.toml) decodes them about 1.7x faster than the standard library's zlib (1.2/1.3)
# on x86-64 and aarch64; where it is not installed, zlib decodes the same bytes. Both keep
# zlib's decompressobj semantics (eof, unused_data, max_length); only the error class differs.
_INFLATERS = {"zlib": zlib}
try:
    from isal import isal_zlib as _isal_zlib
    _INFLATERS["isal"] = _isal_zlib
except ImportError:                                   # pragma: no cover - isal is a dependency
    pass
_inflate = _INFLATERS.get("isal", zlib)


def inflater(name: str | None = None) -> str:
    """The name of the library that inflates deflate streams (``isal`` or ``zlib``).

    With ``name``, switch to that one first (for benchmarks and tests).

        >>> inflater() in ("isal", "zlib")
        True
    """
    global _inflate
    if name is not None:
        if name not in _INFLATERS:
            raise EdgecompError(f"inflater '{name}' is not available",
                                fix=f"use one of: {', '.join(_INFLATERS)}")
        _inflate = _INFLATERS[name]
    return next(k for k, v in _INFLATERS.items() if v is _inflate)


METHOD_ID = 2
#: Coder name -> id stored in the record's third param.
CODERS = {"fixed": 0, "huffman": 1, "deflate": 2}
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


def deflate_encode(symbols: np.ndarray) -> bytes:
    """Symbols (< 256) -> a raw deflate stream, Huffman-only (canonical Huffman, RFC 1951)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    return c.compress(np.asarray(symbols, np.uint8).tobytes()) + c.flush()


def deflate_decode(data: bytes, *, max_symbols: int, alphabet: int) -> np.ndarray:
    """Inverse of :func:`deflate_encode`; output bounded by ``max_symbols``, symbols checked."""
    d = _inflate.decompressobj(-15)
    try:
        out = d.decompress(data, max(1, max_symbols))           # 0 would mean "no limit"
    except (zlib.error, _inflate.error) as exc:
        raise ContainerError(f"deflate stream is corrupt: {exc}", fix="re-create the file") from None
    if not d.eof or d.unconsumed_tail or d.unused_data or len(out) > max_symbols:
        raise ContainerError("deflate stream is truncated, too long or has trailing bytes", fix="re-create the file")
    sym = np.frombuffer(out, np.uint8)
    if len(sym) and int(sym.max()) >= alphabet:
        raise ContainerError(f"deflate stream holds symbol {int(sym.max())}, alphabet has {alphabet}",
                             fix="re-create the file")
    return sym


def encode(name: str, w: np.ndarray, *, bits: int = DEFAULT_BITS, index_bits: int | None = None,
           coder: str = "huffman", codebook=None, block: int = huffman.DEFAULT_BLOCK) -> TensorRecord:
    """Code a pruned, weight-shared float32 tensor ``w`` (zeros are pruned weights).

    ``codebook`` (optional, float32, at most ``2**bits`` entries) fixes the stored codebook;
    every nonzero of ``w`` must equal one of its entries exactly. Without it the codebook is
    the sorted distinct nonzero values of ``w``. ``index_bits`` (1..8, default 8) is the gap
    symbol width, ``coder`` one of ``huffman``, ``deflate``, ``fixed`` and ``auto`` (whichever is
    smallest for this tensor: tiny tensors may not pay for Huffman's tables), ``block`` the Huffman block size.
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
    if coder in ("deflate", "auto"):
        coded["deflate"] = (deflate_encode(gaps), deflate_encode(idx))
    coder = min(coded, key=lambda c: sum(map(len, coded[c])))      # "auto": the smaller one
    streams = coded[coder]
    return TensorRecord(name, tuple(int(d) for d in np.shape(w)), METHOD_ID,
                        (float(bits), float(index_bits), float(CODERS[coder])),
                        (book.astype("<f4").tobytes(),) + streams)


def _flat_positions(fm_pos: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Filter-major flat positions -> flat positions in the tensor's own (C) layout.

    With ``shape = (*spatial, in, out)`` and ``S`` spatial positions, a filter-major position
    ``f = (o * in + i) * S + s`` sits at ``(s * in + i) * out + o`` in C order: two integer
    divisions by constants, and no intermediate exceeds the tensor's size (so int32 input
    stays int32).
    """
    if len(shape) < 2:
        return fm_pos
    n_in, n_out = int(shape[-2]), int(shape[-1])
    spatial = math.prod(int(d) for d in shape[:-2])
    if spatial == 1:                                  # (in, out) stored as (out, in)
        o = fm_pos // n_in
        flat = o * n_in
        np.subtract(fm_pos, flat, out=flat)           # i
        flat *= n_out
        flat += o
        return flat
    q = fm_pos // spatial
    flat = q * spatial
    np.subtract(fm_pos, flat, out=flat)               # s
    o = q // n_in
    q -= o * n_in                                     # i
    flat *= n_in * n_out
    q *= n_out
    flat += q
    flat += o
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


def _positions(jobs: list[_Job]) -> list[np.ndarray]:
    """Filter-major positions of every job's kept weights, from its gap symbols.

    All jobs at once: one cumulative sum over the joined gap streams. A symbol ``s``
    advances ``s + 1`` positions, a filler (``s == M``) advances ``M`` and is dropped.
    """
    lens = [len(j.gaps) for j in jobs]
    gaps = np.concatenate([j.gaps for j in jobs]) if len(jobs) > 1 else jobs[0].gaps
    fillers = [(1 << j.index_bits) - 1 for j in jobs]
    m = fillers[0] if len(set(fillers)) == 1 else np.repeat(fillers, lens)
    is_filler = gaps == m
    # A symbol advances at most 256 positions: int32 holds every sum while 256 * len < 2**31.
    dtype = np.int32 if len(gaps) < 1 << 23 else np.int64
    ends = np.cumsum(gaps, dtype=dtype)
    any_filler = bool(is_filler.any())
    if any_filler:
        ends -= np.cumsum(is_filler, dtype=dtype)         # a filler advances M, not M + 1
    ends += np.arange(len(gaps), dtype=dtype)             # each symbol's + 1, less 1
    # Each job counts from its own start: subtract where the previous one ended.
    stops = np.cumsum(lens)[:-1]
    before = [0] * len(jobs)
    if len(ends):
        before[1:] = np.where(stops > 0, ends[np.maximum(stops, 1) - 1] + 1, 0).tolist()
    out, at = [], 0
    for j, n, b in zip(jobs, lens, before):
        pos = ends[at:at + n]
        if b:
            pos -= b
        if any_filler:
            filler = is_filler[at:at + n]
            if n and filler[-1]:
                _fail(j.rec, "gap stream ends in a filler")
            pos = pos[~filler]
        out.append(pos)
        at += n
    return out


def _finish(job: _Job, positions: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Scatter a job's kept weights into ``out`` (zeros, the tensor's size) and shape it."""
    rec = job.rec
    if len(positions) != len(job.idx):
        _fail(rec, f"gap stream has {len(positions)} kept weights, index stream {len(job.idx)}")
    if len(positions) and positions[-1] >= rec.size:
        _fail(rec, f"index runs to position {int(positions[-1])}, past the tensor's {rec.size} elements")
    if len(positions):
        out[_flat_positions(positions, rec.shape)] = np.take(job.book, job.idx)
    return out.reshape(rec.shape)


def decode_records(records: list[TensorRecord]) -> list[np.ndarray]:
    """Decode ``deep`` records; all Huffman streams are decoded in one lock-step pass.

    Raises ContainerError (naming the tensor) for anything invalid.
    """
    jobs = [_start(rec) for rec in records]
    coded = [j for j in jobs if j.coder == "huffman"]
    # Gap streams first, then index streams: each kind comes out of the decoder joined.
    streams = [j.rec.streams[1] for j in coded] + [j.rec.streams[2] for j in coded]
    limits = [j.rec.size for j in coded] * 2
    alphabets = [1 << j.index_bits for j in coded] + [len(j.book) for j in coded]
    try:
        symbols = huffman.decode_many(streams, limits, alphabets) if coded else []
    except ContainerError:
        # Error path only: decode the streams one by one to name the tensor and stream.
        for k, (data, limit, alphabet) in enumerate(zip(streams, limits, alphabets)):
            try:
                huffman.decode(data, max_symbols=limit, alphabet=alphabet)
            except ContainerError as inner:
                _fail(coded[k % len(coded)].rec, f"{('gap', 'index')[k // len(coded)]} stream: {inner.problem}")
        raise
    for n, j in enumerate(coded):
        j.gaps, j.idx = symbols[n], symbols[len(coded) + n]
    for j in jobs:
        if j.coder == "deflate":
            try:
                j.gaps = deflate_decode(j.rec.streams[1], max_symbols=j.rec.size, alphabet=1 << j.index_bits)
                j.idx = deflate_decode(j.rec.streams[2], max_symbols=j.rec.size, alphabet=len(j.book))
            except ContainerError as exc:
                _fail(j.rec, f"deflate stream: {exc.problem}")
        if j.coder == "fixed":
            try:
                j.gaps = huffman.decode_fixed(j.rec.streams[1], max_symbols=j.rec.size,
                                              alphabet=1 << j.index_bits)
                j.idx = huffman.decode_fixed(j.rec.streams[2], max_symbols=j.rec.size, alphabet=len(j.book))
            except ContainerError as exc:
                _fail(j.rec, f"fixed-width stream: {exc.problem}")
    if not jobs:
        return []
    return [_finish(j, pos, block) for j, pos, block in zip(jobs, _positions(jobs), _zeroed([j.rec for j in jobs]))]


#: Up to this many elements in all, the tensors share one zeroed block (see :func:`_zeroed`).
SHARED_BLOCK_ELEMENTS = 1 << 26


def _zeroed(records: list[TensorRecord]) -> list[np.ndarray]:
    """A flat float32 zero array per record.

    Up to :data:`SHARED_BLOCK_ELEMENTS` in all they are slices of one block: one allocation
    touches fewer fresh pages (and can use huge pages) than one per tensor. The slices never
    overlap; keeping any one keeps the block alive. Above that, one allocation each, so a
    file's total size never becomes one huge request. Memory that runs out is a ContainerError.
    """
    sizes = [r.size for r in records]
    total = sum(sizes)
    try:
        if total > SHARED_BLOCK_ELEMENTS:
            return [np.zeros(n, dtype=np.float32) for n in sizes]
        block, out, at = np.zeros(total, dtype=np.float32), [], 0
        for n in sizes:
            out.append(block[at:at + n])
            at += n
        return out
    except MemoryError:
        raise ContainerError(f"the container's {len(records)} coded tensors declare {total:,} elements, "
                             "more than this machine can hold", fix="decode it on a machine with more memory, "
                             "or check that the file is the one you meant") from None


__all__ = ["encode", "decode_records", "inflater", "gap_symbols", "CODERS", "DEFAULT_BITS", "DEFAULT_INDEX_BITS"]
