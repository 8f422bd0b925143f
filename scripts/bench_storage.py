#!/usr/bin/env python
"""Storage benchmark: the seed's method at rates 0.5-0.9 against Deep Compression settings,
on the seed's VGG-like net trained on real Fashion-MNIST.

    python scripts/bench_storage.py --out docs/results/storage

Trains the baseline once (3 epochs of Adam with a cosine-decayed learning rate, batch 64, the
whole training set; cached as ``OUT/baseline.keras``, retrained when the recipe changes), then
compresses a fresh copy of it per setting and evaluates the decoded container on the whole test set. Every finished row is kept in ``OUT/storage.json``,
so an interrupted run continues where it stopped. Writes ``storage.json``, ``storage.md``
(the seed's table: rate, params, accuracy, storage) and ``storage.png`` (accuracy vs bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecomp.train import LR_SCHEDULES  # noqa: E402

SEED_RATES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.87, 0.9)
#: Deep Compression settings: pruning (rate, criterion, schedule) + sharing (bits) + coding.
#: A setting with "fine_tune_all" fine-tunes on the whole training set instead of the first
#: --fine-tune-size images; the table says so.
DEEP_SETTINGS = (
    {"rate": 0.9, "criterion": "filter", "schedule": "iterative:2", "bits": "conv=8,dense=5"},
    {"rate": 0.95, "criterion": "global", "schedule": "iterative:2", "bits": "conv=6,dense=4"},
    {"rate": 0.95, "criterion": "global", "schedule": "iterative:3", "bits": "conv=6,dense=4",
     "fine_tune_all": True},
)


def key_of(row: dict) -> str:
    keys = ("method", "rate", "criterion", "schedule", "bits") + (("fine_tune_all",) if row.get("fine_tune_all") else ())
    return json.dumps({k: row[k] for k in keys}, sort_keys=True)


def seed_table(rows: list[dict], baseline: dict) -> str:
    head = "| method | compress rate | parameters (kept) | val acc | storage | ratio | settings |\n|---|---|---|---|---|---|---|"
    lines = [head, f"| baseline (fp32) | 0 | {baseline['params'] / 1e6:.3f}M | {100 * baseline['accuracy']:.2f}% | "
             f"{baseline['bytes'] / 1024:.0f}KB | 1.0x | {baseline['epochs']} epochs Adam "
             f"({baseline.get('lr_schedule', 'constant')} lr) |"]
    for r in sorted(rows, key=lambda r: (r["method"] != "seed", r["rate"], r["bytes"])):
        settings = "" if r["method"] == "seed" else f"{r['criterion']}, {r['schedule']}, {r['bits']}, {r['coder']}"
        if r.get("fine_tune_all"):
            settings += f"; fine-tuned on {r['fine_tune_size']:,} images"
        lines.append(f"| {r['method']} | {r['rate']} | {r['kept'] / 1e6:.3f}M | {100 * r['accuracy']:.2f}% | "
                     f"{r['bytes'] / 1024:.0f}KB | {baseline['bytes'] / r['bytes']:.1f}x | {settings} |")
    return "\n".join(lines)


def plot(rows: list[dict], baseline: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, marker in (("seed", "o"), ("deep", "s")):
        pts = sorted((r["bytes"] / 1024, 100 * r["accuracy"], r["rate"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{method} method")
            for kb, acc, rate in pts:
                ax.annotate(str(rate), (kb, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(100 * baseline["accuracy"], color="gray", ls="--", lw=1, label="uncompressed")
    ax.axhline(100 * baseline["accuracy"] - 1, color="gray", ls=":", lw=1, label="uncompressed - 1 point")
    from edgecomp.report import size_plot_png
    return size_plot_png(fig, ax, xlabel="container size (KiB, log scale)", ylabel="test accuracy (%)",
                         title="VGG-like net on Fashion-MNIST: accuracy vs storage")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/storage")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--fine-tune-epochs", type=int, default=1, help="per pruning step (default: 1)")
    p.add_argument("--centroid-epochs", type=int, default=1)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                   help="Adam's learning rate in baseline training and each fine-tuning run (default: cosine)")
    p.add_argument("--train-size", type=int, default=None, help="baseline training samples (default: all 60,000)")
    p.add_argument("--fine-tune-size", type=int, default=20000,
                   help="training samples used for fine-tuning after pruning (default: 20,000)")
    p.add_argument("--only", choices=("seed", "deep"), default=None)
    args = p.parse_args(argv)

    from edgecomp import io, store, train
    from edgecomp.data import load_dataset
    from edgecomp.models import build_model, load_keras_model
    from edgecomp.pipeline import compress

    out = io.ensure_dir(args.out)
    ds = load_dataset("fashion_mnist", data_dir=args.data_dir).take(args.train_size, None)
    state_path = out / "storage.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"rows": []}
    base_path = out / "baseline.keras"
    recipe = {"epochs": args.epochs, "train": len(ds.x_train), "lr_schedule": args.lr_schedule}
    if (not base_path.is_file() or "baseline" not in state
            or any(state["baseline"].get(k, "constant") != v for k, v in recipe.items())):
        model = build_model("vgg", ds.input_shape, ds.num_classes)
        t = time.time()
        train.fit(model, ds.x_train, ds.y_train, epochs=args.epochs, batch_size=64, lr_schedule=args.lr_schedule)
        with io.atomic_path(base_path) as tmp:
            model.save(tmp)
        weights = store.model_weights(model)
        state["baseline"] = {"accuracy": train.evaluate(model, ds.x_test, ds.y_test),
                             "params": int(sum(w.size for w in weights.values())),
                             "bytes": int(4 * sum(w.size for w in weights.values())),
                             "train_seconds": time.time() - t, **recipe}
        state["rows"] = []
        io.write_json(state_path, state)
    baseline = state["baseline"]
    print(f"baseline: {100 * baseline['accuracy']:.2f}% with {baseline['params']:,} params "
          f"({baseline['bytes']:,} B fp32)", flush=True)

    todo = []
    if args.only in (None, "seed"):
        todo += [{"method": "seed", "rate": r, "criterion": "filter", "schedule": "oneshot", "bits": "int8",
                  "coder": "none"} for r in SEED_RATES]
    if args.only in (None, "deep"):
        todo += [{"method": "deep", "coder": "huffman", **s} for s in DEEP_SETTINGS]
    done = {key_of(r) for r in state["rows"]}
    for setting in todo:
        if key_of(setting) in done:
            continue
        print(f"\n== {setting}", flush=True)
        model = load_keras_model(base_path)
        t = time.time()
        options = dict(rate=setting["rate"], method=setting["method"], criterion=setting["criterion"],
                       schedule=setting["schedule"], fine_tune_epochs=args.fine_tune_epochs,
                       lr_schedule=args.lr_schedule)
        if setting["method"] == "deep":
            options.update(bits=setting["bits"], coder=setting["coder"], centroid_epochs=args.centroid_epochs)
        size = None if setting.get("fine_tune_all") else args.fine_tune_size
        result = compress(model, ds.take(size, None), **options)
        decoded = result.decode()
        row = {**setting, "accuracy": train.evaluate(decoded, ds.x_test, ds.y_test), "bytes": result.bytes,
               "fine_tune_size": len(ds.take(size, None).x_train),
               "params": result.params, "kept": result.nonzeros, "seconds": time.time() - t,
               "fine_tune_epochs": args.fine_tune_epochs, "lr_schedule": args.lr_schedule,
               "centroid_epochs": args.centroid_epochs if setting["method"] == "deep" else 0,
               "layers": result.report}
        print(f"   accuracy {100 * row['accuracy']:.2f}%, {row['bytes']:,} B "
              f"({baseline['bytes'] / row['bytes']:.1f}x), {row['kept']:,} kept", flush=True)
        state["rows"].append(row)
        io.write_json(state_path, state)

    rows = state["rows"]
    md = ["# Storage: seed method vs Deep Compression", "",
          f"Made by `python scripts/bench_storage.py {' '.join(argv if argv is not None else sys.argv[1:])}`."
          f" VGG-like net ({baseline['params']:,} params) trained {baseline['epochs']} epochs (Adam, "
          f"{baseline.get('lr_schedule', 'constant')} learning rate from 1e-3, batch 64) on "
          f"{baseline['train']:,} Fashion-MNIST images; accuracy on the 10,000 test images after decoding the "
          f"container. Fine-tuning: {args.fine_tune_epochs} epoch(s) per pruning step on the first "
          f"{args.fine_tune_size:,} training images ({args.lr_schedule} learning rate); deep adds "
          f"{args.centroid_epochs} epoch(s) of centroid training. Storage is the `.ecz` file size; ratio is "
          "against the fp32 weights.", "", seed_table(rows, baseline), ""]
    io.write_text(out / "storage.md", "\n".join(md))
    io.write_bytes(out / "storage.png", plot(rows, baseline))
    print("\n" + seed_table(rows, baseline))
    print(f"\nwrote {out}/storage.json, storage.md, storage.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
