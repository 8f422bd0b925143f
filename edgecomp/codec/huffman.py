"""Canonical Huffman coding of small-alphabet symbol streams, numpy only.

Used by the ``deep`` coding method for the relative-index gaps and the centroid
indices (Han et al., Deep Compression, 2015), with a block offset table that
lets the decoder run every block in lock-step: one numpy gather per step over
all blocks of all streams at once, so decode time is ``block`` Python steps
however long the streams are.

    >>> data = encode(np.array([0, 1, 1, 2, 1, 1, 3, 1]))
    >>> decode(data, max_symbols=8, alphabet=4).tolist()
    [0, 1, 1, 2, 1, 1, 3, 1]

Stream layout (integers little-endian; bit fields MSB-first, zero-padded to a
byte; ``docs/FORMAT.md`` has the byte map)::

    u8 mode 0: empty stream                         (1 byte in all)
    u8 mode 1: u32 n, u16 symbol                    (n copies of one symbol, 7 bytes)
    u8 mode 2: u32 n, u16 alphabet-1, u8 max_len, u16 block,
               lengths[alphabet] (bit_length(max_len) bits each),
               u32 base, u8 width, (block_bits[b] - base)[ceil(n/block)] (width bits each),
               payload: the codes, MSB-first, ceil(sum(block_bits)/8) bytes

Also here: fixed-width bit packing (:func:`encode_fixed` / :func:`decode_fixed`),
the baseline that Huffman is measured against. Every decoder validates its input
and raises :class:`~edgecomp.errors.ContainerError` only; allocations are bounded
by the stream length and the caller's ``max_symbols``.
"""

from __future__ import annotations

import bisect
import heapq
import struct
from collections.abc import Sequence

import numpy as np

from edgecomp.errors import ContainerError

#: Longest code the stream format allows (and the largest alphabet is 2**16).
MAX_CODE_LEN = 16
MAX_ALPHABET = 1 << 16
#: Default code-length limit: keeps the decode tables at 4096 entries per stream (it costs
#: about 0.1% on the gap and index streams of a pruned, weight-shared VGG).
DEFAULT_MAX_LEN = 12
#: Default symbols per block (one lock-step decode step per symbol of a block).
DEFAULT_BLOCK = 256
MAX_BLOCK = 0xFFFF

EMPTY, SINGLE, HUFFMAN = 0, 1, 2
_HEAD = struct.Struct("<IHBH")      # n, alphabet-1, max_len, block (after the mode byte)
_SINGLE = struct.Struct("<IH")      # n, symbol
_FIXED = struct.Struct("<BI")       # width, n
_BLOCKS = struct.Struct("<IB")      # base, width
#: Lookup-table entries decoded in one lock-step batch (bounds memory on hostile input).
_LUT_BUDGET = 1 << 20


def _fail(what: str):
    raise ContainerError(f"corrupt coded stream: {what}",
                         fix="the file is damaged or not an edgecomp .ecz; re-create it")


# ----------------------------------------------------------------------------- code construction

def code_lengths(freqs, max_len: int = DEFAULT_MAX_LEN) -> np.ndarray:
    """Huffman code lengths (uint8, 0 for unused symbols) limited to ``max_len`` bits.

    Plain Huffman depths, then the length-limiting step of JPEG (ITU T.81 Annex K.3),
    which keeps the code complete (Kraft sum exactly 1). A lone used symbol gets length 1.

    Example:
        >>> code_lengths([5, 1, 1, 2]).tolist()
        [1, 3, 3, 2]
    """
    f = np.asarray(freqs, dtype=np.int64).ravel()
    if f.size > MAX_ALPHABET or (f.size and f.min() < 0):
        raise ValueError("frequencies must be >= 0, at most 2**16 of them")
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be in 1..{MAX_CODE_LEN}")
    used = np.flatnonzero(f)
    lengths = np.zeros(f.size, dtype=np.uint8)
    if len(used) <= 1:
        lengths[used] = 1
        return lengths
    if len(used) > 1 << max_len:
        raise ValueError(f"{len(used)} symbols cannot have codes of at most {max_len} bits")
    # Huffman: merge the two lightest nodes; nodes are numbered in creation order, so a
    # parent's number is above its children's and depths follow in one reverse sweep.
    m = len(used)
    heap = [(int(f[s]), i) for i, s in enumerate(used)]
    heapq.heapify(heap)
    parent = [0] * (2 * m - 1)
    for node in range(m, 2 * m - 1):
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (fa + fb, node))
    depth = [0] * (2 * m - 1)
    for node in range(2 * m - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    depth = depth[:m]
    count = np.bincount(depth, minlength=max_len + 1).tolist()
    for i in range(len(count) - 1, max_len, -1):   # move leaves up until none is too deep
        while count[i] > 0:
            j = i - 2
            while count[j] == 0:
                j -= 1
            count[i] -= 2
            count[i - 1] += 1
            count[j + 1] += 2
            count[j] -= 1
    # Most frequent symbols take the shortest lengths (ties: lower symbol first).
    order = used[np.lexsort((used, -f[used]))]
    lengths[order] = np.repeat(np.arange(len(count)), count)[:len(used)]
    return lengths


def canonical_codes(lengths) -> np.ndarray:
    """Canonical codes (int64) for code ``lengths``: shorter codes first, then by symbol.

    Example:
        >>> [format(int(c), "b") for c in canonical_codes([1, 3, 3, 2])]
        ['0', '110', '111', '10']
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if not len(used):
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    top = int(lengths.max())
    span = np.left_shift(1, top - lengths[order])            # LUT entries each code covers
    start = np.cumsum(span) - span                             # MSB-aligned code values
    codes[order] = start >> (top - lengths[order])
    return codes


def _decode_tables(lengths: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, length) for every ``top``-bit window: codes occupy consecutive ranges."""
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    span = np.left_shift(1, top - lengths[order].astype(np.int64))
    return np.repeat(order.astype(np.uint16), span), np.repeat(lengths[order].astype(np.int64), span)


# ----------------------------------------------------------------------------- bit packing

def _pack_bits(codes: np.ndarray, widths: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Concatenate ``codes[i]`` in ``widths[i]`` bits (<= 32) MSB-first; also each code's start bit."""
    widths = np.asarray(widths, dtype=np.int64)
    end = np.cumsum(widths)
    start = end - widths
    total = int(end[-1]) if len(end) else 0
    if total == 0:
        return b"", start
    # Each code lands in the 64-bit window made of 32-bit words k and k+1 (k = start // 32);
    # codes do not overlap, so summing their shifted bits per word is an exact OR.
    word = start >> 5
    shifted = np.asarray(codes, dtype=np.uint64) << (64 - (start & 31) - widths).astype(np.uint64)
    n_words = int(word[-1]) + 2
    words = np.bincount(word, weights=(shifted >> np.uint64(32)).astype(np.float64), minlength=n_words)
    words[1:] += np.bincount(word, weights=(shifted & np.uint64(0xFFFFFFFF)).astype(np.float64),
                             minlength=n_words)[:-1]
    return words.astype(">u4").tobytes()[:(total + 7) // 8], start


def _windows(buf: bytes) -> np.ndarray:
    """uint32 big-endian window starting at every byte of ``buf`` (which ends in 4 zero bytes)."""
    n = len(buf) - 3
    out = np.empty(max(n, 0), dtype=np.uint32)
    for k in range(4):
        dst = out[k::4]
        dst[:] = np.frombuffer(buf, dtype=">u4", count=len(dst), offset=k)
    return out


def _unpack_fields(buf: bytes, count: int, width: int) -> np.ndarray:
    """``count`` fields of ``width`` (<= 25) bits, MSB-first, from ``buf``."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    pos = np.arange(count, dtype=np.int64) * width
    win = _windows(bytes(buf) + b"\0\0\0\0")[pos >> 3].astype(np.int64)
    return ((win << (pos & 7)) & 0xFFFFFFFF) >> (32 - width)


def _pack_fields(values: np.ndarray, width: int) -> bytes:
    values = np.asarray(values, dtype=np.int64)
    if width == 0 or not len(values):
        return b""
    return _pack_bits(values, np.full(len(values), width))[0]


# ----------------------------------------------------------------------------- encoding

def _check_symbols(symbols) -> np.ndarray:
    s = np.asarray(symbols)
    if s.size and (s.dtype.kind not in "iu" or int(s.min()) < 0 or int(s.max()) >= MAX_ALPHABET):
        raise ValueError("symbols must be integers in 0..65535")
    if s.size >= 1 << 32:
        raise ValueError("at most 2**32 - 1 symbols per stream")
    return s.ravel().astype(np.int64, copy=False)


def encode(symbols, *, block: int = DEFAULT_BLOCK, max_len: int = DEFAULT_MAX_LEN) -> bytes:
    """Huffman-code integer ``symbols`` (0..65535) into a self-describing stream.

    ``block`` symbols share one entry of the offset table (smaller blocks decode in
    fewer steps but cost more table bits); ``max_len`` limits the code length.

    Example:
        >>> len(encode(np.zeros(1000, np.uint8)))   # one symbol: no payload at all
        7
    """
    s = _check_symbols(symbols)
    if not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block must be in 1..{MAX_BLOCK}")
    n = len(s)
    if n == 0:
        return bytes([EMPTY])
    freqs = np.bincount(s)
    used = np.flatnonzero(freqs)
    if len(used) == 1:
        return bytes([SINGLE]) + _SINGLE.pack(n, int(used[0]))
    lengths = code_lengths(freqs, max_len)
    top = int(lengths.max())
    codes = canonical_codes(lengths)
    widths = lengths.astype(np.int64)[s]
    payload, start = _pack_bits(codes[s], widths)
    block = min(block, n)
    total = int(start[-1] + widths[-1])
    block_bits = np.diff(np.append(start[::block], total))
    base = int(block_bits.min())
    width = int(block_bits.max() - base).bit_length()
    return b"".join([bytes([HUFFMAN]), _HEAD.pack(n, len(freqs) - 1, top, block),
                     _pack_fields(lengths, top.bit_length()),
                     _BLOCKS.pack(base, width), _pack_fields(block_bits - base, width), payload])


def encode_fixed(symbols, width: int) -> bytes:
    """Plain fixed-width packing: u8 width, u32 n, then n fields of ``width`` (1..16) bits.

    Example:
        >>> encode_fixed([1, 2, 3], 2).hex()
        '02030000006c'
    """
    s = _check_symbols(symbols)
    if not 1 <= width <= MAX_CODE_LEN:
        raise ValueError(f"width must be in 1..{MAX_CODE_LEN}")
    if len(s) and int(s.max()) >> width:
        raise ValueError(f"a symbol does not fit in {width} bits")
    return _FIXED.pack(width, len(s)) + _pack_fields(s, width)


# ----------------------------------------------------------------------------- decoding

class _Parsed:
    """A validated mode-2 stream, ready for the lock-step decoder."""

    __slots__ = ("n", "block", "lengths", "top", "block_bits", "payload", "out")

    def __init__(self, n, block, lengths, top, block_bits, payload):
        self.n, self.block, self.lengths, self.top = n, block, lengths, top
        self.block_bits, self.payload, self.out = block_bits, payload, None


def _parse(data: bytes, max_symbols: int, alphabet: int):
    """Validate a stream's header and tables; return the decoded array or a _Parsed."""
    data = bytes(data)
    if not data:
        _fail("empty stream (expected at least the mode byte)")
    mode = data[0]
    if mode == EMPTY:
        if len(data) != 1:
            _fail(f"empty-mode stream has {len(data) - 1} trailing bytes")
        return np.zeros(0, dtype=np.uint16)
    if mode == SINGLE:
        if len(data) != 1 + _SINGLE.size:
            _fail(f"single-symbol stream is {len(data)} bytes, expected {1 + _SINGLE.size}")
        n, sym = _SINGLE.unpack_from(data, 1)
        if not 1 <= n <= max_symbols:
            _fail(f"declares {n} symbols, expected 1..{max_symbols}")
        if sym >= alphabet:
            _fail(f"symbol {sym} is outside the alphabet of {alphabet}")
        return np.full(n, sym, dtype=np.uint16)
    if mode != HUFFMAN:
        _fail(f"unknown stream mode {mode}")
    pos = 1 + _HEAD.size
    if len(data) < pos:
        _fail(f"Huffman header needs {pos} bytes, stream has {len(data)}")
    n, a1, top, block = _HEAD.unpack_from(data, 1)
    size = a1 + 1
    if not 2 <= n <= max_symbols:
        _fail(f"declares {n} symbols, expected 2..{max_symbols}")
    if n > 8 * len(data):
        _fail(f"declares {n} symbols but holds only {8 * len(data)} bits")
    if size > alphabet:
        _fail(f"code table covers {size} symbols, the alphabet has {alphabet}")
    if not 1 <= top <= MAX_CODE_LEN:
        _fail(f"maximum code length {top} is outside 1..{MAX_CODE_LEN}")
    if not 1 <= block <= n:
        _fail(f"block size {block} is outside 1..{n}")
    field = top.bit_length()
    nbytes = (size * field + 7) // 8
    if len(data) < pos + nbytes + _BLOCKS.size:
        _fail(f"code-length table needs {nbytes} bytes, {len(data) - pos} remain")
    lengths = _unpack_fields(data[pos:pos + nbytes], size, field)
    pos += nbytes
    if int(lengths.max()) != top:
        _fail(f"code lengths reach {int(lengths.max())} bits, header says {top}")
    if np.count_nonzero(lengths) < 2:
        _fail("code table has fewer than 2 codes")
    kraft = int(np.left_shift(1, top - lengths[lengths > 0]).sum())
    if kraft != 1 << top:
        _fail(f"code lengths are not a complete prefix code (Kraft sum {kraft}/{1 << top})")
    base, width = _BLOCKS.unpack_from(data, pos)
    pos += _BLOCKS.size
    n_blocks = -(-n // block)
    if width > 25:
        _fail(f"block-size field width {width} is over 25 bits")
    nbytes = (n_blocks * width + 7) // 8
    if len(data) < pos + nbytes:
        _fail(f"block table needs {nbytes} bytes, {len(data) - pos} remain")
    block_bits = base + _unpack_fields(data[pos:pos + nbytes], n_blocks, width)
    pos += nbytes
    counts = np.full(n_blocks, block, dtype=np.int64)
    counts[-1] = n - (n_blocks - 1) * block
    shortest = int(lengths[lengths > 0].min())
    if np.any(block_bits < counts * shortest) or np.any(block_bits > counts * top):
        _fail("a block's bit length does not fit its symbol count")
    total = int(block_bits.sum())
    if len(data) - pos != (total + 7) // 8:
        _fail(f"payload is {len(data) - pos} bytes, the block table implies {(total + 7) // 8}")
    if total % 8 and data[-1] & ((1 << (8 - total % 8)) - 1):
        _fail("payload padding bits are not zero")
    return _Parsed(n, block, lengths, top, block_bits, data[pos:])


def _lockstep(items: list[_Parsed], block: int) -> None:
    """Decode streams in ``block`` lock-step steps: every block of every stream is a lane.

    Each stream's blocks hold ``block`` symbols (its last one fewer), or it is a single
    block of at most ``block`` symbols.
    """
    top = max(it.top for it in items)
    payload = b"".join(it.payload for it in items) + b"\0" * 4
    win = _windows(payload)
    syms, lens, starts, ends, counts, bases, first = [], [], [], [], [], [], [0]
    bit, lut = 0, 0
    for slot, it in enumerate(items):
        sym, ln = _decode_tables(it.lengths, it.top)
        rep = 1 << (top - it.top)                 # widen every table to ``top`` bits
        syms.append(np.repeat(sym, rep))
        lens.append(np.repeat(ln, rep))
        offs = bit + np.cumsum(it.block_bits) - it.block_bits
        starts.append(offs)
        ends.append(offs + it.block_bits)
        c = np.full(len(offs), it.block, dtype=np.int64)
        c[-1] = it.n - (len(offs) - 1) * it.block
        counts.append(c)
        bases.append(np.full(len(offs), lut, dtype=np.int64))
        first.append(first[-1] + len(offs))
        bit += 8 * len(it.payload)
        lut += 1 << top
    sym_lut, len_lut = np.concatenate(syms), np.concatenate(lens)
    p = np.concatenate(starts)
    expected_end, count = np.concatenate(ends), np.concatenate(counts)
    base = np.concatenate(bases).astype(np.uint32)
    lanes = len(p)
    got_end = np.empty(lanes, dtype=np.int64)
    capture = {}
    for lane in np.flatnonzero(count < block):
        capture.setdefault(int(count[lane]), []).append(int(lane))
    out = np.empty((block, lanes), dtype=np.int64)
    byte, step, w = (np.empty(lanes, dtype=np.int64), np.empty(lanes, dtype=np.int64),
                     np.empty(lanes, dtype=np.uint32))
    shift = np.empty(lanes, dtype=np.uint32)
    drop = np.uint32(32 - top)
    for t in range(block):
        if t in capture:
            got_end[capture[t]] = p[capture[t]]
        row = out[t]
        np.right_shift(p, 3, out=byte)
        np.take(win, byte, out=w, mode="clip")            # 32 bits from the lane's byte
        np.bitwise_and(p, 7, out=shift, casting="unsafe")
        np.left_shift(w, shift, out=w)                     # drop the bits already read
        np.right_shift(w, drop, out=w)                     # keep the next ``top`` bits
        np.bitwise_or(w, base, out=row)                    # index into this stream's table
        np.take(len_lut, row, out=step, mode="clip")
        np.add(p, step, out=p)
    full = count == block
    got_end[full] = p[full]
    bad = np.flatnonzero(got_end != expected_end)
    if len(bad):
        lane = int(bad[0])
        _fail(f"block {lane} of the batch ends at bit {int(got_end[lane])}, "
              f"the block table says {int(expected_end[lane])}")
    lane_major = np.take(sym_lut, out.T)                   # (lanes, block) uint16 symbols
    for slot, it in enumerate(items):
        it.out = lane_major[first[slot]:first[slot + 1]].ravel()[:it.n]


def decode_many(streams: Sequence[bytes], max_symbols: Sequence[int],
                alphabets: Sequence[int]) -> list[np.ndarray]:
    """Decode several Huffman streams in one lock-step pass (uint16 symbol arrays).

    ``max_symbols[i]`` bounds stream i's symbol count and ``alphabets[i]`` its symbols
    (each symbol ``< alphabets[i]``); anything else raises ContainerError.

    Example:
        >>> a, b = decode_many([encode([1, 2, 2]), encode([0, 0, 5])], [3, 3], [4, 8])
        >>> a.tolist(), b.tolist()
        ([1, 2, 2], [0, 0, 5])
    """
    if not len(streams) == len(max_symbols) == len(alphabets):
        raise ValueError("streams, max_symbols and alphabets differ in length")
    parsed = [_parse(s, int(m), int(a)) for s, m, a in zip(streams, max_symbols, alphabets)]
    # One lock-step pass per block size. A one-block stream joins a pass with a longer block
    # when that costs at most 8 steps per symbol of its own; passes are split so that the
    # widened lookup tables stay bounded.
    coded = [it for it in parsed if isinstance(it, _Parsed)]
    multi = sorted({it.block for it in coded if it.n > it.block})
    groups: dict[int, list[_Parsed]] = {}
    for it in coded:
        key = it.block
        if it.n <= it.block and multi:
            k = bisect.bisect_right(multi, 8 * it.n) - 1
            if k >= 0 and multi[k] >= it.n:
                key = multi[k]
        groups.setdefault(key, []).append(it)
    for block, members in groups.items():
        chunk, top = [], 0
        for it in members:
            if chunk and (len(chunk) + 1) << max(top, it.top) > _LUT_BUDGET:
                _lockstep(chunk, block)
                chunk, top = [], 0
            chunk.append(it)
            top = max(top, it.top)
        _lockstep(chunk, block)
    return [it.out if isinstance(it, _Parsed) else it for it in parsed]


def decode(data: bytes, *, max_symbols: int, alphabet: int = MAX_ALPHABET) -> np.ndarray:
    """Decode one stream written by :func:`encode` (see :func:`decode_many`).

    Example:
        >>> decode(encode([3, 3, 0]), max_symbols=10, alphabet=4).tolist()
        [3, 3, 0]
    """
    return decode_many([data], [max_symbols], [alphabet])[0]


def decode_fixed(data: bytes, *, max_symbols: int, alphabet: int = MAX_ALPHABET) -> np.ndarray:
    """Decode a stream written by :func:`encode_fixed` (uint16 symbols, each ``< alphabet``).

    Example:
        >>> decode_fixed(encode_fixed([1, 2, 3], 2), max_symbols=3, alphabet=4).tolist()
        [1, 2, 3]
    """
    data = bytes(data)
    if len(data) < _FIXED.size:
        _fail(f"fixed-width stream needs a {_FIXED.size}-byte header, has {len(data)} bytes")
    width, n = _FIXED.unpack_from(data)
    if not 1 <= width <= MAX_CODE_LEN:
        _fail(f"field width {width} is outside 1..{MAX_CODE_LEN}")
    if n > max_symbols:
        _fail(f"declares {n} symbols, expected at most {max_symbols}")
    if len(data) - _FIXED.size != (n * width + 7) // 8:
        _fail(f"payload is {len(data) - _FIXED.size} bytes, {n} fields of {width} bits need "
              f"{(n * width + 7) // 8}")
    out = _unpack_fields(data[_FIXED.size:], n, width)
    if n and int(out.max()) >= alphabet:
        _fail(f"symbol {int(out.max())} is outside the alphabet of {alphabet}")
    return out.astype(np.uint16)


def entropy_bits(symbols) -> float:
    """Empirical (order-0) entropy of ``symbols`` in bits, summed over the stream.

    Example:
        >>> entropy_bits([0, 1, 0, 1])
        4.0
    """
    s = np.asarray(symbols).ravel()
    if s.size == 0:
        return 0.0
    f = np.bincount(s.astype(np.int64))
    f = f[f > 0]
    return float(-(f * np.log2(f / s.size)).sum())


__all__ = ["encode", "decode", "decode_many", "encode_fixed", "decode_fixed", "code_lengths",
           "canonical_codes", "entropy_bits", "DEFAULT_BLOCK", "DEFAULT_MAX_LEN", "MAX_CODE_LEN"]
