#!/usr/bin/env python
"""Every model of the seed's zoo, at a small size, through the whole flow:
train -> compress (the seed's method) -> container -> decode -> export -> benchmark.

    python scripts/bench_zoo.py                         # synthetic stand-ins (no data files needed)
    python scripts/bench_zoo.py --data-dir ~/data       # the real sets found there, synthetic for the rest
    python scripts/bench_zoo.py --models unet,pointnet --epochs 1

Models and data: vgg, resnet, densenet, inception on CIFAR-10 (``cifar-10-batches-py`` in
``--data-dir``); unet on person segmentation (``--data-dir/person_seg`` or ``--data-dir`` with the
seed's ``seg_train.txt``/``seg_test.txt``); pointnet on ModelNet40 (``ply_data_*.h5``). A real set
is used only when found in ``--data-dir`` (or ``$EDGECOMP_DATA``); otherwise the synthetic
stand-in is (``synthetic_patterns`` for CIFAR: its classes don't depend on position, which nets
ending in global average pooling need; ``synthetic_segmentation``; ``synthetic_pointclouds``), and
the table's ``data`` column says so (with the reason in the JSON).

Each decoded model is exported to TFLite fp32 and int8 and ONNX fp32 (and ONNX int8 where
``exporters.VARIANTS`` offers it); each file's parity with the decoded Keras model is checked
against the exporters' default thresholds (UNet fp32: mask IoU >= 0.999 instead of 100%
per-pixel agreement); where an int8 file misses them, the same format's ``int16x8`` variant
(int8 weights, int16 activations) is exported and checked too, and so is an ``int8 (QAT)`` file:
the decoded model after quantization-aware training (``--qat-epochs``, its zeros held), on its
trained ranges, checked against the QAT model with QAT's thresholds. Then every file is benchmarked
(``runtime_bench.bench_files``, batch 1, 1 thread). Writes ``bench_zoo.json`` and
``bench_zoo.md`` (atomically, after each model) to ``--out`` (default ``docs/results/zoo``); the
model files go to ``--work`` (default ``runs/bench_zoo``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("vgg", "resnet", "densenet", "inception", "unet", "pointnet")

#: Per model: small options, the real dataset (name, loader options), the synthetic stand-in.
#: BatchNorm momentum 0.9 (the seed's 0.99 needs hundreds of steps before inference-mode
#: statistics settle; these runs take ~50).
_CIFAR_STANDIN = ("synthetic_patterns", {"shape": (32, 32, 3), "num_classes": 10})
SPECS = {
    "vgg": {"options": {"width": 0.25, "fc_layers": 1}, "real": ("cifar10", {}), "synthetic": _CIFAR_STANDIN,
            "epochs": 8, "fine_tune_epochs": 4},
    "resnet": {"options": {"depth": 8, "bn_momentum": 0.9}, "real": ("cifar10", {}), "synthetic": _CIFAR_STANDIN},
    "densenet": {"options": {"depth": 10, "growth_rate": 8, "bn_momentum": 0.9}, "real": ("cifar10", {}),
                 "synthetic": _CIFAR_STANDIN},
    "inception": {"options": {"width": 0.25, "modules": 1, "bn_momentum": 0.9}, "real": ("cifar10", {}),
                  "synthetic": _CIFAR_STANDIN},
    "unet": {"options": {"width": 0.125}, "real": ("person_seg", {"size": 64}),
             "synthetic": ("synthetic_segmentation", {"size": 64}), "epochs": 3, "fine_tune_epochs": 1},
    # PointNet loses most of its accuracy when 80% of each filter goes (its first convs see
    # 3 inputs per filter) and needs a few epochs to recover, as the seed's 20 did.
    # 20 + 8 epochs: after 6 + 4 its class scores were too close for int8 (87.5% top-1 agreement).
    "pointnet": {"options": {"width": 0.25, "bn_momentum": 0.9}, "real": ("modelnet40", {"num_points": 256}),
                 "synthetic": ("synthetic_pointclouds", {"num_points": 256}), "epochs": 20, "fine_tune_epochs": 8},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--data-dir", default=None, help="folder holding the real datasets (default: $EDGECOMP_DATA)")
    p.add_argument("--n-train", type=int, default=512, help="training samples per model")
    p.add_argument("--n-test", type=int, default=1000,
                   help="test samples (accuracy, parity, benchmark; 1000: one flipped sample is 0.1 point)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 4; vgg 8, unet 3, pointnet 20)")
    p.add_argument("--fine-tune-epochs", type=int, default=None,
                   help="masked fine-tuning epochs (default: 3; vgg 4, unet 1, pointnet 8)")
    p.add_argument("--compress-rate", type=float, default=0.8)
    p.add_argument("--qat-epochs", type=int, default=None,
                   help="QAT epochs where post-training int8 misses parity (default: 4 (64 steps on 512 samples); 0: no QAT)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=50, help="timed runs per file (batch 1, 1 thread)")
    p.add_argument("--isolate", action="store_true", help="benchmark each file in a fresh process (slower)")
    p.add_argument("--out", default="docs/results/zoo", help="folder for the table (bench_zoo.json, bench_zoo.md)")
    p.add_argument("--work", default="runs/bench_zoo", help="folder for the model files (.ecz, .tflite, .onnx)")
    return p


# -- data -----------------------------------------------------------------------------

def load_data(name: str, args) -> tuple[object, str]:
    """``(dataset, note)``: the real set when found under the data folder, else the synthetic one."""
    from edgecomp.data import load_dataset
    from edgecomp.errors import EdgecompError

    spec = SPECS[name]
    real, real_opts = spec["real"]
    root = args.data_dir or os.environ.get("EDGECOMP_DATA")
    note = "no --data-dir or EDGECOMP_DATA given"
    if root:
        roots = [Path(root).expanduser()]
        if real == "person_seg":
            roots.insert(0, roots[0] / "person_seg")
            real_opts = {**real_opts, "n_train": args.n_train, "n_test": args.n_test}
        for folder in roots:
            try:
                ds = load_dataset(real, data_dir=str(folder), **real_opts)
                return ds.take(args.n_train, args.n_test), f"real ({ds.source})"
            except EdgecompError as exc:
                note = f"{real} not usable: {exc}"
    synth, synth_opts = spec["synthetic"]
    ds = load_dataset(synth, n_train=args.n_train, n_test=args.n_test, **synth_opts)
    return ds, f"synthetic ({note})"


# -- one model ------------------------------------------------------------------------

def mask_iou(got, ref) -> float:
    """IoU of the foreground (class >= 1) masks predicted from two segmentation outputs."""
    import numpy as np

    a, b = got.argmax(-1) > 0, ref.argmax(-1) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def export_variants() -> list:
    from exporters.variants import parse_variants

    return parse_variants("tflite,onnx", "fp32,int8")[0]


def export_checked(model, name: str, ds, out: Path, ref, queue: list, x_cal, stem: str | None = None,
                   fallback: bool = True) -> list[dict]:
    """Export ``model`` as each variant of ``queue`` to ``out`` and check each file's parity
    against ``model`` on the test set (``ref``: its outputs there): one entry per file, a failed
    check or an exporter error is a row (the file stays), and (with ``fallback``) an int8 file out
    of parity queues the same format's ``int16x8`` variant. Files are named
    ``{stem or name}_{variant}{suffix}``."""
    from edgecomp.errors import first_line
    from exporters import VARIANTS, check_parity, export
    from exporters.variants import Variant
    from runtime_bench import open_runner

    x, y = ds.x_test, ds.y_test
    queue = list(queue)
    artifacts = []
    for variant in queue:
        fmt, path = variant.format, out / variant.filename(stem or name)
        entry = {"format": fmt, "variant": variant.name, "file": path.name}
        try:
            art = export(model, fmt, variant, path, calibration=x_cal)
            thresholds = {"top1_agreement": 0.999} if ds.task == "segmentation" and variant.name == "fp32" else None
            figures = check_parity(model, art, x, y, thresholds=thresholds, variant=variant)
            entry.update({"bytes": art.bytes, "gzip_bytes": art.gzip_bytes,
                          "max_abs_diff": figures.get("max_abs_diff"),
                          "top1_agreement": figures.get("top1_agreement"),
                          "accuracy_delta": figures.get("accuracy_delta"),
                          "passed": figures["passed"], "failures": figures["failures"]})
            if ds.task == "segmentation":
                options = {k: art.needs[k] for k in ("resolver", "optimization") if art.needs.get(k)}
                entry["mask_iou"] = mask_iou(open_runner(path, threads=1, **options).predict(x), ref)
                if variant.name == "fp32" and entry["mask_iou"] < 0.999:
                    entry["passed"] = False
                    entry["failures"].append(f"fp32 mask IoU {entry['mask_iou']:.4f} < 0.999 required")
        except Exception as exc:  # an exporter bug or a converter refusal is one row, not the end of the run
            entry.update({"passed": False, "error": f"{type(exc).__name__}: {first_line(exc, default='')}"})
        artifacts.append(entry)
        if fallback and variant.name == "int8" and entry.get("failures") and "int16x8" in VARIANTS.get(fmt, ()):
            queue.append(Variant.parse(fmt, "int16x8"))  # int8 out of parity: try 16-bit activations too
        state = "ok" if entry["passed"] else "FAILED " + "; ".join(entry.get("failures") or [entry.get("error", "")])
        print(f"[{name}] {fmt} {variant}: {entry.get('bytes', '-')} B, parity {state}", flush=True)
    return artifacts


def qat_model(decoded, ds, epochs: int, batch_size: int, seed: int = 0):
    """``(QAT model, its report)`` over a decoded (pruned) model: fine-tuned with its zeros held."""
    from edgecomp import pruning, qat

    config = qat.QAT(epochs=epochs)
    qmodel, report = qat.quantize_model(decoded, config)
    qat.fine_tune(qmodel, ds.x_train, ds.y_train, config, batch_size=batch_size, masks=pruning.zero_masks(decoded),
                  seed=seed, verbose=0)
    return qmodel, report


def qat_exports(decoded, name: str, ds, out: Path, formats: list[str], args, stem: str | None = None) -> list[dict]:
    """The int8 files of ``formats`` after quantization-aware training of the decoded model (its
    zeros held), on the trained ranges, checked against the QAT model: rows ``int8 (QAT)``."""
    from edgecomp.train import predict
    from exporters.variants import Variant

    epochs = args.qat_epochs if args.qat_epochs is not None else SPECS[name].get("qat_epochs", 4)
    qmodel, _ = qat_model(decoded, ds, epochs, args.batch_size)
    rows = export_checked(qmodel, name, ds, out, predict(qmodel, ds.x_test), [Variant.parse(f, "int8") for f in formats],
                          None, stem=stem or f"{name}_qat", fallback=False)
    for row in rows:
        row.update({"variant": "int8 (QAT)", "qat_epochs": epochs})
    return rows


def run_model(name: str, args, out: Path) -> dict:
    from edgecomp import store, train
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.train import predict
    from edgecomp.zoo import evaluate
    from runtime_bench import bench_files

    start = time.time()
    ds, note = load_data(name, args)
    row = {"model": name, "options": SPECS[name]["options"], "data": ds.name, "source": note, "task": ds.task,
           "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test))}
    print(f"[{name}] {ds.name}: {note}; {len(ds.x_train)} train / {len(ds.x_test)} test", flush=True)

    model = build_model(name, ds.input_shape, ds.num_classes, **SPECS[name]["options"])
    from edgecomp.structured import count_macs
    row["params"] = int(model.count_params())
    row["macs"] = int(count_macs(model)[1])
    stages = row["stage_seconds"] = {}
    tick = time.time()
    epochs = args.epochs if args.epochs is not None else SPECS[name].get("epochs", 4)
    fine_tune = args.fine_tune_epochs if args.fine_tune_epochs is not None else SPECS[name].get("fine_tune_epochs", 3)
    row.update({"epochs": epochs, "fine_tune_epochs": fine_tune})
    train.fit(model, ds.x_train, ds.y_train, epochs=epochs, batch_size=args.batch_size, verbose=0)
    row["before"] = evaluate(model, ds.x_test, ds.y_test, task=ds.task)
    stages["train"], tick = round(time.time() - tick, 1), time.time()

    result = compress(model, ds, rate=args.compress_rate, fine_tune_epochs=fine_tune,
                      batch_size=args.batch_size, verbose=0, info={"model": name, "data": ds.name})
    container = out / f"{name}.ecz"
    result.save(container)
    decoded = store.load_compressed(container)
    row["after"] = evaluate(decoded, ds.x_test, ds.y_test, task=ds.task)
    stages["compress"], tick = round(time.time() - tick, 1), time.time()
    weights = sum(r["params"] for r in result.report)
    streams = sum(r["bytes"] for r in result.report)
    row.update({"weights": int(weights), "kept": int(result.nonzeros), "container_bytes": int(result.bytes),
                "weight_stream_bytes": int(streams), "fp32_bytes": int(4 * weights),
                "storage_ratio": round(4 * weights / result.bytes, 2),
                "weights_ratio": round(4 * weights / max(1, streams), 2)})
    print(f"[{name}] {row['params']:,} params; acc {row['before']['accuracy']:.3f} -> {row['after']['accuracy']:.3f}; "
          f"container {result.bytes:,} B ({row['storage_ratio']}x; weights alone {row['weights_ratio']}x)", flush=True)

    x_cal = ds.x_train[:512]
    x, y = ds.x_test, ds.y_test
    ref = predict(decoded, x)
    artifacts = export_checked(decoded, name, ds, out, ref, export_variants(), x_cal)
    missed = sorted({a["format"] for a in artifacts if a["variant"] == "int8" and not a["passed"]})
    if missed and args.qat_epochs != 0:   # post-training int8 out of parity: quantization-aware training
        artifacts += qat_exports(decoded, name, ds, out, missed, args)

    stages["export"], tick = round(time.time() - tick, 1), time.time()
    files = [out / a["file"] for a in artifacts if (out / a["file"]).is_file()]
    records = bench_files(files, x, y, threads=1, reference=ref, progress=False, task=ds.task,
                          runs=args.runs, warmup=5, min_time_s=0.2, isolate=args.isolate)
    by_file = {Path(r["file"]).name: r for r in records}
    for a in artifacts:
        rec = by_file.get(a["file"], {})
        a.update({"median_ms": rec.get("median_ms"), "p90_ms": rec.get("p90_ms"),
                  "runtime_accuracy": rec.get("accuracy"), "bench_error": rec.get("error")})
    row["artifacts"] = artifacts
    stages["bench"] = round(time.time() - tick, 1)
    row["seconds"] = round(time.time() - start, 1)
    print(f"[{name}] done in {row['seconds']} s ({stages})", flush=True)
    return row


# -- report ---------------------------------------------------------------------------

def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Model zoo: compress -> container -> decode -> export -> bench",
        "",
        f"Made by `{meta.get('command', 'python scripts/bench_zoo.py')}`. "
        f"Rate {meta['compress_rate']} (the seed's per-filter pruning, int8 values with uint8 index gaps), "
        "training and fine-tuning epochs per model as listed below, on "
        f"{meta['n_train']} samples; "
        f"accuracy on {meta['n_test']} test samples (segmentation: pixel accuracy). Parity: top-1 agreement with the "
        "decoded Keras model (segmentation: per pixel, and the mask IoU); an `int8 (QAT)` row (made where post-training "
        "int8 missed) is checked against the QAT model, at 99.5% agreement and -0.3 point. Latency: median, batch 1, 1 thread. "
        "Ratio: float32 weights / container bytes (the container also holds the model's JSON architecture, "
        "tens of KB for the BN-heavy nets; in brackets: float32 weights / the coded weight streams alone). "
        f"{meta['machine']}.",
        "",
        "| model | data | params | MACs | acc before | acc after | container B | ratio | artifact | bytes | parity | max abs diff | median ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | - | - | - | - | - | - | - | failed: {row['error']} | | | | |")
            continue
        source = "real" if row["source"].startswith("real") else "synthetic"
        macs = f"{row['macs']:,}" if row.get("macs") is not None else "-"
        head = (f"| {row['model']} | {row['data']} ({source}) | {row['params']:,} | {macs} | {_pct(row['before']['accuracy'])} | "
                f"{_pct(row['after']['accuracy'])} | {row['container_bytes']:,} | {row['storage_ratio']}x "
                f"({row['weights_ratio']}x) |")
        blank = "| | | | | | | | |"
        rescued = {a["format"] for a in row["artifacts"] if a["variant"] == "int8 (QAT)" and a.get("passed")}
        for i, a in enumerate(row["artifacts"]):
            lead = head if i == 0 else blank
            if "error" in a:
                lines.append(f"{lead} {a['format']} {a['variant']} | - | error: {a['error'][:80]} | - | - |")
                continue
            agree = f"top-1 {_pct(a['top1_agreement'])}"
            if a.get("mask_iou") is not None:
                agree += f", IoU {a['mask_iou']:.4f}"
            verdict = "ok" if a["passed"] else ("post-training miss, QAT int8 below passes"
                                                 if a["variant"] == "int8" and a["format"] in rescued else "**FAIL**")
            ms = a.get("median_ms")
            lines.append(f"{lead} {a['format']} {a['variant']} | {a['bytes']:,} | {agree} {verdict} | "
                         f"{a['max_abs_diff']:.2g} | {'-' if ms is None else f'{ms:.3f}'} |")
    lines += ["", "Epochs (train + fine-tune): " + "; ".join(f"{r['model']} {r['epochs']} + {r['fine_tune_epochs']}"
                                                           for r in rows if "epochs" in r),
              "", "Data: " + "; ".join(f"{r['model']}: {r.get('source', r.get('error'))}" for r in rows), ""]
    return "\n".join(lines)


def parse_models(text: str) -> list[str]:
    """``"vgg,unet"`` -> the zoo models named, in order; an unknown name is an EdgecompError."""
    from edgecomp.errors import EdgecompError

    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in SPECS]
    if unknown:
        raise EdgecompError(f"unknown model(s): {', '.join(unknown)}", fix=f"use some of: {', '.join(MODELS)}")
    return models


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import platform

    from edgecomp import io
    from edgecomp.errors import EdgecompError
    from edgecomp.pruning import check_rate

    try:
        models = parse_models(args.models)
        check_rate(args.compress_rate)
        out = io.ensure_dir(args.out)
        work = io.ensure_dir(args.work)
    except EdgecompError as exc:
        print(f"bench_zoo: error: {exc}", file=sys.stderr)
        return 2
    meta = {key: getattr(args, key) for key in ("compress_rate", "epochs", "fine_tune_epochs", "n_train", "n_test",
                                                "batch_size", "runs", "isolate")}
    meta["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    meta["command"] = " ".join(["python scripts/bench_zoo.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.time()
    rows = []
    for name in models:
        try:
            rows.append(run_model(name, args, work))
        except EdgecompError as exc:
            print(f"[{name}] error: {exc}", file=sys.stderr)
            rows.append({"model": name, "error": str(exc)})
        # Partial results survive an interrupted run.
        meta["seconds"] = round(time.time() - start, 1)
        io.write_json(out / "bench_zoo.json", {"meta": meta, "models": rows})
        io.write_text(out / "bench_zoo.md", markdown(rows, meta))
    print(markdown(rows, meta))
    print(f"wrote {out / 'bench_zoo.json'} and {out / 'bench_zoo.md'} in {meta['seconds']} s")
    failed = [r["model"] for r in rows if "error" in r or not all(a["passed"] for a in r["artifacts"]
                                                                  if a["variant"] == "fp32")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
