"""Report rendering: the size-vs-accuracy plots behind the run report and the benchmark scripts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from edgecomp.report import plot_size_accuracy, size_plot_png  # noqa: E402


def test_size_plot_png_sets_a_log_size_axis_and_renders():
    fig, ax = plt.subplots()
    ax.plot([100, 200, 400], [90.0, 91.0, 91.5], "o-", label="seed")
    png = size_plot_png(fig, ax, ylabel="test accuracy (%)", title="t")
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test accuracy (%)"
    assert ax.get_legend() is not None


def test_run_report_plot_places_models_and_artifacts(tmp_path):
    art = tmp_path / "m.tflite"
    report = {"config": {"model": "vgg"}, "data": {"name": "fashion_mnist"},
              "models": [{"name": "baseline", "storage_bytes": 6_000_000, "accuracy": 0.91},
                         {"name": "compressed", "storage_bytes": 600_000, "accuracy": 0.90}],
              "artifacts": [{"path": str(art), "bytes": 1_600_000}],
              "bench": [{"file": str(art), "accuracy": 0.899}, {"file": str(tmp_path / "x.onnx"), "accuracy": None}]}
    png = plot_size_accuracy(report)
    assert png.startswith(b"\x89PNG") and len(png) > 1000
