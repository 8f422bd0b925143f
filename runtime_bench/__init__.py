"""Run model files in their real runtimes and measure size, latency, memory, accuracy and parity.

    >>> from runtime_bench import bench_files, write_report
    >>> records = bench_files(["m.tflite", "m.onnx", "m.ecz"], x_test, y_test,
    ...                       targets=["desktop", "mobile-little"], threads=(1, 2))
    >>> write_report(records, "runs/bench")       # bench.json/.csv/.md + PNG plots

``open_runner`` opens one file (.tflite, .onnx, .keras, .ecz) for ``predict``/``prepare``/``invoke``;
``summarize`` turns latency samples (seconds) into mean/std/min/p5/median/p90/p95/p99/max in ms;
``TARGETS`` are the named profiles (threads, CPU pinning, delegate; ``android`` runs on a phone
over adb); ``parse_benchmark_output`` reads a LiteRT ``benchmark_model`` log;
``segmentation_metrics`` and ``parity_figures`` (from :mod:`edgecomp.metrics`) score outputs
against labels or a reference.
"""

from edgecomp.metrics import parity_figures, segmentation_metrics
from runtime_bench.adb import parse_benchmark_output
from runtime_bench.bench import bench_file, bench_files
from runtime_bench.report import write_report
from runtime_bench.runners import open_runner
from runtime_bench.stats import summarize
from runtime_bench.targets import TARGETS, Target, get_target

__all__ = ["open_runner", "bench_file", "bench_files", "summarize", "write_report", "TARGETS",
           "Target", "get_target", "parse_benchmark_output", "segmentation_metrics",
           "parity_figures"]
