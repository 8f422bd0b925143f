"""Benchmark model files: size, load time, latency, peak memory, accuracy and parity.

Each file is measured in a fresh Python process by default (``isolate=True``):
``python -m runtime_bench.worker spec.json``, with the inputs handed over as
``.npy`` files in a temporary folder and the result returned as a JSON file.
That way one model's memory, thread pools and caches do not colour the next,
and a runtime that crashes on a bad file costs one record, not the whole run.
A target profile (:mod:`runtime_bench.targets`) sets threads, CPU pinning and
delegate; the ``android`` one runs LiteRT's ``benchmark_model`` on a phone
over ``adb`` instead (:mod:`runtime_bench.adb`).

Every record has the same keys (see :data:`RECORD_KEYS`); what was not measured
is None, and ``error`` holds a one-line reason when something failed.

    >>> recs = bench_files(["m.tflite", "m.onnx", "m.ecz"], x_test[:500], y_test[:500],
    ...                    targets=["desktop", "mobile-little"], threads=(1, 2), reference="m.keras")
    >>> [(r["name"], r["target"], r["threads"], r["median_ms"], r["accuracy"], r["error"]) for r in recs]
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgecomp.errors import EdgecompError, one_line
from edgecomp.metrics import TASKS, parity_figures, task_scores
from edgecomp.subproc import run_module
from runtime_bench.latency import measure_latency, peak_rss_mb
from runtime_bench.runners import format_of, open_runner, set_cpu_affinity
from runtime_bench.targets import Target, get_target, plan

__all__ = ["bench_file", "bench_files", "measure_here", "RECORD_KEYS", "TASKS"]

#: Keys of every record, in the order reports show them.
RECORD_KEYS = (
    "name", "file", "format", "target", "device", "bytes", "gzip_bytes", "threads", "cpus", "batch",
    "resolver", "optimization", "isolated", "init_ms", "first_ms", "warmup", "warmup_ms", "runs",
    "preempted", "timed_s", "mean_ms", "std_ms", "min_ms", "p5_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms",
    "max_ms", "runs_per_s", "peak_rss_mb", "task", "accuracy", "mean_iou", "n_eval",
    "max_abs_diff", "mean_abs_diff", "top1_agreement", "error",
)
_MEASURED = (RECORD_KEYS[RECORD_KEYS.index("init_ms"):RECORD_KEYS.index("task")]
             + RECORD_KEYS[RECORD_KEYS.index("accuracy"):] + ("cpus", "device"))
_LOCAL_DEVICE = f"local ({platform.machine() or 'unknown'})"


def bench_file(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None = None, *,
               batch: int = 1, threads: int = 1, resolver: str = "auto",
               optimization: str = "all", warmup: int = 10, runs: int = 100,
               min_time_s: float = 1.0, isolate: bool = True,
               task: str | None = "classification", eval_batch: int = 256,
               cpus: Sequence[int] | None = None, target: str | Target | None = None,
               reference=None, drop_preempted: bool = True, timeout_s: float = 600.0) -> dict:
    """Measure one model file and return its record; never raises for a bad model file.

    ``x`` is float32 input (N first); the first ``batch`` rows are the latency
    input. With labels ``y`` (class ids, or one-hot/probabilities shaped like the
    output) and a ``task``, ``accuracy`` is the top-1 accuracy (classification) or
    the pixel accuracy, with ``mean_iou`` beside it (segmentation). ``reference``
    (the Keras model's outputs for ``x``, or a .keras/.ecz/... file to compute them
    with) adds ``max_abs_diff``, ``mean_abs_diff`` and ``top1_agreement``.
    ``resolver`` applies to .tflite files (``auto``: XNNPACK, else the built-in kernels when the
    delegate can't take the file, which the record's ``resolver`` then says; ``default``; ``builtin``),
    ``optimization`` to .onnx (``disable/basic/extended/all``). ``cpus`` pins the
    measuring process to those CPU ids (Linux). A ``target`` profile replaces
    ``threads`` (when it fixes them), ``cpus`` and ``resolver``. ``drop_preempted``
    leaves out timed runs during which the OS preempted the measuring thread
    (counted in ``preempted``; see :mod:`runtime_bench.latency`). ``isolate=False``
    measures in this process (faster; its ``peak_rss_mb`` is then this whole
    process's peak).

    Example:
        >>> r = bench_file("model.tflite", x_test, y_test, threads=2, runs=200)
        >>> r["median_ms"], r["p99_ms"], r["accuracy"], r["error"]   # doctest: +SKIP
        (0.52, 0.81, 0.912, None)
    """
    if target is not None:
        target = get_target(target)
        threads = target.thread_counts([threads])[0]
    return bench_files([path], x, y, threads=threads, targets=None if target is None else [target],
                       reference=reference, progress=False, batch=batch, resolver=resolver,
                       optimization=optimization, warmup=warmup, runs=runs, min_time_s=min_time_s,
                       isolate=isolate, task=task, eval_batch=eval_batch, cpus=cpus,
                       drop_preempted=drop_preempted, timeout_s=timeout_s)[0]


def bench_files(paths: Iterable[str | os.PathLike], x: np.ndarray, y: np.ndarray | None = None, *,
                threads: int | Sequence[int] | None = None,
                targets: Sequence[str | Target] | None = None, reference=None,
                progress: bool = True, **options) -> list[dict]:
    """Run every path under every (target, thread count), with a progress bar.

    Returns one record per path x target x thread count, in that order. Without
    ``targets`` the runs are unpinned with the given ``threads`` (default 1) and
    ``target`` is None; with them, each target's :meth:`~runtime_bench.targets.Target.thread_counts`
    decides (``threads`` is used where the target does not fix it; default: the
    target's own). ``options`` are :func:`bench_file`'s keywords. A bad file
    yields a record with ``error`` set and the others are still measured. The
    inputs (and reference outputs) are written once for all the isolated workers.

    Example:
        >>> recs = bench_files(["a.tflite", "a.onnx"], x, y, threads=(1, 2), runs=50)
        >>> len(recs)
        4
    """
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    if threads is None:
        thread_list = None
    elif np.isscalar(threads):
        thread_list = [int(threads)]
    else:
        thread_list = [int(t) for t in threads]
        if not thread_list:
            raise EdgecompError("no thread counts given", fix="pass threads=1 or e.g. threads=(1, 2)")
    isolate = bool(options.pop("isolate", True))
    timeout_s = float(options.pop("timeout_s", 600.0))
    unknown = set(options) - set(_settings.__kwdefaults__)
    if unknown:
        raise TypeError(f"bench_files() got unexpected keyword(s): {', '.join(sorted(unknown))}")
    if targets is None:
        pairs = [(None, t) for t in (thread_list or [1])]
    else:
        pairs = plan(targets, thread_list)
    base = _settings(**{**_settings.__kwdefaults__, **options, "threads": pairs[0][1]})
    x, y = _check_data(x, y)

    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="runtime_bench_") as tmp:
        inputs = _save_inputs(Path(tmp), x, y) if isolate else None
        ref = _reference_outputs(reference, x, inputs, isolate, timeout_s)
        if isolate and ref is not None:
            inputs["ref"] = str(Path(tmp) / "ref.npy")
            np.save(inputs["ref"], ref, allow_pickle=False)
        jobs = [(p, target, t) for p in paths for target, t in pairs]
        with tqdm(total=len(jobs), desc="bench", unit="run", disable=not progress,
                  dynamic_ncols=True) as bar:
            for path, target, t in jobs:
                settings = {**base, "threads": t}
                if target is not None:
                    settings.update(target.settings(t))
                label = " ".join(filter(None, (path.name, settings["target"], f"x{t}")))
                bar.set_postfix_str(label, refresh=True)
                records.append(_bench_one(path, x, y, ref, settings, target, isolate=isolate,
                                          inputs=inputs, timeout_s=timeout_s))
                bar.update(1)
    return records


# -- settings and inputs --------------------------------------------------------

def _settings(*, batch: int = 1, threads: int = 1, resolver: str = "auto",
              optimization: str = "all", warmup: int = 10, runs: int = 100,
              min_time_s: float = 1.0, task: str | None = "classification",
              eval_batch: int = 256, cpus: Sequence[int] | None = None,
              drop_preempted: bool = True) -> dict:
    """Validate the measuring settings once (a mistake here is the caller's, so it raises)."""
    if task is not None and task not in TASKS:
        raise EdgecompError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASKS)}, or None")
    for name, value, low in (("batch", batch, 1), ("threads", threads, 1), ("runs", runs, 1),
                             ("warmup", warmup, 0), ("eval_batch", eval_batch, 1)):
        if int(value) != value or int(value) < low:
            raise EdgecompError(f"{name} must be an integer >= {low}, got {value!r}")
    if not float(min_time_s) >= 0:
        raise EdgecompError(f"min_time_s must be >= 0, got {min_time_s!r}")
    return {"target": None, "batch": int(batch), "threads": int(threads), "resolver": str(resolver),
            "optimization": str(optimization), "warmup": int(warmup), "runs": int(runs),
            "min_time_s": float(min_time_s), "task": task, "eval_batch": int(eval_batch),
            "cpus": None if cpus is None else sorted(int(c) for c in cpus),
            "drop_preempted": bool(drop_preempted)}


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
    return {"x": str(xf), "y": None if yf is None else str(yf), "ref": None, "folder": str(folder)}


def _reference_outputs(reference, x: np.ndarray, inputs: dict | None, isolate: bool,
                       timeout_s: float) -> np.ndarray | None:
    """The reference outputs for ``x``: given as an array, or computed from a model file."""
    if reference is None:
        return None
    if isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        if isolate:
            out = _predict_in_worker(path, inputs, timeout_s)
        else:
            out = open_runner(path, threads=1).predict(x)
    else:
        out = np.asarray(reference, dtype=np.float32)
    if len(out) != len(x):
        raise EdgecompError(f"the reference has {len(out)} outputs for {len(x)} inputs",
                            fix="pass the reference model's outputs for the same x")
    return out


# -- one measurement ----------------------------------------------------------

def _empty_record(path: Path, settings: dict, target: Target | None, isolate: bool) -> dict:
    rec = dict.fromkeys(RECORD_KEYS)
    try:
        fmt = format_of(path)
    except EdgecompError:
        fmt = None
    on_device = target is not None and target.kind in ("adb", "emulated")
    device = "arm64 (emulated)" if target is not None and target.kind == "emulated" else None
    rec.update(name=path.name, file=str(path), format=fmt, target=settings["target"],
               device=device if on_device else _LOCAL_DEVICE, threads=settings["threads"],
               cpus=settings["cpus"], batch=settings["batch"], isolated=isolate or on_device,
               task=settings["task"],
               resolver=settings["resolver"] if fmt == "tflite" else None,
               optimization=settings["optimization"] if fmt == "onnx" else None)
    return rec


def _bench_one(path, x, y, ref, settings: dict, target: Target | None, *, isolate: bool,
               inputs: dict | None, timeout_s: float) -> dict:
    path = Path(path)
    rec = _empty_record(path, settings, target, isolate)
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

    if target is not None and target.kind == "adb":
        result = _measure_on_device(path, settings, target, timeout_s)
    elif target is not None and target.kind == "emulated":
        from runtime_bench.emulated import bench_result
        result = bench_result(path, x, y, ref, settings, target.cpu_model)
        rec["emulation"] = result.pop("emulation")
    elif isolate:
        result = _run_worker(path, inputs, settings, timeout_s)
    else:
        result = measure_here(path, x, y, settings, ref=ref)
    rec.update({k: v for k, v in result.items() if k in _MEASURED or k in ("error", "resolver")})
    return rec


def _measure_on_device(path: Path, settings: dict, target: Target, timeout_s: float) -> dict:
    from runtime_bench.adb import AdbRunner

    try:
        if settings["batch"] != 1:
            raise EdgecompError(f"the {target.name} target measures batch 1 only (benchmark_model "
                                f"uses the file's own input shape), got batch {settings['batch']}",
                                fix="use --batch 1, or export the model with that batch size")
        runner = AdbRunner(timeout_s=timeout_s, remote_dir=target.adb_dir, binary=target.benchmark_binary)
        return runner.benchmark(path, threads=settings["threads"], warmup=settings["warmup"],
                                runs=settings["runs"], min_time_s=settings["min_time_s"],
                                xnnpack=target.xnnpack)
    except EdgecompError as exc:
        return {"error": one_line(exc)}


def measure_here(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None,
                 settings: dict, ref: np.ndarray | None = None) -> dict:
    """Load and measure ``path`` in this process; errors come back in ``result["error"]``.

    This is the body of the isolated worker; ``x`` may be a read-only memmap (only
    the latency batch is read before peak memory is taken, so a big evaluation
    set does not inflate ``peak_rss_mb``). ``ref`` holds reference outputs for
    ``x`` (parity figures). ``cpus`` in the result is the affinity actually set
    (None when not pinned, or where the OS cannot pin).

    Example:
        >>> measure_here("m.tflite", x, y, _settings(threads=1))["median_ms"]   # doctest: +SKIP
        0.41
    """
    out: dict = {"cpus": None}
    previous_cpus = None
    try:
        if settings.get("cpus"):
            previous_cpus = set_cpu_affinity(settings["cpus"])
            if previous_cpus is not None:
                out["cpus"] = sorted(os.sched_getaffinity(0))
        fmt = format_of(path)
        options = ({"resolver": settings["resolver"]} if fmt == "tflite" else
                   {"optimization": settings["optimization"]} if fmt == "onnx" else {})
        t0 = time.perf_counter_ns()
        runner = open_runner(path, settings["threads"], **options)
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        if fmt == "tflite" and runner.options.get("resolver") != settings["resolver"]:
            out["resolver"] = f"{runner.options['resolver']} (default delegate failed)"
        lat = measure_latency(runner, _latency_batch(x, settings["batch"]),
                              warmup=settings["warmup"], runs=settings["runs"],
                              min_time_s=settings["min_time_s"],
                              drop_preempted=settings.get("drop_preempted", True))
        lat["init_ms"] = init_ms
        out.update(lat)
        out["peak_rss_mb"] = peak_rss_mb()
        task = settings.get("task")
        if (y is not None and task) or ref is not None:
            pred = runner.predict(x, batch_size=settings["eval_batch"])
            if y is not None and task:
                out.update(task_scores(pred, y, task), n_eval=int(len(y)))
            if ref is not None:
                out.update(parity_figures(pred, ref))
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


# -- the isolated worker --------------------------------------------------------

def _spawn_worker(spec: dict, folder: Path, timeout_s: float) -> tuple[Path, str | None]:
    """Run ``python -m runtime_bench.worker`` on ``spec``; return (its out file, failure or None)."""
    fd, out_name = tempfile.mkstemp(prefix="result_", suffix=spec["out_suffix"], dir=folder)
    os.close(fd)
    os.unlink(out_name)
    spec = {k: v for k, v in spec.items() if k != "out_suffix"} | {"out": out_name}
    spec_file = folder / (Path(out_name).stem + ".spec.json")
    spec_file.write_text(json.dumps(spec))
    try:
        run = run_module("runtime_bench.worker", [str(spec_file)], timeout_s=timeout_s, capture_stdout=False)
    finally:
        spec_file.unlink(missing_ok=True)
    if run.timed_out:
        return Path(out_name), f"worker timed out after {timeout_s:g} s"
    if Path(out_name).is_file():
        return Path(out_name), None
    how = f"killed by {run.signal_name}" if run.signal_name else f"exited with code {run.returncode}"
    err = run.last_line("stderr")
    return Path(out_name), f"worker {how} without a result" + (f": {err[:250]}" if err else "")


def _run_worker(path: Path, inputs: dict, settings: dict, timeout_s: float) -> dict:
    """Measure ``path`` in a fresh worker; always returns a result dict."""
    spec = {"job": "measure", "path": str(path.resolve()), "x": inputs["x"], "y": inputs["y"],
            "ref": inputs.get("ref"), "settings": settings, "out_suffix": ".json"}
    out, failure = _spawn_worker(spec, Path(inputs["folder"]), timeout_s)
    if failure:
        return {"error": failure}
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def _predict_in_worker(path: Path, inputs: dict, timeout_s: float, resolver: str | None = None) -> np.ndarray:
    """Outputs of model file ``path`` for the saved inputs, computed in a fresh worker
    (``resolver``: LiteRT's, e.g. ``"auto"`` to fall back to the builtin kernels)."""
    spec = {"job": "predict", "path": str(path.resolve()), "x": inputs["x"], "out_suffix": ".npy",
            "resolver": resolver}
    out, failure = _spawn_worker(spec, Path(inputs["folder"]), timeout_s)
    try:
        if failure:
            raise EdgecompError(f"cannot compute the reference outputs with {path.name}: {failure}",
                                fix="pass a .keras/.ecz model that loads, or the outputs as an array")
        result = np.load(out, allow_pickle=False)
    finally:
        out.unlink(missing_ok=True)
    return result
