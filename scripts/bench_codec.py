#!/usr/bin/env python
"""Codec benchmark: encode/decode speed and coded size of the ``.ecz`` methods, side by side
with a faithful re-implementation of the seed's per-weight Python loop.

    python scripts/bench_codec.py                          # the seed's VGG-like shapes, 1.6 M params
    python scripts/bench_codec.py --model runs/latest/baseline.keras --out /tmp/codec.json

Weights: the seed's VGG-like net (Conv 3x3 1-32-32-64-64-128-128, Dense 2048-512-512-10,
biases) with Laplace-distributed values (heavier-tailed than a Gaussian, like trained
weights), or the weights of a ``.keras`` or ``.ecz`` file. Every kernel is pruned per
output filter at ``--rate`` (edgecomp.pruning.filter_mask) and weight-shared by k-means
(edgecomp.weight_sharing, ``--bits``); biases stay raw float32.

Timed ``--repeats`` times (whole container: encode_weights / decode_weights): the ``seed``
method, and the ``deep`` method with the Huffman, the deflate (inflated by ISA-L, and once
more by the standard library's zlib) and the fixed-width coder. The seed's loop (its
``decode()`` operation for operation, see :func:`seed_loop_decode`; and a leaner loop for
reference) is timed ``--loop-repeats`` times (it is slow), on the kernels up to ``--loop-params``
parameters, and its speed is taken per parameter. Params are dense tensor sizes. Every
speed is given as the median and the best of the repeats, in wall time and in CPU time of
this process, all its threads together (on a shared machine the CPU time shows the work
itself, the wall time also what other processes took); speed-ups over the loop compare like with like (median with
median, wall with wall). Reports params/s, bytes, bits per kept weight, the empirical
entropy of the gap and index streams against their coded bits, and Huffman's saving over
fixed-width codes. Writes JSON (``--out``) and prints a table. Needs numpy and h5py only
(no TensorFlow).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecomp import codec, weight_sharing  # noqa: E402
from edgecomp.codec import deep, huffman  # noqa: E402
from edgecomp.codec.seed_index import filter_major_axes  # noqa: E402
from edgecomp.errors import EdgecompError  # noqa: E402
from edgecomp.io import write_json, write_text  # noqa: E402
from edgecomp.pruning import filter_mask  # noqa: E402

#: The seed's VGG-like net: (name, kernel shape) per layer, each followed by its bias.
VGG_LAYERS = [("conv1", (3, 3, 1, 32)), ("conv2", (3, 3, 32, 32)), ("conv3", (3, 3, 32, 64)),
              ("conv4", (3, 3, 64, 64)), ("conv5", (3, 3, 64, 128)), ("conv6", (3, 3, 128, 128)),
              ("fc1", (2048, 512)), ("fc2", (512, 512)), ("fc3", (512, 10))]


# ----------------------------------------------------------------------------- the seed's loop

def seed_loop_encode(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The seed's encoder: filter-major, per nonzero a flat index by np.dot, gaps over 255
    split by ``(255, 0)`` fillers, then int8 quantisation of the value list."""
    t = np.transpose(w, filter_major_axes(w.ndim))
    strides = np.array([int(np.prod(t.shape[k + 1:])) for k in range(t.ndim)])
    index, values = [], []
    last = 0
    for mi in np.argwhere(t):
        flat = int(np.dot(mi, strides))
        gap = flat - last
        while gap > 255:
            gap -= 255
            index.append(255)
            values.append(0.0)
        index.append(gap)
        values.append(float(t[tuple(mi)]))
        last = flat
    v = np.asarray(values, dtype=np.float32)
    vmax = float(np.max(np.abs(v))) if len(v) else 0.0
    scale = np.float32(vmax / 127) if vmax > 0 else np.float32(1.0)
    q = np.clip(np.rint(v / scale), -127, 127).astype(np.int8)
    return np.asarray(index, dtype=np.uint8), q, float(scale)


def seed_loop_decode(index: np.ndarray, q: np.ndarray, scale: float, shape, lean: bool = False) -> np.ndarray:
    """The seed's decoder (``compression.decode``), operation for operation.

    Per stored entry: a tqdm progress update, ``index += gap``, then the filter-major
    multi-index. For a 4-D kernel the seed takes it by ``//`` and ``%`` with ``np.prod`` of
    the tail of the shape recomputed each time (seven calls per entry); for a 2-D one by
    ``index // shape[1]`` and ``index % shape[1]``; then one item assignment. The shape is the
    int32 array the seed reads back from its h5 file, the progress bar is drawn to /dev/null,
    and the running index starts as ``np.int64(0)`` (NumPy 2 would wrap the seed's ``0 +
    uint8`` at 256; NumPy 1 promoted it). The seed has no decoder for other ranks: they take
    the lean path.

    ``lean=True`` is a leaner loop, for reference: no progress bar, the multi-index by ``//``
    and ``%`` over Python ints.
    """
    axes = filter_major_axes(len(shape))
    fm_shape = tuple(shape[a] for a in axes)
    out = np.zeros(fm_shape, dtype=np.float32)
    if lean or len(fm_shape) not in (2, 4):
        s = np.float32(scale)
        pos = 0
        for gap, v in zip(index, q):
            pos += int(gap)
            rem, mi = pos, []
            for d in reversed(fm_shape):
                mi.append(rem % d)
                rem //= d
            out[tuple(reversed(mi))] = v * s
        return np.transpose(out, np.argsort(axes))
    sh = np.array(fm_shape, dtype=np.int32)
    values = q * np.array([scale], dtype=np.float32)
    with open(os.devnull, "w") as sink:
        bar = tqdm(total=len(values), file=sink)
        i = np.int64(0)
        if len(sh) == 4:
            for v, gap in zip(values, index):
                bar.update(1)
                i += gap
                x = i // np.prod(sh[1:])
                y = (i % np.prod(sh[1:])) // np.prod(sh[2:])
                h = ((i % np.prod(sh[1:])) % np.prod(sh[2:])) // sh[3]
                w = ((i % np.prod(sh[1:])) % np.prod(sh[2:])) % sh[3]
                out[x, y, h, w] = v
        else:
            for v, gap in zip(values, index):
                bar.update(1)
                i += gap
                out[i // sh[1], i % sh[1]] = v
        bar.close()
    return np.transpose(out, np.argsort(axes))


# ----------------------------------------------------------------------------- inputs

def synthetic_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in VGG_LAYERS:
        fan_in = int(np.prod(shape[:-1]))
        out[f"{name}/kernel"] = (rng.laplace(size=shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
        out[f"{name}/bias"] = (0.01 * rng.standard_normal(shape[-1])).astype(np.float32)
    return out


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights of a ``.ecz`` container, or the layer variables of a Keras 3 ``.keras`` file."""
    if not path.is_file():
        raise EdgecompError(f"model file {path} does not exist", fix="pass a .keras or .ecz file to --model")
    if path.suffix == ".ecz":
        return codec.decode_weights(path.read_bytes())[1]
    if path.suffix != ".keras":
        raise EdgecompError(f"cannot read {path.name}", fix="pass a .keras or .ecz file to --model")
    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            blob = z.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise EdgecompError(f"{path} is not a Keras 3 .keras file ({exc})", fix="save the model with Keras 3") from None
    out = {}
    with h5py.File(io.BytesIO(blob), "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim >= 1:
                out[name] = np.asarray(obj, dtype=np.float32)
        if "layers" not in f:
            raise EdgecompError(f"{path} holds no layer weights", fix="save the model with Keras 3")
        f["layers"].visititems(visit)
    return out


def prepare(weights: dict[str, np.ndarray], rate: float, bits: dict) -> tuple[dict, dict]:
    """Prune and weight-share every kernel (ndim >= 2); returns (weights, {name: SharedTensor})."""
    out, shared = {}, {}
    for name, w in weights.items():
        if w.ndim >= 2:
            if rate > 0:
                w = w * filter_mask(w, rate)
            st = weight_sharing.share_tensor(w, weight_sharing.bits_for(name, w.ndim, bits))
            shared[name] = st
            w = st.weights()
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    return out, shared


# ----------------------------------------------------------------------------- measuring

def timed(fn, repeats: int) -> tuple[dict, object]:
    """Run ``fn`` ``repeats`` times: ({wall,cpu}_{median,best} seconds, last result). CPU time is
    the process's, every thread counted: on a shared machine it shows the work itself, the wall
    time also what other processes took."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - t0)
    return summary(walls, cpus), result


def loop_timed(fn, names: list[str], repeats: int) -> tuple[dict, dict]:
    """Time ``fn(name)`` over ``names``, ``repeats`` times: (summary of the per-repeat totals,
    ``{name: result}`` of the last repeat)."""
    walls, cpus, results = [], [], {}
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for k in names:
            results[k] = fn(k)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - t0)
    return summary(walls, cpus), results


def summary(walls, cpus) -> dict:
    return {"wall_median": float(np.median(walls)), "wall_best": float(min(walls)),
            "cpu_median": float(np.median(cpus)), "cpu_best": float(min(cpus)), "repeats": len(walls)}


BASES = ("wall_median", "cpu_median", "wall_best", "cpu_best")


def rates(n: int, seconds: dict) -> dict:
    """Params per second on every basis."""
    return {b: n / seconds[b] for b in BASES}


def stream_stats(records, kernels) -> dict:
    """Empirical entropy vs coded bits of the gap and index streams of ``deep`` records."""
    out = {}
    alphabets = (("gap", 1, lambda r: 1 << int(r.params[1])), ("index", 2, lambda r: len(r.streams[0]) // 4))
    for label, k, alphabet in alphabets:
        symbols = coded = entropy = 0
        for rec in records:
            if rec.name not in kernels:
                continue
            data = rec.streams[k]
            decoder = {deep.CODERS["huffman"]: huffman.decode, deep.CODERS["deflate"]: deep.deflate_decode,
                       deep.CODERS["fixed"]: huffman.decode_fixed}[int(rec.params[2])]
            s = decoder(data, max_symbols=rec.size, alphabet=alphabet(rec))
            symbols += len(s)
            coded += 8 * len(data)
            entropy += huffman.entropy_bits(s)
        out[label] = {"symbols": symbols, "coded_bits": coded, "entropy_bits": round(entropy, 1),
                      "coded_over_entropy": round(coded / entropy, 4) if entropy else None}
    coded = sum(v["coded_bits"] for v in out.values())
    entropy = sum(v["entropy_bits"] for v in out.values())
    out["total"] = {"coded_bits": coded, "entropy_bits": round(entropy, 1),
                    "coded_over_entropy": round(coded / entropy, 4) if entropy else None}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=".keras or .ecz file (default: the seed's VGG-like shapes)")
    p.add_argument("--rate", type=float, default=0.9, help="per-filter pruning rate (default: 0.9)")
    p.add_argument("--bits", default="conv=8,dense=5", help="weight-sharing bits (default: conv=8,dense=5)")
    p.add_argument("--index-bits", type=int, default=deep.DEFAULT_INDEX_BITS,
                   help=f"deep: gap symbol bits (default: {deep.DEFAULT_INDEX_BITS})")
    p.add_argument("--repeats", type=int, default=9, help="timing repeats of our methods (default: 9)")
    p.add_argument("--loop-repeats", type=int, default=3, help="timing repeats of the seed's loop (default: 3)")
    p.add_argument("--loop-params", type=int, default=2_000_000,
                   help="time the seed's loop on kernels up to this many params (default: 2M, all of the VGG)")
    p.add_argument("--out", default="docs/results/bench_codec.json", help="JSON output path")
    args = p.parse_args(argv)
    try:
        return run(args)
    except EdgecompError as exc:
        print(f"bench_codec: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    if not 0 <= args.rate < 1:
        raise EdgecompError(f"--rate must be in [0, 1), got {args.rate}", fix="pass e.g. --rate 0.9")
    load_start = os.getloadavg()[0]
    raw = load_weights(Path(args.model)) if args.model else synthetic_weights()
    weights, shared = prepare(raw, args.rate, weight_sharing.parse_bits(args.bits))
    kernels = list(shared)
    if not kernels:
        raise EdgecompError("the model has no kernels (tensors of 2 or more dimensions)", fix="pass a CNN")
    params = sum(w.size for w in weights.values())
    kept = sum(int(np.count_nonzero(weights[k])) for k in kernels)
    print(f"net: {len(weights)} tensors, {params:,} params, {len(kernels)} kernels pruned at {args.rate} "
          f"({kept:,} kept) and weight-shared ({args.bits}); source: {args.model or 'synthetic VGG-like'}")

    # --- the seed's loop, --loop-repeats times, on a subset; checked against our seed method byte for byte
    loop_names, loop_params = [], 0
    for k in kernels:
        if loop_params + weights[k].size <= args.loop_params or not loop_names:
            loop_names.append(k)
            loop_params += weights[k].size
    repeats = max(1, args.loop_repeats)
    loop_enc, encoded = loop_timed(lambda k: seed_loop_encode(weights[k]), loop_names, repeats)
    loop_dec, back = loop_timed(lambda k: seed_loop_decode(*encoded[k], weights[k].shape), loop_names, repeats)
    lean_dec, lean_back = loop_timed(lambda k: seed_loop_decode(*encoded[k], weights[k].shape, lean=True),
                                     loop_names, repeats)     # the leaner loop, for reference
    faithful = True
    for k in loop_names:                             # both loops against our seed method, byte for byte
        rec = codec.encode_tensor(k, weights[k], "seed")
        index, q, _ = encoded[k]
        faithful &= (rec.streams[0] == index.tobytes() and rec.streams[1] == q.tobytes()
                     and np.array_equal(back[k], codec.decode_tensor(rec))
                     and np.array_equal(lean_back[k], codec.decode_tensor(rec)))
    loop = {"encode_s": loop_enc, "decode_s": loop_dec,
            "encode_params_per_s": rates(loop_params, loop_enc), "decode_params_per_s": rates(loop_params, loop_dec),
            "lean_decode_s": lean_dec, "lean_decode_params_per_s": rates(loop_params, lean_dec),
            "timed_params": loop_params, "timed_tensors": len(loop_names),
            "same_bytes_as_seed_method": bool(faithful)}

    # --- our methods, whole container, --repeats times
    variants = {"seed": {k: "seed" for k in kernels}}
    for coder in ("huffman", "deflate", "fixed"):
        variants[f"deep/{coder}"] = {k: codec.deep_spec(shared[k], index_bits=args.index_bits, coder=coder)
                                     for k in kernels}
    # The deflate streams once more, inflated by the standard library's zlib (without isal).
    variants["deep/deflate+zlib"] = variants["deep/deflate"]
    results = {}
    for label, methods in variants.items():
        t_e, data = timed(lambda: codec.encode_weights(weights, methods), args.repeats)
        default = deep.inflater()
        deep.inflater("zlib" if label.endswith("+zlib") else default)
        try:
            t_d, (_, out) = timed(lambda: codec.decode_weights(data), args.repeats)
        finally:
            deep.inflater(default)
        records = codec.tensor_records(data)
        kernel_bytes = sum(r.stream_bytes for r in records if r.name in shared)
        exact = all(np.array_equal(out[k], weights[k]) for k in weights) if label != "seed" else None
        enc, dec = rates(params, t_e), rates(params, t_d)
        results[label] = {"encode_s": t_e, "decode_s": t_d, "encode_params_per_s": enc, "decode_params_per_s": dec,
                          "container_bytes": len(data), "kernel_stream_bytes": kernel_bytes,
                          "bits_per_kept_weight": 8 * kernel_bytes / max(kept, 1),
                          "encode_speedup_vs_loop": {b: enc[b] / loop["encode_params_per_s"][b] for b in BASES},
                          "decode_speedup_vs_loop": {b: dec[b] / loop["decode_params_per_s"][b] for b in BASES},
                          "decode_speedup_vs_lean_loop": {b: dec[b] / loop["lean_decode_params_per_s"][b]
                                                          for b in BASES},
                          "exact_round_trip": exact}
        if label.startswith("deep"):
            results[label]["streams"] = stream_stats(records, shared)

    # --- fixed-width at its best gap width, for an honest Huffman saving
    fixed_bits = {}
    for ib in range(1, 9):
        recs = [deep.encode(k, weights[k], bits=shared[k].bits, index_bits=ib, coder="fixed",
                            codebook=shared[k].codebook) for k in kernels]
        fixed_bits[ib] = sum(8 * (len(r.streams[1]) + len(r.streams[2])) for r in recs)
    huff_bits = results["deep/huffman"]["streams"]["total"]["coded_bits"]
    best_ib = min(fixed_bits, key=fixed_bits.get)
    saving = {"vs_fixed_same_index_bits": 1 - huff_bits / fixed_bits[args.index_bits],
              "vs_fixed_best_index_bits": 1 - huff_bits / fixed_bits[best_ib], "fixed_best_index_bits": best_ib,
              "fixed_bits_by_index_bits": fixed_bits}
    hs = results["deep/huffman"]["streams"]["total"]
    dh = results["deep/huffman"]
    # Targets on medians (the typical run), wall and CPU alike.
    def targets_for(label):
        dh, hs = results[label], results[label]["streams"]["total"]
        return {
            "decode_100M_params_per_s": dh["decode_params_per_s"]["wall_median"] >= 100e6,
            "decode_100M_params_per_cpu_s": dh["decode_params_per_s"]["cpu_median"] >= 100e6,
            "encode_20M_params_per_s": dh["encode_params_per_s"]["wall_median"] >= 20e6,
            "decode_60x_loop": dh["decode_speedup_vs_loop"]["wall_median"] >= 60,
            "decode_60x_loop_cpu": dh["decode_speedup_vs_loop"]["cpu_median"] >= 60,
            "coded_within_5pct_of_entropy": hs["coded_over_entropy"] <= 1.05,
            "huffman_saves_15pct_vs_fixed": saving["vs_fixed_same_index_bits"] >= 0.15,
            "exact_round_trip": dh["exact_round_trip"],
        }

    targets = {label: targets_for(label) for label in ("deep/huffman", "deep/deflate", "deep/deflate+zlib")}
    report = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_start": load_start, "load_avg_1m": os.getloadavg()[0],
                          "python": platform.python_version(), "numpy": np.__version__,
                          "platform": platform.platform()},
              "net": {"source": args.model or "synthetic VGG-like (Laplace weights)", "params": params,
                      "kernels": len(kernels), "kept_weights": kept, "rate": args.rate, "bits": args.bits,
                      "index_bits": args.index_bits, "repeats": args.repeats, "loop_repeats": args.loop_repeats,
                      "inflater": deep.inflater()},
              "seed_loop": loop, "methods": results, "huffman_saving": saving,
              "any_order0_coder_max_gain_over_huffman": 1 - hs["entropy_bits"] / hs["coded_bits"],
              "targets": targets}
    import contextlib
    import io as _io
    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_report(report)
    print(buf.getvalue())
    write_json(args.out, report)
    md = Path(args.out).with_suffix(".md")
    write_text(md, f"# Codec speed and size\n\nMade by `python scripts/bench_codec.py {' '.join(sys.argv[1:])}` "
               f"(load average {report['machine']['load_avg_1m']:.1f} on {os.cpu_count()} CPUs).\n\n"
               "```\n" + buf.getvalue().strip() + "\n```\n")
    print(f"\nwrote {args.out} and {md}")
    return 0


def print_report(r: dict) -> None:
    loop = r["seed_loop"]
    rows = [("seed loop (Python)", loop["encode_params_per_s"], loop["decode_params_per_s"], None, None, None, None),
            ("seed loop, lean", None, loop["lean_decode_params_per_s"], None, None, None, None)]
    for label, m in r["methods"].items():
        rows.append((label, m["encode_params_per_s"], m["decode_params_per_s"], m["encode_speedup_vs_loop"],
                     m["decode_speedup_vs_loop"], m["container_bytes"], m["bits_per_kept_weight"]))
    print("\nM params/s as median (best) of the repeats; x loop: median over median (best over best)")
    print(f"{'method':20s} {'encode wall':>14s} {'encode cpu':>14s} {'decode wall':>14s} {'decode cpu':>14s}  "
          f"{'x loop dec wall':>16s} {'x loop dec cpu':>15s} {'bytes':>9s} {'bits/kept':>9s}")

    def pair(d, scale=1e6, fmt=".1f"):
        return f"{d['wall_median'] / scale:{fmt}} ({d['wall_best'] / scale:{fmt}})", \
            f"{d['cpu_median'] / scale:{fmt}} ({d['cpu_best'] / scale:{fmt}})"

    for name, enc, dec, _, xd, b, bpw in rows:
        ew, ec = pair(enc) if enc else ("", "")
        dw, dc = pair(dec)
        xw, xc = pair(xd, 1, ".0f") if xd else ("", "")
        print(f"{name:20s} {ew:>14s} {ec:>14s} {dw:>14s} {dc:>14s}  {xw:>16s} {xc:>15s} "
              f"{'' if b is None else f'{b:,}':>9s} {'' if bpw is None else f'{bpw:.3f}':>9s}")
    lean = r["methods"]["deep/deflate"]["decode_speedup_vs_lean_loop"]
    print(f"(seed loop: the seed's decode() op for op: np.prod of the shape per entry, a tqdm update per entry; "
          f"lean: // and % on Python ints, no progress bar; deep/deflate decodes {lean['wall_median']:.0f}x "
          f"({lean['wall_best']:.0f}x) faster than the lean loop, wall)")
    print(f"(seed loop: {loop['timed_tensors']} kernels, {loop['timed_params']:,} params, {r['net']['loop_repeats']} "
          f"repeats, speed per param; same bytes and values as our seed method: {loop['same_bytes_as_seed_method']}; "
          f"ours: {r['net']['repeats']} repeats, whole container incl. raw biases; deep/deflate inflated by "
          f"{r['net'].get('inflater', 'zlib')}, deep/deflate+zlib by the standard library's zlib; load avg "
          f"{r['machine']['load_avg_1m_start']:.1f} -> {r['machine']['load_avg_1m']:.1f} "
          f"on {r['machine']['cpus']} CPUs)")
    for label in ("deep/huffman", "deep/fixed"):
        s = r["methods"][label]["streams"]
        print(f"\n{label} streams: " + "; ".join(
            f"{k}: {v['coded_bits'] / 8:,.0f} B coded vs {v['entropy_bits'] / 8:,.0f} B entropy "
            f"(x{v['coded_over_entropy']})" for k, v in s.items()))
    h = r["huffman_saving"]
    print(f"\nHuffman saves {100 * h['vs_fixed_same_index_bits']:.1f}% vs fixed-width at the same index bits, "
          f"{100 * h['vs_fixed_best_index_bits']:.1f}% vs fixed-width at its best index bits "
          f"({h['fixed_best_index_bits']}); any order-0 coder (ANS, arithmetic) could save at most "
          f"{100 * r['any_order0_coder_max_gain_over_huffman']:.2f}% more")
    for label, t in r["targets"].items():
        print(f"targets, {label}: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in t.items()))


if __name__ == "__main__":
    sys.exit(main())
