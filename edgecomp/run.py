"""The main job, end to end: train a baseline, compress it two ways (the seed's method, and
edgecomp's best recipe: structured channel pruning with distillation, then Deep Compression),
store, decode, export, and benchmark every file in its runtime, side by side.

    >>> report = run_job(out="runs/latest")      # Fashion-MNIST, the seed's VGG-like net

Writes into ``out``: ``baseline.keras``, ``seed.ecz``, ``edgecomp.ecz``, the exported ``.tflite`` /
``.onnx`` files, ``report.json``, ``report.md`` and ``size_vs_accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from edgecomp import io, qat, store, train
from edgecomp.codec import seed_index
from edgecomp.errors import EdgecompError
from edgecomp.recipe import Recipe


def best_recipe() -> Recipe:
    """edgecomp's best recipe for the VGG-like net on Fashion-MNIST (``scripts/bench_structured.py``):
    keep 35% of the channels in two steps of one fine-tuning epoch each, then Deep Compression:
    80% of the remaining weights pruned by one global threshold in three steps of one epoch each,
    k-means sharing (8-bit convs, 5-bit dense) with two epochs of centroid training, entropy coding.
    (Distillation from the unpruned net measured worse at this fine-tuning budget: see the bench.)
    No QAT: one QAT epoch on top makes the int8 TFLite file match the model to the bit, but it
    measured less accurate than post-training int8's (``docs/results/qat/run_qat1.md``, made by
    ``edgecomp run --qat-epochs 1``); ``--qat-epochs`` adds it."""
    return Recipe.from_options(channels=0.35, structured_steps=2, structured_epochs=1, method="deep", rate=0.8,
                               criterion="global", schedule="iterative:3", fine_tune_epochs=1, lr_schedule="cosine",
                               centroid_epochs=2)


def seed_recipe(rate: float = 0.8, seed: int = 0, batch_size: int = 64) -> Recipe:
    """The seed's method (its table's rows): per-filter pruning, one fine-tuning epoch, int8 + uint8 index."""
    return Recipe.from_options(rate=rate, fine_tune_epochs=1, seed=seed, batch_size=batch_size)


@dataclasses.dataclass
class RunConfig:
    """Every knob of :func:`run_job`; the defaults finish in under 10 minutes on 2 idle cores."""

    model: str = "vgg"
    model_options: dict = dataclasses.field(default_factory=dict)
    data: str = "fashion_mnist"
    data_dir: str | None = None
    recipe: Recipe = dataclasses.field(default_factory=best_recipe)
    seed_rate: float | None = 0.8
    epochs: int = 5            # with a cosine rate: trained enough that the compressed rows don't look better
    lr_schedule: str = "cosine"
    train_size: int | None = 30000
    test_size: int | None = None
    calibration_size: int = 200
    parity_size: int = 256
    latency_runs: int = 200
    threads: int = 1
    variants: tuple[str, ...] = ("tflite:fp32", "tflite:int8", "onnx:fp32")
    seed_variants: tuple[str, ...] = ("tflite:int8",)
    out: str = "runs/latest"
    verbose: int = 1
    command: str = "edgecomp run"
    resume: bool = False

    def __post_init__(self):
        if self.recipe.distribute.enabled:
            from edgecomp.errors import EdgecompError
            raise EdgecompError("the main job (edgecomp run) trains, exports and benchmarks in one process",
                                fix="distribute the compression with edgecomp compress --distribute")

    @property
    def seed(self) -> int:
        """The recipe's seed: the baseline's initial weights and shuffling come from it too."""
        return self.recipe.seed

    @property
    def batch_size(self) -> int:
        """The recipe's batch size, which the baseline trains with too."""
        return self.recipe.fine_tune.batch_size

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


def _baseline(cfg: RunConfig, ds, ck, base_path):
    from edgecomp.models import build_model, load_keras_model
    if ck.done("baseline") and base_path.is_file():
        model = load_keras_model(base_path)
        _log(cfg, f"resumed: baseline from {base_path} ({ck.info('baseline')['accuracy']:.2%})")
        return model, ck.info("baseline")["accuracy"]
    import keras
    keras.utils.set_random_seed(cfg.seed)  # the initial weights
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, **cfg.model_options)
    _log(cfg, f"training {cfg.model} ({model.count_params():,} params) for {cfg.epochs} epoch(s), "
              f"{cfg.lr_schedule} learning rate")
    train.fit(model, ds.x_train, ds.y_train, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
              verbose=cfg.verbose, lr_schedule=cfg.lr_schedule)
    acc = train.evaluate(model, ds.x_test, ds.y_test)
    with io.atomic_path(base_path) as tmp:
        model.save(tmp)
    ck.mark("baseline", {"accuracy": acc})
    _log(cfg, f"baseline test accuracy {acc:.2%}")
    return model, acc


def _macs(model) -> int | None:
    from edgecomp.structured import count_macs
    try:
        return count_macs(model)[1]
    except EdgecompError:
        return None


def run_job(cfg: RunConfig | None = None, **overrides) -> dict:
    """Run the whole pipeline; returns the report dict (also written to ``cfg.out``)."""
    import exporters
    import runtime_bench
    from exporters.variants import Variant
    from edgecomp.checkpoint import Checkpoints
    from edgecomp.data import load_dataset
    from edgecomp.models import load_keras_model, model_names
    from edgecomp.pipeline import compress
    from edgecomp.report import write_run_report

    cfg = dataclasses.replace(cfg or RunConfig(), **overrides)
    for spec in (*cfg.variants, *cfg.seed_variants):
        Variant.from_spec(spec)  # a bad spec fails before any training
    if cfg.model not in model_names():  # fail before the data is loaded
        raise EdgecompError(f"unknown model '{cfg.model}'", fix=f"use one of: {', '.join(model_names())}")
    out = io.ensure_dir(cfg.out)
    started = time.time()

    _log(cfg, f"loading {cfg.data}")
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir).take(cfg.train_size, cfg.test_size).check()
    _log(cfg, f"{len(ds.x_train)} train / {len(ds.x_test)} test samples of {ds.input_shape} from {ds.source}")
    ck = Checkpoints(out / "checkpoints", cfg.fingerprint(), resume=cfg.resume)
    base_path = out / "baseline.keras"
    model, base_acc = _baseline(cfg, ds, ck, base_path)
    base_weights = store.model_weights(model)
    fp32_bytes = 4 * sum(w.size for w in base_weights.values())
    calib = ds.x_train[:cfg.calibration_size]
    check_x, check_y = ds.x_test[:cfg.parity_size], ds.y_test[:cfg.parity_size]

    def export_stage(m, spec, path, who) -> dict:
        """Export behind the parity gate; a file that misses parity is a row saying so, not a stop."""
        from edgecomp.errors import first_line
        v = Variant.from_spec(spec)
        stage = f"export-{path.name}"
        if ck.done(stage) and (path.is_file() or ck.info(stage).get("error")):
            return {**ck.info(stage), "path": str(path), "model": who}
        _log(cfg, f"exporting {who}: {v.format} {v.name}, checked for parity on {len(check_x)} test images")
        try:
            art = exporters.export_and_check(m, v.format, v, path, calibration=calib, check_x=check_x,
                                             check_y=check_y).to_dict()
        except exporters.ParityError as exc:
            _log(cfg, f"{path.name} not written: {first_line(exc)}")
            art = {"format": v.format, "variant": v.name, "bytes": None, "gzip_bytes": None, "parity": exc.figures,
                   "error": f"parity: {first_line(exc)}"}
        ck.mark(stage, {k: v for k, v in art.items() if k != "path"})
        return {**art, "path": str(path), "model": who}

    artifacts = [export_stage(model, "tflite:fp32", out / Variant.from_spec("tflite:fp32").filename("baseline"),
                              "baseline")]
    models = [{"name": "baseline", "key": "baseline", "file": str(base_path), "params": model.count_params(),
               "nonzeros": int(sum(np.count_nonzero(w) for w in base_weights.values())), "macs": _macs(model),
               "accuracy": base_acc, "storage_bytes": fp32_bytes, "ratio": 1.0}]
    results = {}
    runs = ([("seed", seed_recipe(cfg.seed_rate, cfg.seed, cfg.batch_size), cfg.seed_variants)]
            if cfg.seed_rate is not None else []) + [("edgecomp", cfg.recipe, cfg.variants)]
    for key, recipe, variants in runs:
        _log(cfg, f"compressing with {'the seed' + chr(39) + 's method' if key == 'seed' else 'edgecomp'}: "
                  f"{recipe.describe()}")
        measure = None
        if recipe.structured is not None and recipe.structured.target_latency is not None:
            from exporters.latency import latency_measure
            measure = latency_measure(recipe.structured.profile, ds.x_test[:1])
        result = compress(load_keras_model(base_path), ds, recipe, verbose=cfg.verbose, measure=measure,
                          info={"model": cfg.model, "data": cfg.data},
                          checkpoints=Checkpoints(out / "checkpoints" / key, cfg.fingerprint(), resume=cfg.resume))
        ecz = out / f"{key}.ecz"
        result.save(ecz)
        decoded = store.load_compressed(ecz)     # after QAT: the QAT model (its int8 files use its ranges)
        acc = train.evaluate(decoded, ds.x_test, ds.y_test)
        results[key] = (result, decoded)
        _log(cfg, f"{key}: container {result.bytes:,} B ({fp32_bytes / result.bytes:.1f}x), decoded accuracy {acc:.2%}"
                  + (" (int8 simulated: QAT)" if qat.is_qat(decoded) else ""))
        flat = qat.float_model(decoded) if qat.is_qat(decoded) else decoded
        dec_weights = store.model_weights(flat)
        name = f"seed's method (rate {recipe.pruning.rate:g})" if key == "seed" else f"edgecomp: {recipe.describe()}"
        models.append({"name": name, "key": key, "file": str(ecz),
                       "params": flat.count_params(), "macs": _macs(flat),
                       "nonzeros": int(sum(np.count_nonzero(w) for w in dec_weights.values())),
                       "accuracy": acc, "storage_bytes": result.bytes, "ratio": fp32_bytes / result.bytes,
                       "structured": result.structured, "history": result.history})
        for spec in variants:
            artifacts.append(export_stage(decoded, spec, out / Variant.from_spec(spec).filename(key), key))

    _log(cfg, f"benchmarking {sum(not a.get('error') for a in artifacts)} artifacts (batch 1, {cfg.threads} thread(s), each in a fresh process)")
    written = [a["path"] for a in artifacts if not a.get("error")]
    records = runtime_bench.bench_files(written, ds.x_test, ds.y_test, batch=1, threads=cfg.threads,
                                        runs=cfg.latency_runs, min_time_s=1.0)
    report = {
        "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
                   "recipe": cfg.recipe.get_config()},
        "data": {"name": ds.name, "source": ds.source, "train": len(ds.x_train), "test": len(ds.x_test),
                 "input_shape": list(ds.input_shape), "num_classes": ds.num_classes},
        "models": models,
        "layers": results["edgecomp"][0].report,
        "artifacts": artifacts,
        "bench": records,
        "machine": runtime_bench.targets.cpu_description(),
        "seconds": time.time() - started,
    }
    if "seed" in results:
        result, decoded = results["seed"]
        fine, dec = store.model_weights(result.model), store.model_weights(decoded)
        seed_bytes = seed_format_bytes(fine, set(result.masks))
        report["storage_check"] = {"container_bytes": result.bytes, "seed_format_bytes": seed_bytes,
                                   "relative_difference": result.bytes / seed_bytes - 1,
                                   **quantization_error_steps(fine, dec, set(result.masks))}
    report["headline"] = headline(report)
    write_run_report(report, out)
    return report


def headline(report: dict) -> dict:
    """edgecomp's result against the baseline: container and file size ratios, the fastest
    parity-passing export's speedup over the baseline fp32 TFLite, and the accuracy change."""
    from pathlib import Path

    from edgecomp.report import bench_by_path
    bench = bench_by_path(report)
    arts = [(a, bench.get(str(Path(a["path"]).resolve()), {})) for a in report["artifacts"]]
    base = next((r for a, r in arts if a["model"] == "baseline"), {})
    mine = [(a, r) for a, r in arts if a["model"] == "edgecomp" and r.get("median_ms") and not r.get("error")
            and not a.get("error")]
    models = {m["key"]: m for m in report["models"]}
    out = {"accuracy_change_points": 100 * (models["edgecomp"]["accuracy"] - models["baseline"]["accuracy"]),
           "container_ratio": models["edgecomp"]["ratio"]}
    if base.get("median_ms") and mine:
        a, r = min(mine, key=lambda ar: ar[1]["median_ms"])
        out.update(fastest=Path(a["path"]).name, speedup=base["median_ms"] / r["median_ms"])
    base_file = next((a for a, _ in arts if a["model"] == "baseline"), None)
    int8 = next((a for a, _ in arts if a["model"] == "edgecomp" and a["format"] == "tflite" and a["variant"] == "int8"
                 and not a.get("error")), None)
    if base_file and int8 and base_file.get("bytes"):
        out["int8_tflite_ratio"] = base_file["bytes"] / int8["bytes"]
    return out
