"""Bad input gets one line, exit code 2, no traceback and no partial output."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecomp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    proc = subprocess.run([sys.executable, "-m", "edgecomp.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _one_line_error(err: str, *needles):
    lines = [l for l in err.strip().splitlines() if l.startswith("edgecomp")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def _files(path: Path):
    return sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.mark.parametrize("rate", ["1.0", "-0.2", "1.5", "abc"])
def test_rate_outside_range(rate, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--compress-rate", rate, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, "compress rate")
    assert not (tmp_path / "o").exists()


def test_unknown_model(tmp_path, capsys):
    assert main(["run", "--model", "vgx", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err, "unknown model 'vgx'", "vgg")


def test_unknown_dataset(tmp_path, capsys):
    assert main(["run", "--data", "mnist9", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err, "unknown dataset 'mnist9'", "fashion_mnist")
    assert _files(tmp_path / "o") == []


def test_missing_dataset(tmp_path, capsys, monkeypatch):
    import keras

    def no_net(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_net)
    monkeypatch.setenv("EDGECOMP_DATA", str(tmp_path / "nothing"))
    assert main(["run", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err, "fashion")
    assert _files(tmp_path / "o") == []


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--data", "synthetic_images", "--out", str(blocker / "sub")]) == 2
    _one_line_error(capsys.readouterr().err, "output folder")


def test_foreign_and_missing_container(tmp_path, capsys):
    foreign = tmp_path / "foreign.ecz"
    foreign.write_bytes(b"PK\x03\x04" + bytes(200))
    assert main(["evaluate", str(foreign), "--data", "synthetic_images"]) == 2
    _one_line_error(capsys.readouterr().err, "not an edgecomp container")
    assert main(["evaluate", str(tmp_path / "none.ecz"), "--data", "synthetic_images"]) == 2
    _one_line_error(capsys.readouterr().err, "does not exist")
    assert foreign.read_bytes()[:4] == b"PK\x03\x04"  # input untouched


def test_truncated_container_real_process(tmp_path):
    from edgecomp import store
    from edgecomp.models import build_model
    path = tmp_path / "m.ecz"
    store.save_compressed(build_model("vgg", (8, 8, 1), 2, width=0.125), path)
    path.write_bytes(path.read_bytes()[:-10])
    code, out, err = run_cli("evaluate", str(path), "--data", "synthetic_images")
    assert code == 2
    _one_line_error(err, "corrupt container")


def test_sigterm_stops_cleanly_with_resume_hint(tmp_path):
    import signal
    import time
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "edgecomp.cli", "run", "--data", "synthetic_images", "--width",
                             "0.25", "--epochs", "30", "-o", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    state = out / "checkpoints" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:   # training has started
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _one_line_error(err, "interrupted", "edgecomp run --resume")
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".") and ".part" in p.name]
    assert leftovers == []


def test_export_goes_on_past_a_parity_miss_and_says_why(tmp_path, capsys):
    import json

    from edgecomp.models import build_model
    import keras
    keras.utils.set_random_seed(0)
    model = build_model("vgg", (28, 28, 1), 10, width=0.125)      # untrained: near-uniform, near-tied scores
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "x"
    code = main(["export", str(path), "--data", "synthetic_images", "--format", "tflite,onnx",
                 "--variants", "int8,fp32", "--parity-size", "64", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    report = json.loads((out / "export.json").read_text())
    assert code == 2 and len(err.splitlines()) == 1 and "missed the parity gate" in err
    failed = {(f["format"], f["variant"]) for f in report["failed_parity"]}
    assert ("tflite", "int8") in failed                      # the first variant missed ...
    written = {(a["format"], a["variant"]) for a in report["artifacts"]}
    assert {("tflite", "fp32"), ("onnx", "fp32")} <= written  # ... and the others were still tried
    assert all((out / f"m_{v}.{fmt}").is_file() for fmt, v in written)
    assert not any((out / f"m_{v}.{fmt}").exists() for fmt, v in failed)
    first = report["failed_parity"][0]
    assert "near ties" in first["error"] and first["parity"]["flipped"] >= 1
    assert "output step" in first["error"] and "flipped_within_step" in first["parity"]   # int8: the step count
