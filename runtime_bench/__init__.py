"""Run model files in their real runtimes and measure size, latency, memory and accuracy.

    >>> from runtime_bench import bench_files, write_report
    >>> records = bench_files(["m.tflite", "m.onnx"], x_test, y_test, threads=(1, 2))
    >>> write_report(records, "runs/bench")       # bench.json/.csv/.md + PNG plots

``open_runner`` opens one file (.tflite, .onnx, .keras) for ``predict``/``prepare``/``invoke``;
``summarize`` turns latency samples (seconds) into mean/std/min/median/p90/p99/max in ms.
"""

from runtime_bench.bench import bench_file, bench_files
from runtime_bench.report import write_report
from runtime_bench.runners import open_runner
from runtime_bench.stats import summarize

__all__ = ["open_runner", "bench_file", "bench_files", "summarize", "write_report"]
