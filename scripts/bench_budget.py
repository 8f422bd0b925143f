#!/usr/bin/env python
"""Budgeted search against the best single global rate, on the VGG-like net and Fashion-MNIST.

    python scripts/bench_budget.py --out docs/results/budget

Both sides start from the same trained baseline (``--baseline``; trained here when missing with
bench_storage's recipe, 3 epochs of Adam with a cosine learning rate, on every training image
*except* the held-out slice, so that held-out accuracy is not training accuracy), fine-tune on the
same slice of the training set (``--fine-tune-size`` images) with the same schedule and epochs
(``--schedule``, ``--fine-tune-epochs`` per step, ``--centroid-epochs``), and are judged on the
same held-out slice (the last ``--val-size`` training images, never the test set):

* **budgeted**: ``compress_within_budget(max_accuracy_drop=...)``, i.e. ``edgecomp compress
  --max-accuracy-drop``: sensitivity curves, a joint per-layer plan of rates and bits, then
  prune/fine-tune/share/fine-tune, backing off while the held-out drop breaks the budget;
* **single rate**: ``compress(method="deep", rate=r)`` with one rate for every layer (the
  seed's per-filter criterion, the default bits), tried from the highest rate down; the first
  rate whose held-out drop fits the budget is the best single rate (the smaller containers
  above it broke the budget).

Reports each container's size, held-out and test accuracy, and the size ratio. Every finished
row is kept in ``OUT/budget.json`` so an interrupted run continues; writes ``budget.md`` and
``budget.png`` (held-out accuracy vs bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATES = (0.95, 0.93, 0.9, 0.85, 0.8, 0.7, 0.5)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/budget")
    p.add_argument("--baseline", default="docs/results/budget/baseline.keras",
                   help="trained VGG-like .keras, not trained on the held-out slice (trained here if missing)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, help="points (default: 1.0)")
    p.add_argument("--fine-tune-size", type=int, default=20000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--schedule", default="iterative:2")
    p.add_argument("--fine-tune-epochs", type=int, default=1)
    p.add_argument("--centroid-epochs", type=int, default=1)
    p.add_argument("--rates", default=",".join(map(str, RATES)), help="single rates to try, highest first")
    return p


def table(state: dict) -> str:
    base = state["baseline"]
    lines = ["| candidate | settings | container B | ratio vs fp32 | held-out acc (drop) | test acc (drop) | within budget |",
             "|---|---|---:|---:|---:|---:|---|"]

    def row(name, settings, r):
        lines.append(f"| {name} | {settings} | {r['bytes']:,} | {base['bytes'] / r['bytes']:.1f}x | "
                     f"{100 * r['val_accuracy']:.2f}% ({100 * (base['val_accuracy'] - r['val_accuracy']):+.2f}) | "
                     f"{100 * r['test_accuracy']:.2f}% ({100 * (base['test_accuracy'] - r['test_accuracy']):+.2f}) | "
                     f"{'yes' if r['within_budget'] else 'no'} |")

    lines.insert(2, f"| baseline (fp32) | | {base['bytes']:,} | 1.0x | {100 * base['val_accuracy']:.2f}% | "
                    f"{100 * base['test_accuracy']:.2f}% | |")
    for r in sorted(state["single"], key=lambda r: -r["rate"]):
        row(f"single rate {r['rate']}", "deep, per-filter, default bits", r)
    if state.get("budgeted"):
        b = state["budgeted"]
        row("**budgeted**", f"deep, per-layer rates and bits ({b['attempts']} attempt(s))", b)
    return "\n".join(lines)


def plot(state: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecomp.report import size_plot_png
    base = state["baseline"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted((r["bytes"] / 1024, 100 * r["val_accuracy"], r["rate"]) for r in state["single"])
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="single global rate")
    for kb, acc, rate in pts:
        ax.annotate(str(rate), (kb, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if state.get("budgeted"):
        b = state["budgeted"]
        ax.plot([b["bytes"] / 1024], [100 * b["val_accuracy"]], "r*", ms=14, label="budgeted search")
    ax.axhline(100 * (base["val_accuracy"]) - state["max_accuracy_drop"], color="gray", ls=":",
               label=f"budget (baseline - {state['max_accuracy_drop']} points)")
    return size_plot_png(fig, ax, xlabel="container size (KiB, log scale)", ylabel="held-out accuracy (%)",
                         title="Budgeted per-layer search vs one global rate (VGG-like, Fashion-MNIST)")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import numpy as np

    from edgecomp import io, store, train
    from edgecomp.budget import compress_within_budget
    from edgecomp.data import load_dataset
    from edgecomp.models import build_model, load_keras_model
    from edgecomp.pipeline import compress

    out = io.ensure_dir(args.out)
    ds = load_dataset("fashion_mnist", data_dir=args.data_dir)
    n = args.fine_tune_size
    if n + args.val_size > len(ds.x_train):
        print(f"error: --fine-tune-size {n} + --val-size {args.val_size} exceed the {len(ds.x_train)} training "
              "images; lower one of them", file=sys.stderr)
        return 2
    x_fit, y_fit = ds.x_train[:n], ds.y_train[:n]
    x_val, y_val = ds.x_train[-args.val_size:], ds.y_train[-args.val_size:]
    base_path = Path(args.baseline)
    if not base_path.is_file():
        print(f"training the baseline ({base_path} not found) on all but the held-out slice", flush=True)
        model = build_model("vgg", ds.input_shape, ds.num_classes)
        train.fit(model, ds.x_train[:-args.val_size], ds.y_train[:-args.val_size], epochs=3, lr_schedule="cosine")
        with io.atomic_path(base_path) as tmp:
            model.save(tmp)
    settings = {k: getattr(args, k) for k in ("max_accuracy_drop", "fine_tune_size", "val_size", "schedule",
                                              "fine_tune_epochs", "centroid_epochs")}
    settings["baseline_sha256"] = hashlib.sha256(base_path.read_bytes()).hexdigest()
    state_path = out / "budget.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("settings") != settings:
        model = load_keras_model(base_path)
        weights = store.model_weights(model)
        state = {"settings": settings, "max_accuracy_drop": args.max_accuracy_drop, "single": [], "budgeted": None,
                 "baseline": {"val_accuracy": train.evaluate(model, x_val, y_val),
                              "test_accuracy": train.evaluate(model, ds.x_test, ds.y_test),
                              "bytes": int(4 * sum(w.size for w in weights.values()))}}
        io.write_json(state_path, state)
    base = state["baseline"]
    common = dict(schedule=args.schedule, fine_tune_epochs=args.fine_tune_epochs,
                  centroid_epochs=args.centroid_epochs)

    def finish(result, t, **extra):
        decoded = result.decode()
        val = train.evaluate(decoded, x_val, y_val)
        return {**extra, "bytes": result.bytes, "val_accuracy": val,
                "test_accuracy": train.evaluate(decoded, ds.x_test, ds.y_test),
                "within_budget": 100 * (base["val_accuracy"] - val) <= args.max_accuracy_drop,
                "seconds": time.time() - t}

    # Single global rates, highest first, until one fits the budget on the held-out slice.
    rates = [float(r) for r in args.rates.split(",")]
    for rate in sorted(rates, reverse=True):
        if any(r["within_budget"] for r in state["single"]):
            break
        if any(r["rate"] == rate for r in state["single"]):
            continue
        print(f"\n== single rate {rate}", flush=True)
        t = time.time()
        result = compress(load_keras_model(base_path), (x_fit, y_fit), rate=rate, method="deep", **common)
        row = finish(result, t, rate=rate)
        print(f"   {row['bytes']:,} B, held-out {100 * row['val_accuracy']:.2f}%, "
              f"{'within' if row['within_budget'] else 'over'} budget", flush=True)
        state["single"].append(row)
        io.write_json(state_path, state)

    if not state.get("budgeted"):
        print(f"\n== budgeted search, --max-accuracy-drop {args.max_accuracy_drop}", flush=True)
        t = time.time()
        x = np.concatenate([x_fit, x_val])
        y = np.concatenate([y_fit, y_val])
        result, log = compress_within_budget(load_keras_model(base_path), (x, y),
                                             max_accuracy_drop=args.max_accuracy_drop, val_size=args.val_size,
                                             **common)
        row = finish(result, t, attempts=len(log), log=log, layers=result.report,
                     plan=log[-1]["plan"])
        state["budgeted"] = row
        io.write_json(state_path, state)

    fits = [r for r in state["single"] if r["within_budget"]]
    b = state["budgeted"]
    summary = {"best_single_rate": fits[0]["rate"] if fits else None,
               "best_single_bytes": fits[0]["bytes"] if fits else None,
               "budgeted_bytes": b["bytes"],
               "ratio": (fits[0]["bytes"] / b["bytes"]) if fits else None,
               "budgeted_test_drop_points": 100 * (base["test_accuracy"] - b["test_accuracy"])}
    state["summary"] = summary
    io.write_json(state_path, state)
    cmd = " ".join(["python scripts/bench_budget.py", *(argv if argv is not None else sys.argv[1:])])
    ratio = f"{summary['ratio']:.2f}x" if summary["ratio"] else "n/a (no single rate fit the budget)"
    md = ["# Budgeted search vs the best single global rate", "",
          f"Made by `{cmd}`. VGG-like net on Fashion-MNIST, budget {args.max_accuracy_drop} point(s) of held-out "
          f"accuracy (last {args.val_size:,} training images). Both sides: deep method, {args.schedule} pruning with "
          f"{args.fine_tune_epochs} fine-tuning epoch(s) per step and {args.centroid_epochs} centroid epoch(s) on the "
          f"first {args.fine_tune_size:,} training images; accuracy after decoding the container; test = the 10,000 "
          "test images. Single rates are tried from the highest down until one fits the budget.", "",
          table(state), "",
          f"Budgeted container vs the best single rate within the budget: **{ratio} smaller**; "
          f"test-set drop of the budgeted container: {summary['budgeted_test_drop_points']:.2f} points.", ""]
    io.write_text(out / "budget.md", "\n".join(md))
    io.write_bytes(out / "budget.png", plot(state))
    print("\n" + "\n".join(md[4:]))
    print(f"wrote {out}/budget.json, budget.md, budget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
