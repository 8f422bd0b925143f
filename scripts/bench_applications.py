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
parity is a row with its figures, not an abort). Where a trained family's int8 file misses, its
int16x8 file is checked, and the family is deep-compressed again with ``--qat-epochs`` of
quantization-aware training, its int8 files made from that container (the "QAT int8" route, what
a practitioner does when post-training int8 is not enough). Each file is then benchmarked (``runtime_bench.bench_files``,
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

from bench_applications_family import FAMILIES, TRAINED, run_family  # noqa: E402 - the per-family work


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
    p.add_argument("--qat-epochs", type=int, default=1,
                   help="where a trained family's int8 file misses: deep compression again with this many "
                        "QAT epochs, and int8 from its container (0: not tried)")
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
            "fine_tune_lr": args.fine_tune_lr, "qat_epochs": args.qat_epochs,
            "n_train": pick(args.n_train, 512, 256),
            "n_test": pick(args.n_test, 256, 64), "runs": pick(args.runs, 30, 5), "quick": q}


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
TRAINING_SETTINGS = ("train_steps", "train_target", "n_fit", "fine_tune_epochs", "fine_tune_lr", "anneal_epochs",
                     "qat_epochs")


def relevant(cfg: dict, family: str) -> dict:
    """The settings ``family``'s row depends on (``--reuse`` takes a row made with the same ones)."""
    trained = family in cfg.get("train", ())
    return {k: v for k, v in cfg.items() if k != "train" and (trained or k not in TRAINING_SETTINGS)} | {
        "trained": trained}


def reusable(row: dict, cfg: dict, family: str) -> bool:
    """``row`` was made with ``cfg``'s settings; ``qat_epochs`` counts only where the QAT route ran
    or would have (a trained family whose int8 file missed)."""
    made = dict(row.get("settings", {}))
    needs_qat = any(a.get("route") == "qat" or (a["variant"] == "int8" and not a["passed"])
                    for a in row.get("artifacts", []))
    if not needs_qat:
        made["qat_epochs"] = cfg.get("qat_epochs")
    return relevant(made, family) == relevant(cfg, family)


def run_isolated(family: str, args, work: Path) -> dict:
    """Run one family in a fresh process (stderr passes through as progress); a crash or a timeout is a row."""
    result = work / f"{family}.json"
    if args.reuse and result.is_file():
        row = json.loads(result.read_text())
        if reusable(row, settings(args), family):
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
           "--fine-tune-epochs", str(args.fine_tune_epochs), "--qat-epochs", str(args.qat_epochs)]
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
