#!/usr/bin/env python
"""Every export checked on arm64 under emulation, beside its x86 parity, with the same thresholds.

    python scripts/bench_arm64.py                 # set-up timing, VGG variants, zoo, sparse MobileNet
    python scripts/bench_arm64.py --quick         # fewer samples, A76 only

1. Set-up: ``runtime_bench.emulation.setup`` into a fresh cache folder (timed, sized), then again
   (the cache is reused).
2. The compressed VGG-like net of the main job (``runs/latest/edgecomp.ecz``, made by
   ``edgecomp run``): every TFLite and ONNX variant, exported unchecked, then checked against the
   decoded Keras model on 256 Fashion-MNIST test images, on x86 and on arm64 (Cortex-A76).
3. The seed's zoo as ``scripts/bench_zoo.py`` left it (``runs/bench_zoo``: its containers and its
   fp32/int8 files), on its own data (``bench_zoo.load_data``), 200 test samples.
4. ``mobilenet_sparse`` on Fashion-MNIST (padded to 32x32, 3 channels), pruned with
   ``policy="xnnpack-sparse"`` (1x1 convs only, 80%), exported fp32 and fp32-sparse: which kernels
   ran on arm64 (A76 and A55), from qemu's trace and the library's symbols.

Thresholds are the parity gate's (``exporters.parity.default_thresholds``; UNet fp32: 99.9% pixel
agreement, as bench_zoo). An arm64 row passes when its outputs meet them against Keras and against
the x86 run of the same file. Writes ``bench_arm64.{json,md,png}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vgg", default="runs/latest/edgecomp.ecz", help="the compressed VGG-like net (edgecomp run)")
    p.add_argument("--zoo", default="runs/bench_zoo", help="bench_zoo.py's work folder")
    p.add_argument("--work", default="runs/bench_arm64", help="where the exported files go")
    p.add_argument("--out", default="docs/results/arm64")
    p.add_argument("--quick", action="store_true", help="64/64 samples, A76 only, no fresh set-up")
    p.add_argument("--report-only", action="store_true", help="re-write the md/png from --out's bench_arm64.json")
    return p


def row(name, art_path, model_ref, x, y, thresholds, x86_fig, cpu="a76", **extra):
    from edgecomp import cli_emulated
    from runtime_bench import emulated

    rec = emulated.check_file(art_path, x, model_ref, y=y, cpu=cpu)
    from exporters.parity import judge_figures
    x86_fails = judge_figures(x86_fig, thresholds, "x86 vs Keras")
    rec.update(group=name, thresholds=thresholds, x86=x86_fig, x86_failures=x86_fails,
               failures=cli_emulated.judge(rec, thresholds), **extra)
    flag = "PASS" if not rec["failures"] else "FAIL"
    print(f"  {rec['name']:34s} x86 {'PASS' if not x86_fails else 'FAIL'}  arm64 {flag}"
          + (f"  ({rec['failures'][0][:90]})" if rec["failures"] else ""), flush=True)
    return rec


def x86_figures(model, path, x, y, thresholds):
    from exporters.parity import check_parity
    fig = check_parity(model, path, x, y, thresholds=thresholds)
    return {k: fig[k] for k in ("max_abs_diff", "mean_abs_diff", "top1_agreement", "accuracy_keras",
                                "accuracy_artifact", "accuracy_delta") if k in fig}


def vgg_rows(args, n):
    import exporters
    from edgecomp.data import load_dataset
    from edgecomp.store import load_compressed
    from exporters.parity import default_thresholds
    from exporters.variants import VARIANTS

    if not Path(args.vgg).is_file():
        raise SystemExit(f"bench_arm64: {args.vgg} is missing; run `edgecomp run` (the demo) first, or pass --vgg")
    model = load_compressed(args.vgg)
    ds = load_dataset("fashion_mnist").take(2000, n)
    x, y = ds.x_test, ds.y_test
    ref = np.asarray(model.predict(x, verbose=0))
    out, rows = Path(args.work) / "vgg", []
    print(f"VGG-like ({args.vgg}): every variant, {n} samples", flush=True)
    for fmt, names in VARIANTS.items():
        for variant in names:
            path = out / f"vgg_{variant}.{fmt}"
            try:
                art = exporters.export(model, fmt, variant, path, calibration=ds.x_train[:200])
            except Exception as exc:  # a variant that doesn't convert is a row, not a stop
                rows.append({"group": "vgg", "name": path.name, "error": f"export failed: {exc}"[:200],
                             "failures": ["not exported"], "x86_failures": ["not exported"]})
                continue
            thr = default_thresholds(variant)
            rows.append(row("vgg", path, ref, x, y, thr, x86_figures(model, art, x, y, thr), variant=variant))
    return rows


def zoo_rows(args, n):
    import bench_zoo
    from edgecomp.store import load_compressed
    from exporters.parity import default_thresholds
    from exporters.variants import variant_of_file

    rows, zoo = [], Path(args.zoo)
    ns = argparse.Namespace(data_dir=None, n_train=512, n_test=1000)
    for name in bench_zoo.MODELS:
        if not (zoo / f"{name}.ecz").is_file():
            print(f"zoo {name}: {zoo}/{name}.ecz missing (run scripts/bench_zoo.py); skipped", flush=True)
            continue
        ds, _ = bench_zoo.load_data(name, ns)
        model = load_compressed(zoo / f"{name}.ecz")
        x, y = ds.x_test[:n], ds.y_test[:n]
        ref = np.asarray(model.predict(x, verbose=0))
        print(f"zoo {name}: fp32/int8, {n} samples", flush=True)
        for path in sorted(zoo.glob(f"{name}_*.*")):
            parsed = variant_of_file(path)
            variant = parsed.name if parsed is not None and path.stem == f"{name}_{parsed.name}" else None
            if variant not in ("fp32", "int8", "int16x8"):   # what bench_zoo ships (int16x8 where int8 misses)
                continue
            thr = default_thresholds(variant)
            if ds.task == "segmentation" and variant == "fp32":
                thr = {"top1_agreement": 0.999}
            rows.append(row(f"zoo:{name}", path, ref, x, y, thr, x86_figures(model, path, x, y, thr),
                            variant=variant))
    return rows


def sparse_rows(args, cpus):
    import exporters
    from edgecomp import build_model, compress, train
    from edgecomp.data import load_dataset
    from exporters.parity import default_thresholds

    ds = load_dataset("fashion_mnist").take(6000, 64)
    prep = lambda a: np.repeat(np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)  # noqa: E731
    xtr, xte = prep(ds.x_train), prep(ds.x_test)
    model = build_model("mobilenet_sparse", xtr.shape[1:], ds.num_classes, bn_momentum=0.9)
    print("mobilenet_sparse: train 3 epochs, prune 1x1 convs 80% (policy xnnpack-sparse), 1 epoch", flush=True)
    train.fit(model, xtr, ds.y_train, epochs=3, batch_size=64, verbose=0, learning_rate=2e-3)
    result = compress(model, (xtr, ds.y_train), rate=0.8, policy="xnnpack-sparse", fine_tune_epochs=1,
                      batch_size=64, verbose=0)
    decoded = result.decode()
    ref = np.asarray(decoded.predict(xte, verbose=0))
    sparsity = {r["name"]: round(r.get("sparsity", 0.0), 3) for r in result.report if r.get("sparsity")}
    rows = []
    for variant in ("fp32", "fp32-sparse"):
        art = exporters.export(decoded, "tflite", variant, Path(args.work) / f"mobilenet_sparse_{variant}.tflite")
        path, thr = art.path, default_thresholds(variant)
        fig = x86_figures(decoded, art, xte, ds.y_test, thr)
        for cpu in cpus:
            rows.append(row("sparse", path, ref, xte, ds.y_test, thr, fig, cpu=cpu, variant=variant,
                            sparsity=sparsity))
    return rows, sparsity


def setup_figures():
    from runtime_bench import emulation
    with tempfile.TemporaryDirectory(prefix="edgecomp_setup_") as tmp:
        t0 = time.perf_counter()
        env = emulation.setup(root=Path(tmp), progress=lambda line: print("  " + line, flush=True))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        emulation.setup(root=Path(tmp), progress=lambda line: None)
        return {"first_s": round(first, 1), "again_s": round(time.perf_counter() - t0, 3),
                "disk_mb": env.manifest["disk_mb"], "steps": env.manifest["steps"], "qemu": env.manifest["qemu"]}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from bench_arm64_md import write_outputs
    if args.report_only:
        import json
        done = json.loads((Path(args.out) / "bench_arm64.json").read_text())
        write_outputs(Path(args.out), done["meta"], done["records"], done["sparse"])
        return 0
    from runtime_bench import emulation
    from runtime_bench.targets import cpu_description

    t0 = time.perf_counter()
    emulation.ensure()
    setup = None if args.quick else setup_figures()
    n_vgg, n_zoo = (64, 64) if args.quick else (256, 200)
    records = vgg_rows(args, n_vgg) + zoo_rows(args, n_zoo)
    sparse, sparsity = sparse_rows(args, ["a76"] if args.quick else ["a76", "a55"])
    meta = {"command": "python scripts/bench_arm64.py" + (" --quick" if args.quick else ""),
            "seconds": round(time.perf_counter() - t0), "machine": cpu_description(), "setup": setup,
            "versions": emulation.VERSIONS, "sparsity": sparsity, "n_vgg": n_vgg, "n_zoo": n_zoo}
    write_outputs(Path(args.out), meta, records, sparse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
