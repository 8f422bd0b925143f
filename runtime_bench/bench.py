"""Benchmark model files: size, load time, latency, peak memory and accuracy.

Each file is measured in a fresh Python process by default (``isolate=True``):
``python -m runtime_bench.worker spec.json``, with the inputs handed over as
``.npy`` files in a temporary folder and the result returned as a JSON file.
That way one model's memory, thread pools and caches do not colour the next,
and a runtime that crashes on a bad file costs one record, not the whole run.

Every record has the same keys (see :data:`RECORD_KEYS`); what was not measured
is None, and ``error`` holds a one-line reason when something failed.

    >>> recs = bench_files(["m.tflite", "m.onnx"], x_test[:500], y_test[:500], threads=(1, 2))
    >>> [(r["name"], r["threads"], r["median_ms"], r["accuracy"], r["error"]) for r in recs]
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgecomp.errors import EdgecompError
from runtime_bench.latency import measure_latency, peak_rss_mb
from runtime_bench.runners import format_of, open_runner, set_cpu_affinity

TASKS = ("classification", "segmentation")

#: Keys of every record, in the order reports show them.
RECORD_KEYS = (
    "name", "file", "format", "bytes", "gzip_bytes", "threads", "batch", "resolver",
    "optimization", "isolated", "init_ms", "first_ms", "warmup", "runs", "timed_s", "mean_ms",
    "std_ms", "min_ms", "median_ms", "p90_ms", "p99_ms", "max_ms", "runs_per_s", "peak_rss_mb",
    "task", "accuracy", "n_eval", "error",
)
_MEASURED = RECORD_KEYS[RECORD_KEYS.index("init_ms"):RECORD_KEYS.index("task")] + ("accuracy", "n_eval")
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def bench_file(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None = None, *,
               batch: int = 1, threads: int = 1, resolver: str = "default",
               optimization: str = "all", warmup: int = 10, runs: int = 100,
               min_time_s: float = 1.0, isolate: bool = True,
               task: str | None = "classification", eval_batch: int = 256,
               cpus: Sequence[int] | None = None, timeout_s: float = 600.0) -> dict:
    """Measure one model file and return its record; never raises for a bad model file.

    ``x`` is float32 input (N first); the first ``batch`` rows are the latency
    input. With labels ``y`` (class ids, or one-hot/probabilities shaped like the
    output) and a ``task``, ``accuracy`` is the top-1 (classification) or per-pixel
    (segmentation) accuracy of ``runner.predict(x)``. ``resolver`` applies to
    .tflite files (``default`` = XNNPACK, ``builtin``), ``optimization`` to .onnx
    (``disable/basic/extended/all``). ``cpus`` pins the measuring process to
    those CPU ids (Linux). ``isolate=False`` measures in this process (faster; its
    ``peak_rss_mb`` is then this whole process's peak).

    Example:
        >>> r = bench_file("model.tflite", x_test, y_test, threads=2, runs=200)
        >>> r["median_ms"], r["p99_ms"], r["accuracy"], r["error"]   # doctest: +SKIP
        (0.52, 0.81, 0.912, None)
    """
    settings = _settings(batch=batch, threads=threads, resolver=resolver,
                         optimization=optimization, warmup=warmup, runs=runs,
                         min_time_s=min_time_s, task=task, eval_batch=eval_batch, cpus=cpus)
    x, y = _check_data(x, y)
    if not isolate:
        return _bench_one(path, x, y, settings, isolate=False, inputs=None, timeout_s=timeout_s)
    with tempfile.TemporaryDirectory(prefix="runtime_bench_") as tmp:
        inputs = _save_inputs(Path(tmp), x, y)
        return _bench_one(path, x, y, settings, isolate=True, inputs=inputs, timeout_s=timeout_s)


def bench_files(paths: Iterable[str | os.PathLike], x: np.ndarray, y: np.ndarray | None = None, *,
                threads: int | Sequence[int] = 1, progress: bool = True, **options) -> list[dict]:
    """Run :func:`bench_file` on every path for every thread count, with a progress bar.

    Returns one record per (path, threads), in that order. ``options`` are
    :func:`bench_file`'s keywords. A bad file yields a record with ``error`` set
    and the others are still measured. The inputs are written once for all the
    isolated workers.

    Example:
        >>> recs = bench_files(["a.tflite", "a.onnx"], x, y, threads=(1, 2), runs=50)
        >>> len(recs)
        4
    """
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    thread_list = [int(threads)] if np.isscalar(threads) else [int(t) for t in threads]
    if not thread_list:
        raise EdgecompError("no thread counts given", fix="pass threads=1 or e.g. threads=(1, 2)")
    isolate = bool(options.pop("isolate", True))
    timeout_s = float(options.pop("timeout_s", 600.0))
    unknown = set(options) - set(_settings.__kwdefaults__)
    if unknown:
        raise TypeError(f"bench_files() got unexpected keyword(s): {', '.join(sorted(unknown))}")
    base = _settings(**{**_settings.__kwdefaults__, **options, "threads": thread_list[0]})
    x, y = _check_data(x, y)

    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="runtime_bench_") as tmp:
        inputs = _save_inputs(Path(tmp), x, y) if isolate else None
        jobs = [(p, t) for p in paths for t in thread_list]
        with tqdm(total=len(jobs), desc="bench", unit="run", disable=not progress,
                  dynamic_ncols=True) as bar:
            for path, t in jobs:
                bar.set_postfix_str(f"{path.name} x{t}", refresh=False)
                records.append(_bench_one(path, x, y, {**base, "threads": t}, isolate=isolate,
                                          inputs=inputs, timeout_s=timeout_s))
                bar.update(1)
    return records


# -- settings and inputs --------------------------------------------------------

def _settings(*, batch: int = 1, threads: int = 1, resolver: str = "default",
              optimization: str = "all", warmup: int = 10, runs: int = 100,
              min_time_s: float = 1.0, task: str | None = "classification",
              eval_batch: int = 256, cpus: Sequence[int] | None = None) -> dict:
    """Validate the measuring settings once (a mistake here is the caller's, so it raises)."""
    if task is not None and task not in TASKS:
        raise EdgecompError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASKS)}, or None")
    for name, value, low in (("batch", batch, 1), ("threads", threads, 1), ("runs", runs, 1),
                             ("warmup", warmup, 0), ("eval_batch", eval_batch, 1)):
        if int(value) != value or int(value) < low:
            raise EdgecompError(f"{name} must be an integer >= {low}, got {value!r}")
    if not float(min_time_s) >= 0:
        raise EdgecompError(f"min_time_s must be >= 0, got {min_time_s!r}")
    return {"batch": int(batch), "threads": int(threads), "resolver": str(resolver),
            "optimization": str(optimization), "warmup": int(warmup), "runs": int(runs),
            "min_time_s": float(min_time_s), "task": task, "eval_batch": int(eval_batch),
            "cpus": None if cpus is None else sorted(int(c) for c in cpus)}


def _check_data(x, y) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or len(x) == 0:
        raise EdgecompError("no inputs to benchmark with", fix="pass at least one sample in x")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise EdgecompError(f"x has {len(x)} samples but y has {len(y)}",
                                fix="pass labels for every input")
    return x, y


def _save_inputs(folder: Path, x: np.ndarray, y: np.ndarray | None) -> dict:
    xf = folder / "x.npy"
    np.save(xf, np.ascontiguousarray(x), allow_pickle=False)
    yf = None
    if y is not None:
        yf = folder / "y.npy"
        np.save(yf, np.ascontiguousarray(y), allow_pickle=False)
    return {"x": str(xf), "y": None if yf is None else str(yf), "folder": str(folder)}


# -- one measurement ----------------------------------------------------------

def _empty_record(path: Path, settings: dict, isolate: bool) -> dict:
    rec = dict.fromkeys(RECORD_KEYS)
    try:
        fmt = format_of(path)
    except EdgecompError:
        fmt = None
    rec.update(name=path.name, file=str(path), format=fmt, threads=settings["threads"],
               batch=settings["batch"], isolated=isolate, task=settings["task"],
               resolver=settings["resolver"] if fmt == "tflite" else None,
               optimization=settings["optimization"] if fmt == "onnx" else None)
    return rec


def _bench_one(path, x, y, settings: dict, *, isolate: bool, inputs: dict | None,
               timeout_s: float) -> dict:
    path = Path(path)
    rec = _empty_record(path, settings, isolate)
    try:
        format_of(path)
        if not path.is_file():
            raise EdgecompError(f"model file {path} does not exist", fix="check the path")
        data = path.read_bytes()
    except EdgecompError as exc:
        rec["error"] = one_line(exc)
        return rec
    except OSError as exc:
        rec["error"] = f"cannot read {path}: {exc.strerror}"
        return rec
    rec["bytes"] = len(data)
    rec["gzip_bytes"] = len(gzip.compress(data, compresslevel=9, mtime=0))
    del data

    if isolate:
        result = _run_worker(path, inputs, settings, timeout_s)
    else:
        result = measure_here(path, x, y, settings)
    rec.update({k: v for k, v in result.items() if k in _MEASURED or k == "error"})
    return rec


def measure_here(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None,
                 settings: dict) -> dict:
    """Load and measure ``path`` in this process; errors come back in ``result["error"]``.

    This is the body of the isolated worker; ``x`` may be a read-only memmap (only
    the latency batch is read before peak memory is taken, so a big evaluation
    set does not inflate ``peak_rss_mb``).
    """
    out: dict = {}
    previous_cpus = None
    try:
        if settings.get("cpus"):
            previous_cpus = set_cpu_affinity(settings["cpus"])
        fmt = format_of(path)
        options = ({"resolver": settings["resolver"]} if fmt == "tflite" else
                   {"optimization": settings["optimization"]} if fmt == "onnx" else {})
        t0 = time.perf_counter_ns()
        runner = open_runner(path, settings["threads"], **options)
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        lat = measure_latency(runner, _latency_batch(x, settings["batch"]),
                              warmup=settings["warmup"], runs=settings["runs"],
                              min_time_s=settings["min_time_s"])
        lat["init_ms"] = init_ms
        out.update(lat)
        out["peak_rss_mb"] = peak_rss_mb()
        if y is not None and settings.get("task"):
            pred = runner.predict(x, batch_size=settings["eval_batch"])
            out["accuracy"] = accuracy(pred, y)
            out["n_eval"] = int(len(y))
    except Exception as exc:  # one bad model must not stop the others
        out["error"] = one_line(exc)
    finally:
        if previous_cpus is not None:
            set_cpu_affinity(previous_cpus)
    return out


def _latency_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` rows of ``x`` (a copy), cycling through ``x`` when it is shorter."""
    rows = x[:batch] if batch <= len(x) else x[np.arange(batch) % len(x)]
    return np.array(rows, dtype=np.float32)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of positions where the predicted class equals the label.

    ``pred`` is (N, ..., C) scores; ``y`` holds class ids shaped (N, ...) or
    (N, ..., 1), or one-hot/probabilities shaped like ``pred``. A single output
    channel is read as a sigmoid score (class 1 when > 0.5). Per-pixel for
    segmentation outputs.

    Example:
        >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        0.5
    """
    pred = np.asarray(pred)
    y = np.asarray(y)
    if pred.shape[-1] == 1:
        labels_pred = (pred[..., 0] > 0.5).astype(np.int64)
    else:
        labels_pred = pred.argmax(axis=-1)
    if y.shape == pred.shape and pred.shape[-1] > 1:
        y = y.argmax(axis=-1)
    elif y.ndim == pred.ndim and y.shape[-1] == 1:
        y = y[..., 0]
    if y.shape != labels_pred.shape:
        raise EdgecompError(f"labels shaped {y.shape} do not match predictions shaped {pred.shape}",
                            fix="pass class ids (N, ...) or one-hot labels shaped like the output")
    return float(np.mean(labels_pred == y.astype(np.int64)))


def one_line(exc: BaseException) -> str:
    """A short, single-line description of ``exc`` for a record's ``error`` field."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if not isinstance(exc, EdgecompError):
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


# -- the isolated worker --------------------------------------------------------

def _run_worker(path: Path, inputs: dict, settings: dict, timeout_s: float) -> dict:
    """Measure ``path`` in ``python -m runtime_bench.worker``; always returns a result dict."""
    folder = Path(inputs["folder"])
    fd, out_name = tempfile.mkstemp(prefix="result_", suffix=".json", dir=folder)
    os.close(fd)
    os.unlink(out_name)
    spec_file = folder / (Path(out_name).stem + ".spec.json")
    spec = {"path": str(path.resolve()), "x": inputs["x"], "y": inputs["y"],
            "settings": settings, "out": out_name}
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_PROJECT_ROOT)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run([sys.executable, "-m", "runtime_bench.worker", str(spec_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout_s:g} s"}
    finally:
        spec_file.unlink(missing_ok=True)
    out = Path(out_name)
    if out.is_file():
        try:
            return json.loads(out.read_text())
        finally:
            out.unlink(missing_ok=True)
    if proc.returncode < 0:
        try:
            how = f"killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"killed by signal {-proc.returncode}"
    else:
        how = f"exited with code {proc.returncode}"
    lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = f": {lines[-1][:250]}" if lines else ""
    return {"error": f"worker {how} without a result{tail}"}
