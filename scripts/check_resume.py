#!/usr/bin/env python
"""Kill ``edgecomp run`` with SIGKILL at random points, resume it, and compare with an
uninterrupted run: the final container must be byte-identical, and no file at a final
path may ever be partial.

    python scripts/check_resume.py --kills 5 --out runs/resume-check

Prints a line per kill and writes ``OUT/resume_check.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The main job's containers: the seed's method and edgecomp's recipe (structured + deep by default).
CONTAINERS = ("seed.ecz", "edgecomp.ecz")
RUN_ARGS = ["--data", "synthetic_images", "--width", "0.25", "--epochs", "2", "--prune-schedule", "iterative:3",
            "--fine-tune-epochs", "1", "--latency-runs", "10", "--test-size", "200"]


def edgecomp(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "edgecomp.cli", "run", *RUN_ARGS, "-o", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_final_files(out: Path) -> list[str]:
    """Every file at a final path must be whole: containers decode, models load, JSON parses."""
    from edgecomp import codec
    problems = []
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue  # temp files (".name.XXXX.part.ext") are not final paths
        try:
            if path.suffix == ".ecz":
                codec.decode_weights(path.read_bytes())
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".npz":
                import numpy as np
                with np.load(path, allow_pickle=False) as z:
                    [z[k] for k in z.files]
            elif path.suffix == ".keras":
                import zipfile
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
                    if bad:
                        raise ValueError(f"bad member {bad}")
            elif path.suffix in (".tflite", ".onnx", ".png", ".md"):
                if path.stat().st_size == 0:
                    raise ValueError("empty")
        except Exception as exc:  # any failure to read is a partial file
            problems.append(f"{path.relative_to(out)}: {exc}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="runs/resume-check")
    args = p.parse_args(argv)
    from edgecomp import io

    out = io.ensure_dir(args.out)
    ref, test = out / "uninterrupted", out / "interrupted"
    shutil.rmtree(ref, ignore_errors=True)
    shutil.rmtree(test, ignore_errors=True)
    t0 = time.time()
    proc = edgecomp(ref)
    _, err = proc.communicate()
    if proc.returncode != 0:
        print(err.decode()[-2000:])
        raise SystemExit("the uninterrupted run failed")
    duration = time.time() - t0
    print(f"uninterrupted run: {duration:.1f} s, container sha256 "
          + ", ".join(f"{c} {sha(ref / c)[:16]}" for c in CONTAINERS))

    rng = random.Random(args.seed)
    kills = []
    for i in range(args.kills):
        delay = rng.uniform(4.0, duration * 0.5)  # resumed runs skip finished stages: kills spread over the work
        proc = edgecomp(test, *(["--resume"] if i else []))
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = test / "checkpoints" / "state.json"
        stages = list(json.loads(state.read_text())["stages"]) if state.is_file() else []
        problems = check_final_files(test)
        kills.append({"after_s": round(delay, 1), "finished_before_kill": finished, "stages_done": stages,
                      "partial_files": problems})
        print(f"kill {i + 1}: after {delay:.1f} s, stages done: {', '.join(stages) or 'none'}; "
              f"partial files at final paths: {len(problems)}")
    proc = edgecomp(test, "--resume")
    _, err = proc.communicate()
    if proc.returncode != 0:
        print(err.decode()[-2000:])
        raise SystemExit("the resumed run failed")
    a = {c: sha(ref / c) for c in CONTAINERS}
    b = {c: sha(test / c) for c in CONTAINERS}
    result = {"uninterrupted_seconds": duration, "kills": kills, "uninterrupted_sha256": a, "resumed_sha256": b,
              "identical": a == b, "partial_files_total": sum(len(k["partial_files"]) for k in kills),
              "run_args": RUN_ARGS}
    io.write_json(out / "resume_check.json", result)
    print(f"final containers ({', '.join(CONTAINERS)}) identical to the uninterrupted run's: {a == b}; "
          f"partial files seen: {result['partial_files_total']}; wrote {out / 'resume_check.json'}")
    return 0 if a == b and result["partial_files_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
