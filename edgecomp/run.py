"""The main job, end to end: train -> prune -> fine-tune -> quantize -> store -> decode
-> export -> benchmark, with one table and a report folder.

    >>> report = run_job(out="runs/latest")      # Fashion-MNIST, VGG-like net, rate 0.8

Writes into ``out``: ``baseline.keras``, ``compressed.ecz``, the exported ``.tflite`` /
``.onnx`` files, ``report.json``, ``report.md`` and ``size_vs_accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from edgecomp import io, store, train
from edgecomp.codec import seed_index
from edgecomp.errors import EdgecompError
from edgecomp.recipe import Recipe


@dataclasses.dataclass
class RunConfig:
    """Every knob of :func:`run_job`; the defaults finish in a few minutes on 2 cores."""

    model: str = "vgg"
    model_options: dict = dataclasses.field(default_factory=dict)
    data: str = "fashion_mnist"
    data_dir: str | None = None
    recipe: Recipe = dataclasses.field(default_factory=Recipe)
    epochs: int = 2
    train_size: int | None = 30000
    test_size: int | None = None
    batch_size: int = 64
    calibration_size: int = 200
    parity_size: int = 256
    latency_runs: int = 200
    threads: int = 1
    variants: tuple[str, ...] = ("tflite:fp32", "tflite:int8", "onnx:fp32")
    out: str = "runs/latest"
    seed: int = 0
    verbose: int = 1
    command: str = "edgecomp run"
    resume: bool = False

    def fingerprint(self) -> dict:
        """The settings that decide the results (a resumed run must match them)."""
        skip = {"verbose", "command", "resume", "latency_runs", "threads", "out", "recipe"}
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {**out, "recipe": self.recipe.get_config()}


def _log(cfg: RunConfig, msg: str):
    if cfg.verbose:
        print(f"[edgecomp] {msg}", flush=True)


def seed_format_bytes(weights: dict[str, np.ndarray], pruned: set[str]) -> int:
    """What the seed's own format needs: 2 bytes per kept weight and filler, 4-byte scale
    per pruned tensor, float32 for every dense tensor."""
    total = 0
    for name, w in weights.items():
        total += seed_index.seed_storage_bytes(w) + 4 if name in pruned else 4 * w.size
    return total


def quantization_error_steps(before: dict, after: dict, pruned: set[str]) -> dict:
    """Worst error of the decoded weights, in units of each tensor's int8 step, and whether
    every pruned weight came back exactly 0."""
    worst, zeros_exact = 0.0, True
    for name in pruned:
        w, d = before[name], after[name]
        step = float(np.max(np.abs(w))) / 127 or 1.0
        worst = max(worst, float(np.max(np.abs(w - d))) / step)
        zeros_exact &= bool(np.all(d[w == 0] == 0))
    return {"max_error_in_steps": worst, "pruned_exact_zero": zeros_exact}


def run_job(cfg: RunConfig | None = None, **overrides) -> dict:
    """Run the whole pipeline; returns the report dict (also written to ``cfg.out``)."""
    import exporters
    import runtime_bench
    from edgecomp.data import load_dataset
    from edgecomp.models import build_model
    from edgecomp.report import write_run_report

    from edgecomp.models import model_names

    cfg = dataclasses.replace(cfg or RunConfig(), **overrides)
    if cfg.model not in model_names():  # fail before the data is loaded
        raise EdgecompError(f"unknown model '{cfg.model}'", fix=f"use one of: {', '.join(model_names())}")
    out = io.ensure_dir(cfg.out)
    started = time.time()

    _log(cfg, f"loading {cfg.data}")
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir).take(cfg.train_size, cfg.test_size).check()
    _log(cfg, f"{len(ds.x_train)} train / {len(ds.x_test)} test samples of {ds.input_shape} from {ds.source}")

    from edgecomp.checkpoint import Checkpoints
    from edgecomp.models import load_keras_model

    ck = Checkpoints(out / "checkpoints", cfg.fingerprint(), resume=cfg.resume)
    base_path = out / "baseline.keras"
    if ck.done("baseline") and base_path.is_file():
        model = load_keras_model(base_path)
        base_acc = ck.info("baseline")["accuracy"]
        _log(cfg, f"resumed: baseline from {base_path} ({base_acc:.2%})")
    else:
        import keras
        keras.utils.set_random_seed(cfg.seed)  # the initial weights
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, **cfg.model_options)
        _log(cfg, f"training {cfg.model} ({model.count_params():,} params) for {cfg.epochs} epoch(s)")
        train.fit(model, ds.x_train, ds.y_train, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  seed=cfg.seed, verbose=cfg.verbose)
        base_acc = train.evaluate(model, ds.x_test, ds.y_test)
        with io.atomic_path(base_path) as tmp:
            model.save(tmp)
        ck.mark("baseline", {"accuracy": base_acc})
        _log(cfg, f"baseline test accuracy {base_acc:.2%}")
    base_weights = store.model_weights(model)

    # Baseline fp32 TFLite: the reference size for the compressed artifacts.
    calib = ds.x_train[:cfg.calibration_size]
    check_x, check_y = ds.x_test[:cfg.parity_size], ds.y_test[:cfg.parity_size]

    def export_stage(m, fmt, variant, path):
        stage = f"export-{path.name}"
        if ck.done(stage) and path.is_file():
            return exporters.Artifact(**{**ck.info(stage), "path": path})
        art = exporters.export_and_check(m, fmt, variant, path, calibration=calib, check_x=check_x, check_y=check_y)
        ck.mark(stage, {k: v for k, v in art.to_dict().items() if k != "path"})
        return art

    artifacts = [export_stage(model, "tflite", "fp32", out / "baseline_fp32.tflite")]

    from edgecomp.pipeline import compress
    rate = cfg.recipe.pruning.rate
    _log(cfg, f"compressing ({cfg.recipe.method}) at rate {rate}, fine-tuning with masks held")
    result = compress(model, ds, cfg.recipe, verbose=cfg.verbose, info={"model": cfg.model, "data": cfg.data},
                      checkpoints=ck)
    pruned_acc = train.evaluate(result.model, ds.x_test, ds.y_test)
    ecz_path = out / "compressed.ecz"
    result.save(ecz_path)
    decoded = store.load_compressed(ecz_path)
    dec_weights = store.model_weights(decoded)
    comp_acc = train.evaluate(decoded, ds.x_test, ds.y_test)
    pruned_names = set(result.masks)
    fine_weights = store.model_weights(result.model)
    seed_bytes = seed_format_bytes(fine_weights, pruned_names)
    _log(cfg, f"container {result.bytes:,} B (seed format needs {seed_bytes:,} B); decoded accuracy {comp_acc:.2%}")

    for spec in cfg.variants:
        fmt, _, variant = spec.partition(":")
        suffix = {"tflite": ".tflite", "onnx": ".onnx"}.get(fmt, "." + fmt)
        _log(cfg, f"exporting {fmt} {variant} and checking parity on {len(check_x)} test images")
        artifacts.append(export_stage(decoded, fmt, variant, out / f"compressed_{variant}{suffix}"))

    _log(cfg, f"benchmarking {len(artifacts)} artifacts (batch 1, {cfg.threads} thread(s), each in a fresh process)")
    records = runtime_bench.bench_files([a.path for a in artifacts], ds.x_test, ds.y_test, batch=1,
                                        threads=cfg.threads, runs=cfg.latency_runs, min_time_s=1.0)
    fp32_bytes = 4 * sum(w.size for w in base_weights.values())
    report = {
        "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
                   "recipe": cfg.recipe.get_config()},
        "data": {"name": ds.name, "source": ds.source, "train": len(ds.x_train), "test": len(ds.x_test),
                 "input_shape": list(ds.input_shape), "num_classes": ds.num_classes},
        "models": [
            {"name": "baseline", "file": str(base_path), "params": int(sum(w.size for w in base_weights.values())),
             "nonzeros": int(sum(np.count_nonzero(w) for w in base_weights.values())),
             "accuracy": base_acc, "storage_bytes": fp32_bytes, "ratio": 1.0},
            {"name": f"compressed ({cfg.recipe.method}, rate {rate})", "file": str(ecz_path), "params": result.params,
             "nonzeros": int(sum(np.count_nonzero(w) for w in dec_weights.values())),
             "accuracy": comp_acc, "accuracy_before_quantization": pruned_acc,
             "storage_bytes": result.bytes, "ratio": fp32_bytes / result.bytes},
        ],
        "storage_check": {"container_bytes": result.bytes, "seed_format_bytes": seed_bytes,
                          "relative_difference": result.bytes / seed_bytes - 1,
                          **quantization_error_steps(fine_weights, dec_weights, pruned_names)},
        "layers": result.report,
        "artifacts": [a.to_dict() for a in artifacts],
        "bench": records,
        "seconds": time.time() - started,
    }
    write_run_report(report, out)
    return report
