"""Canonical Huffman coding of small-alphabet symbol streams, numpy only.

Used by the ``deep`` coding method for the relative-index gaps and the centroid
indices (Han et al., Deep Compression, 2015), with a block offset table that
lets the decoder run every block in lock-step: each step is ten numpy operations
over all blocks of all streams at once and decodes one symbol per block, so
decode time is ``block`` Python steps however long the streams are. Blocks are
interleaved (block ``b`` of ``nb`` holds symbols ``b, b + nb, b + 2 nb, ...``), so
the symbols that one step decodes are consecutive in the stream: the decoder's
output needs no reordering.

    >>> data = encode(np.array([0, 1, 1, 2, 1, 1, 3, 1]))
    >>> decode(data, max_symbols=8, alphabet=4).tolist()
    [0, 1, 1, 2, 1, 1, 3, 1]

Stream layout (integers little-endian; bit fields MSB-first, zero-padded to a
byte; ``docs/FORMAT.md`` has the byte map)::

    u8 mode 0: empty stream                         (1 byte in all)
    u8 mode 1: u32 n, u16 symbol                    (n copies of one symbol, 7 bytes)
    u8 mode 3: u32 n, u16 alphabet-1, u8 max_len, u16 block,
               lengths[alphabet] (bit_length(max_len) bits each),
               u32 base, u8 width, (block_bits[b] - base)[nb] (width bits each),
               payload: block after block, the codes MSB-first, ceil(sum(block_bits)/8) bytes
    with nb = ceil(n / block) blocks; block b codes symbols b, b + nb, b + 2 nb, ...

Also here: fixed-width bit packing (:func:`encode_fixed` / :func:`decode_fixed`),
the baseline that Huffman is measured against. Every decoder validates its input
and raises :class:`~edgecomp.errors.ContainerError` only; allocations are bounded
by the stream length and the caller's ``max_symbols``.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Sequence

import numpy as np

from edgecomp.errors import ContainerError

#: Longest code the stream format allows (and the largest alphabet is 2**16).
MAX_CODE_LEN = 16
MAX_ALPHABET = 1 << 16
#: Default code-length limit: keeps the decode tables at 4096 rows per stream (it costs
#: about 0.1% on the gap and index streams of a pruned, weight-shared VGG).
DEFAULT_MAX_LEN = 12
#: Default symbols per block: one lock-step step per symbol of a block, over all blocks of
#: all streams at once. Smaller blocks mean more lanes and fewer steps but a longer block
#: table (about 7 bits per block, 1.3% of the payload at 128).
DEFAULT_BLOCK = 128
MAX_BLOCK = 0xFFFF

#: Stream modes. Mode 2 (contiguous blocks) was written by pre-release builds only and is refused.
EMPTY, SINGLE, CONTIGUOUS, HUFFMAN = 0, 1, 2, 3
_HEAD = struct.Struct("<IHBH")      # n, alphabet-1, max_len, block (after the mode byte)
_SINGLE = struct.Struct("<IH")      # n, symbol
_FIXED = struct.Struct("<BI")       # width, n
_BLOCKS = struct.Struct("<IB")      # base, width
#: Lookup-table rows built for one lock-step pass (bounds memory on hostile input).
_LUT_BUDGET = 1 << 20
#: Lanes x steps of one lock-step batch (bounds memory on hostile input).
_STEP_BUDGET = 1 << 22


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


def _words(buf: bytes) -> np.ndarray:
    """uint64 window at every 32-bit word of ``buf``: bits ``32k .. 32k + 63``, MSB-first.

    ``buf`` must end in at least 8 zero bytes; the field of ``w <= 32`` bits at bit ``q``
    is ``(words[q >> 5] << (q & 31)) >> (64 - w)``.
    """
    n = len(buf) // 4
    u = np.frombuffer(buf, dtype=">u4", count=n).astype(np.uint64)
    out = u[:-1] << np.uint64(32)
    out |= u[1:]
    return out


def _fields(words: np.ndarray, starts, counts, widths) -> np.ndarray:
    """Runs of MSB-first fields: ``counts[i]`` fields of ``widths[i]`` (0..32) bits from bit
    ``starts[i]``; all runs in one vectorised pass (int64)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(counts) - counts
    width = np.repeat(np.asarray(widths, dtype=np.int64), counts)
    pos = np.arange(total, dtype=np.int64)
    pos -= np.repeat(first, counts)
    pos *= width
    pos += np.repeat(np.asarray(starts, dtype=np.int64), counts)
    w = words[pos >> 5] << (pos & 31).astype(np.uint64)
    w >>= (63 - width).astype(np.uint64)       # two shifts: a 0-bit field gives 0
    w >>= np.uint64(1)
    return w.astype(np.int64)


def _unpack_fields(buf: bytes, count: int, width: int) -> np.ndarray:
    """``count`` fields of ``width`` (<= 32) bits, MSB-first, from ``buf``."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    buf = bytes(buf)
    words = _words(buf + b"\0" * (12 - len(buf) % 4))
    pos = np.arange(0, count * width, width, dtype=np.int64)
    w = words[pos >> 5]
    pos &= 31
    w <<= pos.view(np.uint64)
    w >>= np.uint64(64 - width)
    return w.view(np.int64)


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


def _interleave(s: np.ndarray, block: int) -> tuple[np.ndarray, int, int, int]:
    """``s`` in block order: ``nb = ceil(n / block)`` blocks, block b holding symbols b, b + nb,
    ...; returns (reordered symbols, nb, rows = the most symbols a block holds, how many
    blocks hold that many)."""
    n = len(s)
    nb = -(-n // block)
    rows = -(-n // nb)
    full = n - (rows - 1) * nb
    if full == nb:
        return s.reshape(rows, nb).T.ravel(), nb, rows, full
    grid = np.empty((nb, rows), dtype=s.dtype)
    grid[:, :rows - 1] = s[:(rows - 1) * nb].reshape(rows - 1, nb).T
    grid[:full, rows - 1] = s[(rows - 1) * nb:]
    return np.concatenate([grid[:full].ravel(), grid[full:, :rows - 1].ravel()]), nb, rows, full


def encode(symbols, *, block: int = DEFAULT_BLOCK, max_len: int = DEFAULT_MAX_LEN) -> bytes:
    """Huffman-code integer ``symbols`` (0..65535) into a self-describing stream.

    The stream is cut into ``nb = ceil(n / block)`` interleaved blocks, block ``b``
    coding symbols ``b, b + nb, ...``, each with an entry in the offset table: smaller
    blocks decode in fewer lock-step steps but cost more table bits. ``max_len``
    limits the code length.

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
    block = min(block, n)
    s, nb, rows, full = _interleave(s, block)
    widths = lengths.astype(np.int64)[s]
    payload, start = _pack_bits(codes[s], widths)
    total = int(start[-1] + widths[-1])
    k = np.arange(nb)
    first = k * (rows - 1) + np.minimum(k, full)               # blocks < full hold ``rows`` symbols
    block_len = np.diff(np.append(start[first], total))
    base = int(block_len.min())
    width = int(block_len.max() - base).bit_length()
    return b"".join([bytes([HUFFMAN]), _HEAD.pack(n, len(freqs) - 1, top, block),
                     _pack_fields(lengths, top.bit_length()),
                     _BLOCKS.pack(base, width), _pack_fields(block_len - base, width), payload])


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

class _Stream:
    """A mode-2 stream whose header has been read (the tables are checked in batches)."""

    __slots__ = ("data", "n", "size", "top", "block", "pos", "n_blocks", "base", "width", "lengths",
                 "shortest", "offset", "out")


def _header(data: bytes, max_symbols: int, alphabet: int):
    """Modes 0 and 1 decode right here; a mode-2 stream returns its _Stream."""
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
    if mode == CONTIGUOUS:
        _fail("stream mode 2 (contiguous Huffman blocks, from a pre-release build) is not read by this "
              "version; re-encode the model")
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
    nbytes = (size * top.bit_length() + 7) // 8
    if len(data) < pos + nbytes + _BLOCKS.size:
        _fail(f"code-length table needs {nbytes} bytes, {len(data) - pos} remain")
    it = _Stream()
    it.data, it.n, it.size, it.top, it.block, it.pos = data, n, size, top, block, pos
    it.n_blocks = -(-n // block)
    return it


def _check_lengths(items: list[_Stream], words: np.ndarray) -> None:
    """Unpack and check every stream's code-length table (one vectorised pass)."""
    sizes = [it.size for it in items]
    lengths = _fields(words, [8 * (it.offset + it.pos) for it in items], sizes,
                      [it.top.bit_length() for it in items])
    first = np.cumsum(sizes) - sizes
    top = np.array([it.top for it in items], dtype=np.int64)
    top_rep = np.repeat(top, sizes)
    used = lengths > 0
    fits = used & (lengths <= top_rep)
    longest = np.maximum.reduceat(lengths, first)
    codes = np.add.reduceat(used, first, dtype=np.int64)
    kraft = np.add.reduceat(np.left_shift(fits.astype(np.int64), np.where(fits, top_rep - lengths, 0)), first)
    shortest = np.minimum.reduceat(np.where(used, lengths, MAX_CODE_LEN + 1), first)
    bad = (longest != top) | (codes < 2) | (kraft != np.left_shift(1, top))
    if bad.any():
        i = int(np.argmax(bad))
        if longest[i] != top[i]:
            _fail(f"code lengths reach {int(longest[i])} bits, header says {int(top[i])}")
        if codes[i] < 2:
            _fail("code table has fewer than 2 codes")
        _fail(f"code lengths are not a complete prefix code (Kraft sum {int(kraft[i])}/{1 << int(top[i])})")
    for k, (it, s) in enumerate(zip(items, shortest.tolist())):
        it.lengths = lengths[first[k]:first[k] + sizes[k]]
        it.shortest = s
        it.pos += (it.size * it.top.bit_length() + 7) // 8


def _block_counts(n: np.ndarray, n_blocks: np.ndarray) -> np.ndarray:
    """Symbols of each block: block ``b`` of ``nb`` holds symbols ``b, b + nb, b + 2 nb, ...``."""
    b = np.arange(int(n_blocks.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_blocks) - n_blocks, n_blocks)
    nb = np.repeat(n_blocks, n_blocks)
    return (np.repeat(n, n_blocks) - b + nb - 1) // nb


def _block_tables(items: list[_Stream], words: np.ndarray) -> tuple[np.ndarray, ...]:
    """Check every stream's block table and payload size; returns per block (lane) its
    start and end bit in the joined buffer and its symbol count."""
    for it in items:
        it.base, it.width = _BLOCKS.unpack_from(it.data, it.pos)
        it.pos += _BLOCKS.size
        if it.width > 25:
            _fail(f"block-size field width {it.width} is over 25 bits")
        nbytes = (it.n_blocks * it.width + 7) // 8
        if len(it.data) < it.pos + nbytes:
            _fail(f"block table needs {nbytes} bytes, {len(it.data) - it.pos} remain")
    nb = np.array([it.n_blocks for it in items], dtype=np.int64)
    bits = _fields(words, [8 * (it.offset + it.pos) for it in items], nb, [it.width for it in items])
    bits += np.repeat([it.base for it in items], nb)
    count = _block_counts(np.array([it.n for it in items], dtype=np.int64), nb)
    bad = (bits < count * np.repeat([it.shortest for it in items], nb)) | (bits > count * np.repeat(
        [it.top for it in items], nb))
    if bad.any():
        _fail("a block's bit length does not fit its symbol count")
    first = np.cumsum(nb) - nb
    end = np.cumsum(bits)
    total = np.diff(end[first + nb - 1], prepend=0).tolist()
    payload_at = []
    for it, t in zip(items, total):
        pay = it.pos + (it.n_blocks * it.width + 7) // 8
        if len(it.data) - pay != (t + 7) // 8:
            _fail(f"payload is {len(it.data) - pay} bytes, the block table implies {(t + 7) // 8}")
        if t % 8 and it.data[-1] & ((1 << (8 - t % 8)) - 1):
            _fail("payload padding bits are not zero")
        payload_at.append(8 * (it.offset + pay))
    end += np.repeat(np.array(payload_at, dtype=np.int64) - (end[first] - bits[first]), nb)
    return end - bits, end, count


def _tables(items: list[_Stream]) -> tuple[np.ndarray, np.ndarray]:
    """The decode tables of ``items``, one after another, and each one's first row.

    Row ``r`` of a stream's table (``2**top`` rows) stands for the next ``top`` bits and
    holds ``length << 32 | symbol`` of the code they start with: canonical codes occupy
    consecutive rows, so each code's rows come from one ``np.repeat``.
    """
    sizes = [len(it.lengths) for it in items]
    lengths = np.concatenate([it.lengths for it in items]) if len(items) > 1 else items[0].lengths
    stream = np.repeat(np.arange(len(items)), sizes)
    symbol = np.arange(len(lengths)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    used = lengths > 0
    lengths, symbol, stream = lengths[used], symbol[used], stream[used]
    order = np.lexsort((symbol, lengths, stream))          # canonical order within each stream
    lengths, symbol, stream = lengths[order], symbol[order], stream[order]
    top = np.array([it.top for it in items], dtype=np.int64)
    table = np.repeat((lengths << 32) | symbol, np.left_shift(1, top[stream] - lengths)).astype(np.uint64)
    rows = np.left_shift(1, top)
    return table, np.cumsum(rows) - rows


def _lockstep(words: np.ndarray, items: list[_Stream], lane_item: np.ndarray, start, end, count,
              steps: int) -> np.ndarray:
    """Decode blocks (lanes) in ``steps`` lock-step steps, one symbol per lane per step.

    ``lane_item[l]`` is lane l's stream in ``items``. Returns a (steps, lanes) uint16
    array: row t holds symbol t of every block, so that a stream's columns, read row by
    row, list its symbols in order (past a block's last symbol: junk).
    """
    table, first = _tables(items)
    lanes = len(start)
    top = np.array([it.top for it in items], dtype=np.uint64)[lane_item]
    drop = np.uint64(64) - top
    base = first.astype(np.uint64)[lane_item]
    out = np.empty((steps, lanes), dtype=np.uint16)
    p = start.astype(np.uint64)
    word = np.empty(lanes, dtype=np.uint64)
    word_i = word.view(np.int64)
    w = np.empty(lanes, dtype=np.uint64)
    shift = np.empty(lanes, dtype=np.uint64)
    row = np.empty(lanes, dtype=np.uint64)
    row_i = row.view(np.int64)
    entry = np.empty(lanes, dtype=np.uint64)
    got = np.empty(lanes, dtype=np.uint64)
    capture = {c: np.flatnonzero(count == c) for c in np.unique(count).tolist()}   # step -> lanes ending
    rshift, lshift, band, add, copyto = np.right_shift, np.left_shift, np.bitwise_and, np.add, np.copyto
    read, look = words.take, table.take                    # bound methods: no Python wrapper per call
    for t in range(steps):
        rshift(p, 5, word)
        read(word_i, None, w, "clip")                      # 64 bits around the lane's position
        band(p, 31, shift)
        lshift(w, shift, w)                                # drop the bits already read
        rshift(w, drop, w)                                 # keep the next ``top`` bits
        add(w, base, row)                                  # the row in this lane's table
        look(row_i, None, entry, "clip")
        copyto(out[t], entry, casting="unsafe")            # the low 16 bits: the symbol
        rshift(entry, 32, entry)                           # the code's length
        add(p, entry, p)
        ending = capture.get(t + 1)
        if ending is not None:
            got[ending] = p[ending]
    bad = np.flatnonzero(got != end.astype(np.uint64))
    if len(bad):
        k = int(bad[0])
        _fail(f"block {k} ends at bit {int(got[k]) - int(start[k])}, the block table says "
              f"{int(end[k] - start[k])}")
    return out


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
    out = [_header(s, int(m), int(a)) for s, m, a in zip(streams, max_symbols, alphabets)]
    items = [it for it in out if isinstance(it, _Stream)]
    if not items:
        return out
    offset = 0
    for it in items:
        it.offset = offset
        offset += len(it.data)
    buf = b"".join(it.data for it in items)
    words = _words(buf + b"\0" * (12 - len(buf) % 4))
    _check_lengths(items, words)
    start, end, count = _block_tables(items, words)
    lane_at = np.cumsum([0] + [it.n_blocks for it in items]).tolist()
    # A stream needs ceil(n / n_blocks) steps. Passes: streams join the pass of a longer
    # one while that wastes at most 8x their own steps (or little work) and the pass's
    # table rows stay within budget. Within a pass, lanes go in runs of at most
    # _STEP_BUDGET / steps (a stream too large for one run is cut).
    need = [-(-it.n // it.n_blocks) for it in items]
    passes, group, steps, rows = [], [], 0, 0
    for k in sorted(range(len(items)), key=lambda k: -need[k]):
        it = items[k]
        if group and not ((steps <= 8 * need[k] or it.n_blocks * steps <= 1 << 14)
                          and rows + (1 << it.top) <= _LUT_BUDGET):
            passes.append((group, steps))
            group, steps, rows = [], 0, 0
        group.append(k)
        steps, rows = max(steps, need[k]), rows + (1 << it.top)
    passes.append((group, steps))
    pieces: dict[int, list] = {}
    for group, steps in passes:
        per = max(1, _STEP_BUDGET // steps)
        runs, run, lanes = [], [], 0                       # run: (stream, first lane, end lane)
        for k in sorted(group):
            a = lane_at[k]
            while a < lane_at[k + 1]:
                b = min(lane_at[k + 1], a + per - lanes)
                run.append((k, a, b))
                lanes += b - a
                a = b
                if lanes == per:
                    runs.append(run)
                    run, lanes = [], 0
        if run:
            runs.append(run)
        for run in runs:
            ks = sorted({k for k, _, _ in run})
            slot = {k: i for i, k in enumerate(ks)}
            idx = np.concatenate([np.arange(a, b) for _, a, b in run]) if len(run) > 1 else np.arange(
                run[0][1], run[0][2])
            lane_item = np.repeat([slot[k] for k, _, _ in run], [b - a for _, a, b in run])
            block = _lockstep(words, [items[k] for k in ks], lane_item, start[idx], end[idx], count[idx], steps)
            at = 0
            for k, a, b in run:
                pieces.setdefault(k, []).append(block[:need[k], at:at + b - a])
                at += b - a
    for k, it in enumerate(items):
        cols = pieces[k]
        it.out = (cols[0] if len(cols) == 1 else np.concatenate(cols, axis=1)).ravel()[:it.n]
    return [it.out if isinstance(it, _Stream) else it for it in out]


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
