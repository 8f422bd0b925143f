"""The emulated arm64 target: set-up errors, the worker under qemu, the sparse path, a failing file.

Tests that run under emulation need the cached environment (``edgecomp setup arm64``,
about 15 s with the Debian archive and PyPI reachable). They build it when it is
missing; where it can't be built they skip, unless ``EDGECOMP_REQUIRE_ARM64=1``
(CI sets it), where they fail.
"""

import os

import numpy as np
import pytest

from edgecomp.errors import EdgecompError
from runtime_bench import emulation


@pytest.fixture(scope="module")
def arm_env():
    try:
        return emulation.ensure(progress=lambda line: None)
    except EdgecompError as exc:
        if os.environ.get("EDGECOMP_REQUIRE_ARM64") == "1":
            raise
        pytest.skip(f"no arm64 environment: {exc}")


def _data(n=48, shape=(32, 32, 3), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, *shape)).astype(np.float32)
    h = shape[0] // 2
    for i, c in enumerate(y):
        x[i, (c // 2) * h:(c // 2) * h + h, (c % 2) * h:(c % 2) * h + h, :] += 1.0
    return x, y


def test_setup_without_mmdebstrap_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgecompError, match="apt-get install mmdebstrap"):
        emulation.setup(root=tmp_path, progress=lambda line: None)
    assert not any(tmp_path.rglob("manifest.json"))


def test_setup_without_network_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    if emulation.shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")
    monkeypatch.setenv("EDGECOMP_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")   # nothing listens there
    with pytest.raises(EdgecompError, match=r"could not download \(no network\?\)"):
        emulation.setup(root=tmp_path, progress=lambda line: None)
    assert list((tmp_path / "arm64").iterdir()) == []   # the temporary build folder is gone


def test_missing_qemu_is_named(tmp_path):
    env = emulation.Arm64Env(tmp_path)
    assert not env.ready() and emulation.find(tmp_path) is None
    with pytest.raises(EdgecompError, match="qemu-aarch64 is missing.*edgecomp setup arm64 --force"):
        emulation.run_python(env, ["-c", "pass"])
    with pytest.raises(EdgecompError, match="unknown emulated CPU"):
        emulation.qemu_command(env, cpu="m1")


def test_setup_reuses_its_cache(arm_env):
    lines = []
    again = emulation.setup(progress=lines.append)
    assert again.root == arm_env.root and lines == [f"arm64 environment: reusing {arm_env.root}"]
    m = arm_env.manifest
    assert m["versions"] == emulation.VERSIONS and m["probe"].startswith("aarch64")
    assert "version 10." in m["qemu"] or int(m["qemu"].split("version ")[1].split(".")[0]) >= 10


def test_wheel_pins_match_pyproject():
    import tomllib
    from pathlib import Path
    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in emulation.VERSIONS["wheels"]:
        assert pin in deps, f"{pin} differs from pyproject.toml"


def test_worker_under_emulation_matches_x86_and_keras(arm_env, tmp_path):
    import keras

    import exporters
    from runtime_bench import emulated

    keras.utils.set_random_seed(0)
    x, y = _data()
    inp = keras.Input(x.shape[1:])
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(h))
    ref = np.asarray(model.predict(x, verbose=0))
    for fmt in ("tflite", "onnx"):
        art = exporters.export_and_check(model, fmt, "fp32", tmp_path / f"m.{fmt}", check_x=x[:16])
        rec = emulated.check_file(art.path, x, ref, y=y, cpu="a55" if fmt == "onnx" else "a76")
        assert rec["error"] is None, rec["error"]
        assert rec["machine"] == "aarch64" and "cortex-a" in rec["emulator"]
        assert rec["vs_keras"]["top1_agreement"] == 1.0 and rec["vs_keras"]["max_abs_diff"] < 1e-5
        assert rec["vs_x86"]["top1_agreement"] == 1.0 and rec["vs_x86"]["max_abs_diff"] < 1e-5
        assert rec["latency_ms"] is None and "say nothing about a phone" in rec["latency_note"]
        if fmt == "tflite":
            assert rec["default_delegate"] == "took the file"
            assert any(k.startswith("xnn_f32_") and "neon" in k for k in rec["kernels"]["xnnpack_ukernels"])
            assert rec["kernels"]["sparse_path"] is False


def test_sparse_mobilenet_takes_xnnpack_sparse_path_on_arm64(arm_env, tmp_path):
    import exporters
    from edgecomp import build_model, compress, train
    from runtime_bench import emulated

    x, y = _data(n=96)
    model = build_model("mobilenet_sparse", x.shape[1:], 4, width=0.5, blocks=((32, 1), (64, 2)))
    train.fit(model, x, y, epochs=1, batch_size=32, verbose=0)
    result = compress(model, (x, y), rate=0.75, policy="xnnpack-sparse", fine_tune_epochs=1, batch_size=32,
                      verbose=0)
    pruned = {r["name"].split("/")[0] for r in result.report if r.get("sparsity", 0) > 0}
    assert pruned == {"pw1", "pw2"}                      # only the 1x1 convolutions
    decoded = result.decode()
    ref = np.asarray(decoded.predict(x[:16], verbose=0))
    records = {}
    for variant in ("fp32", "fp32-sparse"):
        art = exporters.export_and_check(decoded, "tflite", variant, tmp_path / f"m_{variant}.tflite",
                                         check_x=x[:16])
        records[variant] = emulated.check_file(art.path, x[:16], ref)
    sparse, dense = records["fp32-sparse"], records["fp32"]
    assert sparse["error"] is None and sparse["vs_keras"]["top1_agreement"] == 1.0
    assert sparse["vs_keras"]["max_abs_diff"] < 1e-5
    assert sparse["kernels"]["sparse_path"] is True
    assert any("_spmm_" in k for k in sparse["kernels"]["nchw_kernels"])
    assert any("hwc2chw" in k for k in sparse["kernels"]["nchw_kernels"])     # the stem
    assert dense["kernels"]["sparse_path"] is False                            # no DENSIFY: the dense path


def test_a_file_that_differs_on_arm64_is_reported_failing(tmp_path, monkeypatch, capsys):
    import keras

    import exporters
    from edgecomp import cli_emulated
    from runtime_bench import emulated
    from runtime_bench.targets import get_target

    keras.utils.set_random_seed(1)
    x, y = _data(n=32)
    inp = keras.Input(x.shape[1:])
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(h))
    art = exporters.export_and_check(model, "tflite", "fp32", tmp_path / "m_fp32.tflite", check_x=x)

    def arm_double(path, x_file, folder, **kw):   # the x86 outputs with two samples' answers swapped
        out = np.asarray(model.predict(np.load(x_file), verbose=0))
        out[:2] = out[:2, ::-1]
        return out, {"machine": "aarch64", "format": "tflite", "resolver": "auto", "fallback": None}

    monkeypatch.setattr(emulated, "run_on_arm", arm_double)
    with pytest.raises(EdgecompError, match="1 of 1 file.*missed parity on arm64"):
        cli_emulated.check_artifacts(model, [art], x, y, [get_target("arm64-emulated")], tmp_path)
    printed = capsys.readouterr().out
    assert "arm64 FAIL m_fp32.tflite" in printed and "arm64 vs x86: top1_agreement" in printed
    assert (tmp_path / "check_on.json").is_file()


def test_policy_refuses_what_the_sparse_path_cannot_take():
    import keras
    from keras import layers

    from edgecomp import build_model
    from edgecomp.pruning_policy import XNNPackSparse, policy_from

    policy = policy_from("xnnpack-sparse")
    good = build_model("mobilenet_sparse", (32, 32, 3), 4, width=0.25)
    assert policy.problems(good) == []
    assert policy.eligible(good) == ["pw1", "pw2", "pw3", "pw4"]
    assert {name for name, rate in policy.layer_rates(good)} == {"stem", "dw1", "dw2", "dw3", "dw4", "fc"}
    inp = keras.Input((32, 32, 3))
    h = layers.Conv2D(8, 3, strides=2, padding="same")(inp)               # TF SAME: refused by XNNPACK
    h = layers.DepthwiseConv2D(3, padding="same")(h)
    h = layers.Conv2D(16, 1)(h)
    same = keras.Model(inp, layers.Dense(3)(layers.GlobalAveragePooling2D()(h)))
    found = policy.problems(same)
    assert any("ZeroPadding2D(1)" in p for p in found) and len(found) == 2
    with pytest.raises(EdgecompError, match="policy xnnpack-sparse: .*ZeroPadding2D"):
        policy.check(same, 0.8)
    with pytest.raises(EdgecompError, match="at least 2/3"):
        policy.check(good, 0.5)
    with pytest.raises(EdgecompError, match="pw1/kernel has 50.0% zeros"):
        policy.verify(good, {"pw1/kernel": np.array([True, False])})
    assert XNNPackSparse.from_config(policy.get_config()) == policy


def test_bench_cli_on_the_emulated_target(arm_env, tmp_path, capsys):
    import json

    import keras

    import exporters
    from edgecomp import cli

    keras.utils.set_random_seed(2)
    x, y = _data(n=40, shape=(16, 16, 3))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    inp = keras.Input(x.shape[1:])
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(h))
    model.save(tmp_path / "m.keras")
    exporters.export(model, "tflite", "fp32", tmp_path / "m_fp32.tflite")
    rc = cli.main(["bench", str(tmp_path / "m_fp32.tflite"), "--data", str(tmp_path / "d.npz"), "--target",
                   "arm64-emulated", "--reference", str(tmp_path / "m.keras"), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    rec = json.loads((tmp_path / "out" / "bench.json").read_text())["records"][0]
    assert rec["target"] == "arm64-emulated" and rec["median_ms"] is None and rec["error"] is None
    assert rec["top1_agreement"] == 1.0 and rec["emulation"]["vs_x86"]["top1_agreement"] == 1.0
    assert "PASS" in out and "say nothing about a phone" in out
