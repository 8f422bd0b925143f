"""The ``edgecomp`` command.

    edgecomp run                                 # the whole pipeline on Fashion-MNIST
    edgecomp compress MODEL.keras --data fashion_mnist --compress-rate 0.8 -o model.ecz
    edgecomp evaluate model.ecz --data fashion_mnist
    edgecomp export model.ecz --format tflite,onnx --variants fp32,int8 --data fashion_mnist -o out/
    edgecomp bench out/ --data fashion_mnist

Expected mistakes print one line (``edgecomp: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")

from edgecomp import cli_emulated  # noqa: E402
from edgecomp.cli_options import _add_compression, _positive, _rate, add_distribute, recipe_from_args  # noqa: E402


def _size(text: str):
    return None if text in ("all", "0") else _positive(text)


def _add_data(p, default="fashion_mnist"):
    p.add_argument("--data", default=default, help="dataset name (fashion_mnist, cifar10/c10, cifar100/c100, ...), "
                   "or your own data: a .npz (x_train, y_train, x_test, y_test) or a folder of images per class")
    p.add_argument("--scale", type=float, default=None, help="own data: multiply inputs by this (folders: 1/255)")
    p.add_argument("--mean", default=None, help="own data: per-channel mean to subtract, e.g. 0.5,0.5,0.5")
    p.add_argument("--std", default=None, help="own data: per-channel std to divide by")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files (else $EDGECOMP_DATA, "
                   "then the system location, then a download)")
    p.add_argument("--test-size", type=_size, default=None, help="test samples to use (default: all)")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgecomp", description="Deep Compression for Keras 3 CNNs, "
                                     "with TFLite/ONNX export and runtime benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="train a baseline, compress it with the seed's method and with edgecomp's best "
                       "recipe (the compression flags change it: edgecomp.run.best_recipe), store, decode, export "
                       "and benchmark, side by side")
    p.add_argument("--model", default="vgg", help="registered model name (default: vgg)")
    p.add_argument("--width", type=float, default=1.0, help="channel-width multiplier of the model (default: 1.0)")
    _add_data(p)
    _add_compression(p, defaults=False)
    p.add_argument("--seed-rate", type=lambda t: None if t == "none" else _rate(t), default=0.8,
                   help="compare with the seed's method at this rate ('none': leave it out) (default: 0.8)")
    p.add_argument("--epochs", type=_positive, default=None,
                   help="baseline training epochs, cosine learning rate (default: edgecomp.run.RunConfig's, 5)")
    p.add_argument("--train-size", type=_size, default=30000, help="training samples to use (default: 30000; 'all')")
    p.add_argument("--latency-runs", type=_positive, default=200, help="timed runs per artifact (default: 200)")
    p.add_argument("--threads", type=_positive, default=1, help="runtime threads for latency (default: 1)")
    p.add_argument("-o", "--out", default="runs/latest", help="output folder (default: runs/latest)")
    p.add_argument("--resume", action="store_true",
                   help="continue after the last finished stage in --out (same flags as the first run)")

    p = sub.add_parser("compress", help="prune, fine-tune, share and store a .keras model as a .ecz container")
    p.add_argument("model", help="a .keras file")
    _add_data(p)
    _add_compression(p, defaults=False)
    p.add_argument("--train-size", type=_size, default=None)
    p.add_argument("--trust-model", action="store_true", help="allow a model that runs code on load (Lambda)")
    p.add_argument("-o", "--out", required=True, help="container to write (.ecz)")
    p.add_argument("--report", default=None, help="also write the per-layer report as JSON here")
    add_distribute(p)
    g = p.add_argument_group("budgeted search (per-layer rates and bits from sensitivity curves; by default method deep, "
                             "iterative:2, every layer planned: edgecomp.budget.DEFAULT_OPTIONS)")
    g.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="points of accuracy the search may lose on held-out training data")
    g.add_argument("--target-ratio", type=float, default=None, help="aim at this size ratio against fp32 instead")
    g.add_argument("--val-size", type=_positive, default=2000,
                   help="the last N training samples, held out for the search (the model should not have been "
                        "trained on them, or the held-out accuracy is training accuracy)")

    p = sub.add_parser("analyze", help="per-layer sensitivity to pruning and weight sharing (no fine-tuning)")
    p.add_argument("model", help="a .keras file")
    _add_data(p)
    p.add_argument("--val-size", type=_positive, default=2000, help="held-out training samples to measure on")
    p.add_argument("--trust-model", action="store_true")
    p.add_argument("-o", "--out", required=True, help="output folder for sensitivity.json/.md/.png")

    p = sub.add_parser("evaluate", help="decode a .ecz container (or load a .keras file) and report test accuracy")
    p.add_argument("model", help="a .ecz or .keras file")
    _add_data(p)

    p = sub.add_parser("export", help="export a .keras or .ecz model to TFLite/ONNX, each checked for parity")
    p.add_argument("model", help="a .ecz or .keras file")
    _add_data(p)
    p.add_argument("--format", default="tflite,onnx", help="comma-separated formats (default: tflite,onnx)")
    p.add_argument("--variants", default="fp32,int8",
                   help="comma-separated variants, each applied to every --format that offers it (default: fp32,int8)")
    p.add_argument("--parity-size", type=_positive, default=256, help="test samples for the parity check")
    p.add_argument("--trust-model", action="store_true")
    p.add_argument("--check-on", default=None, metavar="TARGETS",
                   help="also run each written file on these emulated targets (arm64-emulated, "
                        "arm64-emulated-a55) and check parity there against Keras and x86")
    p.add_argument("-o", "--out", required=True, help="output folder")

    p = sub.add_parser("bench", help="latency, size, accuracy and parity of model files on target "
                       "profiles, each measured in a fresh process")
    p.add_argument("paths", nargs="+", help="files or folders of .keras, .ecz, .tflite, .onnx")
    _add_data(p)
    p.add_argument("--target", default="desktop",
                   help="comma-separated profiles: desktop (all cores unless --threads), mobile-big / "
                        "mobile-little (1 thread pinned to the fastest / slowest core), android (a "
                        "phone over adb running benchmark_model), arm64-emulated / arm64-emulated-a55 "
                        "(parity and kernels under qemu, no latency) (default: desktop)")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts for targets that do not fix them "
                        "(default: desktop all cores, android 1)")
    p.add_argument("--batch", type=_positive, default=1, help="latency batch size (default: 1)")
    p.add_argument("--runs", type=_positive, default=200, help="minimum timed runs per row (default: 200)")
    p.add_argument("--warmup", type=_positive, default=10, help="untimed warm-up runs (default: 10)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="minimum seconds of timed runs per row (default: 1.0)")
    p.add_argument("--task", choices=("classification", "segmentation", "none"), default="classification",
                   help="accuracy to report: top-1, or pixel accuracy + mean IoU (default: classification)")
    p.add_argument("--reference", default=None,
                   help="a .keras/.ecz model to compare outputs with (max abs diff, top-1 agreement)")
    p.add_argument("-o", "--out", default="runs/bench", help="output folder for bench.json/csv/md and plots")
    cli_emulated.add_setup_parser(sub)
    return parser


def _load_any_model(path: str, trust: bool = False):
    from edgecomp import store
    from edgecomp.errors import EdgecompError
    from edgecomp.models import load_keras_model

    if path.endswith(".ecz"):
        return store.load_compressed(path)
    if path.endswith(".keras"):
        return load_keras_model(path, trust=trust)
    raise EdgecompError(f"cannot tell what {path} is", fix="pass a .keras model or a .ecz container")


def _data(args):
    from edgecomp.data import load_dataset
    options = {k: getattr(args, k) for k in ("scale", "mean", "std") if getattr(args, k, None) is not None}
    return load_dataset(args.data, data_dir=args.data_dir, **options).take(getattr(args, "train_size", None),
                                                                             args.test_size)


def cmd_run(args):
    from edgecomp.run import RunConfig, best_recipe, run_job
    recipe = _recipe(args, base=best_recipe())
    run_job(RunConfig(model=args.model, model_options={"width": args.width} if args.width != 1.0 else {},
                      data=args.data, data_dir=args.data_dir, recipe=recipe, seed_rate=args.seed_rate,
                      **({"epochs": args.epochs} if args.epochs is not None else {}), train_size=args.train_size,
                      test_size=args.test_size, latency_runs=args.latency_runs, threads=args.threads, out=args.out,
                      command=" ".join(["edgecomp", *sys.argv[1:]]), resume=args.resume))


def _recipe(args, base=None):
    """The recipe of the compression flags; a latency target's profile is checked here, before any work."""
    recipe = recipe_from_args(args, base)
    if recipe.structured is not None and recipe.structured.target_latency is not None:
        import runtime_bench
        runtime_bench.get_target(recipe.structured.profile)
    return recipe


def _latency_measure(recipe, ds):
    """The measure a structured latency target searches against (None without one)."""
    if recipe.structured is None or recipe.structured.target_latency is None:
        return None
    from exporters.latency import latency_measure
    return latency_measure(recipe.structured.profile, ds.x_test[:1])


def _checkpoints(args, recipe):
    """``--checkpoints DIR`` (and ``--resume``): the stage checkpoints of a resumable compress."""
    from edgecomp.errors import EdgecompError
    if args.checkpoints is None:
        if args.resume:
            raise EdgecompError("--resume needs --checkpoints DIR, the folder the first run saved its stages in",
                                fix="add --checkpoints DIR")
        return None
    from edgecomp.checkpoint import Checkpoints
    settings = {k: v for k, v in recipe.get_config().items() if k != "distribute"}  # resumable on any layout
    return Checkpoints(args.checkpoints, settings={"recipe": settings, "model": os.path.abspath(args.model),
                                                   "data": args.data, "train_size": args.train_size},
                       resume=args.resume)


def cmd_compress(args):
    from edgecomp import distribute, io, train
    from edgecomp.models import load_keras_model
    from edgecomp.pipeline import compress

    budget = args.max_accuracy_drop is not None or args.target_ratio is not None
    if budget:
        from edgecomp.budget import default_recipe
    recipe = _recipe(args, default_recipe() if budget else None)  # every flag checked before anything loads
    # before TensorFlow runs anything: TF_CONFIG, the peers, the global batch
    distribute.prepare(recipe.distribute, recipe.fine_tune.batch_size)
    chief = distribute.is_chief()
    if chief:
        io.ensure_dir(os.path.dirname(os.path.abspath(args.out)))
    checkpoints = _checkpoints(args, recipe)
    model = load_keras_model(args.model, trust=args.trust_model)
    fp32_bytes = 4 * model.count_params()
    ds = _data(args)
    train.check_model_data(model, ds)
    from edgecomp.pruning import unsupported_layers
    for name in unsupported_layers(model):
        print(f"note: layer {name} has weights edgecomp can't prune; left dense "
              "(register its kind with edgecomp.pruning.register_prunable)", file=sys.stderr)
    if budget:
        from edgecomp.budget import compress_within_budget
        result, _ = compress_within_budget(model, ds, recipe, max_accuracy_drop=args.max_accuracy_drop,
                                           target_ratio=args.target_ratio, val_size=args.val_size,
                                           measure=_latency_measure(recipe, ds))
    else:
        result = compress(model, ds, recipe, measure=_latency_measure(recipe, ds), checkpoints=checkpoints)
    if chief:
        result.save(args.out)
    if args.report and chief:
        io.write_json(args.report, {"settings": result.settings, "bytes": result.bytes, "fp32_bytes": fp32_bytes,
                                    "layers": result.report, "structured": result.structured, "search": result.search,
                                    "history": result.history, "qat": result.qat, "distribute": result.distribute})
    acc = train.evaluate(result.decode(), ds.x_test, ds.y_test)
    from edgecomp.report import text_table
    rows = [[r["name"], str(r["shape"]), f"{r['params']:,}", f"{r['macs']:,}" if "macs" in r else "",
             f"{r['nonzeros']:,}", f"{r['sparsity']:.1%}", r["method"], str(r["bits"]), f"{r['bytes']:,}",
             f"{r['bytes'] / result.bytes:.1%}",
             "  ".join(f"{n} {b / result.bytes:.1%}" for n, b in r["streams"].items())] for r in result.report]
    print(text_table(["tensor", "shape", "params", "layer MACs", "nonzeros", "sparsity", "method", "bits", "bytes",
                      "share", "share per stream"], rows))
    print(f"model: {result.params:,} params, {result.macs:,} MACs per inference")
    totals = {}
    for r in result.report:
        for n, b in r["streams"].items():
            totals[n] = totals.get(n, 0) + b
    print("streams: " + ", ".join(f"{n} {b:,} B ({b / result.bytes:.1%})" for n, b in totals.items())
          + f"; headers {result.bytes - sum(totals.values()):,} B")
    st = result.structured
    if st:
        print(f"structured: MACs {st['macs_before']:,} -> {st['macs_after']:,} ({st['macs_after'] / st['macs_before']:.1%}), "
              f"params {st['params_before']:,} -> {st['params_after']:,}")
        for g in st["kept_whole"]:
            print(f"  kept whole: {g['name']} ({'; '.join(g['reasons'])})")
    if result.qat:
        print(f"QAT: {len(result.qat['ranges'])} activation ranges trained (stored in the container; its int8 "
              "exports use them)")
        for f in result.qat["float_layers"]:
            print(f"  left float: {f['layer']} ({f['kind']}): {f['why']}")
    if result.distribute:
        _print_distribute(result)
    print(f"\n{'wrote' if chief else 'computed (the chief writes)'} {args.out}: {result.bytes:,} bytes "
          f"({fp32_bytes / result.bytes:.1f}x smaller than the input model's fp32 weights); decoded test accuracy "
          f"{acc:.2%}" + (" (int8 simulated)" if result.qat else ""))


def _print_distribute(result):
    import hashlib

    from edgecomp import distribute
    d = result.distribute
    if d["runs"]:
        rates = sorted({str(r["learning_rate"]) for r in d["runs"]})
        batches = sorted({(r["global_batch"], r["per_replica_batch"]) for r in d["runs"]})
        where = ("one process" if d["strategy"] == "none" else
                 f"{d['strategy']} on {d['replicas']} replicas ({d['workers']} worker(s))")
        print(f"training: {where}; global batch " + ", ".join(f"{g} ({b} per replica)" for g, b in batches)
              + f"; learning rate {', '.join(rates)}; {d['samples']:,} samples in {d['seconds']:.1f} s "
              f"({d['samples_per_s'] or 0:.0f} samples/s)")
    if "mask_check" in d:
        m = d["mask_check"]
        print(f"mask check on {d['worker']}: {m['nonzero_pruned']} pruned weights not 0 after {m['steps']} steps "
              "(every local replica)")
    if d["strategy"] != "none":
        print(f"digest on {d['worker']}: weights sha256 {distribute.digest(result.model)[:16]}, "
              f"container sha256 {hashlib.sha256(result.container).hexdigest()[:16]}")


def cmd_analyze(args):
    from edgecomp import io, sensitivity, train
    from edgecomp.errors import EdgecompError
    from edgecomp.models import load_keras_model

    out = io.ensure_dir(args.out)
    model = load_keras_model(args.model, trust=args.trust_model)
    ds = _data(args)
    train.check_model_data(model, ds)
    if len(ds.x_train) < args.val_size:
        raise EdgecompError(f"--val-size {args.val_size} is more than the {len(ds.x_train)} training samples",
                            fix="pass a smaller --val-size")
    table = sensitivity.analyze(model, ds.x_train[-args.val_size:], ds.y_train[-args.val_size:])
    io.write_json(out / "sensitivity.json", table)
    io.write_text(out / "sensitivity.md", sensitivity.markdown(table))
    io.write_bytes(out / "sensitivity.png", sensitivity.plot(table))
    print(sensitivity.markdown(table))
    print(f"wrote {out}/sensitivity.json, sensitivity.md, sensitivity.png")


def cmd_evaluate(args):
    from edgecomp import train
    model = _load_any_model(args.model)
    ds = _data(args)
    train.check_model_data(model, ds)
    print(f"{args.model}: test accuracy {train.evaluate(model, ds.x_test, ds.y_test):.2%} "
          f"on {len(ds.x_test)} samples of {ds.name}")


def cmd_export(args):
    import exporters
    from edgecomp import io, train
    from edgecomp.errors import EdgecompError
    from edgecomp.report import text_table

    from exporters.variants import parse_variants
    variants, skipped = parse_variants(args.format, args.variants)   # one-line errors, before the model loads
    check_on = cli_emulated.emulated_targets(args.check_on)
    out = io.ensure_dir(args.out)
    model = _load_any_model(args.model, trust=args.trust_model)
    ds = _data(args)
    train.check_model_data(model, ds)
    stem = os.path.splitext(os.path.basename(args.model))[0]
    arts, failed = [], []
    for v in variants:  # a variant that misses parity is not written, and the others are still tried
        try:
            arts.append(exporters.export_and_check(model, v.format, v, out / v.filename(stem),
                                                   calibration=ds.x_train[:200], check_x=ds.x_test[:args.parity_size],
                                                   check_y=ds.y_test[:args.parity_size]))
        except exporters.ParityError as exc:
            failed.append({"format": v.format, "variant": v.name, "file": v.filename(stem), "error": str(exc),
                           "parity": exc.figures})
    io.write_json(out / "export.json", {"model": args.model, "artifacts": [a.to_dict() for a in arts],
                                        "failed_parity": failed, "skipped": skipped})
    rows = [[a.path.name, a.format, a.variant, f"{a.bytes:,}", f"{a.gzip_bytes:,}",
             f"{a.parity['top1_agreement']:.2%}", f"{a.parity['max_abs_diff']:.1e}",
             str(a.needs.get("resolver") or a.needs.get("optimization") or "")] for a in arts]
    rows += [[f["file"] + " (not written)", f["format"], f["variant"], "-", "-",
              f"{f['parity'].get('top1_agreement', float('nan')):.2%}", f"{f['parity'].get('max_abs_diff', float('nan')):.1e}",
              "parity FAIL"] for f in failed]
    print(text_table(["artifact", "format", "variant", "bytes", "gzip bytes", "top-1 agree", "max abs diff",
                      "runs with"], rows))
    if skipped:
        print("skipped (format lacks the variant): " + ", ".join(f"{x['format']}:{x['variant']}" for x in skipped))
    print(f"\nwrote {out}/export.json")
    if check_on and arts:
        n = args.parity_size
        try:
            cli_emulated.check_artifacts(model, arts, ds.x_test[:n], ds.y_test[:n], check_on, out)
        except EdgecompError as exc:
            if not failed:
                raise
            print(f"edgecomp: error: {exc}", file=sys.stderr)
    if failed:
        raise EdgecompError(f"{len(failed)} of {len(variants)} variant(s) missed the parity gate and were not written "
                            f"({', '.join(f['format'] + ':' + f['variant'] for f in failed)}); first: {failed[0]['error']}",
                            fix=f"see failed_parity in {out}/export.json; the others were written")


def cmd_bench(args):
    import runtime_bench
    from pathlib import Path
    from edgecomp import io
    from edgecomp.errors import EdgecompError
    from edgecomp.report import text_table

    suffixes = (".tflite", ".onnx", ".keras", ".ecz")
    files = []
    for p in args.paths:
        path = Path(p)
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        else:
            files.append(path)  # a missing or unreadable file becomes an error row
    if not files:
        raise EdgecompError("no .keras, .ecz, .tflite or .onnx files found in the given paths",
                            fix="check the paths")
    targets = [runtime_bench.get_target(t) for t in args.target.split(",") if t.strip()]
    threads = None
    if args.threads is not None:
        try:
            threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
        except ValueError:
            raise EdgecompError(f"--threads must be comma-separated numbers, got {args.threads!r}",
                                fix="e.g. --threads 1,2") from None
        if not threads or min(threads) < 1:
            raise EdgecompError(f"--threads must be 1 or more, got {args.threads!r}", fix="e.g. --threads 1,2")
    out = io.ensure_dir(args.out)
    ds = _data(args)
    records = runtime_bench.bench_files(
        files, ds.x_test, ds.y_test, targets=targets, threads=threads, batch=args.batch, runs=args.runs,
        warmup=args.warmup, min_time_s=args.min_time, task=None if args.task == "none" else args.task,
        reference=args.reference)
    paths = runtime_bench.write_report(records, out)
    cell = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    rows = [[r["name"], r["target"] or "", str(r["threads"]), cell(r["median_ms"], ".4g"),
             cell(r["p90_ms"], ".4g"), cell(r["peak_rss_mb"], ".1f"), cell(r["accuracy"], ".4f"),
             (r["error"] or "")[:60]] for r in records]
    print(text_table(["artifact", "target", "threads", "median ms", "p90 ms", "peak MB", "accuracy", "error"],
                     rows))
    failed = sum(1 for r in records if r["error"])
    arm_failed = cli_emulated.print_bench_checks(records)
    print(f"\n{len(records)} rows ({failed} with errors); wrote {paths['json']}, {paths['csv'].name}, "
          f"{paths['md'].name}, {paths['latency_png'].name}, {paths['accuracy_png'].name}")
    if arm_failed:
        raise EdgecompError(f"{arm_failed} file(s) missed parity on the emulated arm64 target (lines above)",
                            fix=f"see the emulation field in {paths['json']}")


COMMANDS = {"run": cmd_run, "compress": cmd_compress, "analyze": cmd_analyze, "evaluate": cmd_evaluate, "export": cmd_export,
            "bench": cmd_bench, "setup": cli_emulated.cmd_setup}


def _stop_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt, so both stop through the same clean path."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        pass


def main(argv=None) -> int:
    from edgecomp.errors import EdgecompError

    args = build_parser().parse_args(argv)
    _stop_on_sigterm()
    try:
        try:
            COMMANDS[args.command](args)
        except RuntimeError as exc:
            # TF 2.21: Ctrl-C or SIGTERM while TensorFlow traces a function reaches Python as pybind11's
            # "MISMATCH of original and normalized active exception types ... REPLACED BY KeyboardInterrupt"
            if "REPLACED BY KeyboardInterrupt" in str(exc):
                raise KeyboardInterrupt from None
            raise
    except EdgecompError as exc:
        print(f"edgecomp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        hint = ""
        if args.command == "run":
            hint = f"; resume with: edgecomp run --resume -o {args.out} (and the same flags)"
        print(f"edgecomp: interrupted; every finished stage is saved and nothing is half-written{hint}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
