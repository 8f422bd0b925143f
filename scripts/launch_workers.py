"""Start N training workers on this host, as a cluster launcher would, and collect their logs.

    python scripts/launch_workers.py 2 -- edgecomp compress vgg.keras --data fashion_mnist \\
        --distribute multi-worker --checkpoints runs/mw/ckpt -o runs/mw/vgg.ecz

Each worker gets a free port on 127.0.0.1 and its ``TF_CONFIG`` (the whole cluster and its own
index), and ``TF_NUM_INTRAOP_THREADS`` = cores / N unless set. Every output line is prefixed
``[worker i]`` and also kept in ``--log-dir``/worker-i.log (its pid in worker-i.pid). When a worker exits with an error,
the launcher waits up to ``--grace`` seconds for the others to stop by themselves (each notices the
lost peer: :mod:`edgecomp.distribute`), then stops the rest (SIGTERM, then SIGKILL 10 s later).
It exits with the first failing worker's code (0 when all succeed), and ``--summary`` writes each
worker's exit code and timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecomp.io import write_json  # noqa: E402


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (the OS picks them)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _pump(stream, index: int, log, lock):
    echo = True
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            if echo:
                try:
                    print(f"[worker {index}] {line}", flush=True)
                except OSError:   # our stdout went away (| head): keep draining into the log
                    echo = False
            log.write(line + "\n")
            log.flush()
    stream.close()


def _stop(procs, sig):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt   # SIGTERM / SIGHUP stop the workers too, through the same path


def launch(n: int, command: list[str], *, log_dir: Path, grace: float = 60.0, env=None) -> dict:
    """Run ``command`` as ``n`` workers; return the summary (exit codes, times, who stopped how)."""
    ports = free_ports(n)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // n)
    procs, pumps, logs, lock = [], [], [], threading.Lock()
    t0 = time.monotonic()
    for i in range(n):
        wenv = dict(env or os.environ)
        wenv["TF_CONFIG"] = tf_config(addresses, i)
        wenv.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        wenv.setdefault("TF_NUM_INTEROP_THREADS", "1")
        wenv["PYTHONUNBUFFERED"] = "1"
        log = open(log_dir / f"worker-{i}.log", "w")
        p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=wenv,
                             start_new_session=True)
        (log_dir / f"worker-{i}.pid").write_text(f"{p.pid}\n")   # for an operator (or a fault test) to signal
        t = threading.Thread(target=_pump, args=(p.stdout, i, log, lock), daemon=True)
        t.start()
        procs.append(p)
        pumps.append(t)
        logs.append(log)
    ended = [None] * n
    first_failure = None
    stopped_at = None
    try:
        while any(e is None for e in ended):
            for i, p in enumerate(procs):
                if ended[i] is None and p.poll() is not None:
                    ended[i] = time.monotonic() - t0
                    if p.returncode != 0 and first_failure is None:
                        first_failure = i
                        print(f"launch_workers: worker {i} exited with code {p.returncode}; waiting up to {grace:g} s "
                              "for the others to stop", flush=True)
            if first_failure is not None and stopped_at is None and \
                    time.monotonic() - t0 - ended[first_failure] > grace:
                stopped_at = time.monotonic() - t0
                print("launch_workers: stopping the remaining workers", flush=True)
                _stop(procs, signal.SIGTERM)
            if stopped_at is not None and time.monotonic() - t0 - stopped_at > 10:
                _stop(procs, signal.SIGKILL)
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                _stop([p], signal.SIGKILL)
        raise
    for t in pumps:
        t.join(5)
    for log in logs:
        log.close()
    codes = [p.returncode for p in procs]
    fail_t = ended[first_failure] if first_failure is not None else None
    return {"workers": n, "addresses": addresses, "command": command, "exit_codes": codes, "ended_s": ended,
            "first_failure": first_failure,
            "others_stopped_after_s": (max(e for e in ended) - fail_t) if fail_t is not None else None,
            "stopped_by_launcher": stopped_at is not None,
            "exit_code": codes[first_failure] if first_failure is not None else 0}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("launch_workers: error: give the worker command after '--'; e.g. launch_workers.py 2 -- edgecomp "
              "compress ...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="launch_workers", description=__doc__.split("\n")[0])
    p.add_argument("workers", type=int, help="number of worker processes (>= 1)")
    p.add_argument("--log-dir", default="runs/workers", help="per-worker logs (default: runs/workers)")
    p.add_argument("--grace", type=float, default=60.0,
                   help="seconds the others may take to stop by themselves after one fails (default: 60)")
    p.add_argument("--summary", default=None, help="write the exit codes and timings here as JSON")
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if args.workers < 1 or not command:
        print("launch_workers: error: need at least 1 worker and a command after '--'", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        summary = launch(args.workers, command, log_dir=Path(args.log_dir), grace=args.grace)
    except FileNotFoundError:
        print(f"launch_workers: error: command not found: {command[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("launch_workers: interrupted; every worker stopped", file=sys.stderr)
        return 130
    if args.summary:
        write_json(args.summary, summary)
    if summary["first_failure"] is not None:
        how = "stopped by the launcher" if summary["stopped_by_launcher"] else "stopped by themselves"
        print(f"launch_workers: worker {summary['first_failure']} failed (exit {summary['exit_code']}); the others "
              f"{how} {summary['others_stopped_after_s']:.1f} s later", flush=True)
    code = summary["exit_code"]
    return 128 - code if code < 0 else code   # a worker ended by signal N: 128 + N, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
