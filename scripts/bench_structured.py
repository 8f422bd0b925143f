#!/usr/bin/env python
"""Structured (channel) pruning on the seed's VGG-like net and real Fashion-MNIST: accuracy, MACs
and the measured latency of every export, side by side with the unpruned net's files.

    python scripts/bench_structured.py --out docs/results/structured

1. The baseline: 3 epochs of Adam with a cosine learning rate on the 60,000 training images
   (bench_storage's recipe), reused from ``OUT/baseline.keras`` when there.
2. For each keep ratio (0.7 / 0.5 / 0.35 / 0.25), without and with distillation from the baseline:
   the recipe's structured stage (``--structured-steps`` steps, ``--structured-epochs`` epochs of
   fine-tuning after each, the same for both), no magnitude pruning; the container stores the
   smaller model's weights as int8 (the seed's coding at rate 0).
3. The smallest keep ratio whose better variant stays within ``--max-drop`` points of the baseline's
   test accuracy is run again end to end from the float baseline with Deep Compression after the
   structured stage, in one ``compress()`` call: ``--deep-rate`` of the weights pruned by one global
   threshold in three steps of one epoch each, weight sharing with two centroid epochs, entropy coding
   (``edgecomp.run.best_recipe``'s settings).
4. Every model is exported as TFLite fp32/int8 and ONNX fp32/int8 (each behind the parity gate), and
   every file is timed at batch 1, 1 thread, in ``--rounds`` interleaved rounds, each file in a fresh
   process; a file's latency is the median of its rounds, its speedup the median over rounds of the
   baseline fp32 TFLite's time in that round over its own.

Resumable: each finished model and export is kept in ``OUT/structured.json``. Writes
``structured.json``, ``structured.md`` and ``structured.png`` (accuracy vs latency, Pareto front).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = ("tflite:fp32", "tflite:int8", "onnx:fp32", "onnx:int8")


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/results/structured")
    p.add_argument("--keeps", default="0.7,0.5,0.35,0.25")
    p.add_argument("--structured-steps", type=int, default=2)
    p.add_argument("--structured-epochs", type=int, default=1)
    p.add_argument("--distill", default="4,0.7")
    p.add_argument("--importance", default="l1")
    p.add_argument("--max-drop", type=float, default=1.0, help="points of test accuracy the deep model may lose")
    p.add_argument("--deep-rate", type=float, default=0.8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-size", type=int, default=None, help="training images (default: all 60,000)")
    return p


def _recipes(args):
    from edgecomp.recipe import Recipe
    common = dict(structured_steps=args.structured_steps, structured_epochs=args.structured_epochs,
                  importance=args.importance, lr_schedule="cosine", rate=0.0, fine_tune_epochs=0)
    out = {}
    for keep in (float(k) for k in args.keeps.split(",")):
        for distill in (False, True):
            name = f"keep {keep:g}" + (" +KD" if distill else "")
            out[name] = Recipe.from_options(channels=keep, distill=args.distill if distill else None, **common)
    return out


def train_models(args, ds, out, state, save):
    from edgecomp import io, store, train
    from edgecomp.models import build_model, load_keras_model
    from edgecomp.pipeline import compress
    from edgecomp.recipe import Recipe
    from edgecomp.structured import count_macs

    base_path = out / "baseline.keras"
    if "baseline" not in state["models"] or not base_path.is_file():
        import keras
        keras.utils.set_random_seed(0)
        model = build_model("vgg", ds.input_shape, ds.num_classes)
        t = time.time()
        train.fit(model, ds.x_train, ds.y_train, epochs=3, lr_schedule="cosine")
        with io.atomic_path(base_path) as tmp:
            model.save(tmp)
        state["models"]["baseline"] = {"file": str(base_path), "params": model.count_params(),
                                       "macs": count_macs(model)[1], "keep": 1.0, "distill": False,
                                       "accuracy": train.evaluate(model, ds.x_test, ds.y_test),
                                       "container_bytes": 4 * model.count_params(), "seconds": time.time() - t}
        save()
    base = state["models"]["baseline"]
    print(f"baseline: {base['accuracy']:.2%}, {base['macs']:,} MACs", flush=True)
    for name, recipe in _recipes(args).items():
        if name in state["models"]:
            continue
        print(f"\n== {name}: {recipe.describe()}", flush=True)
        t = time.time()
        result = compress(load_keras_model(base_path), ds, recipe)
        path = out / f"{name.replace(' ', '_').replace('+', '')}.ecz"
        result.save(path)
        small = store.load_compressed(path)
        s = result.structured
        state["models"][name] = {"file": str(path), "params": small.count_params(), "macs": s["macs_after"],
                                 "keep": recipe.structured.keep, "distill": recipe.structured.distill is not None,
                                 "accuracy": train.evaluate(small, ds.x_test, ds.y_test),
                                 "container_bytes": result.bytes, "channels": s["channels"],
                                 "kept_whole": s["kept_whole"], "seconds": time.time() - t}
        print(f"   {state['models'][name]['accuracy']:.2%}, MACs {s['macs_after'] / s['macs_before']:.3f} of the "
              f"baseline's, {time.time() - t:.0f} s", flush=True)
        save()
    # edgecomp's whole recipe, end to end from the float baseline: the structured stage of the smallest keep
    # ratio within the budget (its better variant), then Deep Compression in the same compress() call.
    fits = [(n, m) for n, m in state["models"].items() if n != "baseline" and "deep" not in n
            and 100 * (base["accuracy"] - m["accuracy"]) <= args.max_drop]
    if fits and "deep" not in state:
        name, m = min(fits, key=lambda nm: (nm[1]["macs"], -nm[1]["accuracy"]))
        recipe = _recipes(args)[name]
        recipe = Recipe.from_options(recipe, method="deep", rate=args.deep_rate, criterion="global",
                                     schedule="iterative:3", fine_tune_epochs=1, centroid_epochs=2)
        print(f"\n== {name} + deep: {recipe.describe()}", flush=True)
        t = time.time()
        result = compress(load_keras_model(base_path), ds, recipe)
        path = out / "deep.ecz"
        result.save(path)
        decoded = store.load_compressed(path)
        state["models"][f"{name} + deep"] = {
            "file": str(path), "params": decoded.count_params(), "macs": result.structured["macs_after"],
            "keep": m["keep"], "distill": m["distill"], "accuracy": train.evaluate(decoded, ds.x_test, ds.y_test),
            "container_bytes": result.bytes, "recipe": recipe.get_config(), "describe": recipe.describe(),
            "seconds": time.time() - t}
        state["deep"] = f"{name} + deep"
        save()


def export_models(args, ds, out, state, save):
    import exporters
    from exporters.variants import Variant
    from edgecomp import store
    from edgecomp.errors import EdgecompError, first_line
    from edgecomp.models import load_keras_model

    calib, cx, cy = ds.x_train[:200], ds.x_test[:256], ds.y_test[:256]
    files = out / "files"
    for name, m in state["models"].items():
        model = None
        for spec in VARIANTS:
            key = f"{name} | {spec}"
            if key in state["exports"]:
                continue
            v = Variant.from_spec(spec)
            fmt, variant = v.format, v.name
            if model is None:
                model = load_keras_model(m["file"]) if m["file"].endswith(".keras") else store.load_compressed(m["file"])
            path = files / v.filename(name.replace(' ', '_').replace('+', ''))
            try:
                art = exporters.export_and_check(model, fmt, v, path, calibration=calib, check_x=cx, check_y=cy)
                state["exports"][key] = {"model": name, "format": fmt, "variant": variant, "path": str(path),
                                         "bytes": art.bytes, "parity": art.parity, "needs": art.needs, "passed": True}
            except EdgecompError as exc:
                state["exports"][key] = {"model": name, "format": fmt, "variant": variant, "path": None,
                                         "passed": False, "error": first_line(exc)}
            print(f"   {key}: {'ok' if state['exports'][key]['passed'] else state['exports'][key]['error']}", flush=True)
            save()


def time_files(args, ds, state, save):
    """Interleaved rounds, each file in a fresh process; alternate the order between rounds."""
    import runtime_bench

    keys = [k for k, e in state["exports"].items() if e["passed"]]
    base_key = "baseline | tflite:fp32"
    done = state.setdefault("rounds", [])
    for r in range(len(done), args.rounds):
        order = keys if r % 2 == 0 else keys[::-1]
        print(f"\n== latency round {r + 1}/{args.rounds} ({len(order)} files)", flush=True)
        recs = runtime_bench.bench_files([state["exports"][k]["path"] for k in order], ds.x_test[:64], None,
                                         threads=1, runs=args.runs, min_time_s=1.0, task=None)
        done.append({k: rec["median_ms"] for k, rec in zip(order, recs)})
        save()
    for k in keys:
        times = [rd[k] for rd in done if rd.get(k)]
        ratios = [rd[base_key] / rd[k] for rd in done if rd.get(k) and rd.get(base_key)]
        state["exports"][k]["median_ms"] = float(_median(times)) if times else None
        state["exports"][k]["speedup"] = float(_median(ratios)) if ratios else None
    save()


def _median(values):
    import numpy as np
    return np.median(np.asarray(values, float))


def markdown(args, state, cmd: str) -> str:
    from edgecomp.report import markdown_table
    base = state["models"]["baseline"]
    ex = state["exports"]
    head = ["model", "params", "MACs", "MACs reduction", "test acc (change)", "container B"] + \
           [f"{v.replace(':', ' ')} ms (speedup)" for v in VARIANTS]
    rows = []
    for name, m in state["models"].items():
        cells = [name, f"{m['params']:,}", f"{m['macs']:,}", f"{base['macs'] / m['macs']:.1f}x",
                 f"{100 * m['accuracy']:.2f}% ({100 * (m['accuracy'] - base['accuracy']):+.2f})",
                 f"{m['container_bytes']:,}"]
        for spec in VARIANTS:
            e = ex.get(f"{name} | {spec}")
            cells.append("-" if e is None else "parity FAIL" if not e["passed"] else
                         f"{e['median_ms']:.3f} ({e['speedup']:.1f}x)" if e.get("median_ms") else "-")
        rows.append(cells)
    lines = ["# Structured pruning: the VGG-like net on Fashion-MNIST", "",
             f"Made by `{cmd}`. Baseline: VGG-like net, 3 epochs of Adam (cosine learning rate from 1e-3, batch 64) "
             f"on {state['data']['train']:,} training images; test accuracy on {state['data']['test']:,} test images. "
             f"Each structured row: {args.structured_steps} step(s) of channel pruning ({args.importance} importance), "
             f"{args.structured_epochs} fine-tuning epoch(s) after each (cosine), the same with and without "
             f"distillation (+KD: temperature and weight {args.distill}); its container holds the smaller model as "
             f"int8 (the seed's coding, no pruning). Latency: batch 1, 1 thread, median of {args.rounds} interleaved "
             "rounds, each file in a fresh process; speedup = the baseline fp32 TFLite's time over the file's, "
             f"median over rounds. Every file passed the parity gate unless marked. Machine: {state.get('machine')}.", "",
             markdown_table(head, rows, "l" + "r" * (len(head) - 1)), ""]
    # MACs reduction against measured speedup
    rows2 = []
    for name, m in state["models"].items():
        for spec in VARIANTS:
            e = ex.get(f"{name} | {spec}")
            if e and e.get("speedup"):
                rows2.append([name, spec.replace(":", " "), f"{base['macs'] / m['macs']:.1f}x", f"{e['speedup']:.1f}x",
                              f"{e['speedup'] / (base['macs'] / m['macs']):.2f}"])
    lines += ["## MACs reduction against measured speedup", "",
              markdown_table(["model", "file", "MACs reduction", "measured speedup", "speedup / MACs reduction"],
                             rows2, "llrrr"), ""]
    s = state.get("summary") or {}
    if s:
        lines += ["## Targets", ""] + [f"- {line}" for line in s["lines"]] + [""]
    return "\n".join(lines)


def summarize(args, state) -> dict:
    base = state["models"]["baseline"]
    ex = state["exports"]
    base_tfl = ex.get("baseline | tflite:fp32", {})
    lines, out = [], {}
    within = [n for n, m in state["models"].items() if n != "baseline"
              and 100 * (base["accuracy"] - m["accuracy"]) <= args.max_drop]
    best = None
    for n in within:
        for spec in VARIANTS:
            e = ex.get(f"{n} | {spec}")
            if e and e["passed"] and e.get("speedup") and (best is None or e["speedup"] > best[2]):
                best = (n, spec, e["speedup"], e["median_ms"])
    if best:
        out["fastest_within_budget"] = {"model": best[0], "file": best[1], "speedup": best[2], "median_ms": best[3]}
        lines.append(f"fastest parity-passing export within {args.max_drop} point(s): {best[0]}, {best[1]}: "
                     f"{best[3]:.3f} ms vs {base_tfl.get('median_ms', float('nan')):.3f} ms for the baseline fp32 "
                     f"TFLite = **{best[2]:.1f}x faster** (target >= 6x: {'met' if best[2] >= 6 else 'missed'})")
        same = ex.get(f"{best[0]} | tflite:fp32", {})
        if same.get("speedup"):
            lines.append(f"fp32 against fp32 (the same kernels on both sides): {best[0]} tflite fp32 "
                         f"{same['median_ms']:.3f} ms = {same['speedup']:.1f}x faster than the baseline fp32 TFLite")
        own = [(k, e) for k, e in ex.items() if e.get("model") == "baseline" and e["passed"] and e.get("speedup")]
        if own:
            k, e = max(own, key=lambda ke: ke[1]["speedup"])
            lines.append(f"against the baseline's own fastest parity-passing export ({k.split(' | ')[1]}, "
                         f"{e['median_ms']:.3f} ms): {e['median_ms'] / best[3]:.1f}x faster")
    deep = state.get("deep")
    if deep:
        m = state["models"][deep]
        ratio = 4 * base["params"] / m["container_bytes"]
        drop = 100 * (base["accuracy"] - m["accuracy"])
        int8 = ex.get(f"{deep} | tflite:int8", {})
        out["deep"] = {"model": deep, "container_ratio": ratio, "drop_points": drop}
        lines.append(f"{deep}: container {m['container_bytes']:,} B = **{ratio:.0f}x** smaller than the fp32 weights "
                     f"({4 * base['params']:,} B), test accuracy {100 * m['accuracy']:.2f}% ({-drop:+.2f} points; "
                     f"targets >= 100x within {args.max_drop} point(s): "
                     f"{'met' if ratio >= 100 and drop <= args.max_drop else 'missed'})")
        if int8.get("passed") and base_tfl.get("bytes"):
            r8 = base_tfl["bytes"] / int8["bytes"]
            out["deep"]["int8_tflite_ratio"] = r8
            lines.append(f"its int8 TFLite: {int8['bytes']:,} B = **{r8:.1f}x** smaller than the baseline fp32 TFLite "
                         f"({base_tfl['bytes']:,} B), runs with resolver `{int8['needs'].get('resolver')}` "
                         f"(target >= 25x with the default delegate: "
                         f"{'met' if r8 >= 25 and int8['needs'].get('resolver') in ('auto', 'default', None) else 'missed'})")
    out["lines"] = lines
    return out


def plot(state) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from edgecomp.report import png_bytes

    fig, ax = plt.subplots(figsize=(10, 5.5))
    pts = []
    markers = {"tflite:fp32": "o", "tflite:int8": "s", "onnx:fp32": "^", "onnx:int8": "D"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, m) in enumerate(state["models"].items()):
        for spec, mk in markers.items():
            e = state["exports"].get(f"{name} | {spec}")
            if e and e.get("median_ms"):
                ax.scatter(e["median_ms"], 100 * m["accuracy"], marker=mk, color=colors[i % len(colors)],
                           label=f"{name}, {spec}", s=40)
                pts.append((e["median_ms"], 100 * m["accuracy"]))
    front, best = [], -1.0
    for ms, acc in sorted(pts):
        if acc > best:
            front.append((ms, acc))
            best = acc
    if front:
        ax.plot(*zip(*front), "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("median latency, batch 1, 1 thread (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("VGG-like net on Fashion-MNIST: structured pruning, accuracy vs measured latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncol=1)
    return png_bytes(fig, dpi=110)


def main(argv=None) -> int:
    import json
    args = parser().parse_args(argv)
    from edgecomp import io
    from edgecomp.data import load_dataset

    out = io.ensure_dir(args.out)
    ds = load_dataset("fashion_mnist", data_dir=args.data_dir).take(args.train_size, None)
    state_path = out / "structured.json"
    settings = {k: getattr(args, k) for k in ("keeps", "structured_steps", "structured_epochs", "distill",
                                              "importance", "deep_rate", "train_size")}
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    files = [m["file"] for m in state.get("models", {}).values()]
    files += [e["path"] for e in state.get("exports", {}).values() if e.get("passed")]
    gone = [f for f in files if not Path(f).is_file()]
    if gone and state.get("settings") == settings:
        print(f"{state_path} refers to {len(gone)} file(s) that are gone (e.g. {gone[0]}: models and exports are "
              "not committed); starting over", flush=True)
    if state.get("settings") != settings or gone:
        state = {"settings": settings, "models": {}, "exports": {}}
    state["data"] = {"train": len(ds.x_train), "test": len(ds.x_test), "source": ds.source}
    from runtime_bench.targets import cpu_description
    state["machine"] = cpu_description()

    def save():
        io.write_json(state_path, state)

    train_models(args, ds, out, state, save)
    export_models(args, ds, out, state, save)
    time_files(args, ds, state, save)
    state["summary"] = summarize(args, state)
    save()
    cmd = " ".join(["python scripts/bench_structured.py", *(argv if argv is not None else sys.argv[1:])])
    io.write_text(out / "structured.md", markdown(args, state, cmd))
    io.write_bytes(out / "structured.png", plot(state))
    print("\n" + "\n".join(state["summary"]["lines"]), flush=True)
    print(f"wrote {out}/structured.json, structured.md, structured.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
