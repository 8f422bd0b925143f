"""Every bad input we try, with the exit code and message it must get.

One list, two uses: ``tests/test_bad_inputs.py`` runs each case as a test, and
``scripts/bad_inputs_table.py`` runs them to write ``docs/BAD_INPUTS.md``.
Each case's ``setup(tmp)`` writes what it needs into a fresh folder and returns the argv.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Case:
    id: str
    what: str
    setup: Callable[[Path], list[str]]
    code: int
    message: str                      # must appear in the one-line error
    patch: str | None = None          # a named fault to inject while the case runs
    env: dict | None = None           # environment variables while the case runs (None: unset)


def _tiny_keras(tmp: Path, shape=(28, 28, 1), classes=10, nan=False, name="m.keras") -> Path:
    from edgecomp.models import build_model
    model = build_model("vgg", shape, classes, width=0.125)
    if nan:
        k = model.get_layer("fc1").kernel
        w = k.numpy()
        w[0, 0] = np.nan
        k.assign(w)
    path = tmp / name
    model.save(path)
    return path


def _lambda_keras(tmp: Path) -> Path:
    import keras
    inp = keras.Input((28, 28, 1))
    out = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.Flatten()(out)
    out = keras.layers.Dense(10, activation="softmax")(out)
    path = tmp / "lambda.keras"
    keras.Model(inp, out).save(path)
    return path


def _container(tmp: Path) -> Path:
    from edgecomp import store
    from edgecomp.models import build_model
    path = tmp / "m.ecz"
    store.save_compressed(build_model("vgg", (28, 28, 1), 10, width=0.125), path)
    return path


def _truncated(tmp):
    p = _container(tmp)
    p.write_bytes(p.read_bytes()[:-100])
    return p


def _flipped(tmp):
    p = _container(tmp)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    return p


def _empty_idx(tmp: Path) -> Path:
    folder = tmp / "fmnist-empty"
    folder.mkdir()
    for split, n in (("train", 0), ("t10k", 0)):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 0x803, n, 28, 28)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, n)))
    return folder


def _blocked(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file" / "out"


SYN = ["--data", "synthetic_images"]

CASES = [
    Case("rate-1", "compress rate of 1.0", lambda t: ["run", "--compress-rate", "1.0", "-o", str(t / "o")],
         2, "compress rate must be in [0, 1)"),
    Case("rate-negative", "compress rate below 0", lambda t: ["run", "--compress-rate", "-0.2", "-o", str(t / "o")],
         2, "compress rate must be in [0, 1)"),
    Case("rate-text", "compress rate that is not a number", lambda t: ["run", "--compress-rate", "abc"],
         2, "compress rate must be a number"),
    Case("unknown-model", "unknown model name", lambda t: ["run", "--model", "vgx", "-o", str(t / "o")],
         2, "unknown model 'vgx'"),
    Case("unknown-dataset", "unknown dataset name", lambda t: ["run", "--data", "mnist9", "-o", str(t / "o")],
         2, "unknown dataset 'mnist9'"),
    Case("missing-dataset", "Fashion-MNIST folder without the files",
         lambda t: ["run", "--data-dir", str(t), "-o", str(t / "o")], 2, "Fashion-MNIST", patch="no-download"),
    Case("empty-dataset", "IDX files holding zero images",
         lambda t: ["run", "--data-dir", str(_empty_idx(t)), "-o", str(t / "o")], 2, "empty"),
    Case("unwritable-out", "output folder under a regular file",
         lambda t: ["run", *SYN, "-o", str(_blocked(t))], 2, "output folder"),
    Case("foreign-container", "a zip file passed as a container",
         lambda t: (t / "x.ecz").write_bytes(b"PK\x03\x04" + bytes(64)) and ["evaluate", str(t / "x.ecz"), *SYN],
         2, "not an edgecomp container"),
    Case("missing-container", "a container path that does not exist",
         lambda t: ["evaluate", str(t / "none.ecz"), *SYN], 2, "does not exist"),
    Case("truncated-container", "a container cut short",
         lambda t: ["evaluate", str(_truncated(t)), "--data", "fashion_mnist"], 2, "corrupt container"),
    Case("flipped-container", "a container with one flipped bit",
         lambda t: ["evaluate", str(_flipped(t)), "--data", "fashion_mnist"], 2, "checksum mismatch"),
    Case("nan-weights", "a model whose weights hold NaN",
         lambda t: ["compress", str(_tiny_keras(t, nan=True)), "--data", "fashion_mnist", "--train-size", "64",
                    "--fine-tune-epochs", "0", "-o", str(t / "m.ecz")], 2, "NaN"),
    Case("shape-mismatch", "a model for 8x8 inputs with 28x28 data",
         lambda t: ["compress", str(_tiny_keras(t, shape=(8, 8, 1))), "--data", "fashion_mnist",
                    "-o", str(t / "m.ecz")], 2, "takes inputs of shape"),
    Case("class-mismatch", "a 3-class model with 10-class data",
         lambda t: ["compress", str(_tiny_keras(t, classes=3)), "--data", "fashion_mnist",
                    "-o", str(t / "m.ecz")], 2, "predicts 3 classes"),
    Case("bits-range", "weight-sharing bits of 9",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--method", "deep",
                    "--bits", "conv=9", "--train-size", "64", "-o", str(t / "m.ecz")], 2, "must be in 1..8"),
    Case("bad-schedule", "an unknown pruning schedule",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--prune-schedule", "sometimes",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "bad pruning schedule"),
    Case("bad-layer-rate", "a per-layer rate over 1",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--layer-rates", "fc1=1.5",
                    "-o", str(t / "m.ecz")], 2, "bad per-layer rate 'fc1=1.5'"),
    Case("lambda-model", "a .keras model with a Lambda layer, without --trust-model",
         lambda t: ["compress", str(_lambda_keras(t)), "--data", "fashion_mnist", "-o", str(t / "m.ecz")],
         2, "Lambda"),
    Case("disk-full", "the disk fills while the container is written",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--train-size", "64",
                    "--fine-tune-epochs", "0", "-o", str(t / "m.ecz")], 2, "No space left", patch="disk-full"),
    Case("bad-layer-glob", "a per-layer rate for a layer the model lacks",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--layer-rates", "fc9=0.5",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "'fc9' matches no prunable layer"),
    Case("deep-flag-seed", "a weight-sharing flag with the seed's method",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--bits", "fc1=3",
                    "-o", str(t / "m.ecz")], 2, "only --method deep"),
    Case("channels-range", "a channel keep ratio over 1",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--channels", "1.5",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "keep ratio must be in (0, 1]"),
    Case("channels-zero", "a channel keep ratio of 0",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--channels", "0",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "keep ratio must be in (0, 1]"),
    Case("channels-unknown-layer", "channels of a layer the model lacks",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--channels", "fc9=0.5",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "no layer matches 'fc9'"),
    Case("channels-output-layer", "channels of the model's output layer, asked for by name",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--channels", "predictions=0.5",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "cannot prune the channels of 'predictions'"),
    Case("macs-target-unreachable", "a MACs target the model cannot reach",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--target-macs", "0.000001",
                    "--train-size", "64", "-o", str(t / "m.ecz")], 2, "reached"),
    Case("latency-unknown-profile", "a latency target on an unknown profile",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--target-latency", "0.1",
                    "--latency-profile", "phone-x", "-o", str(t / "m.ecz")], 2, "unknown target 'phone-x'"),
    Case("qat-weight-bits", "QAT weight bits out of range",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--qat-epochs", "1",
                    "--qat-weight-bits", "9", "-o", str(t / "m.ecz")], 2, "QAT weight bits must be in 2..8"),
    Case("qat-learning-rate", "a QAT learning rate out of range",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--qat-epochs", "1",
                    "--qat-learning-rate", "0", "-o", str(t / "m.ecz")], 2, "QAT learning rate must be in (0, 1)"),
    Case("qat-container-ranges", "a container whose QAT ranges were tampered with (a range without 0)",
         lambda t: ["export", str(_qat_container(t, bad_range=True)), "--data", "fashion_mnist", "--format", "tflite",
                    "--variants", "int8", "-o", str(t / "x")], 2, "must be finite and hold 0"),
    Case("multi-worker-no-tf-config", "multi-worker training without TF_CONFIG",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--distribute", "multi-worker",
                    "-o", str(t / "m.ecz")], 2, "needs TF_CONFIG", env={"TF_CONFIG": None}),
    Case("multi-worker-bad-tf-config", "multi-worker training with a TF_CONFIG that is not JSON",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--distribute", "multi-worker",
                    "-o", str(t / "m.ecz")], 2, "TF_CONFIG is not valid JSON", env={"TF_CONFIG": "{cluster: worker"}),
    Case("multi-worker-bad-task", "multi-worker training with a task index outside the cluster",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--distribute", "multi-worker",
                    "-o", str(t / "m.ecz")], 2, "task index 5 is not in 0..1",
         env={"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", '
                           '"index": 5}}'}),
    Case("multi-worker-no-peers", "a worker whose peers never answer (1 s --peer-timeout)",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--distribute", "multi-worker",
                    "--peer-timeout", "1", "-o", str(t / "m.ecz")], 2, "could not reach its peers within 1 s",
         env={"TF_CONFIG": "free-ports:2"}),
    Case("cpu-devices-without-mirrored", "--cpu-devices without --distribute mirrored",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--cpu-devices", "2",
                    "-o", str(t / "m.ecz")], 2, "--cpu-devices splits one host's CPU"),
    Case("resume-without-checkpoints", "compress --resume without a checkpoint folder",
         lambda t: ["compress", str(_tiny_keras(t)), "--data", "fashion_mnist", "--resume",
                    "-o", str(t / "m.ecz")], 2, "--resume needs --checkpoints"),
    Case("check-on-not-emulated", "export --check-on with a target that is not emulated",
         lambda t: ["export", str(_tiny_keras(t)), "--data", "fashion_mnist", "--check-on", "desktop",
                    "-o", str(t / "x")], 2, "--check-on takes emulated targets"),
    Case("arm64-setup-no-mmdebstrap", "edgecomp setup arm64 on a machine without mmdebstrap",
         lambda t: ["setup", "arm64"], 2, "apt-get install mmdebstrap",
         env={"PATH": "/nonexistent", "EDGECOMP_CACHE": "/tmp/edgecomp-bad-input-cache"}),
    Case("arm64-setup-offline", "edgecomp setup arm64 without network (an unreachable Debian mirror)",
         lambda t: ["setup", "arm64"], 2, "could not download (no network?)",
         env={"EDGECOMP_DEBIAN_MIRROR": "http://127.0.0.1:9/debian", "EDGECOMP_CACHE": "/tmp/edgecomp-bad-input-cache"}),
    Case("unknown-variant", "an export variant that does not exist",
         lambda t: ["export", str(_tiny_keras(t)), "--data", "fashion_mnist", "--format", "tflite",
                    "--variants", "int3", "-o", str(t / "x")], 2, "variant(s) int3"),
]


def _qat_container(tmp: Path, bad_range: bool = False) -> Path:
    """A container from a QAT run whose first stored activation range is (1, 2) when ``bad_range``."""
    from edgecomp import qat, store
    from edgecomp.models import build_model
    model = build_model("vgg", (28, 28, 1), 10, width=0.125)
    qmodel, report = qat.quantize_model(model)
    qat.calibrate(qmodel, np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype("float32"), 8, 1)
    info = qat.container_info(qmodel, qat.QAT(), report)
    if bad_range:
        info["ranges"][next(iter(info["ranges"]))] = [1.0, 2.0]
    path = tmp / "q.ecz"
    path.write_bytes(store.encode_model(model, info={"qat": info}))
    return path


def run_case(case: Case, tmp: Path) -> dict:
    """Run one case in-process through ``edgecomp.cli.main``; return code, stderr and leftovers."""
    import contextlib
    import errno
    import io
    import os

    import keras

    from edgecomp import cli
    from edgecomp import io as ec_io

    argv = case.setup(tmp)
    before = {p for p in tmp.rglob("*") if p.is_file()}
    saved = {"get_file": keras.utils.get_file, "fsync": ec_io.os.fsync, "env": os.environ.get("EDGECOMP_DATA")}

    def no_download(*a, **k):
        raise OSError("network unreachable")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if case.patch == "no-download":
        keras.utils.get_file = no_download
        os.environ["EDGECOMP_DATA"] = str(tmp / "no-data-here")
    if case.patch == "disk-full":
        ec_io.os.fsync = disk_full
    saved_env = {k: os.environ.get(k) for k in (case.env or {})}
    for k, v in (case.env or {}).items():
        if v is None:
            os.environ.pop(k, None)
        elif v.startswith("free-ports:"):   # a cluster of this worker and peers that never start
            import json
            import socket
            ports = []
            for _ in range(int(v.split(":")[1])):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    ports.append(s.getsockname()[1])
            os.environ[k] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                        "task": {"type": "worker", "index": 0}})
        else:
            os.environ[k] = v
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse errors
                code = exc.code
    finally:
        keras.utils.get_file = saved["get_file"]
        ec_io.os.fsync = saved["fsync"]
        if saved["env"] is None:
            os.environ.pop("EDGECOMP_DATA", None)
        else:
            os.environ["EDGECOMP_DATA"] = saved["env"]
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = {p for p in tmp.rglob("*") if p.is_file()}
    lines = [l.replace(str(tmp), "TMP") for l in err.getvalue().splitlines() if l.strip()]
    return {"code": code, "stderr": err.getvalue(), "lines": lines,
            "leftovers": sorted(str(p.relative_to(tmp)) for p in after - before),
            "argv": ["edgecomp", *[a.replace(str(tmp), "TMP") for a in argv]]}
