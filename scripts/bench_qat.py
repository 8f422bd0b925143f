#!/usr/bin/env python
"""Post-training int8 against quantization-aware training, for every zoo model and the VGG-like
net on real Fashion-MNIST: accuracy, top-1 agreement and latency of the int8 TFLite and ONNX files.

    python scripts/bench_qat.py                                  # all models, docs/results/qat
    python scripts/bench_qat.py --models pointnet,fmnist-vgg --qat-epochs 3

Per model:
1. train, then compress with the seed's method (rate 0.8, bench_zoo's epochs; the zoo models on
   bench_zoo's synthetic stand-ins, ``--n-test`` test samples), then decode the container: the
   **float** model, as bench_zoo exports it;
2. **PTQ**: its int8 TFLite and ONNX files, calibrated on 512 training inputs; agreement is with
   the float Keras model;
3. **QAT**: :func:`edgecomp.qat.quantize_model` over the float model, :func:`edgecomp.qat.fine_tune`
   with the pruned weights held at 0, then its int8 TFLite and ONNX files on the trained ranges (no
   calibration); agreement is with the QAT Keras model, which simulates the int8 arithmetic.
   Targets: agreement >= 99.5% and file accuracy within 0.3 point of the float model's.
4. ``--deep`` models (default: fmnist-vgg, pointnet) again, end to end in one ``compress()`` with
   Deep Compression and the QAT stage: the container must decode to weights on each kernel's
   codebook, and its int8 files agree as in 3.
Latency: batch 1, 1 thread, every int8 file and the float TFLite in ``--rounds`` interleaved rounds,
each file in a fresh process (median of rounds).

Writes ``bench_qat.json``, ``bench_qat.md`` and ``bench_qat.png`` to ``--out`` (atomically, after
each model; a finished model is reused from the JSON unless ``--fresh``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_zoo  # noqa: E402

MODELS = ("fmnist-vgg",) + bench_zoo.MODELS
#: QAT epochs for the Fashion-MNIST net (the zoo's are bench_zoo.SPECS' qat_epochs, default 4).
FMNIST_QAT_EPOCHS = 1
TARGET_AGREEMENT, TARGET_DROP = 0.995, 0.003
FMNIST = {"epochs": 3, "fine_tune_epochs": 1, "n_train": 20000, "n_test": 2000}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--deep", default="fmnist-vgg,pointnet", help="models also run with deep compression + QAT")
    p.add_argument("--n-train", type=int, default=512, help="zoo: training samples")
    p.add_argument("--n-test", type=int, default=1000, help="zoo: test samples (accuracy, agreement)")
    p.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (default: 4; fmnist-vgg 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="interleaved latency rounds")
    p.add_argument("--runs", type=int, default=50, help="timed runs per file per round")
    p.add_argument("--data-dir", default=None, help="folder holding real datasets (bench_zoo's rule)")
    p.add_argument("--out", default="docs/results/qat")
    p.add_argument("--work", default="runs/bench_qat")
    p.add_argument("--fresh", action="store_true", help="recompute models already in the JSON")
    return p


def _data(name: str, args):
    from edgecomp.data import load_dataset
    if name == "fmnist-vgg":
        ds = load_dataset("fashion_mnist").take(FMNIST["n_train"], FMNIST["n_test"])
        return ds, f"real ({ds.source})"
    return bench_zoo.load_data(name, args)


def _spec(name: str) -> dict:
    if name == "fmnist-vgg":
        return {"model": "vgg", "options": {}, "epochs": FMNIST["epochs"], "fine_tune_epochs": FMNIST["fine_tune_epochs"]}
    s = bench_zoo.SPECS[name]
    return {"model": name, "options": s["options"], "epochs": s.get("epochs", 4),
            "fine_tune_epochs": s.get("fine_tune_epochs", 3)}


def _file(model, ds, fmt: str, path: Path, x_cal, reference_model) -> dict:
    """Export int8/fp32, check against ``reference_model``: the figures, or an error row."""
    from edgecomp.errors import first_line
    from exporters import check_parity, export

    variant = "fp32" if path.stem.endswith("fp32") else "int8"
    try:
        art = export(model, fmt, variant, path, calibration=x_cal)
        f = check_parity(reference_model, art, ds.x_test, ds.y_test, variant=variant)
    except Exception as exc:  # a converter refusal is a row, not the end of the run
        return {"file": str(path), "format": fmt, "variant": variant, "error": f"{type(exc).__name__}: {first_line(exc)}"}
    return {"file": str(path), "format": fmt, "variant": variant, "bytes": art.bytes,
            "accuracy": f.get("accuracy_artifact"), "agreement": f.get("top1_agreement"),
            "max_abs_diff": f.get("max_abs_diff"), "passed": f["passed"]}


def _verdict(entry: dict, float_acc: float) -> None:
    if "error" in entry:
        entry["target_met"] = False
        return
    entry["drop"] = float_acc - entry["accuracy"]
    entry["target_met"] = bool(entry["agreement"] >= TARGET_AGREEMENT and entry["drop"] <= TARGET_DROP + 1e-9)


def run_model(name: str, args, work: Path) -> dict:
    from edgecomp import store, train
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.zoo import evaluate

    import keras

    start = time.time()
    keras.utils.set_random_seed(0)   # initial weights, dropout: the same table on a rerun
    spec = _spec(name)
    ds, note = _data(name, args)
    print(f"[{name}] {ds.name}: {note}; {len(ds.x_train)} train / {len(ds.x_test)} test", flush=True)
    model = build_model(spec["model"], ds.input_shape, ds.num_classes, **spec["options"])
    train.fit(model, ds.x_train, ds.y_train, epochs=spec["epochs"], batch_size=args.batch_size, verbose=0)
    result = compress(model, ds, rate=0.8, fine_tune_epochs=spec["fine_tune_epochs"], batch_size=args.batch_size,
                      verbose=0)
    decoded = store.decode_model(result.container)
    acc = lambda m: evaluate(m, ds.x_test, ds.y_test, task=ds.task)["accuracy"]  # noqa: E731
    row = {"model": name, "data": ds.name, "source": note, "task": ds.task, "n_test": int(len(ds.x_test)),
           "float_accuracy": acc(decoded)}
    x_cal = ds.x_train[:512]
    row["float_tflite"] = _file(decoded, ds, "tflite", work / f"{name}_fp32.tflite", x_cal, decoded)
    row["ptq"] = {fmt: _file(decoded, ds, fmt, work / f"{name}_ptq_int8.{'onnx' if fmt == 'onnx' else 'tflite'}",
                             x_cal, decoded) for fmt in ("tflite", "onnx")}
    epochs = args.qat_epochs or (FMNIST_QAT_EPOCHS if name == "fmnist-vgg" else bench_zoo.SPECS[name].get("qat_epochs", 4))  # noqa: E501
    tick = time.time()
    qmodel, report = bench_zoo.qat_model(decoded, ds, epochs, args.batch_size)
    row["qat_seconds"] = round(time.time() - tick, 1)
    row.update({"qat_epochs": epochs, "qat_accuracy": acc(qmodel), "qat_float_layers": report["float"]})
    row["qat"] = {fmt: _file(qmodel, ds, fmt, work / f"{name}_qat_int8.{'onnx' if fmt == 'onnx' else 'tflite'}",
                             None, qmodel) for fmt in ("tflite", "onnx")}
    for group in ("ptq", "qat"):
        for entry in row[group].values():
            _verdict(entry, row["float_accuracy"])
    if name in args.deep_models:
        row["deep"] = deep_check(name, spec, ds, args, work, epochs)
    row["seconds"] = round(time.time() - start, 1)
    print(f"[{name}] float {row['float_accuracy']:.4f}; " + "; ".join(
        f"{g} {f} {e.get('agreement', 'err')}" for g in ("ptq", "qat") for f, e in row[g].items()), flush=True)
    return row


def deep_check(name: str, spec: dict, ds, args, work: Path, epochs: int) -> dict:
    """Deep Compression + QAT in one compress(): codebooks held through the container, int8 in parity."""
    import numpy as np

    from edgecomp import qat, store, train
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.zoo import evaluate

    import keras

    keras.utils.set_random_seed(1)
    model = build_model(spec["model"], ds.input_shape, ds.num_classes, **spec["options"])
    train.fit(model, ds.x_train, ds.y_train, epochs=spec["epochs"], batch_size=args.batch_size, verbose=0)
    result = compress(model, ds, method="deep", rate=0.8, fine_tune_epochs=spec["fine_tune_epochs"],
                      batch_size=args.batch_size, qat_epochs=epochs, verbose=0)
    decoded = store.decode_model(result.container)
    flt = qat.float_model(decoded)
    bits = {r["name"]: r["bits"] for r in result.report if r["method"] == "deep"}
    by_path = {v.path: v.numpy() for v in flt.weights}
    on_codebook = {p: int(len(np.unique(by_path[p][by_path[p] != 0]))) <= 2 ** b for p, b in bits.items()}
    out = {"container_bytes": result.bytes, "kernels_on_codebook": int(sum(on_codebook.values())),
           "kernels_shared": len(bits), "qat_accuracy": evaluate(decoded, ds.x_test, ds.y_test, task=ds.task)["accuracy"],
           "float_accuracy": evaluate(flt, ds.x_test, ds.y_test, task=ds.task)["accuracy"]}
    out["files"] = {fmt: _file(decoded, ds, fmt, work / f"{name}_deep_qat_int8.{fmt}", None, decoded)
                    for fmt in ("tflite", "onnx")}
    for entry in out["files"].values():
        _verdict(entry, out["float_accuracy"])
    return out


def time_files(rows: list[dict], samples: dict, args) -> None:
    """Median latency over interleaved rounds, each file in a fresh process."""
    import numpy as np

    import runtime_bench

    entries = [(r["model"], e) for r in rows if "error" not in r
               for e in [r["float_tflite"], *r["ptq"].values(), *r["qat"].values()] if "error" not in e]
    times: dict[str, list] = {}
    for k in range(args.rounds):
        order = entries if k % 2 == 0 else entries[::-1]
        print(f"== latency round {k + 1}/{args.rounds} ({len(order)} files)", flush=True)
        for name, e in order:
            rec = runtime_bench.bench_files([e["file"]], samples[name], None, threads=1, runs=args.runs,
                                            min_time_s=0.5, progress=False, task=None)[0]
            times.setdefault(e["file"], []).append(rec.get("median_ms"))
    for _, e in entries:
        got = [t for t in times.get(e["file"], []) if t]
        e["median_ms"] = float(np.median(got)) if got else None


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _cell(e: dict) -> str:
    if "error" in e:
        return f"error: {e['error'][:60]}"
    mark = "" if e.get("target_met", True) else " **miss**"
    return f"{_pct(e['accuracy'])} / {_pct(e['agreement'])}{mark}"


def _ms(e: dict) -> str:
    return "-" if e.get("median_ms") is None else f"{e['median_ms']:.3f}"


def markdown(rows: list[dict], meta: dict) -> str:
    from edgecomp.report import markdown_table

    head = ["model", "data", "test n", "float acc", "PTQ TFLite acc / agree", "PTQ ONNX acc / agree",
            "QAT epochs", "QAT Keras acc", "QAT TFLite acc / agree", "QAT ONNX acc / agree",
            "ms: fp32 TFLite", "PTQ TFLite", "QAT TFLite", "PTQ ONNX", "QAT ONNX"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["model"], f"failed: {r['error'][:80]}"] + [""] * (len(head) - 2))
            continue
        src = "real" if r["source"].startswith("real") else "synthetic"
        table.append([r["model"], f"{r['data']} ({src})", f"{r['n_test']:,}", _pct(r["float_accuracy"]),
                      _cell(r["ptq"]["tflite"]), _cell(r["ptq"]["onnx"]), str(r["qat_epochs"]), _pct(r["qat_accuracy"]),
                      _cell(r["qat"]["tflite"]), _cell(r["qat"]["onnx"]), _ms(r["float_tflite"]),
                      _ms(r["ptq"]["tflite"]), _ms(r["qat"]["tflite"]), _ms(r["ptq"]["onnx"]), _ms(r["qat"]["onnx"])])
    lines = ["# Post-training int8 vs quantization-aware training", "",
             f"Made by `{meta['command']}` in {meta.get('seconds', 0):.0f} s on {meta['machine']}."
             + (f" Rows of {', '.join(meta['reused'])} were finished by an earlier run of the script (same settings) "
                "and reused; `--fresh` recomputes them." if meta.get("reused") else ""), "",
             "Every model is compressed with the seed's method (rate 0.8) and decoded first: that is the float model. "
             "acc = the file's test accuracy (segmentation: pixel accuracy); agree = its top-1 agreement (per pixel) "
             "with the Keras model it was made from: the float model for PTQ (calibrated on 512 training inputs), the "
             "QAT model (int8 simulated) for QAT (trained ranges, no calibration). **miss**: below "
             f"{TARGET_AGREEMENT:.1%} agreement, or more than {100 * TARGET_DROP:.1f} point under the float accuracy. "
             f"Latency: median ms, batch 1, 1 thread, {meta['rounds']} interleaved rounds, each file in a fresh process.",
             "", markdown_table(head, table)]
    deep = [r for r in rows if r.get("deep")]
    if deep:
        lines += ["", "## Deep Compression + QAT, through the container", "",
                  "One `compress(method=\"deep\", rate=0.8, qat_epochs=N)`; the container decoded; kernels on codebook = "
                  "shared kernels whose nonzero weights take at most 2^bits values.", ""]
        dt = [[r["model"], f"{r['deep']['container_bytes']:,}",
               f"{r['deep']['kernels_on_codebook']} of {r['deep']['kernels_shared']}",
               _pct(r["deep"]["float_accuracy"]), _pct(r["deep"]["qat_accuracy"]),
               _cell(r["deep"]["files"]["tflite"]), _cell(r["deep"]["files"]["onnx"])] for r in deep]
        lines.append(markdown_table(["model", "container B", "kernels on codebook", "float acc", "QAT Keras acc",
                                     "QAT TFLite acc / agree", "QAT ONNX acc / agree"], dt))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> bytes:
    import io as _io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.2
    for i, (group, fmt, color) in enumerate((("ptq", "tflite", "#c44"), ("ptq", "onnx", "#e99"),
                                             ("qat", "tflite", "#27a"), ("qat", "onnx", "#8bd"))):
        vals = [100 * (r[group][fmt].get("agreement") or 0) for r in ok]
        ax.bar([k + (i - 1.5) * width for k in range(len(ok))], vals, width, label=f"{group.upper()} {fmt}", color=color)
    ax.axhline(100 * TARGET_AGREEMENT, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(ok)), [r["model"] for r in ok])
    ax.set_ylim(90, 100.3)
    ax.set_ylabel("int8 top-1 agreement, %")
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    import json
    import platform

    from edgecomp import io
    from edgecomp.errors import EdgecompError, first_line
    from runtime_bench.targets import cpu_description

    args = parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.deep_models = {m.strip() for m in args.deep.split(",") if m.strip()}
    bad = [m for m in models + sorted(args.deep_models) if m not in MODELS]
    if bad:
        print(f"bench_qat: error: unknown model(s) {', '.join(bad)}; use some of: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if args.qat_epochs is not None and args.qat_epochs < 1:
        print(f"bench_qat: error: --qat-epochs must be 1 or more, got {args.qat_epochs}", file=sys.stderr)
        return 2
    out, work = io.ensure_dir(args.out), io.ensure_dir(args.work)
    meta = {"command": " ".join(["python scripts/bench_qat.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": f"{cpu_description()}, {platform.machine()}, {os.cpu_count()} CPUs", "rounds": args.rounds}
    old = {}
    if (out / "bench_qat.json").is_file() and not args.fresh:
        old = {r["model"]: r for r in json.loads((out / "bench_qat.json").read_text())["models"] if "error" not in r}
    start = time.time()
    rows, samples = [], {}

    def save():
        meta["seconds"] = round(time.time() - start, 1)
        io.write_json(out / "bench_qat.json", {"meta": meta, "models": rows})
        io.write_text(out / "bench_qat.md", markdown(rows, meta))

    for name in models:
        if name in old and all(Path(e["file"]).is_file() for e in [old[name]["float_tflite"], *old[name]["ptq"].values(),
                                                                   *old[name]["qat"].values()] if "error" not in e):
            rows.append(old[name])
            meta.setdefault("reused", []).append(name)
            print(f"[{name}] reused from {out / 'bench_qat.json'}", flush=True)
        else:
            try:
                rows.append(run_model(name, args, work))
            except EdgecompError as exc:
                rows.append({"model": name, "error": first_line(exc)})
        samples[name] = _data(name, args)[0].x_test[:32]
        save()
    time_files(rows, samples, args)
    save()
    io.write_bytes(out / "bench_qat.png", plot(rows))
    print(markdown(rows, meta))
    print(f"wrote {out}/bench_qat.json, bench_qat.md, bench_qat.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
