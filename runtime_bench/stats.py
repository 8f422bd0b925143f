"""Summary statistics for a set of latency samples.

Percentiles use linear interpolation between the two nearest order statistics
(numpy's default ``method="linear"``, Hyndman & Fan type 7): for ``n`` sorted
samples ``s[0..n-1]`` the ``q``-th percentile sits at the fractional position
``h = (n - 1) * q / 100`` and equals ``s[floor(h)] + (h - floor(h)) *
(s[floor(h) + 1] - s[floor(h)])``. The standard deviation is the population
one (``ddof=0``), so a single sample has std 0.
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import EdgecompError

#: The keys :func:`summarize` returns, in order.
STAT_KEYS = ("n", "mean_ms", "std_ms", "min_ms", "p5_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms",
             "max_ms", "runs_per_s")


def summarize(times_s) -> dict:
    """Summarize latency samples given in seconds; times in the result are milliseconds.

    Returns ``n``, ``mean_ms``, ``std_ms``, ``min_ms``, ``p5_ms``, ``median_ms``,
    ``p90_ms``, ``p95_ms``, ``p99_ms``, ``max_ms`` and ``runs_per_s`` (``1000 /
    mean_ms``; None if the mean is 0). p5/median/p95 are what LiteRT's
    ``benchmark_model`` prints; p90/p99 what ONNX Runtime's perf test prints.

    Example:
        >>> s = summarize([0.001, 0.002, 0.003, 0.004, 0.005])
        >>> s["median_ms"], round(s["p90_ms"], 6), s["runs_per_s"]
        (3.0, 4.6, 333.3333333333333)
    """
    t = np.asarray(times_s, dtype=np.float64).ravel()
    if t.size == 0:
        raise EdgecompError("no latency samples to summarize", fix="time at least one run")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise EdgecompError("latency samples must be finite and non-negative",
                            fix="pass durations in seconds")
    ms = t * 1e3
    p5, p50, p90, p95, p99 = np.percentile(ms, [5.0, 50.0, 90.0, 95.0, 99.0], method="linear")
    mean = float(ms.mean())
    return {
        "n": int(ms.size),
        "mean_ms": mean,
        "std_ms": float(ms.std(ddof=0)),
        "min_ms": float(ms.min()),
        "p5_ms": float(p5),
        "median_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
        "runs_per_s": float(1e3 / mean) if mean > 0 else None,
    }
