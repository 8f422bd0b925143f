#!/usr/bin/env python
"""Compare the harness's median latency with LiteRT's own benchmark tool on one .tflite file.

The tool is ``litert-benchmark``, the console script that ``ai-edge-litert`` installs
(``ai_edge_litert/tools/benchmark_litert_model.py``, the Python mirror of the C++
``benchmark_litert_model``; the wheel ships no C++ ``benchmark_model`` binary). The
two are run back to back, alternating A/B then B/A for ``--rounds`` rounds, each in a
fresh process, with the same thread count, batch and (with ``--pin``) the same core.
The harness (A) is ``runtime_bench.bench_file`` in its isolated worker; the tool (B)
runs as many timed runs as the harness's first median says fill ``--min-time``.

Prints both medians (median of the per-round medians) and their ratio, and writes
JSON (atomically). Target: the ratio within 10% of 1.

    $ .venv/bin/python scripts/bench_latency_check.py --threads 1 --pin
    harness median 0.803 ms, litert-benchmark median 0.810 ms, ratio 0.991 (target 0.90-1.10: ok)

Caveats, also written to the JSON: the tool prints and saves times rounded to
0.01 ms; it drives the LiteRT ``CompiledModel`` API with the CPU accelerator, the
harness the ``Interpreter`` API with the default XNNPACK delegate; and it feeds
random inputs of the file's own shape, so ``--batch`` must equal the file's batch.
The harness drops runs during which the OS preempted its thread (the tool keeps
them); ``--keep-preempted`` compares like with like on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgecomp.errors import EdgecompError  # noqa: E402
from runtime_bench import bench_file  # noqa: E402
from runtime_bench.checks import check_model, input_shape, inputs_for, run_check, write_check  # noqa: E402
from runtime_bench.targets import pick_core  # noqa: E402


def tool_command() -> list[str]:
    """How to start ``litert-benchmark``: the venv's console script, else ``python -m``."""
    script = Path(sys.executable).with_name("litert-benchmark")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model"]


def run_tool(model: Path, threads: int, runs: int, warmup: int, cpus: list[int] | None) -> dict:
    """One ``litert-benchmark`` run; returns its ``latency`` JSON block (ms, 2 decimals)."""
    with tempfile.TemporaryDirectory(prefix="litert_bench_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = tool_command() + [f"--model={model}", f"--num_threads={threads}", f"--num_runs={runs}",
                                f"--warmup_runs={warmup}", f"--result_json={out}"]
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus and hasattr(os, "sched_setaffinity") else None
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin, timeout=600, check=False)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgecompError(f"litert-benchmark failed (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())["latency"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a .tflite file (default: runs/latest/edgecomp_int8.tflite "
                    "if it exists, else a small CNN built and converted here)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="must equal the file's own batch size")
    ap.add_argument("--rounds", type=int, default=6, help="A/B rounds, alternating the order (default: 6)")
    ap.add_argument("--runs", type=int, default=200, help="minimum timed runs per measurement")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed runs per measurement")
    ap.add_argument("--pin", action="store_true", help="pin both to the same single core")
    ap.add_argument("--keep-preempted", action="store_true",
                    help="keep the harness's preempted runs too, as the tool does (default: drop them)")
    ap.add_argument("--out", default="runs/bench_checks/latency_check.json")
    args = ap.parse_args(argv)

    out = Path(args.out)
    model = check_model(args.model, out.parent)
    if model.suffix.lower() != ".tflite":
        raise SystemExit(f"error: {model} is not a .tflite file")
    file_batch = input_shape(model)[0]
    if args.batch != file_batch:
        raise SystemExit(f"error: litert-benchmark runs the file's own batch ({file_batch}); "
                         f"use --batch {file_batch} or export with batch {args.batch}")
    x = inputs_for(model, n=max(8, args.batch))
    cpus = [pick_core("big")] if args.pin else None
    load_before = os.getloadavg()
    print(f"model {model}, threads {args.threads}, batch {args.batch}, pinned to {cpus or 'nothing'}; "
          f"load {load_before[0]:.2f}", flush=True)

    rounds = []
    tool_runs = None
    for i in range(args.rounds):
        order = "AB" if i % 2 == 0 else "BA"
        row = {"order": order}
        for side in order:
            if side == "A":
                rec = bench_file(model, x, threads=args.threads, batch=args.batch, runs=args.runs,
                                 warmup=args.warmup, min_time_s=args.min_time, task=None, cpus=cpus,
                                 drop_preempted=not args.keep_preempted)
                if rec["error"]:
                    raise SystemExit(f"error: harness failed: {rec['error']}")
                row["harness_median_ms"] = rec["median_ms"]
                row["harness_runs"] = rec["runs"]
                row["harness_preempted"] = rec["preempted"]
                if tool_runs is None:  # the tool has no min-time flag: give it as many runs
                    tool_runs = max(args.runs, math.ceil(args.min_time * 1e3 / rec["median_ms"]))
            else:
                lat = run_tool(model, args.threads, tool_runs or args.runs, args.warmup, cpus)
                row["tool_median_ms"] = lat["median_ms"]
                row["tool_runs"] = lat["num_runs"]
        rounds.append(row)
        print(f"round {i + 1}/{args.rounds} ({order}): harness {row['harness_median_ms']:.4f} ms, "
              f"tool {row['tool_median_ms']:.2f} ms", flush=True)

    harness = statistics.median(r["harness_median_ms"] for r in rounds)
    tool = statistics.median(r["tool_median_ms"] for r in rounds)
    ratio = harness / tool if tool > 0 else float("nan")
    ok = 0.9 <= ratio <= 1.1
    load_after = os.getloadavg()
    result = {
        "model": str(model), "threads": args.threads, "batch": args.batch, "cpus": cpus,
        "min_time_s": args.min_time, "warmup": args.warmup,
        "harness_drops_preempted": not args.keep_preempted, "rounds": rounds,
        "harness_median_ms": harness, "tool_median_ms": tool, "ratio": ratio,
        "target": "0.9 <= ratio <= 1.1", "within_target": ok,
        "tool": " ".join(tool_command()), "loadavg_before": load_before, "loadavg_after": load_after,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "notes": ["litert-benchmark reports times rounded to 0.01 ms",
                  "litert-benchmark uses the CompiledModel API (CPU accelerator); the harness the "
                  "Interpreter API with the default XNNPACK delegate",
                  "each measurement is a fresh process; the order alternates AB/BA",
                  "by default the harness drops runs during which its thread was preempted "
                  "(see runtime_bench.latency); the tool keeps every run"],
    }
    write_check(out, result, title="Latency: the harness against litert-benchmark",
                script="bench_latency_check.py", argv=argv,
                setup=f"`{model.name}`, {args.threads} thread(s), batch {args.batch}, each measurement in a fresh "
                      f"process, order alternating; load {load_before[0]:.2f} -> {load_after[0]:.2f}.",
                head=["round", "order", "harness median ms", "litert-benchmark median ms"], align="rlrr",
                rows=[[i, r["order"], f"{r['harness_median_ms']:.4f}", f"{r['tool_median_ms']:.2f}"]
                      for i, r in enumerate(rounds, 1)],
                verdict=f"Median of the rounds: harness {harness:.3f} ms, litert-benchmark {tool:.3f} ms, "
                        f"ratio **{ratio:.3f}** (target 0.90-1.10: {'met' if ok else 'missed'}).")
    print(f"harness median {harness:.3f} ms, litert-benchmark median {tool:.3f} ms, ratio {ratio:.3f} "
          f"(target 0.90-1.10: {'ok' if ok else 'MISSED'}); load {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    run_check(main)
