"""One keras.applications family through the flow of ``scripts/bench_applications.py`` (which
runs each family in its own process): build, train, compress, decode, export, parity, bench."""

from __future__ import annotations

import time
from pathlib import Path

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


def _container(result, path: Path, x, y) -> tuple[dict, object]:
    """Save ``result``'s container at ``path`` and decode it: its row entry (bytes, ratio, decoded,
    accuracy) and the decoded model (None where the decoder refused it: a finding, in the entry)."""
    from edgecomp import store
    from edgecomp.errors import first_line

    result.save(path)
    weights = sum(r["params"] for r in result.report)
    entry = {"container_bytes": len(result.container), "ratio": round(4 * weights / len(result.container), 2)}
    try:
        decoded = store.decode_model(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - a refused container is a finding
        entry.update({"decoded": False, "error": f"{type(exc).__name__}: {first_line(exc, default='')}"})
        return entry, None
    entry.update({"decoded": True, "accuracy": _accuracy(decoded, x, y)})
    return entry, decoded


def _export(row: dict, log, model, fmt: str, variant: str, path: Path, ds, route: str | None = None) -> dict:
    """:func:`export_one` on the row's data, appended to ``row["artifacts"]`` and logged."""
    entry = export_one(model, fmt, variant, path, ds.x_train[:128], ds.x_test, ds.y_test)
    row["artifacts"].append({**entry, "route": route} if route else entry)
    p = entry.get("parity") or {}
    log(f"{fmt} {variant}{' (' + route.upper() + ')' if route else ''}: "
        f"{'ok' if entry['passed'] else 'FAILED ' + entry.get('error', '')[:300]} "
        f"(top-1 {p.get('top1_agreement')}, max diff {p.get('max_abs_diff')}, {entry['seconds']} s)")
    return entry


def run_family(family: str, cfg: dict, work: Path, log) -> dict:
    import keras

    from edgecomp import train
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
    qat_source = _copy(model) if trained and cfg["qat_epochs"] else None   # deep compresses `model` in place
    for method in ("seed", "deep"):
        source = _copy(model) if method == "seed" else model
        extra = {"centroid_epochs": fine} if method == "deep" else {}
        result = compress(source, (ds.x_train, ds.y_train), method=method, info={"model": family}, **common, **extra)
        row[method], decoded = _container(result, work / f"{family}_{method}.ecz", x, y)
        stage(f"compress_{method}")
    row["weights"] = int(sum(r["params"] for r in result.report))
    row["artifacts"] = []
    row["exported_from"] = "decoded deep container"
    if decoded is None:   # a decoder finding: the exporters are still checked, on the in-memory compressed model
        row["error"] = "deep container not decoded: " + row["deep"]["error"]
        decoded, row["exported_from"] = result.model, "in-memory compressed model (container not decoded)"
    for fmt, variant in EXPORTS:
        _export(row, log, decoded, fmt, variant, work / f"{family}_{variant}.{fmt}", ds)
    missed = [a["format"] for a in row["artifacts"] if a["variant"] == "int8" and not a["passed"]]
    if trained:   # int8 out of parity: are 16-bit activations enough? (int8 weights, int16 activations)
        for fmt in missed:
            _export(row, log, decoded, fmt, "int16x8", work / f"{family}_int16x8.{fmt}", ds)
    if qat_source is not None and missed:
        _qat_route(family, qat_source, ds, common | {"centroid_epochs": fine}, cfg, work, row, log)
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


def _qat_route(family: str, model, ds, common: dict, cfg: dict, work: Path, row: dict, log) -> None:
    """What a practitioner does when post-training int8 misses: deep compression again with
    quantization-aware training, and int8 files from that container (on its trained ranges)."""
    from edgecomp.pipeline import compress

    result = compress(model, (ds.x_train, ds.y_train), method="deep", info={"model": family},
                      qat_epochs=cfg["qat_epochs"], **common)
    # decoded: the QAT model (float layers + trained ranges); a refused container is the entry's error
    row["deep_qat"], decoded = _container(result, work / f"{family}_deep_qat.ecz", ds.x_test, ds.y_test)
    for fmt in ("tflite", "onnx") if decoded is not None else ():
        _export(row, log, decoded, fmt, "int8", work / f"{family}_qat_int8.{fmt}", ds, route="qat")
