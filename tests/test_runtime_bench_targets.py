"""runtime_bench: target profiles, the benchmark_model log parser, the adb target (with a
fake ``adb`` on PATH), segmentation and parity metrics, reference parity in records, and
the ``edgecomp bench`` command.

``tests/data/benchmark_model_android.log`` is written in the exact line format of LiteRT's
``benchmark_model`` (recent builds: ``INFO:`` prefix, p5/median/p95 on the ``count=``
lines, memory delta + periodic peak); its numbers are made up but self-consistent
(count x avg covers the requested minimum seconds), not captured from a real phone.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecomp.errors import EdgecompError
from runtime_bench import (TARGETS, bench_files, get_target, parity_figures, parse_benchmark_output,
                           segmentation_metrics)
from runtime_bench.bench import RECORD_KEYS
from runtime_bench.targets import pick_core, plan, usable_cpus

DATA = Path(__file__).parent / "data"
CAPTURED = DATA / "benchmark_model_android.log"
FAST = dict(warmup=1, runs=5, min_time_s=0.0, progress=False)


# -- profiles -------------------------------------------------------------------------

def test_profiles_resolve_to_their_settings():
    assert set(TARGETS) == {"desktop", "mobile-big", "mobile-little", "android", "arm64-emulated",
                            "arm64-emulated-a55"}
    n = len(usable_cpus())

    desk = get_target("desktop")
    assert desk.kind == "local" and desk.xnnpack and desk.resolver == "auto"
    assert desk.thread_counts() == [n]                        # all usable cores by default
    assert desk.thread_counts([1, 2, 4, 2]) == [1, 2, 4]      # --threads wins, no repeats
    assert desk.cpus() is None
    assert desk.settings(2) == {"target": "desktop", "threads": 2, "cpus": None, "resolver": "auto"}

    for name in ("mobile-big", "mobile-little"):
        t = get_target(name)
        assert t.kind == "local" and t.xnnpack and t.resolver == "auto"
        assert t.thread_counts([1, 2, 4]) == [1]               # always one thread
        cpus = t.cpus()
        assert len(cpus) == 1 and cpus[0] in usable_cpus()
        assert t.settings(1) == {"target": name, "threads": 1, "cpus": cpus, "resolver": "auto"}
    assert get_target("mobile-big").cpus() == [pick_core("big")]
    assert get_target("mobile-little").cpus() == [pick_core("little")]

    phone = get_target("android")
    assert phone.kind == "adb" and phone.xnnpack and phone.cpus() is None
    assert phone.thread_counts() == [1] and phone.thread_counts([4]) == [4]
    assert phone.benchmark_binary == "/data/local/tmp/benchmark_model"

    for name, cpu in (("arm64-emulated", "a76"), ("arm64-emulated-a55", "a55")):
        emu = get_target(name)
        assert emu.kind == "emulated" and emu.cpu_model == cpu and emu.cpus() is None
        assert emu.thread_counts([1, 4]) == [1]

    assert [(t.name, k) for t, k in plan(["mobile-little", "desktop", "mobile-little"], [1, 2])] == [
        ("mobile-little", 1), ("desktop", 1), ("desktop", 2)]
    with pytest.raises(EdgecompError, match="unknown target 'tablet'"):
        get_target("tablet")
    with pytest.raises(EdgecompError):
        desk.thread_counts([0])


def test_pick_core_reads_capacity_then_frequency(tmp_path):
    def fake_sys(values, rel):
        root = tmp_path / rel.replace("/", "_")
        for cpu, v in enumerate(values):
            f = root / f"cpu{cpu}" / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"{v}\n")
        return root

    big_little = fake_sys([381, 381, 381, 381, 1024, 1024], "cpu_capacity")   # ARM big.LITTLE
    assert pick_core("big", range(6), big_little) == 5
    assert pick_core("little", range(6), big_little) == 0
    assert pick_core("big", [0, 1, 4], big_little) == 4 and pick_core("little", [1, 4], big_little) == 1
    freq = fake_sys([1800000, 2400000, 2400000, 1800000], "cpufreq/cpuinfo_max_freq")
    assert pick_core("big", range(4), freq) == 2 and pick_core("little", range(4), freq) == 0
    same = fake_sys([3000000] * 4, "cpufreq/cpuinfo_max_freq")
    assert (pick_core("big", range(4), same), pick_core("little", range(4), same)) == (3, 0)
    nothing = tmp_path / "empty"
    assert (pick_core("big", [2, 5], nothing), pick_core("little", [2, 5], nothing)) == (5, 2)
    with pytest.raises(EdgecompError):
        pick_core("medium", [0])


# -- the benchmark_model log -----------------------------------------------------------------

def test_parser_reads_the_captured_log():
    r = parse_benchmark_output(CAPTURED.read_text())
    expect = {"init_ms": 28.417, "first_ms": 1.907, "warmup_ms": 0.3562, "warmup": 1405,
              "runs": 2885, "mean_ms": 0.3469, "std_ms": 0.031, "min_ms": 0.318, "p5_ms": 0.325,
              "median_ms": 0.341, "p95_ms": 0.389, "max_ms": 1.125, "mem_init_mb": 4.57422,
              "mem_overall_mb": 5.52734, "mem_peak_mb": 11.3086, "peak_rss_mb": 11.3086}
    for key, value in expect.items():
        assert r[key] == pytest.approx(value), key
    assert r["runs_per_s"] == pytest.approx(1000 / 0.3469)


OLD_LOG = """\
STARTING!
Num threads: [4]
Graph: [/data/local/tmp/m.tflite]
Loaded model /data/local/tmp/m.tflite
Initialized session in 17.187ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1 curr=3512391

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=2990275 curr=2913402 min=2727568 max=3189954 avg=2.95034e+06 std=109798

Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06, Inference (avg): 2.95034e+06
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Peak memory footprint (MB): init=4.21094 overall=46.0859
"""


def test_parser_reads_older_and_logcat_formats():
    r = parse_benchmark_output(OLD_LOG)
    assert r["init_ms"] == pytest.approx(17.187) and r["first_ms"] == pytest.approx(3512.391)
    assert r["warmup"] == 1 and r["warmup_ms"] == pytest.approx(3512.39)
    assert r["runs"] == 50 and r["mean_ms"] == pytest.approx(2950.34)
    assert r["min_ms"] == pytest.approx(2727.568) and r["max_ms"] == pytest.approx(3189.954)
    assert r["median_ms"] is None and r["p5_ms"] is None and r["p95_ms"] is None  # not printed
    assert r["mem_peak_mb"] is None and r["peak_rss_mb"] == pytest.approx(46.0859)

    logcat = "\n".join(f"07-08 15:34:26.201 I/tflite  ( 5395): {ln}" for ln in
                       CAPTURED.read_text().replace("INFO: ", "").splitlines())
    assert parse_benchmark_output(logcat)["median_ms"] == pytest.approx(0.341)


def test_parser_reports_a_failed_run():
    text = "/system/bin/sh: /data/local/tmp/benchmark_model: inaccessible or not found\n"
    with pytest.raises(EdgecompError, match="benchmark_model printed no timings: .*not found"):
        parse_benchmark_output(text)
    text = ("INFO: STARTING!\nERROR: Could not open '/data/local/tmp/x.tflite'.\n"
            "ERROR: Failed to load model from /data/local/tmp/x.tflite\n")
    with pytest.raises(EdgecompError, match="Failed to load model"):
        parse_benchmark_output(text)


# -- the adb target with a fake adb ---------------------------------------------------------

FAKE_ADB = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if args[:2] == ["-s", "emulator-5554"]:
    args = args[2:]
if args[0] == "push":
    if not os.path.isfile(args[1]):
        sys.exit("adb: error: cannot stat '%s': No such file or directory" % args[1])
    print("%s: 1 file pushed, 0 skipped. 41.3 MB/s (1650832 bytes in 0.038s)" % args[1])
elif args[:3] == ["shell", "getprop", "ro.product.model"]:
    print("Pixel 8 Pro")
elif args[0] == "shell" and args[1].endswith("benchmark_model"):
    sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
elif args[:3] == ["shell", "rm", "-f"]:
    pass
else:
    sys.exit("fake adb: unexpected %r" % args)
"""


@pytest.fixture()
def fake_adb(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "adb_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_CALLS", str(calls))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(CAPTURED))
    return lambda: [json.loads(ln) for ln in calls.read_text().splitlines()] if calls.exists() else []


def test_android_target_runs_benchmark_model_over_adb(tmp_path, fake_adb):
    model = tmp_path / "m_int8.tflite"
    model.write_bytes(b"TFL3" + bytes(2000))          # adb is fake: the bytes are not read
    other = tmp_path / "m.onnx"
    other.write_bytes(b"onnx")
    x = np.zeros((4, 8, 8, 1), np.float32)
    y = np.zeros(4, np.int64)
    recs = bench_files([model, other, tmp_path / "gone.tflite"], x, y, targets=["android"],
                       threads=(2, 4), warmup=7, runs=123, min_time_s=1.5, progress=False)
    assert [(r["name"], r["threads"]) for r in recs] == [
        (n, t) for n in ("m_int8.tflite", "m.onnx", "gone.tflite") for t in (2, 4)]
    r = recs[0]
    assert tuple(r) == RECORD_KEYS and r["error"] is None
    assert (r["target"], r["device"], r["format"], r["cpus"], r["resolver"]) == (
        "android", "Pixel 8 Pro", "tflite", None, "auto")
    assert r["bytes"] == 2004 and r["isolated"] is True
    assert r["median_ms"] == pytest.approx(0.341) and r["p95_ms"] == pytest.approx(0.389)
    assert r["runs"] == 2885 and r["warmup"] == 1405 and r["init_ms"] == pytest.approx(28.417)
    assert r["peak_rss_mb"] == pytest.approx(11.3086)
    assert r["p90_ms"] is None and r["accuracy"] is None       # not printed / not on the phone
    assert "runs .tflite files only" in recs[2]["error"]
    assert "does not exist" in recs[4]["error"]

    calls = fake_adb()
    pushes = [c for c in calls if c[0] == "push"]
    runs = [c for c in calls if c[0] == "shell" and c[1] == "/data/local/tmp/benchmark_model"]
    removes = [c for c in calls if c[:3] == ["shell", "rm", "-f"]]
    assert len(pushes) == len(runs) == len(removes) == 2       # only the .tflite, once per thread count
    remote = pushes[0][2]
    assert pushes[0][1] == str(model) and remote.startswith("/data/local/tmp/edgecomp_")
    assert runs[0][2:] == [f"--graph={remote}", "--num_threads=2", "--use_xnnpack=true",
                           "--warmup_runs=7", "--num_runs=123", "--min_secs=1.5",
                           "--report_peak_memory_footprint=true"]
    assert "--num_threads=4" in runs[1] and removes[0][3] == remote


def test_android_target_errors_are_rows(tmp_path, fake_adb, monkeypatch):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    x = np.zeros((2, 4), np.float32)
    r = bench_files([model], x, targets=["android"], batch=2, progress=False)[0]
    assert "batch 1 only" in r["error"] and r["median_ms"] is None

    bad = tmp_path / "no_timings.log"
    bad.write_text("/system/bin/sh: /data/local/tmp/benchmark_model: inaccessible or not found\n")
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(bad))
    r = bench_files([model], x, targets=["android"], progress=False)[0]
    assert "printed no timings" in r["error"] and "not found" in r["error"]
    assert [c for c in fake_adb() if c[:3] == ["shell", "rm", "-f"]]   # cleaned up anyway

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    r = bench_files([model], x, targets=["android"], progress=False)[0]
    assert "'adb' is not on PATH" in r["error"]


# -- metrics on hand-made arrays ------------------------------------------------------------------

def test_segmentation_metrics_by_hand():
    labels = np.array([[[0, 0, 1], [1, 2, 2]], [[0, 1, 1], [2, 2, 2]]])   # (N=2, H=2, W=3)
    preds = np.array([[[0, 1, 1], [1, 2, 0]], [[0, 1, 1], [2, 2, 1]]])
    scores = np.eye(3)[preds] * 0.8 + 0.1                                 # (2, 2, 3, 3)
    m = segmentation_metrics(scores, labels)
    # 9 of 12 pixels right; class 0: TP 2, FP 1, FN 1; class 1: TP 4, FP 2; class 2: TP 3, FN 2
    assert m["pixel_accuracy"] == pytest.approx(0.75)
    assert m["iou"] == pytest.approx([2 / 4, 4 / 6, 3 / 5])
    assert m["mean_iou"] == pytest.approx((0.5 + 4 / 6 + 0.6) / 3)
    for same in (labels[..., None], np.eye(3)[labels]):                   # (N,H,W,1) and one-hot
        assert segmentation_metrics(scores, same) == m
    four = segmentation_metrics(scores, labels, num_classes=4)            # class 3 never occurs
    assert four["iou"][3] is None and four["mean_iou"] == pytest.approx(m["mean_iou"])

    sigmoid = np.array([[[0.9], [0.2]], [[0.6], [0.5]]])[None]            # (1, 2, 2, 1); 0.5 -> class 0
    mask = np.array([[[1, 0], [0, 0]]])
    b = segmentation_metrics(sigmoid, mask)
    assert b["pixel_accuracy"] == pytest.approx(3 / 4)
    assert b["iou"] == pytest.approx([2 / 3, 1 / 2]) and b["mean_iou"] == pytest.approx(7 / 12)

    with pytest.raises(EdgecompError):
        segmentation_metrics(scores, labels[:, :1])
    with pytest.raises(EdgecompError, match="class ids"):
        segmentation_metrics(scores, labels + 5)


def test_parity_figures_by_hand():
    ref = np.array([[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]], np.float32)
    got = np.array([[0.2, 0.8], [0.4, 0.6], [0.5, 0.5]], np.float32)
    f = parity_figures(got, ref)
    assert f["max_abs_diff"] == pytest.approx(0.3, abs=1e-6)
    assert f["mean_abs_diff"] == pytest.approx((0.1 + 0.1 + 0.3 + 0.3) / 6, abs=1e-6)
    assert f["top1_agreement"] == pytest.approx(2 / 3)
    with pytest.raises(EdgecompError, match="reference"):
        parity_figures(got[:, :1], ref)


# -- segmentation + parity in real records, and the CLI -------------------------------------------------

@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A tiny per-pixel 3-class model as .keras and .tflite, masks from its own outputs."""
    import keras
    import tensorflow as tf

    d = tmp_path_factory.mktemp("seg")
    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 6, 2))
    out = keras.layers.Conv2D(3, 1, activation="softmax")(keras.layers.Conv2D(4, 3, padding="same")(inp))
    model = keras.Model(inp, out)
    model.save(d / "seg.keras")
    (d / "seg.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    rng = np.random.default_rng(1)
    x = rng.random((16, 6, 6, 2), dtype=np.float32)
    ref = np.asarray(model(x, training=False))
    y = ref.argmax(-1)
    y[:, 0, :] = (y[:, 0, :] + 1) % 3                       # one row of each mask wrong
    return {"dir": d, "x": x, "y": y, "ref": ref, "keras": d / "seg.keras", "tflite": d / "seg.tflite"}


def test_segmentation_and_reference_parity_in_records(seg):
    want = segmentation_metrics(seg["ref"], seg["y"])
    assert want["pixel_accuracy"] == pytest.approx(5 / 6)
    # the reference computed from the .keras file in a fresh worker
    iso = bench_files([seg["tflite"]], seg["x"], seg["y"], task="segmentation",
                      reference=seg["keras"], targets=["mobile-little"], **FAST)[0]
    # the reference given as outputs, measured in this process
    here = bench_files([seg["tflite"]], seg["x"], seg["y"], task="segmentation", reference=seg["ref"],
                       isolate=False, **FAST)[0]
    for r in (iso, here):
        assert r["error"] is None and r["task"] == "segmentation"
        assert r["accuracy"] == pytest.approx(want["pixel_accuracy"])
        assert r["mean_iou"] == pytest.approx(want["mean_iou"])
        assert r["top1_agreement"] == 1.0 and r["max_abs_diff"] < 1e-4 and r["n_eval"] == 16
    assert iso["target"] == "mobile-little" and iso["threads"] == 1
    if hasattr(os, "sched_setaffinity"):
        assert iso["cpus"] == get_target("mobile-little").cpus()          # what the worker really set
    assert here["target"] is None and here["cpus"] is None

    with pytest.raises(EdgecompError, match="reference"):
        bench_files([seg["tflite"]], seg["x"], reference=seg["ref"][:3], isolate=False, **FAST)
    with pytest.raises(EdgecompError, match="reference outputs"):
        bench_files([seg["tflite"]], seg["x"], reference=seg["dir"] / "missing.keras", **FAST)


def test_corrupt_container_is_an_error_row(tmp_path, seg):
    (tmp_path / "bad.ecz").write_bytes(b"\x00" * 300)
    bad, good = bench_files([tmp_path / "bad.ecz", seg["tflite"]], seg["x"], isolate=False, **FAST)
    assert bad["format"] == "ecz" and "container" in bad["error"] and bad["median_ms"] is None
    assert good["error"] is None and good["median_ms"] > 0


def test_cli_bench_rows_per_artifact_target_threads(tmp_path, capsys):
    import tensorflow as tf
    import keras

    from edgecomp.cli import main

    models = tmp_path / "models"
    models.mkdir()
    keras.utils.set_random_seed(2)
    inp = keras.Input((28, 28, 1))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp))
    (models / "clf.tflite").write_bytes(
        tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert())
    (models / "corrupt.onnx").write_bytes(b"\x00not an onnx file" * 50)
    (models / "notes.txt").write_text("ignored: not a model")
    out_dir = tmp_path / "report"
    code = main(["bench", str(models), str(tmp_path / "missing.keras"), "--data", "synthetic_images",
                 "--target", "desktop,mobile-little", "--threads", "1,2", "--runs", "5", "--warmup", "1",
                 "--min-time", "0", "-o", str(out_dir)])
    assert code == 0
    doc = json.loads((out_dir / "bench.json").read_text())
    rows = [(r["name"], r["target"], r["threads"]) for r in doc["records"]]
    assert rows == [(n, t, k) for n in ("clf.tflite", "corrupt.onnx", "missing.keras")
                    for t, k in (("desktop", 1), ("desktop", 2), ("mobile-little", 1))]
    by = {(r["name"], r["target"], r["threads"]): r for r in doc["records"]}
    good = by["clf.tflite", "mobile-little", 1]
    assert good["error"] is None and good["median_ms"] > 0 and 0 <= good["accuracy"] <= 1
    assert good["n_eval"] == 256 and len(good["cpus"] or [0]) == 1
    assert "ONNX Runtime cannot load" in by["corrupt.onnx", "desktop", 2]["error"]
    assert "does not exist" in by["missing.keras", "desktop", 1]["error"]
    for name in ("bench.csv", "bench.md", "latency.png", "accuracy_vs_size.png"):
        assert (out_dir / name).stat().st_size > 0
    assert "9 rows (6 with errors)" in capsys.readouterr().out

    assert main(["bench", str(models), "--target", "phone", "-o", str(tmp_path / "x")]) == 2
    assert "unknown target 'phone'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
