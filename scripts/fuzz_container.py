#!/usr/bin/env python
"""Fuzz the container decoder: mutated, truncated, spliced and checksum-fixed containers.

    python scripts/fuzz_container.py --runs 100000 --out docs/results/fuzz

Every input must either decode or raise ContainerError (the documented error); anything
else is a crash (saved as a reproducer), a decode over ``--hang-s`` is a hang. Memory:
each decode's peak allocation is traced (tracemalloc sees numpy's buffers) and compared
with the input size; the address space is capped so a runaway allocation fails loudly.
Half the mutations re-compute the section and header checksums, so they reach the
record and stream parsers instead of stopping at the CRC check. With ``--atheris N``
(and atheris installed) N more inputs come from coverage-guided fuzzing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edgecomp import codec  # noqa: E402
from edgecomp.codec.container import MAGIC  # noqa: E402
from edgecomp.errors import ContainerError  # noqa: E402

MAX_ELEMENTS = 1 << 20   # the decoder's ceiling while fuzzing (a configurable guard)


def corpus() -> list[bytes]:
    """Small valid containers covering every method and coder."""
    from edgecomp.pruning import filter_mask
    from edgecomp.weight_sharing import share_tensor
    rng = np.random.default_rng(0)
    out = []
    for shape, rate in (((3, 3, 4, 8), 0.7), ((64, 16), 0.9), ((300, 4), 0.99), ((2, 2), 0.0)):
        w = rng.normal(size=shape).astype(np.float32)
        w *= filter_mask(w, rate)
        b = rng.normal(size=shape[-1]).astype(np.float32)
        out.append(codec.encode_weights({"k": w, "b": b}, {"k": "seed"}, {"m": 1}))
        st = share_tensor(w, 3)
        for coder in ("huffman", "fixed"):
            spec = codec.deep_spec(st, coder=coder, index_bits=4)
            out.append(codec.encode_weights({"k": st.weights(), "b": b}, {"k": spec}, {"m": [1, 2]}))
    out.append(codec.encode_weights({"z": np.zeros((5, 7), np.float32)}, {"z": "seed"}))
    return out


def fix_checksums(data: bytearray) -> bytearray:
    """Recompute the header CRC and every section CRC that the lengths still delimit."""
    if len(data) < 20 or data[:8] != MAGIC:
        return data
    struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[:16])))
    pos = 20
    while pos + 9 <= len(data):
        _, length, _ = struct.unpack_from("<BII", data, pos)
        end = pos + 9 + length
        if end > len(data):
            break
        struct.pack_into("<I", data, pos + 5, zlib.crc32(bytes(data[pos + 9:end])))
        pos = end
    return data


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    kind = rng.randrange(8)
    if kind == 0:                                   # flip 1-8 bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:                                 # truncate
        data = data[:rng.randrange(len(data))]
    elif kind == 2:                                 # splice two containers
        other = rng.choice(seeds)
        data = data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]
    elif kind == 3:                                 # overwrite a u32 with an extreme value
        if len(data) >= 4:
            i = rng.randrange(len(data) - 3)
            struct.pack_into("<I", data, i, rng.choice([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                                        rng.getrandbits(32)]))
    elif kind == 4:                                 # insert or delete bytes
        i = rng.randrange(len(data) + 1)
        if rng.random() < 0.5:
            data[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        else:
            del data[i:i + rng.randint(1, 16)]
    elif kind == 5:                                 # random bytes in a random span
        i = rng.randrange(len(data))
        for j in range(i, min(len(data), i + rng.randint(1, 32))):
            data[j] = rng.getrandbits(8)
    elif kind == 6:                                 # duplicate a chunk
        i = rng.randrange(len(data))
        data[i:i] = data[i:i + rng.randint(1, 64)]
    else:                                           # a single byte set to 0 or 255
        data[rng.randrange(len(data))] = rng.choice([0, 255])
    if rng.random() < 0.5:
        data = fix_checksums(data)
    return bytes(data)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def run_one(data: bytes, hang_s: float, stats: dict, crashes_dir: Path, trace: bool):
    if trace:
        tracemalloc.reset_peak()
        start_mem = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, hang_s)
    t = time.perf_counter()
    outcome = "ok"
    try:
        codec.decode_weights(data, max_elements=MAX_ELEMENTS)
    except ContainerError:
        outcome = "rejected"
    except Hang:
        outcome = "hang"
    except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
        outcome = "crash"
        name = hashlib.sha1(data).hexdigest()[:12]
        (crashes_dir / f"crash-{name}.ecz").write_bytes(data)
        stats["crash_kinds"][f"{type(exc).__name__}: {str(exc)[:120]}"] = \
            stats["crash_kinds"].get(f"{type(exc).__name__}: {str(exc)[:120]}", 0) + 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    elapsed = time.perf_counter() - t
    stats[outcome] += 1
    stats["max_decode_s"] = max(stats["max_decode_s"], elapsed)
    if elapsed > hang_s and outcome != "hang":
        stats["hang"] += 1
    if trace:
        peak = tracemalloc.get_traced_memory()[1] - start_mem
        stats["max_peak_bytes"] = max(stats["max_peak_bytes"], peak)
        stats["max_peak_over_4x_input"] = max(stats["max_peak_over_4x_input"], peak - 4 * len(data))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-s", type=float, default=1.0)
    p.add_argument("--memory-limit-mb", type=int, default=4096, help="address-space cap for this process")
    p.add_argument("--atheris", type=int, default=0, help="extra coverage-guided runs (needs atheris)")
    p.add_argument("--out", default="docs/results/fuzz")
    args = p.parse_args(argv)
    from edgecomp import io
    from tqdm import tqdm

    out = io.ensure_dir(args.out)
    crashes_dir = io.ensure_dir(Path("runs") / "fuzz-crashes")
    limit = args.memory_limit_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    seeds = corpus()
    rng = random.Random(args.seed)
    stats = {"ok": 0, "rejected": 0, "crash": 0, "hang": 0, "max_decode_s": 0.0, "max_peak_bytes": 0,
             "max_peak_over_4x_input": 0, "crash_kinds": {}}
    tracemalloc.start()
    started = time.time()
    for _ in tqdm(range(args.runs), desc="fuzz", unit="input", mininterval=2.0):
        run_one(mutate(rng, seeds), args.hang_s, stats, crashes_dir, trace=True)
    tracemalloc.stop()
    result = {"runs": args.runs, "atheris_runs": 0, "seconds": time.time() - started,
              "corpus_sizes": [len(s) for s in seeds], "max_elements": MAX_ELEMENTS, **stats,
              "note": "crash = any exception other than ContainerError; hang = a decode over hang_s; "
                      "peak = tracemalloc peak of one decode (numpy buffers included)"}

    def finish(extra_runs: int) -> int:
        result["atheris_runs"] = extra_runs
        result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result.update({k: stats[k] for k in ("ok", "rejected", "crash", "hang", "max_decode_s", "crash_kinds")})
        io.write_json(out / "fuzz.json", result)
        print(json.dumps({k: v for k, v in result.items() if k != "corpus_sizes"}, indent=1), flush=True)
        return 0 if stats["crash"] == 0 and stats["hang"] == 0 else 1

    code = finish(0)
    if args.atheris:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: skipping coverage-guided runs (pip install atheris)")
        else:
            # libFuzzer ends the process itself after the last run: the target writes the results then.
            run_atheris(args.atheris, seeds, args.hang_s, stats, crashes_dir, finish)
    return code


def run_atheris(n: int, seeds: list[bytes], hang_s: float, stats: dict, crashes_dir: Path, finish) -> int:
    """Coverage-guided fuzzing with atheris for ``n`` inputs, seeded with the corpus."""
    import atheris
    import tempfile

    corpus_dir = Path(tempfile.mkdtemp(prefix="ecz-corpus-"))
    for i, s in enumerate(seeds):
        (corpus_dir / f"seed{i}").write_bytes(s)
    count = {"n": 0}

    def target(data: bytes):
        count["n"] += 1
        run_one(bytes(fix_checksums(bytearray(data))) if data[:1] == b"\x89" else data, hang_s, stats,
                crashes_dir, trace=False)
        if count["n"] >= n:      # stop here ourselves: libFuzzer's own exit skips Python's clean-up
            code = finish(count["n"])
            sys.stdout.flush()
            os._exit(code)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], f"-runs={2 * n + len(seeds)}", "-max_len=4096", str(corpus_dir)], target)
    atheris.Fuzz()
    finish(count["n"])
    return count["n"]


if __name__ == "__main__":
    sys.exit(main())
