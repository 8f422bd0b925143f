#!/usr/bin/env python
"""Compression fine-tuning on 2 localhost workers against 1 process, side by side, on Fashion-MNIST.

    python scripts/bench_distribute.py                 # ~15 min on 2 cores
    python scripts/bench_distribute.py --quick         # a smaller slice, for a smoke run

It trains the VGG-like net briefly, then runs ``edgecomp compress`` on it, once in one process
and once as 2 workers (``scripts/launch_workers.py``, MultiWorkerMirroredStrategy on loopback), at
the same global batch, seed and epochs, for the seed method, the deep method, deep + QAT and
structured + seed, each with 3 seeds. Per recipe: test accuracy of each, whether both workers end with the same
weights and container, and pruned weights that are not 0 after any step on any replica. Then:
samples/s of 1 process against 2 workers in interleaved rounds (fresh processes); MirroredStrategy
on a CPU split in 2; a worker killed with SIGKILL, and one frozen with SIGSTOP, mid-run (how long
the other takes to stop, and its message), and ``--resume`` after the kill.
Writes docs/results/distribute/bench_distribute.{json,md,png}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecomp.io import write_bytes, write_json, write_text  # noqa: E402

EDGECOMP = [sys.executable, "-m", "edgecomp.cli"]
LAUNCH = [sys.executable, str(ROOT / "scripts" / "launch_workers.py")]
RECIPES = {"seed 0.8": ["--rate", "0.8"],
           "deep 0.8": ["--method", "deep", "--rate", "0.8", "--centroid-epochs", "2"],
           "deep 0.8 + QAT": ["--method", "deep", "--rate", "0.8", "--qat-epochs", "1"],
           "channels 0.5 + seed 0.8": ["--channels", "0.5", "--rate", "0.8"]}


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def parse(text: str) -> dict:
    """What one process (or each worker, by its log prefix) printed: accuracy, digests, masks, speed."""
    out: dict = {}
    for line in text.splitlines():
        who = re.match(r"\[worker (\d+)\] ", line)
        key = int(who.group(1)) if who else 0
        row = out.setdefault(key, {})
        if m := re.search(r"decoded test accuracy ([\d.]+)%", line):
            row["accuracy"] = float(m.group(1))
        if m := re.search(r"weights sha256 (\w+), container sha256 (\w+)", line):
            row["weights"], row["container"] = m.group(1), m.group(2)
        if m := re.search(r"mask check on .*: (\d+) pruned weights not 0 after (\d+) steps", line):
            row["mask_nonzero"], row["mask_steps"] = int(m.group(1)), int(m.group(2))
        if m := re.search(r"training: (.*); global batch (.*); learning rate (.*); ([\d,]+) samples in ([\d.]+) s "
                          r"\((\d+) samples/s\)", line):
            row.update(where=m.group(1), batch=m.group(2), learning_rate=m.group(3),
                       samples=int(m.group(4).replace(",", "")), train_s=float(m.group(5)),
                       samples_per_s=float(m.group(6)))
    return out


def compress_args(model, out, extra, a) -> list[str]:
    return ["compress", str(model), "--data", "fashion_mnist", "--train-size", str(a.train_size), "--test-size",
            str(a.test_size), "--batch-size", str(a.batch_size), "--check-masks", *extra, "-o", str(out)]


def single(model, out, extra, a, *more) -> dict:
    r = subprocess.run([*EDGECOMP, *compress_args(model, out, extra, a), *more], capture_output=True, text=True,
                       env=_env(), cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"bench_distribute: one-process run failed: {r.stderr.strip().splitlines()[-1:]}")
    return {**parse(r.stdout)[0], "sha256": hashlib.sha256(Path(out).read_bytes()).hexdigest()[:16]}


def workers(model, out, extra, a, logs, *more) -> dict:
    cmd = [*LAUNCH, "2", "--log-dir", str(logs), "--",
           *EDGECOMP, *compress_args(model, out, extra, a), "--distribute", "multi-worker", *more]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"bench_distribute: 2-worker run failed: {r.stdout.strip().splitlines()[-3:]}")
    return {"workers": parse(r.stdout), "sha256": hashlib.sha256(Path(out).read_bytes()).hexdigest()[:16]}


def fault(model, out, extra, a, logs, sig, when: str, ck) -> dict:
    """Start 2 workers, send ``sig`` to worker 1 once its log shows ``when``; how the other ends."""
    shutil.rmtree(logs, ignore_errors=True)   # an earlier run's log would trigger the fault at once
    Path(out).unlink(missing_ok=True)          # and its output would read as written
    summary = logs / "summary.json"
    cmd = [*LAUNCH, "2", "--log-dir", str(logs), "--summary", str(summary), "--grace", "90", "--",
           *EDGECOMP, *compress_args(model, out, extra, a), "--distribute", "multi-worker", "--checkpoints", str(ck)]
    # the workers' output is in their logs; an unread pipe could fill and stall the launcher
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    log = logs / "worker-1.log"
    while proc.poll() is None and not (log.exists() and when in log.read_text()):
        time.sleep(0.1)
    if proc.poll() is not None:
        raise SystemExit(f"bench_distribute: the run ended before the fault ('{when}' never appeared)")
    pid = int((logs / "worker-1.pid").read_text())
    sent = time.monotonic()
    os.kill(pid, sig)
    stopped = None
    log0 = logs / "worker-0.log"
    while proc.poll() is None:
        if stopped is None and "edgecomp: error" in log0.read_text():
            stopped = time.monotonic() - sent
            if sig == signal.SIGSTOP:   # the frozen worker never ends by itself
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    proc.communicate()
    s = json.loads(summary.read_text())
    message = next((line for line in log0.read_text().splitlines() if "edgecomp: error" in line), None)
    return {"signal": signal.Signals(sig).name, "at": when, "worker0_exit": s["exit_codes"][0],
            "worker0_stopped_after_s": None if stopped is None else round(stopped, 1),
            "stopped_by_launcher": s["stopped_by_launcher"], "message": message, "output_written": Path(out).exists()}


def baseline(path: Path, a, dropout: float = 0.5) -> float:
    """The VGG-like net, trained briefly on the slice (the model every run compresses)."""
    code = ("import sys; from edgecomp import train; from edgecomp.data import load_dataset; "
            "from edgecomp.models import build_model; "
            f"ds = load_dataset('fashion_mnist').take({a.train_size}, {a.test_size}); "
            f"m = build_model('vgg', ds.input_shape, ds.num_classes, dropout={dropout}); "
            f"train.fit(m, ds.x_train, ds.y_train, epochs={a.base_epochs}, batch_size=64, lr_schedule='cosine', verbose=2); "
            f"m.save(sys.argv[1]); print('baseline accuracy', train.evaluate(m, ds.x_test, ds.y_test))")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=_env(), cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"bench_distribute: baseline training failed: {r.stderr.strip().splitlines()[-1:]}")
    return float(r.stdout.strip().splitlines()[-1].split()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds per recipe, each run in 1 process and on 2 workers (default: 3)")
    p.add_argument("--quick", action="store_true", help="1,024 training samples, 1 seed")
    p.add_argument("--work", default="runs/bench_distribute", help="scratch folder (default: runs/bench_distribute)")
    p.add_argument("-o", "--out", default="docs/results/distribute")
    a = p.parse_args(argv)
    if a.quick:
        a.train_size, a.test_size, a.seeds = 1024, 500, 1
    work, out = ROOT / a.work, ROOT / a.out
    work.mkdir(parents=True, exist_ok=True)
    from runtime_bench.targets import cpu_description
    t0 = time.monotonic()
    model = work / "vgg.keras"
    base_acc = baseline(model, a)
    print(f"baseline: {base_acc:.2%}", flush=True)
    rows = []
    speed = {"1 process": [], "2 workers": []}
    for name, extra in RECIPES.items():
        tag = re.sub(r"\W+", "-", name)
        runs = []
        for seed in range(a.seeds):   # 1 process, then 2 workers, per seed: interleaved fresh processes
            more = ["--seed", str(seed)]
            one = single(model, work / f"{tag}-1.ecz", extra, a, *more)
            two = workers(model, work / f"{tag}-2.ecz", extra, a, work / f"logs-{tag}", *more)
            w = two["workers"]
            runs.append({"seed": seed, "single": one, "workers": w, "container_sha256": two["sha256"],
                         "same_weights": len({w[i]["weights"] for i in w}) == 1 and len(w) == 2,
                         "same_container": len({w[i]["container"] for i in w}) == 1 and len(w) == 2,
                         "delta_points": round(w[0]["accuracy"] - one["accuracy"], 2)})
            if name == "seed 0.8":
                speed["1 process"].append(one["samples_per_s"])
                speed["2 workers"].append(w[0]["samples_per_s"])
            print(f"{name}, seed {seed}: 1 process {one['accuracy']:.2f}%, 2 workers {w[0]['accuracy']:.2f}% / "
                  f"{w[1]['accuracy']:.2f}%, same weights {runs[-1]['same_weights']}, masks "
                  f"{[w[i]['mask_nonzero'] for i in w]}", flush=True)
        mean = lambda k: sum(k(r) for r in runs) / len(runs)  # noqa: E731
        rows.append({"recipe": name, "runs": runs, "single_mean": round(mean(lambda r: r["single"]["accuracy"]), 3),
                     "workers_mean": round(mean(lambda r: r["workers"][0]["accuracy"]), 3),
                     "delta_mean": round(mean(lambda r: r["delta_points"]), 3),
                     "single_spread": round(max(r["single"]["accuracy"] for r in runs)
                                            - min(r["single"]["accuracy"] for r in runs), 2)})
    mirrored = single(model, work / "mirrored.ecz", RECIPES["seed 0.8"], a, "--distribute", "mirrored",
                      "--cpu-devices", "2")
    # control: the same net without dropout, whose random draws are the one thing a split batch changes
    plain = work / "vgg-nodropout.keras"
    plain_acc = baseline(plain, a, dropout=0.0)
    one = single(plain, work / "plain-1.ecz", RECIPES["seed 0.8"], a)
    two = workers(plain, work / "plain-2.ecz", RECIPES["seed 0.8"], a, work / "logs-plain")
    control = {"baseline_accuracy": plain_acc, "single": one["accuracy"], "workers": two["workers"][0]["accuracy"],
               "max_weight_diff": max_weight_diff(work / "plain-1.ecz", work / "plain-2.ecz")}
    faults = []
    deep = RECIPES["deep 0.8"]
    ck = work / "ck-kill"
    faults.append(fault(model, work / "kill.ecz", deep, a, work / "logs-kill", signal.SIGKILL,
                        "Centroid fine-tuning epoch 2/", ck))
    resumed = workers(model, work / "kill.ecz", deep, a, work / "logs-resume", "--checkpoints", str(ck), "--resume")
    faults[-1]["resume"] = {"accuracy": resumed["workers"][0]["accuracy"], "sha256": resumed["sha256"],
                            "same_as_uninterrupted": resumed["sha256"] == rows[1]["runs"][0]["container_sha256"]}
    faults.append(fault(model, work / "stop.ecz", deep, a, work / "logs-stop", signal.SIGSTOP,
                        "Centroid fine-tuning epoch 2/", work / "ck-stop"))
    report = {"cpu": cpu_description(), "train_size": a.train_size, "test_size": a.test_size,
              "batch_size": a.batch_size, "baseline_accuracy": base_acc, "rows": rows, "mirrored": mirrored,
              "speed": speed, "faults": faults, "control": control, "seconds": round(time.monotonic() - t0)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_distribute.json", report)
    write_text(out / "bench_distribute.md", markdown(report))
    write_bytes(out / "bench_distribute.png", plot(speed))
    print(markdown(report))
    return 0


def max_weight_diff(a: Path, b: Path) -> float:
    """The largest difference between two containers' decoded weights (numpy only)."""
    import numpy as np

    from edgecomp import codec
    wa, wb = codec.decode_weights(a.read_bytes())[1], codec.decode_weights(b.read_bytes())[1]
    return float(max(np.max(np.abs(wa[k] - wb[k])) for k in wa))


def _median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def markdown(r: dict) -> str:
    cmd = "python scripts/bench_distribute.py"
    lines = ["# Fine-tuning on 2 workers against 1 process", "",
             f"`{cmd}` on {r['cpu']}: the VGG-like net ({r['baseline_accuracy']:.2%} after a short training) "
             f"compressed on {r['train_size']:,} Fashion-MNIST training samples, tested on {r['test_size']:,}; global "
             f"batch {r['batch_size']}, seed 0, the same epochs; 2 workers = MultiWorkerMirroredStrategy on loopback "
             "(scripts/launch_workers.py), 1 thread each.", "",
             f"Each recipe ran with seeds 0..{len(r['rows'][0]['runs']) - 1}, once in 1 process and once on 2 workers "
             "per seed. Accuracy in %; delta = 2 workers - 1 process; spread = max - min of the 1-process runs "
             "over the seeds (the noise floor: dropout draws differ between one batch of 64 and two of 32).", "",
             "| recipe | 1 process acc (mean; per seed) | 2 workers acc (mean; per seed) | delta (mean; per seed) | "
             "1-process spread | same weights / container on both, every seed | pruned weights not 0 (w0, w1), "
             "steps | global batch; lr |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        runs = row["runs"]
        w = runs[0]["workers"]
        per = lambda f: ", ".join(f(x) for x in runs)  # noqa: E731
        lines.append(f"| {row['recipe']} | {row['single_mean']:.2f}; {per(lambda x: format(x['single']['accuracy'], '.2f'))} | "
                     f"{row['workers_mean']:.2f}; {per(lambda x: format(x['workers'][0]['accuracy'], '.2f'))} | "
                     f"{row['delta_mean']:+.2f}; {per(lambda x: format(x['delta_points'], '+.2f'))} | "
                     f"{row['single_spread']:.2f} | "
                     f"{'yes' if all(x['same_weights'] for x in runs) else 'NO'} / "
                     f"{'yes' if all(x['same_container'] for x in runs) else 'NO'} | "
                     f"{sum(x['workers'][0]['mask_nonzero'] + x['workers'][1]['mask_nonzero'] for x in runs)}, "
                     f"{w[0]['mask_steps']} per run | {w[0]['batch']}; {w[0]['learning_rate']} |")
    m = r["mirrored"]
    c = r["control"]
    lines += ["", f"Control, the same net without dropout (its random draws are what a split batch changes; "
              f"baseline {c['baseline_accuracy']:.2%}), seed 0.8, seed 0: 1 process {c['single']:.2f}%, 2 workers "
              f"{c['workers']:.2f}%; the largest difference between their decoded weights: {c['max_weight_diff']:.2g}."]
    lines += ["", f"MirroredStrategy on the CPU split into 2 logical devices (seed 0.8): {m['where']}, accuracy "
              f"{m['accuracy']:.2f}% against {r['rows'][0]['runs'][0]['single']['accuracy']:.2f}% on one device (seed 0); pruned weights "
              f"not 0 on either replica: {m['mask_nonzero']} after {m['mask_steps']} steps.", "",
              f"Throughput of the seed recipe's fine-tuning, its {len(r['speed']['1 process'])} interleaved rounds of "
              "fresh processes above (median samples/s, tracing included): "
              + ", ".join(f"{k} {_median(v):.0f} ({', '.join(f'{x:.0f}' for x in v)})" for k, v in r["speed"].items())
              + ". Both share this machine's 2 cores, so no speedup is expected here.", ""]
    for f in r["faults"]:
        lines.append(f"- **{f['signal']}** to worker 1 at '{f['at']}': worker 0 stopped by itself after "
                     f"{f['worker0_stopped_after_s']} s with exit {f['worker0_exit']} (launcher had to stop it: "
                     f"{'yes' if f['stopped_by_launcher'] else 'no'}); no output written: "
                     f"{'yes' if not f['output_written'] else 'NO'}. Its message: `{f['message']}`")
        if "resume" in f:
            res = f["resume"]
            lines.append(f"  - `--resume` on 2 workers finished: accuracy {res['accuracy']:.2f}%, container identical "
                         f"to the uninterrupted 2-worker run: {'yes' if res['same_as_uninterrupted'] else 'no'}.")
    lines += ["", f"Bench time: {r['seconds']} s."]
    return "\n".join(lines) + "\n"


def plot(speed: dict) -> bytes:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(speed)
    ax.bar(names, [_median(speed[n]) for n in names], color=["#4c72b0", "#dd8452"])
    for i, n in enumerate(names):
        ax.scatter([i] * len(speed[n]), speed[n], color="k", s=12, zorder=3)
    ax.set_ylabel("fine-tuning samples/s")
    ax.set_title("seed recipe fine-tuning, 2 cores")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
