#!/usr/bin/env python
"""Small-tensor storage: a BN-heavy net's container before and after compact storage.

    python scripts/bench_small_tensors.py --out docs/results/small_tensors

Builds keras.applications MobileNetV2 (alpha 0.35, 96x96x3, 10 classes, random init), trains it
briefly on a learnable synthetic set (each class a fixed low-frequency colour pattern plus noise),
compresses it with the deep method at rate 0.8 (``edgecomp.pipeline.compress``, tiny fine-tuning),
then stores the same compressed model under each small-tensor policy of
:data:`edgecomp.store.SMALL_POLICIES` (``raw`` is the container the pipeline wrote: small
tensors as float32; the others re-store only its raw records, :func:`edgecomp.store.compact_container`,
so every deep-coded stream is byte-identical). For each: bytes, ratio to the fp32 weights,
bytes by stream (:func:`edgecomp.codec.stream_shares`) and by tensor role, the records per
method, and the decoded model's parity with the compressed Keras model before storage (top-1
agreement and max/mean abs diff of the softmax outputs on the test images), against the fp32
(1e-4, 100%) and fp16 (1e-2, 99%) export thresholds of ``exporters.parity``.

Writes ``small_tensors.json``, ``small_tensors.md`` and ``small_tensors.png`` (stream shares
per policy), all atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

#: The export thresholds of exporters.parity (fp32 and fp16 variants), restated for the table.
FP32_LIMITS = {"max_abs_diff": 1e-4, "top1_agreement": 1.0}
FP16_LIMITS = {"max_abs_diff": 1e-2, "top1_agreement": 0.99}
#: Stream groups for the plot and table, in drawing order.
GROUPS = (("deep codebook indices", ("deep:indices",)), ("deep positions (gaps)", ("deep:gaps",)),
          ("deep codebooks", ("deep:codebook",)), ("small: raw float32", ("raw:values",)),
          ("small: fp16", ("f16:values",)), ("small: 8-bit", ("q8:codes",)), ("description (META)", ("description",)),
          ("record headers", ("records",)), ("file/section headers", ("header",)))


def synthetic(n: int, shape=(96, 96, 3), classes: int = 10, seed: int = 0, noise: float = 0.4):
    """A learnable set: class k is a fixed smooth colour pattern, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w] / h
    patterns = []
    for k in range(classes):
        f = rng.uniform(1, 4, size=(c, 2))
        ph = rng.uniform(0, 2 * np.pi, size=c)
        patterns.append(np.stack([np.sin(2 * np.pi * (f[i, 0] * yy + f[i, 1] * xx) + ph[i]) for i in range(c)], -1))
    y = rng.integers(0, classes, size=n)
    x = np.stack([patterns[k] for k in y]).astype(np.float32)
    x += rng.normal(0, noise, size=x.shape).astype(np.float32)
    return x, y.astype(np.int64)


def role_of(name: str, kinds: dict) -> str:
    layer, var = name.rsplit("/", 1)[0].split("/")[-1], name.rsplit("/", 1)[-1]
    kind = kinds.get(layer, "")
    if kind == "BatchNormalization":
        return "BatchNorm parameters"
    if var == "bias":
        return "biases"
    return "depthwise kernels" if kind.startswith("Depthwise") else "other kernels"


def measure(data: bytes, ref_out: np.ndarray, x: np.ndarray, y: np.ndarray, kinds: dict, fp32_bytes: int) -> dict:
    from edgecomp import codec, store
    from edgecomp.metrics import parity_figures
    from edgecomp.train import predict

    t0 = time.perf_counter()
    model = store.decode_model(data)
    decode_s = time.perf_counter() - t0
    out = predict(model, x)
    par = parity_figures(out, ref_out)
    records = codec.tensor_records(data)
    methods, roles = {}, {}
    for rec in records:
        m = codec.METHOD_NAMES[rec.method]
        methods[m] = methods.get(m, 0) + 1
        role = role_of(rec.name, kinds)
        entry = roles.setdefault(role, {"bytes": 0, "params": 0})
        entry["bytes"] += rec.stream_bytes
        entry["params"] += rec.size
    return {"bytes": len(data), "ratio": fp32_bytes / len(data), "streams": codec.stream_shares(data),
            "records_by_method": methods, "by_role": roles, "parity": par,
            "accuracy": float(np.mean(np.argmax(out, -1) == y)), "decode_s": decode_s,
            "storage": codec.decode_weights(data)[0].get("storage"),
            "passes_fp32": par["max_abs_diff"] <= FP32_LIMITS["max_abs_diff"]
            and par["top1_agreement"] >= FP32_LIMITS["top1_agreement"],
            "passes_fp16": par["max_abs_diff"] <= FP16_LIMITS["max_abs_diff"]
            and par["top1_agreement"] >= FP16_LIMITS["top1_agreement"]}


def grouped(streams: dict) -> dict:
    return {label: sum(streams.get(k, 0) for k in keys) for label, keys in GROUPS}


def markdown(res: dict) -> str:
    from edgecomp.report import markdown_table

    rows = []
    for name, r in res["variants"].items():
        p = r["parity"]
        rows.append([name, f"{r['bytes']:,}", f"{r['ratio']:.2f}x", f"{100 * p['top1_agreement']:.2f}%",
                     f"{p['max_abs_diff']:.2e}", f"{p['mean_abs_diff']:.1e}", f"{100 * r['accuracy']:.1f}%",
                     "fp32" if r["passes_fp32"] else "fp16" if r["passes_fp16"] else "neither",
                     ", ".join(f"{k} {v}" for k, v in sorted(r["records_by_method"].items()))])
    policies = markdown_table(["small tensors", "container bytes", "vs fp32", "top-1 agree", "max abs diff",
                               "mean abs diff", "accuracy", "parity holds at", "records by method"], rows,
                              "lrrrrrrll")
    names = list(res["variants"])
    share_rows = []
    for label, _ in GROUPS:
        cells = [grouped(res["variants"][n]["streams"])[label] for n in names]
        if any(cells):
            share_rows.append([label] + [f"{c:,} ({100 * c / res['variants'][n]['bytes']:.1f}%)"
                                         for c, n in zip(cells, names)])
    shares = markdown_table(["stream"] + names, share_rows, "l" + "r" * len(names))
    roles = sorted({k for r in res["variants"].values() for k in r["by_role"]})
    role_rows = [[k] + [f"{res['variants'][n]['by_role'].get(k, {}).get('bytes', 0):,}" for n in names] for k in roles]
    role_table = markdown_table(["tensor role (stream bytes)"] + names, role_rows, "l" + "r" * len(names))
    m = res["model"]
    before, after = res["variants"]["raw"], res["variants"][res["headline"]]
    return "\n".join([
        "# Small-tensor storage: MobileNetV2 (alpha 0.35, 96x96), deep method at rate 0.8", "",
        f"Made by `{res['command']}` in {res['seconds']:.0f} s.", "",
        f"Model: {m['params']:,} parameters ({m['fp32_bytes']:,} B as fp32), {m['bn_layers']} BatchNorm layers; "
        f"trained {res['train_epochs']} epoch(s) on {res['n_train']} synthetic images, then "
        f"`compress(method=\"deep\", rate=0.8, fine_tune_epochs={res['fine_tune_epochs']}, "
        f"centroid_epochs={res['centroid_epochs']})`. Parity: the decoded model against the compressed Keras "
        f"model before storage, softmax outputs on {res['n_test']} test images. Compact storage holds, per "
        f"tensor, |decoded_i - w_i| <= tol * max(|w_i|, median|w|) for every element, tol = 2^"
        f"{np.log2(res['tol']):.0f} unless the row says otherwise; the export thresholds are fp32 (max abs diff "
        f"<= {FP32_LIMITS['max_abs_diff']:g}, top-1 {100 * FP32_LIMITS['top1_agreement']:.0f}%) and fp16 "
        f"(<= {FP16_LIMITS['max_abs_diff']:g}, {100 * FP16_LIMITS['top1_agreement']:.0f}%). "
        f"BatchNorm momentum was set to {res['bn_momentum']} (stock 0.999) so the moving statistics settle in "
        f"a short training; test accuracy of the trained fp32 model {100 * res['baseline_accuracy']:.1f}%, of the "
        f"compressed one before storage {100 * res['compressed_accuracy']:.1f}%.", "",
        f"**Container {before['bytes']:,} B -> {after['bytes']:,} B ({res['headline']}): {before['ratio']:.2f}x -> "
        f"{after['ratio']:.2f}x smaller than fp32; top-1 agreement {100 * after['parity']['top1_agreement']:.2f}%, "
        f"max abs diff {after['parity']['max_abs_diff']:.1e} (before: "
        f"{100 * before['parity']['top1_agreement']:.2f}%, {before['parity']['max_abs_diff']:.1e}).** "
        f"The deep-coded streams are byte-identical in every row. `{res['headline']}` is the policy whose "
        "parity holds at the fp32 export thresholds; fp16 and 8-bit small tensors are smaller but move the "
        "outputs of this pruned, weight-shared net past them (a single BN vector rounded to fp16 moves its "
        "softmax by up to a few 1e-3).", "",
        policies, "", "Bytes by stream (share of the container):", "", shares, "",
        "Stream bytes by tensor role:", "", role_table, "",
        "`raw`: float32 small tensors, what the pipeline wrote before `fold` became the default (`--small-tensors raw`). `fold`: BatchNorm stored in its folded "
        "form (`edgecomp.fold.storage_form`: gamma = a, beta = c, mean 0, variance 1 - eps; the scale folded into a "
        "preceding uncoded kernel), constant vectors as one value. `fp16`/`compact` add half floats / also 8-bit, "
        "each only where the bound holds; the last row is `compact` under a looser bound. The decoded model has "
        "the same layers; its BN moving statistics are "
        "not kept (the inference function is).", ""])


def plot(res: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from edgecomp.report import png_bytes

    names = list(res["variants"])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    left = np.zeros(len(names))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["#444444"]
    for i, (label, _) in enumerate(GROUPS):
        vals = np.array([grouped(res["variants"][n]["streams"])[label] / 1024 for n in names])
        if vals.any():
            ax.barh(names, vals, left=left, label=label, color=colors[i % len(colors)])
            left += vals
    for j, n in enumerate(names):
        ax.text(left[j] + 2, j, f"{res['variants'][n]['bytes']:,} B", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("container bytes (KiB)")
    ax.set_xlim(0, left.max() * 1.2)
    ax.set_title("MobileNetV2 0.35 @96, deep 0.8: container bytes by stream per small-tensor policy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png_bytes(fig, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/small_tensors")
    p.add_argument("--train", type=int, default=1500)
    p.add_argument("--test", type=int, default=256)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--fine-tune-epochs", type=int, default=3)
    p.add_argument("--centroid-epochs", type=int, default=1)
    p.add_argument("--tol", type=float, default=None, help="compact-storage bound (default codec.COMPACT_TOL)")
    p.add_argument("--loose-tol", type=float, default=2.0 ** -6, help="a looser bound, measured as one more row")
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--save-container", help="also write the pipeline's container here (to re-measure with --container)")
    p.add_argument("--container", help="measure this container (from --save-container) instead of training one")
    p.add_argument("--markdown", help="only re-render OUT/small_tensors.md and .png from this small_tensors.json")
    p.add_argument("--bn-momentum", type=float, default=0.9)
    args = p.parse_args(argv)
    t0 = time.time()
    if args.markdown:
        import json
        from edgecomp import io
        res = json.loads(Path(args.markdown).read_text())
        io.write_text(Path(args.out) / "small_tensors.md", markdown(res))
        io.write_bytes(Path(args.out) / "small_tensors.png", plot(res))
        return 0

    import keras
    from edgecomp import codec, io, store
    from edgecomp.pipeline import compress
    from edgecomp.train import fit, predict

    keras.utils.set_random_seed(0)
    x, y = synthetic(args.train + args.test, noise=args.noise)
    xtr, ytr, xte, yte = x[:args.train], y[:args.train], x[args.train:], y[args.train:]
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10)
    for layer in model.layers:   # stock 0.999 needs thousands of steps before inference mode is usable
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = args.bn_momentum
    params = int(model.count_params())
    if args.container:
        container, base_acc = Path(args.container).read_bytes(), float("nan")
        compressed = store.decode_model(container)
    else:
        fit(model, xtr, ytr, epochs=args.epochs, verbose=0)
        base_acc = float(np.mean(np.argmax(predict(model, xte), -1) == yte))
        print(f"trained: {params:,} params, accuracy {100 * base_acc:.1f}% ({time.time() - t0:.0f} s)", flush=True)
        result = compress(model, (xtr, ytr), method="deep", rate=0.8, fine_tune_epochs=args.fine_tune_epochs,
                          centroid_epochs=args.centroid_epochs, verbose=0, small_tensors="raw")
        container, compressed = result.container, result.model   # raw: each row re-stores it
        print(f"compressed: {len(container):,} B ({time.time() - t0:.0f} s)", flush=True)
        if args.save_container:
            io.write_bytes(args.save_container, container)
    ref = predict(compressed, xte)
    kinds = {layer.name: type(layer).__name__ for layer in compressed.layers}
    tol = codec.COMPACT_TOL if args.tol is None else args.tol
    variants = {}
    loose = f"compact, tol 2^{np.log2(args.loose_tol):.0f}"
    for small in (*store.SMALL_POLICIES, loose):
        data = (container if small == "raw" else store.compact_container(container, "compact", args.loose_tol)
                if small == loose else store.compact_container(container, small, tol))
        variants[small] = measure(data, ref, xte, yte, kinds, 4 * params)
        v = variants[small]
        print(f"{small:8s} {v['bytes']:>9,} B  {v['ratio']:.2f}x  top-1 {100 * v['parity']['top1_agreement']:.2f}%  "
              f"max abs {v['parity']['max_abs_diff']:.2e}  {v['records_by_method']}", flush=True)
    raw_streams = {k: v for k, v in variants["raw"]["streams"].items() if k.startswith("deep:")}
    for name, v in variants.items():   # the deep-coded streams must not move
        assert {k: s for k, s in v["streams"].items() if k.startswith("deep:")} == raw_streams, name
    given = argv if argv is not None else sys.argv[1:]
    command = "python scripts/bench_small_tensors.py" + "".join(f" {a}" for a in given)
    res = {"command": command, "seconds": time.time() - t0, "tol": tol, "n_train": args.train, "n_test": args.test,
           "train_epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs,
           "centroid_epochs": args.centroid_epochs, "baseline_accuracy": base_acc, "headline": "fold",
           "compressed_accuracy": float(np.mean(np.argmax(ref, -1) == yte)), "bn_momentum": args.bn_momentum,
           "noise": args.noise, "loose_tol": args.loose_tol,
           "model": {"name": "MobileNetV2(alpha=0.35, 96x96x3, classes=10)", "params": params, "fp32_bytes": 4 * params,
                     "bn_layers": sum(k == "BatchNormalization" for k in kinds.values())},
           "variants": variants}
    out = Path(args.out)
    io.write_json(out / "small_tensors.json", res)
    io.write_text(out / "small_tensors.md", markdown(res))
    io.write_bytes(out / "small_tensors.png", plot(res))
    print(f"wrote {out}/small_tensors.json, .md, .png ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
