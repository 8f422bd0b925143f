"""The ``.ecz`` container: a header, then length- and CRC-checked sections.

Pure numpy and the standard library, so a device can decode without TensorFlow.
Every length is checked against the bytes that really remain before anything is
allocated, and every failure raises :class:`~edgecomp.errors.ContainerError`
naming the section, the byte offset and what was expected.

Layout (all integers little-endian; ``docs/FORMAT.md`` has the byte map)::

    header   8s magic b"\\x89ECZ\\r\\n\\x1a\\n", u16 major, u16 minor, u32 n_sections, u32 crc32(first 16 bytes)
    section  u8 kind, u32 length, u32 crc32(payload), payload[length]     (n_sections times)
    kind 1   META: UTF-8 JSON object
    kind 3   META, deflated: the same JSON as a raw deflate stream (what the writer emits)
    kind 2   TENSOR: u16 name_len, name, u8 method, u8 dtype, u8 ndim, u32 dims[ndim],
                     u8 n_params, f32 params[n_params], u8 n_streams, (u32 len, bytes)[n_streams]
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib

import numpy as np

from edgecomp.errors import ContainerError

MAGIC = b"\x89ECZ\r\n\x1a\n"
#: 2.1 adds tensor methods 3-5 (f16, q8, const). A file using none of them is written as 2.0,
#: byte for byte what 2.0 wrote, so older readers still read it; a 2.0 reader meets a method
#: it does not know in a 2.1 file with a one-line "unknown method" error.
VERSION = (2, 1)
#: The lowest method id that needs minor version 1.
_V21_METHODS = 3
#: Major versions this reader accepts (v1 files use only the raw and seed methods, same layout).
READABLE_MAJORS = (1, 2)
KIND_META, KIND_TENSOR, KIND_META_DEFLATED = 1, 2, 3
#: Ceiling on the inflated size of a deflated META section (a zip-bomb guard).
MAX_META_BYTES = 16 << 20
DTYPES = {1: "float32"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
#: Ceiling on the elements of one decoded tensor (a configurable guard against hostile headers).
MAX_ELEMENTS = 1 << 28

_HEADER = struct.Struct("<8sHHI")
_SECTION = struct.Struct("<BII")


@dataclasses.dataclass
class TensorRecord:
    """One stored tensor: its name, shape, coding method, float params and byte streams."""

    name: str
    shape: tuple[int, ...]
    method: int
    params: tuple[float, ...] = ()
    streams: tuple[bytes, ...] = ()
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return math.prod(int(d) for d in self.shape)  # Python ints: exact, and ~50x cheaper than np.prod

    @property
    def stream_bytes(self) -> int:
        return sum(len(s) for s in self.streams)


def _section(kind: int, payload: bytes) -> bytes:
    return _SECTION.pack(kind, len(payload), zlib.crc32(payload)) + payload


def _tensor_payload(rec: TensorRecord) -> bytes:
    name = rec.name.encode("utf-8")
    parts = [struct.pack("<H", len(name)), name,
             struct.pack("<BBB", rec.method, DTYPE_CODES[rec.dtype], len(rec.shape)),
             struct.pack(f"<{len(rec.shape)}I", *rec.shape),
             struct.pack(f"<B{len(rec.params)}f", len(rec.params), *rec.params),
             struct.pack("<B", len(rec.streams))]
    for s in rec.streams:
        parts += [struct.pack("<I", len(s)), bytes(s)]
    return b"".join(parts)


def write_container(meta: dict, records: list[TensorRecord]) -> bytes:
    """Serialise ``meta`` (a JSON-able dict) and the tensor records to container bytes."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    # The model's Keras config is most of META: deflate it (a few KB saved on every file).
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    sections = [_section(KIND_META_DEFLATED, packer.compress(text) + packer.flush())]
    sections += [_section(KIND_TENSOR, _tensor_payload(r)) for r in records]
    minor = VERSION[1] if any(r.method >= _V21_METHODS for r in records) else 0
    head = _HEADER.pack(MAGIC, VERSION[0], minor, len(sections))
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(sections)


def section_spans(data: bytes) -> list[tuple[int, int, int]]:
    """``(kind, header bytes, payload bytes)`` for the file header (kind 0) and each section of
    container bytes that :func:`read_container` has already accepted (for size reports)."""
    spans, pos = [(0, _HEADER.size + 4, 0)], _HEADER.size + 4
    while pos < len(data):
        kind, length, _crc = _SECTION.unpack_from(data, pos)
        spans.append((kind, _SECTION.size, length))
        pos += _SECTION.size + length
    return spans


class _Reader:
    """Bounds-checked cursor over a bytes object."""

    def __init__(self, data: bytes, base: int, section: str):
        self.data, self.pos, self.base, self.section = data, 0, base, section

    def fail(self, what: str):
        raise ContainerError(f"corrupt container: {self.section} at byte {self.base + self.pos}: {what}",
                             fix="the file is damaged or not an edgecomp .ecz; re-create it")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"expected {n} more bytes, {len(self.data) - self.pos} remain")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        s = _STRUCTS.get(fmt)
        if s is None:
            s = _STRUCTS[fmt] = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.data):
            self.fail(f"expected {s.size} more bytes, {len(self.data) - self.pos} remain")
        out = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return out


#: Compiled ``struct`` formats by format string (parsing is hot on many-tensor files).
_STRUCTS: dict[str, struct.Struct] = {}


def _read_tensor(payload: bytes, base: int, index: int, max_elements: int) -> TensorRecord:
    r = _Reader(payload, base, f"tensor section {index}")
    (name_len,) = r.unpack("H")
    try:
        name = r.take(name_len).decode("utf-8")
    except UnicodeDecodeError:
        r.fail("tensor name is not UTF-8")
    method, dtype_code, ndim = r.unpack("BBB")
    if dtype_code not in DTYPES:
        r.fail(f"unknown dtype code {dtype_code}")
    if ndim > 8:
        r.fail(f"expected at most 8 dimensions, found {ndim}")
    shape = r.unpack(f"{ndim}I")
    size = 1
    for d in shape:
        size *= d
    if size > max_elements:
        r.fail(f"tensor {name!r} declares {size} elements, over the limit of {max_elements}")
    (n_params,) = r.unpack("B")
    params = r.unpack(f"{n_params}f")
    (n_streams,) = r.unpack("B")
    streams = []
    for _ in range(n_streams):
        (length,) = r.unpack("I")
        streams.append(r.take(length))
    if r.pos != len(payload):
        r.fail(f"{len(payload) - r.pos} unexpected trailing bytes")
    return TensorRecord(name, tuple(shape), method, tuple(params), tuple(streams), DTYPES[dtype_code])


def read_container(data: bytes, max_elements: int = MAX_ELEMENTS) -> tuple[dict, list[TensorRecord]]:
    """Parse and validate container bytes into ``(meta, records)``; raises ContainerError only."""
    data = bytes(data)
    r = _Reader(data, 0, "header")
    if len(data) < _HEADER.size + 4 or data[:8] != MAGIC:
        raise ContainerError("not an edgecomp container (bad magic bytes)",
                             fix="pass a .ecz file written by edgecomp")
    magic, major, minor, n_sections = r.unpack("8sHHI")
    (crc,) = r.unpack("I")
    if crc != zlib.crc32(data[:_HEADER.size]):
        r.fail("header checksum mismatch")
    if major not in READABLE_MAJORS:
        raise ContainerError(f"container version {major}.{minor} is not supported (this edgecomp reads "
                             f"{' and '.join(f'{m}.x' for m in READABLE_MAJORS)})",
                             fix="decode it with the edgecomp version that wrote it")
    # Each section needs at least its 9-byte header: bound the count before looping.
    if n_sections > (len(data) - r.pos) // _SECTION.size:
        r.fail(f"header declares {n_sections} sections, more than the file can hold")
    meta, records = None, []
    for i in range(n_sections):
        r.section = f"section {i}"
        kind, length, crc = r.unpack("BII")
        start = r.pos
        payload = r.take(length)
        if zlib.crc32(payload) != crc:
            r.pos = start
            r.fail("checksum mismatch")
        if kind in (KIND_META, KIND_META_DEFLATED):
            if meta is not None:
                r.fail("a second META section")
            if kind == KIND_META_DEFLATED:
                inflater = zlib.decompressobj(-15)
                try:
                    payload = inflater.decompress(payload, MAX_META_BYTES)
                except zlib.error:
                    r.pos = start
                    r.fail("META is not a valid deflate stream")
                if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
                    r.pos = start
                    r.fail(f"META deflate stream is truncated, has trailing bytes or inflates past {MAX_META_BYTES} bytes")
            try:
                meta = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                r.pos = start
                r.fail("META is not valid UTF-8 JSON")
            if not isinstance(meta, dict):
                r.fail("META is not a JSON object")
        elif kind == KIND_TENSOR:
            records.append(_read_tensor(payload, start, i, max_elements))
        else:
            r.pos = start
            r.fail(f"unknown section kind {kind}")
    if r.pos != len(data):
        r.section = "end of file"
        r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    if meta is None:
        raise ContainerError("corrupt container: no META section", fix="re-create the file")
    return meta, records
