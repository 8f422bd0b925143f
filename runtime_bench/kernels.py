"""Which native kernels ran: qemu's translated-block trace mapped onto the runtime libraries' symbols.

qemu translates a block of guest code the first time it runs, and
``-d trace:translate_block`` logs each block's guest address. The worker reports
where each runtime library was loaded (its ``/proc/self/maps`` lines, which qemu
emulates for the guest), and the libraries' ``.symtab`` names the functions at
those addresses. A kernel whose code was translated is a kernel that ran: this
is evidence from the runtime, not a guess from the graph.

The wheels of ai-edge-litert 2.3.0 keep their local symbols, so XNNPACK's
micro-kernels show by name, e.g. ``xnn_f32_spmm_minmax_ukernel_32x1__neonfma_pipelined``
(the sparse NCHW path), ``xnn_f32_conv_hwc2chw_ukernel_3x3s2p1c3x4__aarch64_neonfma_2x2``
(its stem) or ``xnn_f32_igemm_minmax_ukernel_6x8__asm_aarch64_neonfma_cortex_a75_prfm``
(the dense path). The ELF reader bounds every offset by the file's size.

    >>> funcs = function_table("libpywrap_litert_common.so")        # doctest: +SKIP
    >>> ran = executed_functions("trace.log", maps, {"litert": funcs})   # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import re
import struct
from collections import Counter
from pathlib import Path

from edgecomp.errors import EdgecompError

_SHT_SYMTAB = 2
_STT_FUNC = 2
_MAX_SECTIONS = 1 << 16
_TRACE_PC = re.compile(rb"pc:0x([0-9a-f]+)")


def function_table(path: str | Path) -> tuple[list[int], list[tuple[int, int, str]]]:
    """``(starts, [(start, size, name)])`` of the FUNC symbols in an ELF64 little-endian file's ``.symtab``."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise EdgecompError(f"{path} is not a 64-bit little-endian ELF file", fix="pass a runtime's shared library")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    if shnum > _MAX_SECTIONS or shentsize < 64 or shoff + shnum * shentsize > len(data):
        raise EdgecompError(f"{path} has a section table outside the file", fix="pass an intact library")
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    funcs = []
    for sh in sections:
        if sh[1] != _SHT_SYMTAB:
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
        if link >= shnum or entsize < 24 or off + size > len(data):
            raise EdgecompError(f"{path} has a symbol table outside the file", fix="pass an intact library")
        str_off, str_size = sections[link][4], sections[link][5]
        if str_off + str_size > len(data):
            raise EdgecompError(f"{path} has a string table outside the file", fix="pass an intact library")
        for at in range(off, off + size - entsize + 1, entsize):
            name_at, info, _other, _shndx, value, sym_size = struct.unpack_from("<IBBHQQ", data, at)
            if info & 0xF != _STT_FUNC or value == 0 or name_at >= str_size:
                continue
            end = data.find(b"\0", str_off + name_at, str_off + str_size)
            name = data[str_off + name_at:end if end >= 0 else str_off + str_size].decode("ascii", "replace")
            funcs.append((value, max(int(sym_size), 1), name))
    funcs.sort()
    return [f[0] for f in funcs], funcs


def load_bases(maps: list[str]) -> dict[str, int]:
    """Each mapped file's load address: the start of its mapping at file offset 0."""
    bases = {}
    for line in maps:
        parts = line.split()
        if len(parts) >= 6 and int(parts[2], 16) == 0:
            bases.setdefault(parts[5], int(parts[0].split("-")[0], 16))
    return bases


def executed_functions(trace: str | Path, maps: list[str], libraries: dict[str, tuple]) -> Counter:
    """``Counter`` of ``"library:function"`` over the translated blocks in ``trace`` (one per block).

    ``libraries`` maps a name to ``(path of the library as the guest saw it, function_table(...))``.
    """
    bases = load_bases(maps)
    located = []
    for lib, (guest_path, (starts, funcs)) in libraries.items():
        base = next((b for p, b in bases.items() if p.endswith(guest_path)), None)
        if base is not None:
            located.append((lib, base, starts, funcs))
    ran: Counter = Counter()
    with open(trace, "rb") as fh:
        for line in fh:
            m = _TRACE_PC.search(line)
            if not m:
                continue
            pc = int(m.group(1), 16)
            for lib, base, starts, funcs in located:
                i = bisect.bisect_right(starts, pc - base) - 1
                if i >= 0 and pc - base < funcs[i][0] + funcs[i][1]:
                    ran[f"{lib}:{funcs[i][2]}"] += 1
                    break
    return ran


def summarize_kernels(ran: Counter) -> dict:
    """What the executed functions say: XNNPACK micro-kernels, the sparse path, builtin kernels.

    ``sparse_path`` is True when an XNNPACK SpMM micro-kernel ran (the NCHW sparse
    inference path); ``builtin_kernels`` counts LiteRT's own optimized/reference
    kernel functions (not XNNPACK) that ran.
    """
    names = [k.split(":", 1)[1] for k in ran]
    ukernels = sorted({n for n in names if n.startswith("xnn_") and "ukernel" in n})
    builtin = sorted({n for n in names if ("optimized_ops" in n or "reference_ops" in n or "optimized_integer_ops" in n)
                      and "xnn" not in n})
    return {"xnnpack_ukernels": ukernels, "sparse_path": any("_spmm_" in n for n in ukernels),
            "nchw_kernels": sorted(n for n in ukernels if "chw" in n or "_spmm_" in n),
            "builtin_kernels": len(builtin), "builtin_examples": builtin[:5]}
