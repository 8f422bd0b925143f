#!/usr/bin/env python
"""Export a compressed CNN in every TFLite/ONNX variant and measure each file in its runtime.

    python scripts/bench_export.py                                   # train, compress, export, measure
    python scripts/bench_export.py --model runs/latest/edgecomp.ecz --baseline runs/latest/baseline.keras

Models measured (each exported only after its parity gate passes):

* ``baseline``: the uncompressed net (fp32 TFLite only: the size reference);
* ``compressed``: the Deep Compression result (``edgecomp.pipeline.compress``), every variant;
* ``block16``: the same net pruned so that its Dense kernels have the blocks LiteRT's
  sparse int8 FULLY_CONNECTED kernel runs ((16, 1) blocks along the input,
  the recipe's `block:16x1` criterion rules; convs per filter as the seed does), fine-tuned
  with the masks held; a few variants, to compare block-sparse int8 with dense int8;
* ``block16-fc``: only the Dense kernels pruned (in blocks), convs left dense, so its
  ``int8-sparse`` file holds no DENSIFY op at all;
* ``block16-fc-head``: the Dense layers of ``block16-fc`` alone (input: the Flatten
  features), to time the FULLY_CONNECTED kernels without the convs around them.

For every file: bytes, gzip bytes, accuracy on the whole test set, top-1 agreement
and max abs diff against its Keras model, the runtime setting it needs, whether it
holds DENSIFY ops and which weights run sparse, and latency at batch 1 (each file in
a fresh process by :func:`runtime_bench.bench_files`; ``--rounds`` interleaved rounds,
median of the rounds' medians). Writes ``bench_export.json``, ``bench_export.md`` and
``bench_export.png`` (size vs accuracy, and latency per variant) into ``--out``.
"""

from __future__ import annotations

import argparse
import io as _io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

#: (model, format, variant) rows exported by default; ``all`` = every registered variant.
DEFAULT_PLAN = {
    "baseline": {"tflite": ["fp32"]},
    "compressed": {"tflite": "all", "onnx": "all"},
    "block16": {"tflite": ["fp32", "fp32-sparse", "int8", "int8-sparse", "dynamic", "dynamic-sparse"]},
    "block16-fc": {"tflite": ["int8", "int8-sparse"]},
    "block16-fc-head": {"tflite": ["fp32", "fp32-sparse", "int8", "int8-sparse"]},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a compressed .ecz or .keras model (default: train and compress one)")
    p.add_argument("--baseline", help="the uncompressed .keras model (default: the one trained here, if any)")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-size", type=int, default=20000, help="training images used (default: 20000)")
    p.add_argument("--epochs", type=int, default=1, help="baseline training epochs when training here")
    p.add_argument("--rate", type=float, default=0.8, help="pruning rate (default: 0.8)")
    p.add_argument("--block", type=int, default=16, help="block rows for the block-sparse model (default: 16)")
    p.add_argument("--fine-tune-epochs", type=int, default=1)
    p.add_argument("--calibration", type=int, default=200, help="calibration images (default: 200)")
    p.add_argument("--parity-size", type=int, default=1000, help="test images for the export gate")
    p.add_argument("--runs", type=int, default=200, help="timed runs per file and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (default: 3)")
    p.add_argument("--no-block", action="store_true", help="skip the block-sparse models")
    p.add_argument("--remeasure", action="store_true",
                   help="only measure latency again for the files of --out's bench_export.json (a quieter machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="runs/bench_export")
    return p.parse_args(argv)


# -- models --------------------------------------------------------------------

def _clone(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def load_models(args, ds) -> tuple[dict, dict]:
    """``{name: keras model}`` and notes on where each came from."""
    from edgecomp import store, train
    from edgecomp.models import build_model, load_keras_model
    from edgecomp.pipeline import compress

    x, y = ds.x_train[:args.train_size], ds.y_train[:args.train_size]
    models, notes = {}, {}
    if args.model:
        models["compressed"] = (store.load_compressed(args.model) if args.model.endswith(".ecz")
                                else load_keras_model(args.model))
        notes["compressed"] = f"loaded from {args.model}"
        if args.baseline:
            models["baseline"] = load_keras_model(args.baseline)
            notes["baseline"] = f"loaded from {args.baseline}"
    else:
        model = build_model("vgg", ds.input_shape, ds.num_classes)
        t0 = time.time()
        train.fit(model, x, y, epochs=args.epochs, seed=args.seed)
        models["baseline"] = _clone(model)
        notes["baseline"] = f"vgg trained {args.epochs} epoch(s) on {len(x)} images ({time.time() - t0:.0f} s)"
        t0 = time.time()
        result = compress(model, ds.take(args.train_size), rate=args.rate, fine_tune_epochs=args.fine_tune_epochs,
                          seed=args.seed)
        models["compressed"] = result.decode()
        notes["compressed"] = (f"compress(rate={args.rate}, fine_tune_epochs={args.fine_tune_epochs}), "
                               f"container {result.bytes:,} B ({time.time() - t0:.0f} s)")
    if not args.no_block:
        source = "baseline" if "baseline" in models else "compressed"
        for name, convs in (("block16", "filter"), ("block16-fc", "dense")):
            t0 = time.time()
            models[name], how = block_sparse_model(models[source], x, y, args, convs=convs)
            notes[name] = (f"from {source}: {how}; fine-tuned {args.fine_tune_epochs} epoch(s) "
                           f"({time.time() - t0:.0f} s)")
        head = dense_head(models["block16-fc"])
        if head is not None:
            models["block16-fc-head"] = head
            notes["block16-fc-head"] = ("the layers after Flatten of block16-fc (same weights); "
                                        "its inputs are block16-fc's Flatten features of the images")
    return models, notes


def dense_head(model):
    """``(features, head)``: the model up to its last Flatten, and the chain of layers after it.

    None when the model has no Flatten followed only by Dense/Dropout layers.
    """
    import keras

    flat = [i for i, layer in enumerate(model.layers) if isinstance(layer, keras.layers.Flatten)]
    if not flat or not all(isinstance(layer, (keras.layers.Dense, keras.layers.Dropout))
                           for layer in model.layers[flat[-1] + 1:]):
        return None
    i = flat[-1]
    features = keras.Model(model.input, model.layers[i].output)
    inp = keras.Input(tuple(model.layers[i].output.shape[1:]), name="features")
    h = inp
    for layer in model.layers[i + 1:]:
        h = layer(h)
    return features, keras.Model(inp, h, name="head")


def _inputs(models: dict, name: str, x: np.ndarray) -> np.ndarray:
    """What model ``name`` takes for the images ``x`` (Flatten features for a head)."""
    entry = models[name]
    if isinstance(entry, tuple):
        from edgecomp import train
        return train.predict(entry[0], x)
    return x


def _model(models: dict, name: str):
    entry = models[name]
    return entry[1] if isinstance(entry, tuple) else entry


def block_sparse_model(source, x, y, args, convs: str = "filter"):
    """A copy of ``source`` with Dense kernels pruned in (block, 1) blocks, fine-tuned with the masks held.

    The recipe's per-layer criterion rules do it (``layer_criteria={"fc1": "block:16x1", ...}``, for
    every Dense kernel whose input size divides into blocks); ``convs="filter"`` prunes the other
    kernels per filter (the seed's criterion: LiteRT has no sparse conv kernel, so they become
    DENSIFY + CSR); ``"dense"`` gives them rate 0.
    """
    import keras

    from edgecomp.pipeline import compress
    from edgecomp.recipe import Recipe

    model = _clone(source)
    blocked = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)
               and layer.kernel.shape[0] % args.block == 0]
    others = [layer.name for layer in model.layers if layer.name not in blocked and layer.weights
              and not isinstance(layer, keras.layers.BatchNormalization)]
    recipe = Recipe.from_options(rate=args.rate, fine_tune_epochs=args.fine_tune_epochs, seed=args.seed + 6,
                                 layer_criteria={n: f"block:{args.block}x1" for n in blocked},
                                 layer_rates={n: 0.0 for n in others} if convs == "dense" else None)
    result = compress(model, (x, y), recipe)
    kinds = [f"{n} ({args.block},1) blocks" for n in blocked]
    rest = "other kernels per filter" if convs == "filter" else "other kernels at rate 0"
    return result.model, f"rate {args.rate}: {', '.join(kinds)}; {rest}"


# -- export --------------------------------------------------------------------

def _sparse_note(art) -> str:
    rows = art.needs.get("sparse_weights") or []
    if art.format == "onnx":
        n = len(art.needs.get("sparse_initializers") or [])
        return f"{n} sparse initializer(s)" if n else ""
    counts: dict[str, int] = {}
    for r in rows:
        how = f"sparse {'x'.join(map(str, r['block']))}" if r["kernel"] == "sparse" and r["block"] else r["kernel"]
        key = f"{r['op'].replace('FULLY_CONNECTED', 'FC').replace('CONV_2D', 'CONV')} {how}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def export_all(models: dict, ds, args, out: Path) -> list[dict]:
    import exporters
    from edgecomp.errors import EdgecompError
    from exporters.variants import parse_variants

    rows = []
    cy = ds.y_test[:args.parity_size]
    for name in models:
        model = _model(models, name)
        cal = _inputs(models, name, ds.x_train[:args.calibration])
        cx = _inputs(models, name, ds.x_test[:args.parity_size])
        for fmt, variants in DEFAULT_PLAN.get(name, {}).items():
            for variant in parse_variants([fmt], exporters.VARIANTS[fmt] if variants == "all" else variants)[0]:
                path = out / "files" / variant.filename(name)
                row = {"model": name, "format": fmt, "variant": variant.name, "file": str(path), "error": None}
                t0 = time.time()
                try:
                    art = exporters.export_and_check(model, fmt, variant, path, calibration=cal,
                                                     check_x=cx, check_y=cy)
                except EdgecompError as exc:
                    row["error"] = getattr(exc, "problem", str(exc))
                    row["export_s"] = round(time.time() - t0, 1)
                    print(f"  {name} {fmt} {variant}: REFUSED: {row['error']}", flush=True)
                    rows.append(row)
                    continue
                setting = ({"resolver": art.needs["resolver"]} if fmt == "tflite"
                           else {"optimization": art.needs["optimization"]})
                row.update(bytes=art.bytes, gzip_bytes=art.gzip_bytes, ops=art.ops, setting=setting,
                           densify="DENSIFY" in art.ops, sparse=_sparse_note(art), needs=art.needs,
                           gate=art.parity, export_s=round(time.time() - t0, 1))
                print(f"  {name} {fmt} {variant}: {art.bytes:,} B, gzip {art.gzip_bytes:,} B, {setting}, "
                      f"{row['sparse'] or 'dense'} ({row['export_s']} s)", flush=True)
                rows.append(row)
    return rows


# -- measure -------------------------------------------------------------------

def evaluate(rows: list[dict], models: dict, ds) -> None:
    """Accuracy, top-1 agreement and max abs diff on the whole test set, in place."""
    from edgecomp import train
    from runtime_bench.runners import open_runner

    refs, xs = {}, {}
    for name in models:
        xs[name] = _inputs(models, name, ds.x_test)
        refs[name] = train.predict(_model(models, name), xs[name])
    for row in rows:
        ref = refs[row["model"]]
        row["keras_accuracy"] = train.accuracy(ref, ds.y_test)
        if row["error"]:
            continue
        got = open_runner(row["file"], threads=2, **row["setting"]).predict(xs[row["model"]])
        row["accuracy"] = train.accuracy(got, ds.y_test)
        row["agreement"] = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
        row["max_abs_diff"] = float(np.abs(got.astype(np.float64) - ref).max())
        row["accuracy_delta"] = row["accuracy"] - row["keras_accuracy"]


def _comparisons(rows: list[dict]) -> list[dict]:
    """Extra latency rows: block16 int8 files under the other resolver too (same kernels for both)."""
    extra = []
    for row in rows:
        if row["model"].startswith("block16") and row["format"] == "tflite" and not row["error"] \
                and row["variant"] in ("int8", "int8-sparse"):
            other = "builtin" if row["setting"]["resolver"] == "default" else "default"
            if other == "default" and row["variant"] == "int8-sparse":
                continue  # it was refused by default; nothing to compare
            extra.append({**row, "setting": {"resolver": other}, "comparison": True})
    return extra


def measure_latency(rows: list[dict], ds, args, models: dict | None = None) -> None:
    """Median latency (ms) at batch 1, 1 thread, each file in a fresh process; rounds interleaved.

    Files are grouped by runtime setting and by input (images, or a head's features).
    """
    import runtime_bench

    runnable = [r for r in rows if not r["error"]]
    inputs: dict[str, np.ndarray] = {}
    groups: dict[tuple, list[dict]] = {}
    for r in runnable:
        shape = r["needs"]["input"]["shape"][1:]
        key = "images" if list(shape) == list(ds.x_test.shape[1:]) else r["model"]
        if key not in inputs:
            inputs[key] = ds.x_test[:64] if key == "images" else _inputs(models, key, ds.x_test[:64])
        groups.setdefault((key, tuple(sorted(r["setting"].items()))), []).append(r)
    for r in runnable:
        r["latency_rounds"] = []
    for round_ in range(args.rounds):
        for (key, setting), group in groups.items():
            records = runtime_bench.bench_files([g["file"] for g in group], inputs[key], None, threads=1,
                                                batch=1, runs=args.runs, task=None, progress=False,
                                                **dict(setting))
            for g, rec in zip(group, records):
                if rec["error"]:
                    g["latency_error"] = rec["error"]
                else:
                    g["latency_rounds"].append({"median_ms": rec["median_ms"], "p90_ms": rec["p90_ms"],
                                                "init_ms": rec["init_ms"], "peak_rss_mb": rec["peak_rss_mb"]})
        print(f"  latency round {round_ + 1}/{args.rounds} done", flush=True)
    for r in runnable:
        rounds = r.pop("latency_rounds")
        if rounds:
            r["median_ms"] = float(np.median([x["median_ms"] for x in rounds]))
            r["best_round_ms"] = float(np.min([x["median_ms"] for x in rounds]))
            r["p90_ms"] = float(np.median([x["p90_ms"] for x in rounds]))
            r["round_medians_ms"] = [round(x["median_ms"], 4) for x in rounds]
            r["init_ms"] = float(np.median([x["init_ms"] for x in rounds]))
            r["peak_rss_mb"] = float(np.median([x["peak_rss_mb"] for x in rounds]))


# -- report --------------------------------------------------------------------

HEAD = ["model", "format", "variant", "bytes", "gzip bytes", "accuracy", "Δ acc (pts)", "top-1 agree",
        "max abs diff", "setting", "DENSIFY", "sparse weights", "median ms", "best round ms", "p90 ms", "note"]


def _setting_text(s: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["error"]:
            out.append([r["model"], r["format"], r["variant"]] + [""] * 12 + ["refused: " + r["error"][:160]])
            continue
        cmp_ = r.get("comparison")
        out.append([
            r["model"], r["format"], r["variant"], "" if cmp_ else f"{r['bytes']:,}",
            "" if cmp_ else f"{r['gzip_bytes']:,}",
            "" if cmp_ else f"{100 * r['accuracy']:.2f}%",
            "" if cmp_ else f"{100 * r['accuracy_delta']:+.2f}",
            "" if cmp_ else f"{100 * r['agreement']:.2f}%",
            "" if cmp_ else f"{r['max_abs_diff']:.1e}",
            _setting_text(r["setting"]), "yes" if r["densify"] else "no", r["sparse"] or "-",
            f"{r['median_ms']:.3f}" if r.get("median_ms") is not None else "-",
            f"{r['best_round_ms']:.3f}" if r.get("best_round_ms") is not None else "-",
            f"{r['p90_ms']:.3f}" if r.get("p90_ms") is not None else "-",
            "same file, other resolver (latency only)" if cmp_ else (r.get("latency_error") or ""),
        ])
    return out


def checks(rows: list[dict]) -> dict:
    """The figures the issue asks for, computed from the rows."""
    from exporters.variants import Variant

    ok = [r for r in rows if not r["error"] and not r.get("comparison")]
    kinds = [(r, Variant.parse(r["format"], r["variant"])) for r in ok]
    fp32 = [r for r, v in kinds if v.precision == "fp32"]
    int8 = [r for r, v in kinds if v.calibrated or v.precision == "dynamic"]
    res = {
        "fp32_all_exact": all(r["agreement"] == 1.0 and r["max_abs_diff"] <= 1e-4 for r in fp32),
        "int8_all_within": all(r["agreement"] >= 0.99 and r["accuracy_delta"] >= -0.005 for r in int8),
        "refused": [f"{r['model']} {r['format']} {r['variant']}: {r['error']}" for r in rows if r["error"]],
    }
    base = next((r for r in ok if r["model"] == "baseline" and r["variant"] == "fp32"), None)
    small = [r for r in ok if r["model"] not in ("baseline", "block16-fc-head")]  # whole models only
    if small:
        by_gzip = min(small, key=lambda r: r["gzip_bytes"])
        by_bytes = min(small, key=lambda r: r["bytes"])
        res["smallest_gzip"] = {"file": Path(by_gzip["file"]).name, "gzip_bytes": by_gzip["gzip_bytes"]}
        comp = [r for r in small if r["model"] == "compressed"]
        if comp:
            c = min(comp, key=lambda r: r["gzip_bytes"])
            res["smallest_gzip_of_compressed"] = {"file": Path(c["file"]).name, "gzip_bytes": c["gzip_bytes"]}
        res["smallest_bytes"] = {"file": Path(by_bytes["file"]).name, "bytes": by_bytes["bytes"]}
        ref_bytes = base["bytes"] if base else next(
            (r["bytes"] for r in ok if r["model"] == "compressed" and r["format"] == "tflite" and r["variant"] == "fp32"), None)
        if ref_bytes:
            res["fp32_reference_bytes"] = ref_bytes
            res["ratio_gzip_vs_fp32_bytes"] = ref_bytes / by_gzip["gzip_bytes"]
            res["ratio_bytes_vs_fp32_bytes"] = ref_bytes / by_bytes["bytes"]
        if base:
            res["fp32_reference_gzip_bytes"] = base["gzip_bytes"]
            res["ratio_gzip_vs_fp32_gzip"] = base["gzip_bytes"] / by_gzip["gzip_bytes"]
    for name in ("block16", "block16-fc", "block16-fc-head"):
        blk = {(r["variant"], r["setting"]["resolver"]): r for r in rows
               if r["model"] == name and r["format"] == "tflite" and not r["error"]}
        sparse = next((r for (v, _), r in blk.items() if v == "int8-sparse" and not r.get("comparison")), None)
        if sparse is None:
            continue
        fc = [w for w in sparse["needs"]["sparse_weights"] if w["op"] == "FULLY_CONNECTED"]
        entry = {
            "densify_ops_in_file": sparse["densify"],
            "fc_weights_on_sparse_kernel": sum(w["kernel"] == "sparse" for w in fc),
            "fc_weights_through_densify": sum(w["kernel"] == "densify" for w in fc),
            "resolver": sparse["setting"]["resolver"],
        }
        for (v, resolver), r in sorted(blk.items()):
            if r.get("median_ms") is not None:
                entry[f"{v}_{resolver}_median_ms"] = round(r["median_ms"], 4)
        for resolver in ("default", "builtin"):
            d, s_ = blk.get(("int8", resolver)), blk.get(("int8-sparse", resolver))
            if d and s_ and d.get("median_ms") and s_.get("median_ms"):
                entry[f"dense_over_sparse_{resolver}"] = round(d["median_ms"] / s_["median_ms"], 3)
        res[f"{name}_int8_sparse"] = entry
    return res


def markdown(report: dict) -> str:
    from edgecomp.report import markdown_table

    c = report["checks"]
    lines = [f"# Export variants: {report['data']['name']}", "",
             f"Made by `{report['command']}` in {report['seconds']:.0f} s. Accuracy, agreement and max abs diff "
             f"on all {report['data']['test']} test images against each file's own Keras model; latency at "
             f"batch 1, 1 thread, each file in a fresh process, median (and best) of {report['config']['rounds']} "
             "interleaved rounds (each the median of its timed runs). Load average (1, 5, 15 min) before / "
             f"after the latency runs: {report['load_average']['before_latency']} / "
             f"{report['load_average']['after_latency']} on {report['load_average']['cpus']} CPUs.", ""]
    lines += [f"- `{k}`: {v}" for k, v in report["models"].items()] + [""]
    lines += [markdown_table(HEAD, table_rows(report["rows"])), ""]
    lines += ["## Checks", ""] + [f"- `{k}`: {v}" for k, v in c.items()] + [""]
    return "\n".join(lines)


def plot(rows: list[dict]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r["error"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6))
    colors = {"baseline": "tab:gray", "compressed": "tab:blue", "block16": "tab:orange", "block16-fc": "tab:green",
              "block16-fc-head": "tab:olive"}
    for r in ok:
        if r.get("comparison") or r["model"].endswith("-head"):  # a head is not a whole model
            continue
        marker = "o" if r["format"] == "tflite" else "^"
        ax1.scatter(r["gzip_bytes"] / 1024, 100 * r["accuracy"], marker=marker, s=40, color=colors.get(r["model"]))
        short = {"compressed": "comp", "baseline": "base", "block16": "b16", "block16-fc": "b16fc",
                 "block16-fc-head": "head"}.get(r["model"], r["model"])
        ax1.annotate(f"{short} {r['format'][:2]} {r['variant']}", (r["gzip_bytes"] / 1024, 100 * r["accuracy"]),
                     fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax1.set_xscale("log")
    ax1.set_xlabel("gzip size (KiB, log scale); o = tflite, ^ = onnx")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("size vs accuracy")
    ax1.grid(True, which="both", alpha=0.3)
    timed = [r for r in ok if r.get("median_ms") is not None]
    labels = [f"{r['model']} {r['format']} {r['variant']} [{_setting_text(r['setting']).split('=')[1]}]" for r in timed]
    ax2.barh(range(len(timed)), [r["median_ms"] for r in timed], color=[colors.get(r["model"]) for r in timed])
    ax2.set_yticks(range(len(timed)), labels, fontsize=6)
    ax2.invert_yaxis()
    ax2.set_xlabel("median latency (ms), batch 1, 1 thread")
    ax2.set_title("latency per variant [runtime setting]")
    ax2.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _write(report: dict, rows: list[dict], out: Path) -> None:
    from edgecomp import io
    from edgecomp.report import text_table

    report["checks"] = checks(rows)
    print("\n" + text_table(HEAD, table_rows(rows)))
    print("\nchecks:")
    for k, v in report["checks"].items():
        print(f"  {k}: {v}")
    io.write_json(out / "bench_export.json", report)
    io.write_text(out / "bench_export.md", markdown(report))
    io.write_bytes(out / "bench_export.png", plot(rows))
    print(f"\nwrote {out}/bench_export.json, bench_export.md, bench_export.png", flush=True)


def remeasure(args, ds, out: Path) -> int:
    """Measure latency again for the rows of an earlier run (same files); rewrite its reports."""
    import json

    report = json.loads((out / "bench_export.json").read_text())
    rows = report["rows"]  # comparison rows included
    # Files that take the images are measured again; a head's (feature inputs) keep their figures.
    again = [r for r in rows if r["error"] is None
             and list(r["needs"]["input"]["shape"][1:]) == list(ds.x_test.shape[1:])]
    for r in again:
        for key in ("median_ms", "best_round_ms", "p90_ms", "round_medians_ms", "init_ms", "peak_rss_mb",
                    "latency_error"):
            r.pop(key, None)
    load_before = os.getloadavg()
    measure_latency(again, ds, args)
    report["load_average"] = {"before_latency": load_before, "after_latency": os.getloadavg(),
                              "cpus": os.cpu_count()}
    report["rows"] = rows
    report["config"]["rounds"], report["config"]["runs"] = args.rounds, args.runs
    report["command"] += f" (latency: --remeasure --rounds {args.rounds} --runs {args.runs})"
    _write(report, rows, out)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from edgecomp import io
    from edgecomp.data import load_dataset
    from edgecomp.errors import EdgecompError

    t_start = time.time()
    try:
        out = io.ensure_dir(args.out)
        ds = load_dataset(args.data, data_dir=args.data_dir)
        print(f"data: {ds.name}, {len(ds.x_train)} train / {len(ds.x_test)} test from {ds.source}", flush=True)
        if args.remeasure:
            return remeasure(args, ds, out)
        models, notes = load_models(args, ds)
        for k, v in notes.items():
            print(f"model {k}: {v}", flush=True)
        print("exporting (each file checked before it is written):", flush=True)
        rows = export_all(models, ds, args, out)
        print("evaluating on the whole test set ...", flush=True)
        evaluate(rows, models, ds)
        rows += _comparisons(rows)
        print("measuring latency ...", flush=True)
        load_before = os.getloadavg()
        measure_latency(rows, ds, args, models)
        load_after = os.getloadavg()
    except EdgecompError as exc:
        print(f"bench_export: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "command": "python scripts/bench_export.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": time.time() - t_start,
        "config": vars(args),
        "data": {"name": ds.name, "source": ds.source, "train": min(args.train_size, len(ds.x_train)),
                 "test": len(ds.x_test)},
        "models": notes,
        "load_average": {"before_latency": load_before, "after_latency": load_after, "cpus": os.cpu_count()},
        "rows": [{k: v for k, v in r.items()} for r in rows],
    }
    _write(report, rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
