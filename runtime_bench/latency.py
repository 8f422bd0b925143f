"""The latency loop: load, first inference, warm-up, then timed runs.

It follows the shape of LiteRT's ``benchmark_model`` and ONNX Runtime's
``onnxruntime_perf_test``: init time, the first inference on its own, a few
untimed warm-up runs, and then timed runs until both a run count and a minimum
time are reached. Only ``runner.invoke()`` is inside the timer (the input is
set once with ``runner.prepare``), and Python's garbage collector is paused
while timing so a collection does not land inside a sample.

On a shared machine the OS sometimes takes the CPU away from the measuring
thread in the middle of a run; that sample then measures the other process's
time slice, not the model. With ``drop_preempted=True`` (the default) such
samples are detected exactly, by the kernel's count of involuntary context
switches of the calling thread (``getrusage(RUSAGE_THREAD).ru_nivcsw``, read
before and after each run, outside the timer), left out of the statistics and
counted in ``preempted``; timing goes on until ``runs`` clean samples are
taken. A runtime whose own worker threads are preempted is not detected (only
the calling thread is watched), and where the OS has no per-thread usage
(macOS, Windows) nothing is dropped.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Callable

import numpy as np

from edgecomp.errors import EdgecompError
from runtime_bench.runners import Runner
from runtime_bench.stats import summarize


try:
    import resource as _resource  # Unix only
except ImportError:  # Windows
    _resource = None
#: Per-thread usage (for involuntary context switches) exists on Linux only.
_RUSAGE_THREAD = getattr(_resource, "RUSAGE_THREAD", None)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s
    ``ru_maxrss`` survives ``fork``/``exec``, so a fresh worker would report its
    parent's peak. Elsewhere it is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.

    Example:
        >>> peak_rss_mb() > 0
        True
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    if _resource is None:  # Windows
        return float("nan")
    peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _involuntary_switches() -> int | None:
    """Involuntary context switches of the calling thread so far (None where unknown)."""
    if _RUSAGE_THREAD is None:
        return None
    return _resource.getrusage(_RUSAGE_THREAD).ru_nivcsw


def measure_latency(runner: Runner | Callable[[], Runner], x_batch: np.ndarray, *,
                    warmup: int = 10, runs: int = 100, min_time_s: float = 1.0,
                    drop_preempted: bool = True) -> dict:
    """Time ``runner.invoke()`` on one prepared batch.

    ``runner`` is an open :class:`~runtime_bench.runners.Runner`, or a zero-argument
    factory that opens one; with a factory the load is timed too (``init_ms``),
    otherwise ``init_ms`` is None. Timed runs continue until at least ``runs``
    samples are taken *and* at least ``min_time_s`` seconds have passed (or, when
    preempted samples keep being dropped, until ``10 * min_time_s + 10`` seconds).

    Returns ``init_ms``, ``first_ms``, ``warmup``, ``warmup_ms`` (mean warm-up run,
    None without warm-up), ``runs`` (samples kept), ``preempted`` (samples dropped
    because the thread was preempted; None when not watched),
    ``timed_s`` (wall time of the timed phase), the :func:`~runtime_bench.stats.summarize`
    keys (``mean_ms`` ... ``runs_per_s``, without ``n``) and ``peak_rss_mb``.

    Example:
        >>> r = measure_latency(lambda: open_runner("m.tflite"), x[:1], runs=50, min_time_s=0.5)
        >>> r["median_ms"], r["p99_ms"], r["peak_rss_mb"]            # doctest: +SKIP
        (0.41, 0.73, 212.5)
    """
    if int(runs) < 1 or int(warmup) < 0 or not min_time_s >= 0:
        raise EdgecompError(f"bad latency settings runs={runs} warmup={warmup} "
                            f"min_time_s={min_time_s}",
                            fix="use runs >= 1, warmup >= 0 and min_time_s >= 0")
    init_ms = None
    if not isinstance(runner, Runner):
        t0 = time.perf_counter_ns()
        runner = runner()
        init_ms = (time.perf_counter_ns() - t0) / 1e6

    runner.prepare(np.asarray(x_batch, dtype=np.float32))
    t0 = time.perf_counter_ns()
    runner.invoke()
    first_ms = (time.perf_counter_ns() - t0) / 1e6

    t0 = time.perf_counter_ns()
    for _ in range(int(warmup)):
        runner.invoke()
    warmup_ms = (time.perf_counter_ns() - t0) / 1e6 / int(warmup) if int(warmup) else None

    min_ns = int(float(min_time_s) * 1e9)
    max_ns = 10 * min_ns + 10_000_000_000
    switches = _involuntary_switches if drop_preempted and _involuntary_switches() is not None else None
    samples: list[int] = []
    preempted = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        while True:
            before = switches() if switches else 0
            t0 = time.perf_counter_ns()
            runner.invoke()
            t1 = time.perf_counter_ns()
            if switches and switches() != before:
                preempted += 1
            else:
                samples.append(t1 - t0)
            if len(samples) >= runs and t1 - start >= min_ns:
                break
            if t1 - start >= max_ns and samples:
                break
        timed_s = (time.perf_counter_ns() - start) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()

    stats = summarize(np.asarray(samples, dtype=np.float64) / 1e9)
    del stats["n"]
    return {"init_ms": init_ms, "first_ms": first_ms, "warmup": int(warmup), "warmup_ms": warmup_ms,
            "runs": len(samples), "preempted": preempted if switches else None, "timed_s": timed_s,
            **stats, "peak_rss_mb": peak_rss_mb()}
