"""Read plain-data pickles (such as the CIFAR "python version" files) without ``pickle``.

The standard library's unpickler calls whatever a stream names, so edgecomp
never uses it.
:func:`safe_loads` interprets only the data opcodes (``None``/bools, ints,
floats, strings, bytes, tuples, lists, dicts, the memo) and rebuilds numpy
arrays whose reduce recipe it recognises *by name*:
``numpy[._]core.multiarray._reconstruct`` + ``numpy.ndarray`` + ``numpy.dtype``
(protocols 2-4), ``numpy[._]core.numeric._frombuffer`` (protocol 5, in-band),
and ``_codecs.encode(text, "latin1")`` / ``bytes()`` (how Python 3 writes bytes
at protocol 2).
Nothing named in the stream is imported or called; any other global or opcode
raises :class:`~edgecomp.errors.EdgecompError` ("unsupported pickle content").

Python 2 strings (``STRING``/``BINSTRING``/``SHORT_BINSTRING``) come back as
``bytes`` (the standard unpickler's ``encoding="bytes"``); arrays are read-only
``np.frombuffer`` views.

Example:
    >>> safe_loads(b"\\x80\\x02}q\\x00X\\x01\\x00\\x00\\x00aq\\x01K\\x07s.")
    {'a': 7}
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from edgecomp.errors import EdgecompError

__all__ = ["safe_load", "safe_loads"]

# (module, name) -> the role we give it. Nothing here is ever imported.
_KNOWN_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",   # Python 3 writes b"" as bytes() at protocol 2
    ("builtins", "bytes"): "bytes",
}
_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: no objects, records or strings


def _sint(raw: memoryview) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _utf8(raw: memoryview) -> str:
    return str(raw, "utf-8", "surrogatepass")


# Opcodes that push a fresh value without reading an argument:
# NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE, EMPTY_DICT, EMPTY_LIST.
_NO_ARG = {0x4E: lambda: None, 0x88: lambda: True, 0x89: lambda: False, 0x29: tuple, 0x7D: dict, 0x5D: list}
# Fixed-width numbers: BININT1, BININT2, BININT, BINFLOAT -> (bytes, converter).
_FIXED = {0x4B: (1, lambda raw: raw[0]), 0x4D: (2, lambda raw: int.from_bytes(raw, "little")),
          0x4A: (4, _sint), 0x47: (8, lambda raw: struct.unpack(">d", raw)[0])}
# Length-prefixed payloads -> (width of the little-endian length, converter). Python 2
# strings (SHORT_BINSTRING, BINSTRING) become bytes, like encoding="bytes".
_SIZED = {0x55: (1, bytes), 0x54: (4, bytes), 0x43: (1, bytes), 0x42: (4, bytes), 0x8E: (8, bytes),
          0x96: (8, bytearray), 0x8C: (1, _utf8), 0x58: (4, _utf8), 0x8D: (8, _utf8),
          0x8A: (1, _sint), 0x8B: (4, _sint)}  # ..., BYTEARRAY8, *UNICODE*, LONG1, LONG4


class _Unsupported(Exception):
    """Internal: the stream uses something this reader refuses."""


class _Global:
    __slots__ = ("role",)

    def __init__(self, role: str):
        self.role = role


class _PendingArray:
    """Result of ``_reconstruct(...)`` before its ``BUILD`` supplies shape, dtype and data."""


class _PendingDtype:
    __slots__ = ("typestr", "dtype")

    def __init__(self, typestr: str):
        self.typestr, self.dtype = typestr, None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise _Unsupported(f"expected a string, got {type(value).__name__}")


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _PendingDtype):
        raise _Unsupported("array dtype is not a numpy dtype")
    if value.dtype is None:  # a dtype without BUILD state: native byte order
        value.dtype = np.dtype(value.typestr)
    return value.dtype


def _array_from(raw: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    if not isinstance(raw, (bytes, bytearray)):
        raise _Unsupported("array data is not raw bytes (object arrays are refused)")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _Unsupported(f"bad array shape {shape!r}")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise _Unsupported(f"array data has {len(raw)} bytes, shape {shape} x {dtype} needs "
                           f"{math.prod(shape) * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _reduce(func: Any, args: Any) -> Any:
    """Apply one of the recognised callables (by role) to ``args``, without importing it."""
    role = func.role if isinstance(func, _Global) else None
    if not isinstance(args, tuple):
        raise _Unsupported("REDUCE arguments are not a tuple")
    if role == "reconstruct" and args and isinstance(args[0], _Global) and args[0].role == "ndarray":
        return _PendingArray()
    if role == "dtype" and args:
        dtype = np.dtype(_text(args[0]))  # only a type code such as "u1" or "<f4" reaches here
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields or dtype.subdtype:
            raise _Unsupported(f"dtype {_text(args[0])!r}")
        return _PendingDtype(_text(args[0]))
    if role == "encode" and len(args) == 2 and isinstance(args[0], str) and \
            _text(args[1]).replace("-", "").lower() == "latin1":
        return args[0].encode("latin-1")
    if role == "bytes" and args == ():
        return b""
    if role == "frombuffer" and len(args) == 4:
        return _array_from(args[0], _as_dtype(args[1]), args[2], _text(args[3]) == "F")
    raise _Unsupported(f"call of {role or type(func).__name__}")


def _build(target: Any, state: Any) -> Any:
    """Apply a ``BUILD`` state to a pending dtype or array; return the finished object."""
    if isinstance(target, _PendingDtype) and isinstance(state, tuple) and len(state) >= 5:
        order, subarray, names = _text(state[1]), state[2], state[3]
        if subarray is not None or names is not None:
            raise _Unsupported("structured or sub-array dtype")
        base = np.dtype(target.typestr)
        target.dtype = base.newbyteorder(order) if order in ("<", ">") else base
        return target
    if isinstance(target, _PendingArray) and isinstance(state, tuple) and len(state) == 5:
        _, shape, dtype, fortran, raw = state
        return _array_from(raw, _as_dtype(dtype), shape, bool(fortran))
    raise _Unsupported(f"BUILD of {type(target).__name__}")


def _check_finished(obj: Any) -> None:
    """Refuse results that still hold placeholders (a REDUCE without its BUILD, a bare global)."""
    todo, seen = [obj], set()
    while todo:
        item = todo.pop()
        if id(item) in seen:  # self-referencing lists and dicts are legal pickles
            continue
        seen.add(id(item))
        if isinstance(item, (_Global, _PendingArray, _PendingDtype)):
            raise _Unsupported(f"unfinished {type(item).__name__.strip('_')} in the result")
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)


def safe_loads(data: bytes, name: str = "<bytes>") -> Any:
    """Decode a pickle byte stream of plain data and numpy arrays; ``name`` is used in errors.

    Example:
        >>> safe_loads(b"\\x80\\x02]q\\x00(K\\x01K\\x02e.")
        [1, 2]
    """
    data = bytes(data)  # no copy when it already is bytes
    view = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise _Unsupported("stream ends early (truncated file)")
        pos += n
        return view[pos - n:pos]

    def uint(n: int) -> int:
        return int.from_bytes(take(n), "little")

    def line() -> str:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise _Unsupported("stream ends early (truncated file)")
        text, pos = bytes(view[pos:end]).decode("latin-1"), end + 1
        return text

    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not marks:
            raise _Unsupported("missing MARK")
        items, stack = stack, marks.pop()
        return items

    try:
        while True:
            at = pos
            op = take(1)[0]
            if op == 0x80:            # PROTO
                take(1)
            elif op == 0x95:          # FRAME: only a length hint
                take(8)
            elif op == 0x2E:          # STOP
                if len(stack) != 1 or marks:
                    raise _Unsupported("STOP with a malformed stack")
                _check_finished(stack[0])
                return stack[0]
            elif op == 0x28:          # MARK
                marks.append(stack)
                stack = []
            elif op in _NO_ARG:
                stack.append(_NO_ARG[op]())
            elif op in _FIXED:
                width, convert = _FIXED[op]
                stack.append(convert(take(width)))
            elif op in _SIZED:
                width, convert = _SIZED[op]
                stack.append(convert(take(uint(width))))
            elif op == 0x49:                                                      # INT (protocol 0/1)
                text = line()
                stack.append(True if text == "01" else False if text == "00" else int(text))
            elif op in (0x85, 0x86, 0x87):                                        # TUPLE1/2/3
                n = op - 0x84
                if len(stack) < n:
                    raise _Unsupported("stack underflow")
                items = stack[len(stack) - n:]
                del stack[len(stack) - n:]
                stack.append(tuple(items))
            elif op in (0x74, 0x6C):                                              # TUPLE, LIST
                items = pop_mark()  # rebinds `stack`, so pop before appending
                stack.append(tuple(items) if op == 0x74 else items)
            elif op in (0x64, 0x75):                                              # DICT, SETITEMS
                items = pop_mark()
                if len(items) % 2:
                    raise _Unsupported("odd number of dict items")
                target = {} if op == 0x64 else stack[-1]
                if not isinstance(target, dict):
                    raise _Unsupported("SETITEMS on a non-dict")
                target.update(zip(items[::2], items[1::2]))
                if op == 0x64:
                    stack.append(target)
            elif op == 0x73:                                                      # SETITEM
                value, key = stack.pop(), stack.pop()
                if not isinstance(stack[-1], dict):
                    raise _Unsupported("SETITEM on a non-dict")
                stack[-1][key] = value
            elif op in (0x61, 0x65):                                              # APPEND, APPENDS
                items = [stack.pop()] if op == 0x61 else pop_mark()
                if not isinstance(stack[-1], list):
                    raise _Unsupported("APPEND on a non-list")
                stack[-1].extend(items)
            elif op == 0x30: stack.pop()                                          # POP
            elif op == 0x31: pop_mark()                                           # POP_MARK
            elif op == 0x32: stack.append(stack[-1])                              # DUP
            elif op in (0x71, 0x72, 0x70, 0x94):                                  # BINPUT, LONG_BINPUT, PUT, MEMOIZE
                key = (uint(1) if op == 0x71 else uint(4) if op == 0x72
                       else int(line()) if op == 0x70 else len(memo))
                memo[key] = stack[-1]
            elif op in (0x68, 0x6A, 0x67):                                        # BINGET, LONG_BINGET, GET
                key = uint(1) if op == 0x68 else uint(4) if op == 0x6A else int(line())
                if key not in memo:
                    raise _Unsupported(f"memo key {key} read before it is written")
                stack.append(memo[key])
            elif op in (0x63, 0x93):                                              # GLOBAL, STACK_GLOBAL
                if op == 0x63:
                    module, qualname = line(), line()
                else:
                    qualname, module = _text(stack.pop()), _text(stack.pop())
                role = _KNOWN_GLOBALS.get((module, qualname))
                if role is None:
                    raise _Unsupported(f"global {module}.{qualname}")
                stack.append(_Global(role))
            elif op == 0x52:                                                      # REDUCE
                args = stack.pop()
                stack[-1] = _reduce(stack[-1], args)
            elif op == 0x62:                                                      # BUILD
                state = stack.pop()
                old = stack[-1]
                stack[-1] = _build(old, state)
                for key, value in memo.items():  # the memo may hold the placeholder
                    if value is old:
                        memo[key] = stack[-1]
            else:
                raise _Unsupported(f"opcode 0x{op:02x} at byte {at}")
    except _Unsupported as exc:
        raise EdgecompError(f"unsupported pickle content in {name}: {exc}",
                            fix="use the original dataset files (edgecomp reads only plain data "
                                "and numpy arrays from pickles)") from None
    except (IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise EdgecompError(f"malformed pickle {name}: {type(exc).__name__}: {exc}",
                            fix="re-download or re-extract the dataset files") from None


def safe_load(path: str | os.PathLike) -> Any:
    """Read the pickle file at ``path`` with :func:`safe_loads`.

    Example:
        >>> batch = safe_load("cifar-10-batches-py/data_batch_1")  # doctest: +SKIP
        >>> batch[b"data"].shape  # doctest: +SKIP
        (10000, 3072)
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise EdgecompError(f"cannot read {path}: {exc.strerror}", fix="check the data folder") from None
    return safe_loads(data, str(path))
