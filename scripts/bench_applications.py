#!/usr/bin/env python
"""keras.applications coverage: every family, in its smallest member at the smallest input it
accepts, randomly initialised (``weights=None``, ``classes=10``), through the whole flow:
[brief training] -> compress (seed and deep) -> container -> decode -> export -> parity -> bench.

    python scripts/bench_applications.py                               # all 14 families
    python scripts/bench_applications.py --families MobileNetV3Small,EfficientNetB0 --quick
    python scripts/bench_applications.py --out docs/results/applications --timeout 900

Data: ``synthetic_patterns`` (oriented gratings, 10 classes, position-free, learnable) at each
family's input size, in [-1, 1], or in [0, 255] for the families whose model rescales its input
itself (EfficientNet*, MobileNetV3, ConvNeXt). The families in ``--train`` (default MobileNetV2,
MobileNetV3Small, EfficientNetB0, ResNet50) first learn the task on ``--n-fit`` samples (until
``--train-target`` held-out accuracy or ``--train-steps`` steps, then ``--anneal-epochs`` of
cosine decay), so that their class scores are apart and the int8 checks mean something; their
compression fine-tunes on the same samples. The rest stay at their random initialisation, whose
near-tied scores int8 files can reorder (their int8 rows then carry the near-tie diagnosis of
:func:`exporters.parity.near_ties`), and compress and calibrate on ``--n-train`` samples.

Per family: the seed's method (rate ``--rate``, per filter, int8 values) and the deep method
(pruning + weight sharing + entropy coding) each give a container, decoded by
``store.decode_model``; the deep one's decoded model is exported to TFLite and ONNX, fp32 and
int8, each file checked against it with the exporters' default thresholds (a file out of
parity is a row with its figures, not an abort), then benchmarked (``runtime_bench.bench_files``,
batch 1, 1 thread). Each family runs in a fresh process with ``--timeout`` seconds, so a hang or
a crash is a row. Writes ``applications.json`` (after each family, atomically),
``applications.md`` and ``applications.png`` to ``--out``; model files go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

#: family -> (constructor in keras.applications, its options, smallest input side accepted).
#: Smallest member of each family; the sides are the constructors' own minimums (Inception*
#: 75, Xception 71, the rest 32) with include_top=True and weights=None. Trained ones first, then cheapest first.
FAMILIES = {
    "MobileNet": ("MobileNet", {"alpha": 0.25}, 32),
    "MobileNetV2": ("MobileNetV2", {"alpha": 0.35}, 32),
    "MobileNetV3Small": ("MobileNetV3Small", {"alpha": 0.75}, 32),
    "EfficientNetB0": ("EfficientNetB0", {}, 32),
    "ResNet50": ("ResNet50", {}, 32),
    "EfficientNetV2B0": ("EfficientNetV2B0", {}, 32),
    "NASNetMobile": ("NASNetMobile", {}, 32),
    "DenseNet121": ("DenseNet121", {}, 32),
    "ResNet50V2": ("ResNet50V2", {}, 32),
    "InceptionV3": ("InceptionV3", {}, 75),
    "VGG16": ("VGG16", {}, 32),
    "Xception": ("Xception", {}, 71),
    "ConvNeXtTiny": ("ConvNeXtTiny", {}, 32),
    "InceptionResNetV2": ("InceptionResNetV2", {}, 75),
}
#: Families whose model rescales raw [0, 255] pixels itself (Rescaling / Normalization inside).
RAW_PIXELS = ("EfficientNetB0", "EfficientNetV2B0", "MobileNetV3Small", "ConvNeXtTiny")
TRAINED = ("MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50")
#: Training samples held out to decide when a trained family has learned the task.
HELD_OUT = 256
#: The variants exported from each decoded deep container.
EXPORTS = (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ", ".join(FAMILIES))
    p.add_argument("--quick", action="store_true", help="fewer samples, steps and timed runs (a smoke run)")
    p.add_argument("--train", default=",".join(TRAINED), help="families trained before compression ('' none)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="most training steps, batch 32 (default 1536; quick 96)")
    p.add_argument("--train-target", type=float, default=0.99,
                   help="training stops at the end of the first epoch whose held-out accuracy reaches this")
    p.add_argument("--anneal-epochs", type=int, default=1,
                   help="epochs of cosine decay to 0 after the target is reached (or the steps run out)")
    p.add_argument("--n-fit", type=int, default=None,
                   help="samples the trained families learn from (default 4096; quick 512), plus 256 held out")
    p.add_argument("--rate", type=float, default=0.5, help="pruning rate of both methods")
    p.add_argument("--fine-tune-epochs", type=int, default=1,
                   help="masked fine-tuning (and deep: centroid) epochs of the trained families (the rest: 0)")
    p.add_argument("--fine-tune-lr", type=float, default=1e-3,
                   help="masked fine-tuning rate of the trained families (Adam, cosine decay)")
    p.add_argument("--n-train", type=int, default=None, help="samples the untrained families compress and calibrate on (default 512; quick 256)")
    p.add_argument("--n-test", type=int, default=None, help="parity and bench samples (default 256; quick 64)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per file (default 30; quick 5)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per family (its own process)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="stop starting families after this many minutes (the rest become 'not run' rows)")
    p.add_argument("--reuse", action="store_true",
                   help="take a family's row from --work when an earlier run with the same settings left it")
    p.add_argument("--out", default="docs/results/applications", help="folder for applications.{json,md,png}")
    p.add_argument("--work", default="runs/bench_applications", help="folder for the model files")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite applications.md and .png in --out from its applications.json (no runs)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)   # internal: run one family here
    return p


def settings(args) -> dict:
    q = args.quick
    pick = lambda v, full, quick: v if v is not None else (quick if q else full)  # noqa: E731
    return {"rate": args.rate, "train": [f for f in args.train.split(",") if f],
            "train_steps": pick(args.train_steps, 1536, 96), "train_target": args.train_target,
            "anneal_epochs": args.anneal_epochs,
            "n_fit": pick(args.n_fit, 4096, 512), "fine_tune_epochs": args.fine_tune_epochs,
            "fine_tune_lr": args.fine_tune_lr,
            "n_train": pick(args.n_train, 512, 256),
            "n_test": pick(args.n_test, 256, 64), "runs": pick(args.runs, 30, 5), "quick": q}


# -- one family (in its own process) ----------------------------------------------------

def build(family: str):
    import keras

    ctor, options, side = FAMILIES[family]
    return getattr(keras.applications, ctor)(weights=None, input_shape=(side, side, 3), classes=10,
                                              include_top=True, **options)


def data(family: str, n_train: int, n_test: int):
    from edgecomp.data import load_dataset

    side = FAMILIES[family][2]
    ds = load_dataset("synthetic_patterns", n_train=n_train, n_test=n_test, shape=(side, side, 3), num_classes=10)
    if family in RAW_PIXELS:
        ds.x_train, ds.x_test = (ds.x_train + 1) * 127.5, (ds.x_test + 1) * 127.5
    return ds


def _accuracy(model, x, y) -> float:
    from edgecomp.train import predict
    return float((predict(model, x).argmax(-1) == y).mean())


def _stop_at(x, y, target):
    """A Keras callback that ends training after the first epoch whose accuracy on ``(x, y)``
    reaches ``target``; it keeps the epochs run and the last accuracy."""
    import keras

    class StopAt(keras.callbacks.Callback):
        epochs, accuracy = 0, None

        def on_epoch_end(self, epoch, logs=None):
            self.epochs, self.accuracy = epoch + 1, _accuracy(self.model, x, y)
            self.model.stop_training = self.accuracy >= target

    return StopAt()


def _copy(model):
    import keras
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def export_one(model, fmt: str, variant: str, path: Path, x_cal, x, y) -> dict:
    from edgecomp.errors import first_line
    from exporters import ParityError, export_and_check

    entry = {"format": fmt, "variant": variant, "file": path.name}
    tick = time.time()
    try:
        art = export_and_check(model, fmt, variant, path, calibration=x_cal, check_x=x, check_y=y)
        entry.update({"bytes": art.bytes, "passed": True, "parity": art.parity})
    except ParityError as exc:   # the figures (and the near-tie diagnosis) are the row
        entry.update({"passed": False, "parity": exc.figures, "error": first_line(exc, default="")})
    except Exception as exc:  # noqa: BLE001 - a converter refusal is a row, not the end of the family
        entry.update({"passed": False, "error": f"{type(exc).__name__}: {first_line(exc, default='')}"})
    entry["seconds"] = round(time.time() - tick, 1)
    return entry


def run_family(family: str, cfg: dict, work: Path, log) -> dict:
    import keras

    from edgecomp import store, train
    from edgecomp.graph import count_macs
    from edgecomp.pipeline import compress
    from runtime_bench import bench_files

    keras.utils.set_random_seed(0)
    start, row = time.time(), {"family": family, "constructor": FAMILIES[family][0],
                               "options": FAMILIES[family][1], "input": FAMILIES[family][2]}
    model = build(family)
    for layer in model._flatten_layers(include_self=False):   # noqa: SLF001 - nested blocks too
        if isinstance(layer, keras.layers.BatchNormalization):
            # keras.applications' 0.99-0.999: moving statistics settle only after thousands of steps,
            # and these runs take ~160 (the zoo's nets use 0.9 for the same reason).
            layer.momentum = 0.9
    row.update({"params": int(model.count_params()), "macs": int(count_macs(model)[1]), "stages": {},
                "normalization_layers": sum(isinstance(layer, keras.layers.Normalization)   # the ONNX quirk's case
                                            for layer in model._flatten_layers(include_self=False))})  # noqa: SLF001
    log(f"built: {row['params']:,} params, {row['macs']:,} MACs, input {row['input']}")
    trained = family in cfg["train"]
    # A trained family learns from n_fit samples (HELD_OUT more decide when it has learned), and
    # compression fine-tunes on them: on n_train samples a pruned MobileNetV2 (alpha 0.35) lost ~20
    # points, and a degraded net's int8 file then flips its narrowed margins.
    ds = data(family, cfg["n_fit"] + HELD_OUT if trained else cfg["n_train"], cfg["n_test"])
    x, y = ds.x_test, ds.y_test
    lap = [time.time()]

    def stage(name):
        row["stages"][name] = round(time.time() - lap[0], 1)
        lap[0] = time.time()
        log(f"{name} done in {row['stages'][name]} s")

    row["trained_steps"] = 0
    if trained:
        x_val, y_val = ds.x_train[-HELD_OUT:], ds.y_train[-HELD_OUT:]
        ds.x_train, ds.y_train = ds.x_train[:-HELD_OUT], ds.y_train[:-HELD_OUT]
        epochs = max(1, round(cfg["train_steps"] * 32 / len(ds.x_train)))
        stop = _stop_at(x_val, y_val, cfg["train_target"])
        train.fit(model, ds.x_train, ds.y_train, epochs=epochs, batch_size=32, verbose=0, learning_rate=2e-3,
                  callbacks=[stop])
        # Then anneal (cosine decay to 0): a net stopped at full rate has settled neither its weights
        # nor its BatchNorm statistics, and its int8 files flipped 3-5 of 256 answers (Dec 2026).
        train.fit(model, ds.x_train, ds.y_train, epochs=cfg["anneal_epochs"], batch_size=32, verbose=0,
                  learning_rate=2e-3, lr_schedule="cosine")
        row["trained_steps"] = (stop.epochs + cfg["anneal_epochs"]) * -(-len(ds.x_train) // 32)
        row["held_out_accuracy"] = stop.accuracy
    row["accuracy"] = _accuracy(model, x, y)
    stage("train")

    fine = cfg["fine_tune_epochs"] if trained else 0   # untrained nets: prune and share only (nothing to keep)
    common = {"rate": cfg["rate"], "fine_tune_epochs": fine, "batch_size": 32, "verbose": 0,
              "learning_rate": cfg["fine_tune_lr"], "lr_schedule": "cosine"}
    weights = None
    for method in ("seed", "deep"):
        source = _copy(model) if method == "seed" else model
        extra = {"centroid_epochs": fine} if method == "deep" else {}
        result = compress(source, (ds.x_train, ds.y_train), method=method, info={"model": family}, **common, **extra)
        path = work / f"{family}_{method}.ecz"
        result.save(path)
        weights = sum(r["params"] for r in result.report)
        entry = {"container_bytes": len(result.container), "ratio": round(4 * weights / len(result.container), 2)}
        try:
            decoded = store.decode_model(path.read_bytes())
            entry.update({"decoded": True, "accuracy": _accuracy(decoded, x, y)})
        except Exception as exc:  # noqa: BLE001 - a refused container is a finding
            from edgecomp.errors import first_line
            entry.update({"decoded": False, "error": f"{type(exc).__name__}: {first_line(exc, default='')}"})
            decoded = None
        row[method] = entry
        stage(f"compress_{method}")
    row["weights"] = int(weights)
    row["artifacts"] = []
    row["exported_from"] = "decoded deep container"
    if decoded is None:   # a decoder finding: the exporters are still checked, on the in-memory compressed model
        row["error"] = "deep container not decoded: " + row["deep"]["error"]
        decoded, row["exported_from"] = result.model, "in-memory compressed model (container not decoded)"
    for fmt, variant in EXPORTS:
        entry = export_one(decoded, fmt, variant, work / f"{family}_{variant}.{fmt}", ds.x_train[:128], x, y)
        row["artifacts"].append(entry)
        p = entry.get("parity") or {}
        log(f"{fmt} {variant}: {'ok' if entry['passed'] else 'FAILED ' + entry.get('error', '')[:300]} "
            f"(top-1 {p.get('top1_agreement')}, max diff {p.get('max_abs_diff')}, {entry['seconds']} s)")
    for a in [a for a in row["artifacts"] if a["variant"] == "int8" and not a["passed"]]:
        if trained:   # int8 out of parity: are 16-bit activations enough? (int8 weights, int16 activations)
            fmt = a["format"]
            entry = export_one(decoded, fmt, "int16x8", work / f"{family}_int16x8.{fmt}", ds.x_train[:128], x, y)
            row["artifacts"].append(entry)
            log(f"{fmt} int16x8: {'ok' if entry['passed'] else 'FAILED ' + entry.get('error', '')[:200]}")
    stage("export")
    files = [work / a["file"] for a in row["artifacts"] if a["passed"]]
    if files:
        recs = bench_files(files, x, y, threads=1, progress=False, runs=cfg["runs"], warmup=3, min_time_s=0.2,
                           isolate=False)
        by_name = {Path(r["file"]).name: r for r in recs}
        for a in row["artifacts"]:
            r = by_name.get(a["file"], {})
            a.update({"median_ms": r.get("median_ms"), "bench_error": r.get("error")})
    stage("bench")
    row["seconds"] = round(time.time() - start, 1)
    return row


def worker(family: str, args) -> int:
    from edgecomp import io

    work = io.ensure_dir(Path(args.work))
    cfg = settings(args)
    log = lambda msg: print(f"[{family}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    row = run_family(family, cfg, work, log)
    row["settings"] = cfg
    io.write_json(work / f"{family}.json", row)
    return 0


# -- the run: one process per family ------------------------------------------------------

#: Settings that only the trained families use: an untrained family's row holds without them.
TRAINING_SETTINGS = ("train_steps", "train_target", "n_fit", "fine_tune_epochs", "fine_tune_lr", "anneal_epochs")


def relevant(cfg: dict, family: str) -> dict:
    """The settings ``family``'s row depends on (``--reuse`` takes a row made with the same ones)."""
    trained = family in cfg.get("train", ())
    return {k: v for k, v in cfg.items() if k != "train" and (trained or k not in TRAINING_SETTINGS)} | {
        "trained": trained}


def run_isolated(family: str, args, work: Path) -> dict:
    """Run one family in a fresh process (stderr passes through as progress); a crash or a timeout is a row."""
    result = work / f"{family}.json"
    if args.reuse and result.is_file():
        row = json.loads(result.read_text())
        if relevant(row.get("settings", {}), family) == relevant(settings(args), family):
            print(f"[{family}] reused {result}", file=sys.stderr, flush=True)
            return {**row, "reused": True}
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", family, *sys_args(args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    tick = time.time()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None, env=env, timeout=args.timeout, check=False)
        code = proc.returncode
    except subprocess.TimeoutExpired:   # subprocess.run kills the child (SIGKILL)
        code = None
    if code == 0 and result.is_file():
        return json.loads(result.read_text())
    what = f"timed out after {args.timeout:.0f} s" if code is None else f"worker exited with code {code}"
    ctor, options, side = FAMILIES[family]
    return {"family": family, "constructor": ctor, "options": options, "input": side, "artifacts": [],
            "error": what, "seconds": round(time.time() - tick, 1)}


def sys_args(args) -> list[str]:
    out = ["--train", args.train, "--rate", str(args.rate), "--work", args.work,
           "--fine-tune-epochs", str(args.fine_tune_epochs)]
    out += ["--train-target", str(args.train_target), "--fine-tune-lr", str(args.fine_tune_lr),
            "--anneal-epochs", str(args.anneal_epochs)]
    for key in ("train_steps", "n_fit", "n_train", "n_test", "runs"):
        if getattr(args, key) is not None:
            out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out + (["--quick"] if args.quick else [])


def parse_families(text: str) -> list[str]:
    from edgecomp.errors import EdgecompError

    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAMILIES]
    if unknown or not names:
        raise EdgecompError(f"unknown famil(ies): {', '.join(unknown) or '(none given)'}",
                            fix=f"use some of: {', '.join(FAMILIES)}")
    return names


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker(args.worker, args)
    import platform

    from edgecomp import io
    from edgecomp.errors import EdgecompError

    from bench_applications_md import counts, markdown, plot

    if args.report_only:
        report = json.loads((Path(args.out) / "applications.json").read_text())
        report["counts"] = counts(report["families"])
        io.write_json(Path(args.out) / "applications.json", report)
        io.write_text(Path(args.out) / "applications.md", markdown(report["families"], report["meta"]))
        plot(report["families"], Path(args.out) / "applications.png")
        return 0
    try:
        families = parse_families(args.families)
        parse_families(args.train) if args.train else None
    except EdgecompError as exc:
        print(f"bench_applications: error: {exc}", file=sys.stderr)
        return 2
    out, work = io.ensure_dir(args.out), io.ensure_dir(args.work)
    meta = {"settings": settings(args), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join(["python scripts/bench_applications.py", *(argv if argv is not None else sys.argv[1:])]),
            "load_before": round(os.getloadavg()[0], 2), "versions": versions()}
    start, rows = time.time(), []
    for i, family in enumerate(families, 1):
        print(f"== [{i}/{len(families)}] {family} ({time.time() - start:.0f} s so far)", file=sys.stderr, flush=True)
        if args.budget_min is not None and time.time() - start > 60 * args.budget_min:
            ctor, options, side = FAMILIES[family]
            rows.append({"family": family, "constructor": ctor, "options": options, "input": side, "artifacts": [],
                         "error": f"not run: the run's {args.budget_min:g} min budget was spent"})
        else:
            rows.append(run_isolated(family, args, work))
        meta.update({"seconds": round(time.time() - start, 1), "load_after": round(os.getloadavg()[0], 2)})
        io.write_json(out / "applications.json", {"meta": meta, "families": rows, "counts": counts(rows)})
        io.write_text(out / "applications.md", markdown(rows, meta))
    plot(rows, out / "applications.png")
    print(markdown(rows, meta))
    print(f"wrote {out / 'applications.json'}, applications.md and applications.png in {meta['seconds']} s")
    c = counts(rows)
    return 0 if c["fp32"][0] == c["fp32"][1] else 1


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())
