#!/usr/bin/env python
"""Every zoo model pruned to half its channels: MACs and measured latency before and after.

    python scripts/bench_structured_zoo.py                      # all six, synthetic stand-ins
    python scripts/bench_structured_zoo.py --models resnet,unet --rounds 5

Per model (vgg, resnet, densenet, inception, unet, pointnet), at ``scripts/bench_zoo.py``'s small
sizes and on its data (``bench_zoo.SPECS`` / ``bench_zoo.load_data``):

1. Train it as bench_zoo does (same epochs, batch size and samples): the baseline.
2. Export the baseline as TFLite fp32 and ONNX fp32 (parity-checked): the latency "before".
3. ``compress(baseline, ds, Recipe.from_options(channels=0.5, structured_steps=2, structured_epochs=E,
   lr_schedule="cosine", rate=0.0, fine_tune_epochs=0))``: the recipe's structured stage removes
   half of every dependency group's channels (l1 importance) in 2 steps (0.75, then 0.5 of the
   original), fine-tuning E epochs after each with a cosine-decayed learning rate, E =
   max(8, bench_zoo's training epochs) (fewer per model in ``REDUCED_EPOCHS``, none now), unless
   ``--structured-epochs`` says otherwise. No magnitude pruning on top (rate 0, no masked fine-tuning): the seed's coding
   stores the smaller model's weights as int8 values in the container. This measures the
   channel-pruned model itself.
4. Decode the container and export it as TFLite and ONNX, fp32 and int8, each checked for
   parity with the decoded model by bench_zoo's rule (``bench_zoo.export_checked``: the
   exporters' default thresholds, UNet fp32 by mask IoU >= 0.999; an int8 file that misses is
   recorded as FAIL and the format's int16x8 variant is exported and checked too).
5. Time every file (baseline and pruned) at batch 1, 1 thread, each in a fresh process
   (``runtime_bench.bench_files``), in ``--rounds`` interleaved rounds whose order alternates;
   a file's latency is the median of its rounds, its speedup the median over rounds of the
   baseline's same-format fp32 time in that round over its own.

Writes ``bench_structured_zoo.json`` (also the resume state: finished models are skipped when the
settings match) and ``bench_structured_zoo.md`` to ``--out`` (default ``docs/results/structured_zoo``)
after each model, atomically; model files go to ``--work`` (default ``runs/bench_structured_zoo``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_zoo import (MODELS, SPECS, export_checked, export_variants, load_data, parse_models,  # noqa: E402
                       qat_exports)
from structured_zoo_md import (COLUMNS, MIN_STRUCTURED_EPOCHS, REDUCED_EPOCHS, epochs_cell,  # noqa: E402,F401
                               full_structured_epochs, markdown, table_row)

JSON_NAME, MD_NAME = "bench_structured_zoo.json", "bench_structured_zoo.md"
#: The per-file columns of the table, in order (pruned file variant -> baseline file it is timed against).
SETTINGS = ("keep", "structured_steps", "structured_epochs", "structured_epochs_rule", "lr_schedule", "compress_rate",
            "masked_epochs", "epochs", "n_train", "n_test", "batch_size", "rounds", "runs", "data_dir", "importance")
#: No magnitude pruning on top of the channel pruning: rate 0, no masked fine-tuning (the seed's
#: coding then stores every weight of the smaller model as int8). Part of the settings, so results
#: of a run that stacked rate 0.8 on the channel pruning are never reused.
COMPRESS_RATE, MASKED_EPOCHS = 0.0, 0


def settings_of(args) -> dict:
    """The run's settings (the resume key): the arguments, and the fixed no-magnitude-pruning choice."""
    fixed = {"compress_rate": COMPRESS_RATE, "masked_epochs": MASKED_EPOCHS,
             "structured_epochs_rule": {"min": MIN_STRUCTURED_EPOCHS, "reduced": REDUCED_EPOCHS}}
    return {k: fixed[k] if k in fixed else getattr(args, k) for k in SETTINGS}


def structured_epochs_for(name: str, epochs: int, override: int | None) -> int:
    """Fine-tuning epochs after each structured step: ``override`` (``--structured-epochs``), else
    :data:`REDUCED_EPOCHS` for the slow models, else :func:`full_structured_epochs`."""
    if override is not None:
        return override
    return REDUCED_EPOCHS.get(name, full_structured_epochs(epochs))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--keep", type=float, default=0.5, help="fraction of each group's channels to keep")
    p.add_argument("--importance", default="l1", help="channel importance criterion")
    p.add_argument("--data-dir", default=None, help="folder holding the real datasets (default: $EDGECOMP_DATA)")
    p.add_argument("--n-train", type=int, default=512, help="training samples per model")
    p.add_argument("--n-test", type=int, default=1000,
                   help="test samples (accuracy, parity; 1000: one flipped sample is 0.1 point)")
    p.add_argument("--qat-epochs", type=int, default=None,
                   help="QAT epochs where post-training int8 misses parity (default: bench_zoo's; 0: no QAT)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: bench_zoo's per model)")
    p.add_argument("--structured-steps", type=int, default=2, help="structured pruning steps (each fine-tuned)")
    p.add_argument("--structured-epochs", type=int, default=None,
                   help="fine-tuning epochs after each structured step (default: max(8, bench_zoo's training "
                        "epochs) per model)")
    p.add_argument("--lr-schedule", default="cosine", help="learning-rate schedule of the structured fine-tuning")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (order alternates)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per file per round (batch 1, 1 thread)")
    p.add_argument("--out", default="docs/results/structured_zoo", help="folder for the JSON and Markdown")
    p.add_argument("--work", default="runs/bench_structured_zoo", help="folder for the model files")
    p.add_argument("--fresh", action="store_true", help="ignore finished models in the JSON (no resume)")
    return p


# -- how the graph was handled ------------------------------------------------------

def coupling(model, structured: dict) -> dict:
    """What the structured report shows about residual adds, concatenations and BatchNorm."""
    from edgecomp.graph import ModelGraph

    kinds = {}
    for node in ModelGraph(model).layer_nodes():
        kinds[node.path] = type(node.layer).__name__
    groups = structured["groups"]
    members = [[m.rsplit(":", 1) for m in g["members"]] for g in groups]
    merged = [g["name"] for g in groups if len(g["producers"]) > 1]
    spans: dict[str, set] = {}
    for g, ms in zip(groups, members):
        for path, role in ms:
            if role in ("in", "mid"):
                spans.setdefault(path, set()).add(g["name"])
    bn_layers = sorted(p for p, k in kinds.items() if k == "BatchNormalization")
    bn_grouped = sorted({p for ms in members for p, role in ms if kinds.get(p) == "BatchNormalization"})
    return {
        "add_layers": sum(k in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum") for k in kinds.values()),
        "concat_layers": sum(k == "Concatenate" for k in kinds.values()),
        "groups": len(groups),
        "multi_producer_groups": merged,
        "multi_producer_producers": {g["name"]: g["producers"] for g in groups if len(g["producers"]) > 1},
        "concat_consumers": {p: sorted(s) for p, s in spans.items() if len(s) > 1},
        "bn_layers": len(bn_layers),
        "bn_in_groups": len(bn_grouped),
        "groups_with_bn": sum(any(kinds.get(p) == "BatchNormalization" for p, _ in ms) for ms in members),
        "bn_not_in_groups": [p for p in bn_layers if p not in bn_grouped],
        "kept_whole": structured["kept_whole"],
    }


# -- latency --------------------------------------------------------------------------

def time_rounds(files: list[Path], x, rounds: int, runs: int, log=print) -> list[dict]:
    """``rounds`` interleaved rounds over ``files`` (order reversed every other round), each file
    in a fresh process: ``[{file name: median ms or None}, ...]``, one dict per round."""
    from runtime_bench import bench_files

    out = []
    for r in range(rounds):
        order = files if r % 2 == 0 else files[::-1]
        recs = bench_files(order, x[:8], None, threads=1, progress=False, task=None, runs=runs, warmup=5,
                           min_time_s=0.2, isolate=True)
        times = {Path(rec["file"]).name: rec.get("median_ms") for rec in recs}
        errors = {Path(rec["file"]).name: rec["error"] for rec in recs if rec.get("error")}
        out.append({"ms": times, "errors": errors})
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}"
                                                    for k, v in times.items()))
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def summarize_latency(artifacts: list[dict], baseline: list[dict], rounds: list[dict]) -> None:
    """Fill each artifact's ``median_ms``, ``before_ms`` (its format's baseline fp32) and ``speedup``."""
    base_file = {a["format"]: a["file"] for a in baseline}
    for a in baseline + artifacts:
        a["round_ms"] = [rd["ms"].get(a["file"]) for rd in rounds]
        a["median_ms"] = _median(a["round_ms"])
        a["bench_error"] = next((rd["errors"][a["file"]] for rd in rounds if a["file"] in rd["errors"]), None)
    for a in artifacts:
        b = base_file.get(a["format"])
        a["before_file"] = b
        a["before_ms"] = _median([rd["ms"].get(b) for rd in rounds]) if b else None
        ratios = [rd["ms"][b] / rd["ms"][a["file"]] for rd in rounds
                  if b and rd["ms"].get(b) and rd["ms"].get(a["file"])]
        a["speedup"] = _median(ratios)


# -- one model ------------------------------------------------------------------------

def run_model(name: str, args, work: Path, log=None) -> dict:
    """Train, export the baseline, prune to ``args.keep`` of the channels through the recipe and the
    container, export and check, time in interleaved rounds: the model's JSON row."""
    import keras

    from edgecomp import io, store, train
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.recipe import Recipe
    from edgecomp.structured import count_macs
    from edgecomp.train import predict
    from edgecomp.zoo import evaluate
    from exporters.variants import Variant

    log = log or (lambda msg: print(f"[{name}] {msg}", flush=True))
    start = tick = time.time()
    stages: dict[str, float] = {}

    def lap(stage):
        nonlocal tick
        stages[stage], tick = round(time.time() - tick, 1), time.time()

    ds, note = load_data(name, args)
    spec = SPECS[name]
    epochs = args.epochs if args.epochs is not None else spec.get("epochs", 4)
    s_epochs = structured_epochs_for(name, epochs, args.structured_epochs)
    steps = args.structured_steps
    row = {"model": name, "options": spec["options"], "data": ds.name, "source": note, "task": ds.task,
           "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)), "epochs": epochs,
           "structured_steps": steps, "structured_epochs": s_epochs, "keep": args.keep, "stage_seconds": stages}
    log(f"{ds.name}: {note}; {len(ds.x_train)} train / {len(ds.x_test)} test; {epochs} epochs, then "
        f"{steps} structured steps x {s_epochs} fine-tuning epochs ({args.lr_schedule}), no magnitude pruning")

    keras.utils.set_random_seed(0)
    model = build_model(name, ds.input_shape, ds.num_classes, **spec["options"])
    train.fit(model, ds.x_train, ds.y_train, epochs=epochs, batch_size=args.batch_size, verbose=0)
    row["before"] = evaluate(model, ds.x_test, ds.y_test, task=ds.task)
    row["params_before"] = int(model.count_params())
    row["macs_before"] = int(count_macs(model)[1])
    with io.atomic_path(work / f"{name}_baseline.keras") as tmp:
        model.save(tmp)
    lap("train")
    log(f"baseline: {row['params_before']:,} params, {row['macs_before']:,} MACs, acc {row['before']['accuracy']:.3f}")

    x_cal = ds.x_train[:512]
    base_queue = [Variant.parse("tflite", "fp32"), Variant.parse("onnx", "fp32")]
    row["baseline_files"] = export_checked(model, name, ds, work, predict(model, ds.x_test), base_queue, x_cal,
                                           stem=f"{name}_baseline")
    lap("export_baseline")

    recipe = Recipe.from_options(channels=args.keep, structured_steps=steps, structured_epochs=s_epochs,
                                 importance=args.importance, lr_schedule=args.lr_schedule, rate=COMPRESS_RATE,
                                 fine_tune_epochs=MASKED_EPOCHS, batch_size=args.batch_size)
    row["recipe"] = recipe.describe()
    result = compress(model, ds, recipe, verbose=0, info={"model": name, "data": ds.name})
    if model.count_params() != row["params_before"]:
        raise RuntimeError("the structured stage changed the baseline model")  # it prunes a copy
    container = work / f"{name}_structured.ecz"
    result.save(container)
    decoded = store.load_compressed(container)
    s = result.structured
    row.update({"params_after": int(decoded.count_params()), "macs_after": int(count_macs(decoded)[1]),
                "structured_macs": [s["macs_before"], s["macs_after"]],
                "structured_params": [s["params_before"], s["params_after"]],
                "container_bytes": int(result.bytes), "kept_nonzeros": int(result.nonzeros),
                "after": evaluate(decoded, ds.x_test, ds.y_test, task=ds.task),
                "channels": s.get("channels"), "groups": s["groups"], "coupling": coupling(model, s),
                "history": result.history})
    row["macs_reduction"] = round(row["macs_before"] / max(1, row["macs_after"]), 2)
    lap("compress")
    c = row["coupling"]
    log(f"pruned: {row['params_after']:,} params, {row['macs_after']:,} MACs ({row['macs_reduction']}x fewer), "
        f"acc {row['after']['accuracy']:.3f}, container {result.bytes:,} B; {c['groups']} groups, "
        f"{len(c['multi_producer_groups'])} with several producers, {len(c['concat_consumers'])} consumers of "
        f"concatenations, BN {c['bn_in_groups']}/{c['bn_layers']} in groups, {len(c['kept_whole'])} kept whole")

    row["artifacts"] = export_checked(decoded, name, ds, work, predict(decoded, ds.x_test), export_variants(), x_cal,
                                      stem=f"{name}_structured")
    missed = sorted({a["format"] for a in row["artifacts"] if a["variant"] == "int8" and not a["passed"]})
    if missed and args.qat_epochs != 0:   # post-training int8 out of parity: quantization-aware training
        row["artifacts"] += qat_exports(decoded, name, ds, work, missed, args, stem=f"{name}_structured_qat")
    lap("export")

    files = [work / a["file"] for a in row["baseline_files"] + row["artifacts"] if (work / a["file"]).is_file()]
    row["rounds"] = time_rounds(files, ds.x_test, args.rounds, args.runs, log=log)
    summarize_latency(row["artifacts"], row["baseline_files"], row["rounds"])
    lap("bench")
    row["seconds"] = round(time.time() - start, 1)
    log(f"done in {row['seconds']} s ({stages})")
    return row


# -- report ---------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import platform

    from edgecomp import io
    from edgecomp.errors import EdgecompError

    try:
        models = parse_models(args.models)
        if args.structured_steps < 1:
            raise EdgecompError(f"--structured-steps must be >= 1, got {args.structured_steps}", fix="e.g. 2")
        if args.structured_epochs is not None and args.structured_epochs < 0:
            raise EdgecompError(f"--structured-epochs must be >= 0, got {args.structured_epochs}", fix="e.g. 4")
        if not 0 < args.keep <= 1:
            raise EdgecompError(f"channel keep ratio must be in (0, 1], got {args.keep}", fix="e.g. --keep 0.5")
        if args.rounds < 1:
            raise EdgecompError(f"--rounds must be >= 1, got {args.rounds}", fix="e.g. --rounds 3")
        out = io.ensure_dir(args.out)
        work = io.ensure_dir(args.work)
    except EdgecompError as exc:
        print(f"bench_structured_zoo: error: {exc}", file=sys.stderr)
        return 2
    settings = settings_of(args)
    state_path = out / JSON_NAME
    state = json.loads(state_path.read_text()) if state_path.is_file() and not args.fresh else {}
    done = {r["model"]: r for r in state.get("models", []) if "error" not in r} if state.get("settings") == settings else {}
    meta = {**settings, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join(["python scripts/bench_structured_zoo.py", *(argv if argv is not None else sys.argv[1:])])}
    start = time.time()
    rows = {m: r for m, r in done.items()}
    for name in models:
        if name in done:
            print(f"[{name}] finished in an earlier run ({JSON_NAME}); skipped", flush=True)
            continue
        try:
            rows[name] = run_model(name, args, work)
        except EdgecompError as exc:
            print(f"[{name}] error: {exc}", file=sys.stderr)
            rows[name] = {"model": name, "error": str(exc)}
        ordered = [rows[m] for m in MODELS if m in rows]
        meta["seconds"] = round(time.time() - start, 1)
        io.write_json(state_path, {"settings": settings, "meta": meta, "models": ordered})
        io.write_text(out / MD_NAME, markdown(ordered, meta))
    ordered = [rows[m] for m in MODELS if m in rows]
    meta["seconds"] = round(time.time() - start, 1)
    io.write_json(state_path, {"settings": settings, "meta": meta, "models": ordered})
    io.write_text(out / MD_NAME, markdown(ordered, meta))
    print(markdown(ordered, meta))
    print(f"wrote {state_path} and {out / MD_NAME} in {meta['seconds']} s")
    bad = [r["model"] for r in ordered if "error" in r or not all(a["passed"] for a in r["artifacts"]
                                                                  if a["variant"] == "fp32")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
