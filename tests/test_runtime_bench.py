"""runtime_bench: percentile maths, the latency loop, runners against Keras (.tflite,
.onnx, .keras, .ecz), the isolated worker, bad model files, and the report files.

The fixture builds a tiny Keras CNN and converts it itself (TFLiteConverter and
tf2onnx) so these tests do not depend on the exporters package.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time

import numpy as np
import pytest

from edgecomp.errors import EdgecompError
from edgecomp.metrics import accuracy
from runtime_bench import bench_file, bench_files, open_runner, summarize, write_report
from runtime_bench.bench import RECORD_KEYS
from runtime_bench.latency import measure_latency, peak_rss_mb
from runtime_bench.report import pareto_front
from runtime_bench.runners import Runner

FAST = dict(warmup=2, runs=20, min_time_s=0.01, progress=False)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A tiny model as .keras/.tflite/.onnx, inputs, labels, reference outputs, bad files."""
    import keras
    import tensorflow as tf
    import tf2onnx

    d = tmp_path_factory.mktemp("artifacts")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inp, out)

    model.save(d / "tiny.keras")
    from edgecomp.store import save_compressed
    save_compressed(model, d / "tiny.ecz")
    (d / "tiny.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="x")])
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17,
                                  output_path=str(d / "tiny.onnx"))

    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    ref = np.asarray(model(x, training=False))
    y = rng.integers(0, 3, size=len(x))
    (d / "bad.tflite").write_bytes(rng.bytes(3000))
    (d / "bad.onnx").write_bytes(rng.bytes(3000))
    return {"dir": d, "x": x, "y": y, "ref": ref,
            "acc": float(np.mean(ref.argmax(-1) == y)),
            "tflite": d / "tiny.tflite", "onnx": d / "tiny.onnx", "keras": d / "tiny.keras",
            "ecz": d / "tiny.ecz",
            "bad_tflite": d / "bad.tflite", "bad_onnx": d / "bad.onnx",
            "missing": d / "missing.tflite"}


# -- stats ----------------------------------------------------------------------

def test_summarize_known_values():
    s = summarize(np.array([5, 1, 4, 2, 3]) / 1e3)  # order must not matter
    assert s["n"] == 5
    assert s["mean_ms"] == pytest.approx(3.0)
    assert s["std_ms"] == pytest.approx(math.sqrt(2.0))  # population std
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(5.0)
    assert s["median_ms"] == pytest.approx(3.0)
    # linear interpolation: position (n-1)*q = 3.6 -> 4 + 0.6*(5-4); 3.96 -> 4.96
    assert s["p90_ms"] == pytest.approx(4.6)
    assert s["p99_ms"] == pytest.approx(4.96)
    assert s["p5_ms"] == pytest.approx(1.2) and s["p95_ms"] == pytest.approx(4.8)  # 0.2, 3.8
    assert s["runs_per_s"] == pytest.approx(1000 / 3)

    s = summarize(np.arange(1, 101) / 1e3)  # 1..100 ms
    assert s["median_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)   # 89.1 -> 90 + 0.1
    assert s["p99_ms"] == pytest.approx(99.01)  # 98.01 -> 99 + 0.01
    assert s["p5_ms"] == pytest.approx(5.95)    # 4.95 -> 5 + 0.95
    assert s["p95_ms"] == pytest.approx(95.05)  # 94.05 -> 95 + 0.05

    one = summarize([0.002])
    assert one["std_ms"] == 0.0
    assert one["min_ms"] == one["median_ms"] == one["p99_ms"] == one["max_ms"] == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [[], [0.1, -0.001], [0.1, float("nan")]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(EdgecompError):
        summarize(bad)


def test_pareto_front_and_accuracy_helpers():
    assert pareto_front([1, 2, 3, 4], [0.5, 0.9, 0.8, 0.95]) == [0, 1, 3]
    assert pareto_front([1, 1, 2], [0.7, 0.7, 0.6]) == [0]  # duplicate kept once, dominated dropped
    assert pareto_front([], []) == []

    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(scores, np.array([1, 1, 1, 0])) == 0.75
    assert accuracy(scores, np.array([[1], [1], [1], [0]])) == 0.75          # (N, 1) labels
    assert accuracy(scores, np.eye(2)[[1, 1, 1, 0]]) == 0.75                 # one-hot
    assert accuracy(np.array([[0.9], [0.2], [0.6]]), np.array([1, 1, 1])) == pytest.approx(2 / 3)
    seg = np.zeros((2, 4, 4, 3))
    seg[..., 2] = 1.0
    labels = np.full((2, 4, 4), 2)
    labels[0, 0, 0] = 0
    assert accuracy(seg, labels) == pytest.approx(31 / 32)                  # per pixel
    with pytest.raises(EdgecompError):
        accuracy(scores, np.array([[1, 0, 0]] * 4))


# -- the latency loop -----------------------------------------------------------

class SleepRunner(Runner):
    """A runner whose invoke sleeps ``delay_s`` (no model file)."""

    format = "fake"

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.calls = 0
        self._prepared = None

    def _run(self, x):
        self.calls += 1
        time.sleep(self.delay_s)
        return x


def test_measure_latency_meets_both_run_count_and_min_time():
    r = SleepRunner(0.001)
    res = measure_latency(r, np.zeros((1, 2), np.float32), warmup=3, runs=5, min_time_s=0.04)
    assert res["runs"] >= 5 and res["timed_s"] >= 0.04
    assert res["min_ms"] >= 1.0                         # a sleep(1 ms) never takes less
    assert res["runs"] * res["min_ms"] / 1e3 <= res["timed_s"] + 1e-9
    assert r.calls == 1 + 3 + res["runs"] + (res["preempted"] or 0)   # first + warm-up + timed
    assert res["init_ms"] is None and res["warmup"] == 3

    # min_time_s=0: exactly the requested count; a factory gets its load timed
    def factory():
        time.sleep(0.02)
        return SleepRunner(0.0)

    res = measure_latency(factory, np.zeros((1, 2), np.float32), warmup=0, runs=7, min_time_s=0)
    assert res["runs"] == 7
    assert res["init_ms"] >= 20.0
    with pytest.raises(EdgecompError):
        measure_latency(SleepRunner(0.0), np.zeros((1, 2)), runs=0)


def test_preempted_runs_are_dropped_and_counted(monkeypatch):
    import runtime_bench.latency as latency

    class Preempted(SleepRunner):
        """Every third invoke is 'preempted': the fake switch counter moves during it."""
        switches = 0

        def _run(self, x):
            out = super()._run(x)
            if self.calls % 3 == 0:
                Preempted.switches += 1
            return out

    monkeypatch.setattr(latency, "_involuntary_switches", lambda: Preempted.switches)
    r = Preempted(0.0)
    res = measure_latency(r, np.zeros((1, 2), np.float32), warmup=3, runs=6, min_time_s=0)
    # calls 1 (first) and 2-4 (warm-up); timed 5..13 keeps 5,7,8,10,11,13 and drops 6,9,12
    assert (res["runs"], res["preempted"], r.calls) == (6, 3, 13)
    r = Preempted(0.0)
    res = measure_latency(r, np.zeros((1, 2), np.float32), warmup=3, runs=6, min_time_s=0,
                          drop_preempted=False)
    assert (res["runs"], res["preempted"], r.calls) == (6, None, 10)


def test_latency_record_fields_on_tflite(art):
    res = measure_latency(lambda: open_runner(art["tflite"], threads=1), art["x"][:1],
                          warmup=5, runs=50, min_time_s=0.05)
    for key in ("init_ms", "first_ms", "runs", "timed_s", "mean_ms", "std_ms", "min_ms",
                "median_ms", "p90_ms", "p99_ms", "max_ms", "runs_per_s", "peak_rss_mb"):
        assert res[key] is not None and res[key] >= 0, key
    assert res["runs"] >= 50 and res["timed_s"] >= 0.05
    assert res["init_ms"] > 0 and res["first_ms"] > 0
    assert res["min_ms"] <= res["median_ms"] <= res["p90_ms"] <= res["p99_ms"] <= res["max_ms"]
    assert res["min_ms"] <= res["mean_ms"] <= res["max_ms"]
    assert res["runs_per_s"] == pytest.approx(1000 / res["mean_ms"])
    assert res["peak_rss_mb"] > 10


# -- runners agree with Keras ------------------------------------------------------

@pytest.mark.parametrize("fmt", ["tflite", "onnx", "keras", "ecz"])
def test_runner_matches_keras(art, fmt):
    runner = open_runner(art[fmt], threads=1)
    assert runner.format == fmt
    out = runner.predict(art["x"], batch_size=24)        # uneven last chunk
    assert out.dtype == np.float32 and out.shape == art["ref"].shape
    np.testing.assert_allclose(out, art["ref"], atol=1e-4, rtol=0)
    runner.prepare(art["x"][:3])
    np.testing.assert_allclose(np.asarray(runner.invoke(), np.float32), art["ref"][:3],
                               atol=1e-4, rtol=0)


# -- bench records ------------------------------------------------------------------

@pytest.fixture(scope="module")
def in_process_records(art):
    paths = [art["tflite"], art["missing"], art["bad_tflite"], art["onnx"], art["bad_onnx"]]
    return bench_files(paths, art["x"], art["y"], threads=(1, 2), batch=2, isolate=False, **FAST)


def test_bad_files_give_error_records_and_the_rest_is_measured(art, in_process_records):
    recs = in_process_records
    assert len(recs) == 10
    assert [(r["name"], r["threads"]) for r in recs] == [
        (n, t) for n in ("tiny.tflite", "missing.tflite", "bad.tflite", "tiny.onnx", "bad.onnx")
        for t in (1, 2)]
    for r in recs:
        assert tuple(r) == RECORD_KEYS
        assert r["batch"] == 2 and r["isolated"] is False
    by = {(r["name"], r["threads"]): r for r in recs}
    for name in ("tiny.tflite", "tiny.onnx"):
        for t in (1, 2):
            r = by[name, t]
            assert r["error"] is None
            assert r["bytes"] == art[r["format"]].stat().st_size and 0 < r["gzip_bytes"] < r["bytes"]
            assert r["runs"] >= FAST["runs"]
            assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
            assert r["accuracy"] == pytest.approx(art["acc"]) and r["n_eval"] == len(art["x"])
    assert by["tiny.tflite", 1]["resolver"] == "auto" and by["tiny.tflite", 1]["optimization"] is None
    assert by["tiny.onnx", 1]["optimization"] == "all" and by["tiny.onnx", 1]["resolver"] is None

    for name, expect in (("missing.tflite", "does not exist"), ("bad.tflite", "LiteRT cannot load"),
                         ("bad.onnx", "ONNX Runtime cannot load")):
        r = by[name, 1]
        assert expect in r["error"] and "\n" not in r["error"]
        assert r["median_ms"] is None and r["accuracy"] is None
        assert (r["bytes"] is None) == (name == "missing.tflite")


def test_isolated_worker_measures_in_a_fresh_process(art):
    paths = [art["tflite"], art["bad_onnx"], art["dir"] / "missing.onnx"]
    recs = bench_files(paths, art["x"], art["y"], isolate=True, **FAST)
    good, bad, missing = recs
    assert good["error"] is None and good["isolated"] is True
    assert good["accuracy"] == pytest.approx(art["acc"]) and good["n_eval"] == len(art["x"])
    assert good["runs"] >= FAST["runs"] and good["init_ms"] > 0
    # The worker never imported TensorFlow, so its peak is far below this process's.
    assert 0 < good["peak_rss_mb"] < peak_rss_mb() / 2
    assert "ONNX Runtime cannot load" in bad["error"] and bad["median_ms"] is None
    assert "does not exist" in missing["error"]


def test_bench_file_timeout_and_caller_mistakes(art):
    r = bench_file(art["tflite"], art["x"], min_time_s=60, timeout_s=1.0)
    assert r["error"] == "worker timed out after 1 s" and r["median_ms"] is None
    r = bench_file(art["dir"] / "model.pb", art["x"], isolate=False)
    assert r["format"] is None and "cannot tell the format" in r["error"]
    with pytest.raises(EdgecompError, match="unknown task"):
        bench_file(art["tflite"], art["x"], art["y"], task="detection")
    with pytest.raises(EdgecompError, match="samples"):
        bench_file(art["tflite"], art["x"], art["y"][:5])


# -- report -------------------------------------------------------------------------

def test_write_report_files(tmp_path, art, in_process_records):
    recs = in_process_records
    paths = write_report(recs, tmp_path / "report")
    assert set(paths) == {"json", "csv", "md", "latency_png", "accuracy_png"}
    assert sorted(os.listdir(tmp_path / "report")) == sorted(p.name for p in paths.values())

    doc = json.loads(paths["json"].read_text())
    assert doc["records"] == json.loads(json.dumps(recs))
    assert doc["environment"]["onnxruntime"] and doc["environment"]["ai-edge-litert"]
    # same accuracy, so the smaller file alone is on the front
    smaller = min((art["tflite"], art["onnx"]), key=lambda p: p.stat().st_size)
    assert doc["pareto"] == [str(smaller)]

    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(recs)
    assert list(rows[0]) == list(RECORD_KEYS)
    assert [int(r["threads"]) for r in rows] == [r["threads"] for r in recs]
    assert float(rows[0]["median_ms"]) == pytest.approx(recs[0]["median_ms"])
    assert rows[2]["median_ms"] == "" and rows[2]["error"]

    md = paths["md"].read_text().splitlines()
    assert md[0].startswith("| artifact |") and len(md) == 2 + len(recs)
    assert all(line.count(" | ") == md[0].count(" | ") for line in md[2:])
    assert sum(line.split(" | ")[-2] == "yes" for line in md[2:]) == 2  # smaller file, both threads

    for key in ("latency_png", "accuracy_png"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_write_report_without_labels(tmp_path, art):
    recs = bench_files([art["onnx"]], art["x"], isolate=False, **FAST)
    assert recs[0]["accuracy"] is None and recs[0]["error"] is None
    paths = write_report(recs, tmp_path)
    assert json.loads(paths["json"].read_text())["pareto"] == []
    assert paths["accuracy_png"].read_bytes()[:4] == b"\x89PNG"
