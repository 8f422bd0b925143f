#!/usr/bin/env python
"""Compression fine-tuning on 2 localhost workers against 1 process, side by side, on Fashion-MNIST.

    python scripts/bench_distribute.py                 # ~10 min on 2 cores
    python scripts/bench_distribute.py --quick         # a smaller slice, for a smoke run

It trains the VGG-like net briefly, then runs ``edgecomp compress`` on it, once in one process
and once as 2 workers (``scripts/launch_workers.py``, MultiWorkerMirroredStrategy on loopback), at
the same global batch, seed and epochs, for the seed method, the deep method, deep + QAT and
structured + seed. Per recipe: test accuracy of each, whether both workers end with the same
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


def workers(model, out, extra, a, logs, *more, summary=None) -> dict:
    cmd = [*LAUNCH, "2", "--log-dir", str(logs), *(["--summary", str(summary)] if summary else []), "--",
           *EDGECOMP, *compress_args(model, out, extra, a), "--distribute", "multi-worker", *more]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"bench_distribute: 2-worker run failed: {r.stdout.strip().splitlines()[-3:]}")
    return {"workers": parse(r.stdout), "sha256": hashlib.sha256(Path(out).read_bytes()).hexdigest()[:16]}


def fault(model, out, extra, a, logs, sig, when: str, ck) -> dict:
    """Start 2 workers, send ``sig`` to worker 1 once its log shows ``when``; how the other ends."""
    summary = logs / "summary.json"
    cmd = [*LAUNCH, "2", "--log-dir", str(logs), "--summary", str(summary), "--grace", "90", "--",
           *EDGECOMP, *compress_args(model, out, extra, a), "--distribute", "multi-worker", "--checkpoints", str(ck)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
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


def baseline(path: Path, a) -> float:
    """The VGG-like net, trained briefly on the slice (the model every run compresses)."""
    code = ("import sys; from edgecomp import train; from edgecomp.data import load_dataset; "
            "from edgecomp.models import build_model; "
            f"ds = load_dataset('fashion_mnist').take({a.train_size}, {a.test_size}); "
            "m = build_model('vgg', ds.input_shape, ds.num_classes); "
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
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default: 3)")
    p.add_argument("--quick", action="store_true", help="1,024 training samples, 1 round")
    p.add_argument("--work", default="runs/bench_distribute", help="scratch folder (default: runs/bench_distribute)")
    p.add_argument("-o", "--out", default="docs/results/distribute")
    a = p.parse_args(argv)
    if a.quick:
        a.train_size, a.test_size, a.rounds = 1024, 500, 1
    work, out = ROOT / a.work, ROOT / a.out
    work.mkdir(parents=True, exist_ok=True)
    from runtime_bench.targets import cpu_description
    t0 = time.monotonic()
    model = work / "vgg.keras"
    base_acc = baseline(model, a)
    print(f"baseline: {base_acc:.2%}", flush=True)
    rows = []
    for name, extra in RECIPES.items():
        tag = re.sub(r"\W+", "-", name)
        one = single(model, work / f"{tag}-1.ecz", extra, a)
        two = workers(model, work / f"{tag}-2.ecz", extra, a, work / f"logs-{tag}")
        w = two["workers"]
        rows.append({"recipe": name, "single": one, "workers": w, "container_sha256": two["sha256"],
                     "same_weights": len({w[i]["weights"] for i in w}) == 1 and len(w) == 2,
                     "same_container": len({w[i]["container"] for i in w}) == 1 and len(w) == 2,
                     "delta_points": round(w[0]["accuracy"] - one["accuracy"], 2)})
        print(f"{name}: 1 process {one['accuracy']:.2f}%, 2 workers {w[0]['accuracy']:.2f}% / {w[1]['accuracy']:.2f}%, "
              f"same weights {rows[-1]['same_weights']}, masks {[w[i]['mask_nonzero'] for i in w]}", flush=True)
    mirrored = single(model, work / "mirrored.ecz", RECIPES["seed 0.8"], a, "--distribute", "mirrored",
                      "--cpu-devices", "2")
    speed = {"1 process": [], "2 workers": []}
    for _ in range(a.rounds):   # interleaved, each a fresh process (or pair)
        speed["1 process"].append(single(model, work / "speed-1.ecz", RECIPES["seed 0.8"], a)["samples_per_s"])
        two = workers(model, work / "speed-2.ecz", RECIPES["seed 0.8"], a, work / "logs-speed")["workers"]
        speed["2 workers"].append(two[0]["samples_per_s"])
    faults = []
    deep = RECIPES["deep 0.8"]
    ck = work / "ck-kill"
    faults.append(fault(model, work / "kill.ecz", deep, a, work / "logs-kill", signal.SIGKILL,
                        "Centroid fine-tuning epoch 2/", ck))
    resumed = workers(model, work / "kill.ecz", deep, a, work / "logs-resume", "--checkpoints", str(ck), "--resume")
    faults[-1]["resume"] = {"accuracy": resumed["workers"][0]["accuracy"], "sha256": resumed["sha256"],
                            "same_as_uninterrupted": resumed["sha256"] == rows[1]["container_sha256"]}
    faults.append(fault(model, work / "stop.ecz", RECIPES["seed 0.8"], a, work / "logs-stop", signal.SIGSTOP,
                        "Epoch 1/", work / "ck-stop"))
    report = {"cpu": cpu_description(), "train_size": a.train_size, "test_size": a.test_size,
              "batch_size": a.batch_size, "baseline_accuracy": base_acc, "rows": rows, "mirrored": mirrored,
              "speed": speed, "faults": faults, "seconds": round(time.monotonic() - t0)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_distribute.json", report)
    write_text(out / "bench_distribute.md", markdown(report))
    write_bytes(out / "bench_distribute.png", plot(speed))
    print(markdown(report))
    return 0


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
             "| recipe | 1 process acc | 2 workers acc (w0 / w1) | delta | same weights / container on both | "
             "pruned weights not 0 (w0, w1; steps) | global batch; lr |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        w = row["workers"]
        lines.append(f"| {row['recipe']} | {row['single']['accuracy']:.2f} | {w[0]['accuracy']:.2f} / "
                     f"{w[1]['accuracy']:.2f} | {row['delta_points']:+.2f} | "
                     f"{'yes' if row['same_weights'] else 'NO'} / {'yes' if row['same_container'] else 'NO'} | "
                     f"{w[0]['mask_nonzero']}, {w[1]['mask_nonzero']}; {w[0]['mask_steps']} | "
                     f"{w[0]['batch']}; {w[0]['learning_rate']} |")
    m = r["mirrored"]
    lines += ["", f"MirroredStrategy on the CPU split into 2 logical devices (seed 0.8): {m['where']}, accuracy "
              f"{m['accuracy']:.2f}% against {r['rows'][0]['single']['accuracy']:.2f}% on one device; pruned weights "
              f"not 0 on either replica: {m['mask_nonzero']} after {m['mask_steps']} steps.", "",
              f"Throughput of the seed recipe's fine-tuning, {len(r['speed']['1 process'])} interleaved rounds of fresh "
              "processes (median samples/s, tracing included): "
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
