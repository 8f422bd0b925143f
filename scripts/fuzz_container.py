#!/usr/bin/env python
"""Fuzz the container decoder: mutated, truncated, spliced and checksum-fixed containers.

    python scripts/fuzz_container.py --runs 100000 --out docs/results/fuzz

Every input must either decode or raise ContainerError (the documented error); anything
else is a crash (saved as a reproducer), a decode over ``--hang-s`` is a hang. Memory:
each decode's peak allocation is traced (tracemalloc sees numpy's buffers) and compared
with the input size; the address space is capped so a runaway allocation fails loudly.
Half the mutations re-compute the section and header checksums, so they reach the
record and stream parsers instead of stopping at the CRC check. ``--describe N`` adds N
structure-aware mutations of real models' descriptions (sizes, classes, nesting, node references,
shared layers, keys and types) in otherwise valid containers, decoded by ``store.decode_model``. With ``--atheris N``
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


def _decode_weights(data: bytes):
    codec.decode_weights(data, max_elements=MAX_ELEMENTS)


def run_one(data: bytes, hang_s: float, stats: dict, crashes_dir: Path, trace: bool, decode=_decode_weights,
            prefix: str = "crash", alarm_s: float | None = None):
    """Decode ``data`` once with ``decode``; count its outcome (ok, rejected, crash, hang) in ``stats``."""
    if trace:
        tracemalloc.reset_peak()
        start_mem = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, alarm_s or hang_s)
    t = time.perf_counter()
    outcome = "ok"
    try:
        decode(data)
    except ContainerError:
        outcome = "rejected"
    except Hang:
        outcome = "hang"
    except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
        outcome = "crash"
        name = hashlib.sha1(data).hexdigest()[:12]
        (crashes_dir / f"{prefix}-{name}.ecz").write_bytes(data)
        key = f"{type(exc).__name__}: {str(exc)[:120]}"
        stats["crash_kinds"][key] = stats["crash_kinds"].get(key, 0) + 1
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
    p.add_argument("--describe", type=int, default=0,
                   help="also N structure-aware mutations of model descriptions, decoded by store.decode_model")
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
        if args.runs or extra_runs:   # --runs 0 --describe N leaves the byte-level results as they are
            io.write_json(out / "fuzz.json", result)
            print(json.dumps({k: v for k, v in result.items() if k != "corpus_sizes"}, indent=1), flush=True)
        return 0 if stats["crash"] == 0 and stats["hang"] == 0 else 1

    code = finish(0)
    if args.describe:
        described = fuzz_descriptions(args.describe, args.seed, args.hang_s, crashes_dir)
        io.write_json(out / "fuzz_description.json", described)
        print(json.dumps(described, indent=1), flush=True)
        code = code or int(described["crash"] > 0 or described["hang"] > 0 or not described["bound_held"])
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


# --- structure-aware mutations of the model description (they reach store.decode_model) -------

#: Config keys whose values are sizes; a mutation sets one to an extreme.
SIZE_KEYS = ("units", "filters", "kernel_size", "pool_size", "strides", "depth_multiplier", "target_shape",
             "batch_shape", "axis", "size", "rate", "dilation_rate", "groups")
EXTREMES = (0, -1, 7, 10_000, 1_000_000, 2 ** 31, [100_000, 100_000], [None, 65_536, 65_536, 3], "big", None)
CLASSES = ("Dense", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "Embedding", "LSTM", "Lambda",
           "TFSMLayer", "NoSuchLayer", "Functional", "Sequential", "MultiHeadAttention", "Reshape", "Add")


def description_corpus() -> list[bytes]:
    """Containers of real (small) models: the descriptions the mutations start from."""
    from edgecomp import store
    from edgecomp.models import build_model
    return [store.encode_model(build_model(name, shape, 10, **opts)) for name, shape, opts in
            (("vgg", (28, 28, 1), {"width": 0.125}), ("resnet", (32, 32, 3), {"depth": 8}),
             ("densenet", (32, 32, 3), {"depth": 10, "growth_rate": 4}), ("pointnet", (64, 3), {"width": 0.25}))]


def _nodes(obj):
    """Every dict in a JSON tree (edited in place by the mutations)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            yield o
            stack.extend(v for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend(v for v in o if isinstance(v, (dict, list)))


def mutate_description(rng: random.Random, desc: dict) -> dict:
    import copy
    d = copy.deepcopy(desc)
    layers = d["config"]["layers"]
    names = [la["name"] for la in layers]
    kind = rng.randrange(7)
    layer = rng.choice(layers)
    if kind == 0:                                   # a size set to an extreme
        cfg = layer["config"]
        keys = [k for k in SIZE_KEYS if k in cfg] or ["units"]
        cfg[rng.choice(keys)] = rng.choice(EXTREMES)
    elif kind == 1:                                 # another, unknown or code-bearing class
        layer["class_name"] = rng.choice(CLASSES)
        if rng.random() < 0.3:
            layer["module"] = rng.choice(["os", "builtins", "keras.layers", None])
    elif kind == 2:                                 # nesting: the model (or a deep chain) inside a layer
        inner = copy.deepcopy(desc) if rng.random() < 0.5 else {"config": {}}
        node = inner
        for _ in range(rng.choice([1, 8, 40, 80])):
            node.setdefault("config", {})["layers"] = [{"class_name": "Functional", "config": {}}]
            node = node["config"]["layers"][0]
        layer["config"]["inner"] = inner
    elif kind == 3:                                 # node references: another, a missing or a far index
        hist = [n for n in _nodes(layer.get("inbound_nodes", [])) if "keras_history" in n]
        if hist:
            h = rng.choice(hist)["keras_history"]
            h[rng.randrange(len(h))] = rng.choice([rng.choice(names), "no_such_layer", 5, -1, 10 ** 6])
    elif kind == 4:                                 # a shared layer: two layers under one name
        other = rng.choice(layers)
        other["name"] = layer["name"]
        other["config"]["name"] = layer["name"]
    elif kind == 5:                                 # a key removed
        target = rng.choice(list(_nodes(layer)))
        if target:
            del target[rng.choice(list(target))]
    else:                                           # a value of the wrong type
        target = rng.choice(list(_nodes(layer)))
        if target:
            target[rng.choice(list(target))] = rng.choice(["x", [], {}, None, 2 ** 62, -1.5, [[[]]]])
    return d


def fuzz_descriptions(runs: int, seed: int, hang_s: float, crashes_dir: Path) -> dict:
    """``runs`` mutated descriptions, each in a valid container with the original tensors."""
    from tqdm import tqdm

    from edgecomp import store
    from edgecomp.codec.container import write_container
    rng = random.Random(seed)
    bases = [(codec.decode_weights(c)[0], codec.tensor_records(c)) for c in description_corpus()]
    for meta, records in bases:                     # warm up Keras before the baseline RSS
        store.decode_model(write_container(meta, records))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = {"ok": 0, "rejected": 0, "crash": 0, "hang": 0, "max_decode_s": 0.0, "max_input_bytes": 0,
             "crash_kinds": {}}
    previous = signal.signal(signal.SIGALRM, _alarm)
    for _ in tqdm(range(runs), desc="describe", unit="input", mininterval=2.0):
        meta, records = rng.choice(bases)
        data = write_container({**meta, "keras_config": mutate_description(rng, meta["keras_config"])}, records)
        stats["max_input_bytes"] = max(stats["max_input_bytes"], len(data))
        # a stuck decode is stopped at 10x hang_s, and counted as a hang either way
        run_one(data, hang_s, stats, crashes_dir, trace=False, decode=store.decode_model, prefix="describe",
                alarm_s=10 * hang_s)
    signal.signal(signal.SIGALRM, previous)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    return {"runs": runs, **stats, "peak_rss_growth_mb": round(growth, 1),
            "bound_mb": round(4 * stats["max_input_bytes"] / 2 ** 20 + DESCRIBE_BASE_MB, 1),
            "bound_held": growth <= 4 * stats["max_input_bytes"] / 2 ** 20 + DESCRIBE_BASE_MB,
            "note": "each input: a real model's container with a mutated description and its own tensors; crash = "
                    "any exception other than ContainerError; hang = a decode over hang_s; the bound is 4x the "
                    f"largest input plus {DESCRIBE_BASE_MB} MB, against the process's peak RSS growth after warm-up"}


#: The fixed part of the memory bound for description fuzzing (Keras's own caches while building).
DESCRIBE_BASE_MB = 200


if __name__ == "__main__":
    sys.exit(main())
