"""keras.applications models through compress -> container -> decode -> export -> parity, and the
ONNX fix for tensors a traced Keras call captures by value (Normalization's mean and variance)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from edgecomp import store
from edgecomp.pipeline import compress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def _normalized_model():
    import keras
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 8, 8, 3)).astype(np.float32)
    inp = keras.Input((8, 8, 3))
    adapted = keras.layers.Normalization(axis=-1)
    adapted.adapt(x)
    h = keras.layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 5.0, 6.0])(adapted(inp))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(h))
    return keras.Model(inp, keras.layers.Dense(3)(h)), x


def _serve(model):
    import tensorflow as tf
    from exporters.onnx import _input_signature
    signature = _input_signature(model)

    @tf.function(input_signature=signature)
    def serve(x):
        return model(x, training=False)
    return serve, signature


def test_tf2onnx_quirk_is_still_there():
    """tf2onnx 1.17 / TF 2.21 / Keras 3.15: the captured constants come out as graph inputs. If this
    fails, a newer tf2onnx converts them itself and exporters/onnx_captures.py can go."""
    import tf2onnx
    model, _ = _normalized_model()
    serve, signature = _serve(model)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=17)
    assert len(proto.graph.input) > 1


def test_captured_constants_become_initializers():
    import tf2onnx
    from exporters.onnx_captures import captured_constants, inline_captured_constants
    model, _ = _normalized_model()
    serve, signature = _serve(model)
    values = captured_constants(serve, signature)
    assert values and all(v.dtype == np.float32 for v in values.values())
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=17)
    extra = [i.name for i in proto.graph.input][1:]
    assert inline_captured_constants(proto, values) == extra
    assert [i.name for i in proto.graph.input] == ["input"]
    assert {i.name for i in proto.graph.initializer} & set(extra)   # read by a node: kept as a value


def test_normalization_model_exports_onnx_in_parity(tmp_path):
    import onnx

    import exporters
    model, x = _normalized_model()
    for variant in ("fp32", "dynamic"):
        art = exporters.export_and_check(model, "onnx", variant, tmp_path / f"n_{variant}.onnx",
                                         calibration=x, check_x=x)
        assert art.parity["passed"], art.parity
        assert [i.name for i in onnx.load(art.path).graph.input] == ["input"]


def _family_chain(family, tmp_path, method="deep"):
    import keras

    import exporters
    from bench_applications_family import build, data
    keras.utils.set_random_seed(0)
    model = build(family)
    ds = data(family, 64, 32)
    result = compress(model, (ds.x_train, ds.y_train), rate=0.5, method=method, fine_tune_epochs=0,
                      verbose=0, bits="conv=6,dense=5" if method == "deep" else None)
    decoded = store.decode_model(result.container)
    arts = [exporters.export_and_check(decoded, fmt, "fp32", tmp_path / f"{family}.{fmt}",
                                       check_x=ds.x_test, check_y=ds.y_test) for fmt in ("tflite", "onnx")]
    for a in arts:
        assert a.parity["top1_agreement"] == 1.0 and a.parity["max_abs_diff"] <= 1e-4
    return result, arts


def test_efficientnetb0_onnx_runs_and_agrees(tmp_path):
    """The issue's case, quickly: EfficientNetB0's Normalization layer no longer leaves required inputs."""
    import keras
    import onnx

    import exporters
    from bench_applications_family import build, data
    keras.utils.set_random_seed(0)
    ds = data("EfficientNetB0", 8, 16)
    art = exporters.export_and_check(build("EfficientNetB0"), "onnx", "fp32", tmp_path / "e.onnx", check_x=ds.x_test)
    assert art.parity["passed"] and [i.name for i in onnx.load(art.path).graph.input] == ["input"]


@pytest.mark.slow
def test_efficientnetb0_compresses_decodes_and_exports_fp32_in_parity(tmp_path):
    """The whole chain on EfficientNetB0 (deep method): ~50 s on 2 idle cores."""
    import onnx
    result, arts = _family_chain("EfficientNetB0", tmp_path)
    assert len(result.container) < 0.25 * 4 * sum(r["params"] for r in result.report)
    assert [i.name for i in onnx.load(arts[1].path).graph.input] == ["input"]


def test_mobilenetv3small_seed_method_chain(tmp_path):
    """The CI family: compress (seed) -> container -> decode -> TFLite and ONNX fp32 in parity."""
    _family_chain("MobileNetV3Small", tmp_path, method="seed")


def test_every_family_builds_at_its_smallest_input():
    from bench_applications_family import FAMILIES, build
    for family in ("MobileNet", "InceptionV3", "Xception"):
        model = build(family)
        assert model.inputs[0].shape[1] == FAMILIES[family][2] and model.outputs[0].shape[-1] == 10
    assert len(FAMILIES) == 14


def _row(family, passed, flipped=0, near=0, max_diff=0.01):
    def art(fmt, variant):
        ok = passed[(fmt, variant)]
        parity = {"top1_agreement": 1.0 if ok else 0.9, "failures": [] if ok else [f"{variant} parity: top1_agreement 0.9"],
                  "flipped": 0 if ok else flipped, "flipped_near_ties": 0 if ok else near, "max_abs_diff": max_diff}
        return {"format": fmt, "variant": variant, "passed": ok, "parity": parity, "median_ms": 1.0}
    return {"family": family, "options": {}, "input": 32, "params": 10, "macs": 20, "trained_steps": 0,
            "accuracy": 0.1, "seed": {"ratio": 5.0, "decoded": True, "container_bytes": 8},
            "deep": {"ratio": 9.0, "decoded": True, "container_bytes": 4, "accuracy": 0.1},
            "artifacts": [art(f, v) for f in ("tflite", "onnx") for v in ("fp32", "int8")]}


def test_report_counts_families_and_near_ties():
    from bench_applications_md import counts, markdown
    ok = {(f, v): True for f in ("tflite", "onnx") for v in ("fp32", "int8")}
    rows = [_row("A", ok), _row("B", {**ok, ("onnx", "int8"): False}, flipped=3, near=3),
            _row("C", {**ok, ("tflite", "int8"): False}, flipped=3, near=1),
            _row("D", {**ok, ("onnx", "fp32"): False}, flipped=1, near=0),
            _row("F", {**ok, ("onnx", "int8"): False}, flipped=3, near=3, max_diff=0.4),   # large error: not ties
            {"family": "E", "input": 75, "options": {}, "artifacts": [], "error": "timed out after 5 s"}]
    c = counts(rows)
    assert c["fp32"] == [4, 6] and c["int8"] == [2, 6]
    assert c["int8_near_ties"] == ["B"] and c["int8_other_failures"] == ["C", "F", "E"]
    # With the file's output step counted, that count decides: all flips within one step are ties.
    step_rows = [_row("G", {**ok, ("onnx", "int8"): False}, flipped=4, near=4, max_diff=0.4),
                 _row("H", {**ok, ("onnx", "int8"): False}, flipped=4, near=4, max_diff=0.01)]
    for row, within in zip(step_rows, (4, 1)):
        next(a for a in row["artifacts"] if not a["passed"])["parity"]["flipped_within_step"] = within
    assert counts(step_rows)["int8_near_ties"] == ["G"] and counts(step_rows)["int8_other_failures"] == ["H"]
    md = markdown(rows, {"settings": {"n_train": 1, "n_test": 1, "rate": 0.8}, "command": "x", "machine": "m"})
    assert "**4 of 6 families**" in md and "timed out after 5 s" in md


def test_unknown_family_is_refused():
    from bench_applications import main
    assert main(["--families", "ResNet9000", "--out", "/nonexistent/never"]) == 2


def test_report_only_rewrites_the_table_from_its_json(tmp_path):
    import json

    from bench_applications import main
    ok = {(f, v): True for f in ("tflite", "onnx") for v in ("fp32", "int8")}
    meta = {"settings": {"n_train": 1, "n_test": 1, "rate": 0.5}, "command": "python scripts/bench_applications.py",
            "machine": "m"}
    (tmp_path / "applications.json").write_text(json.dumps({"meta": meta, "families": [_row("A", ok)]}))
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    assert "**1 of 1 families**" in (tmp_path / "applications.md").read_text()
    assert (tmp_path / "applications.png").stat().st_size > 0
    assert json.loads((tmp_path / "applications.json").read_text())["counts"]["fp32"] == [1, 1]


def _grouped_gelu_model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 8))
    h = keras.layers.Conv2D(8, 7, padding="same", groups=8)(inp)          # ConvNeXt's depthwise form
    h = keras.layers.Dense(16, activation="gelu")(h)                     # exact GELU (Keras's default)
    h = keras.layers.Conv2D(16, 3, padding="same", groups=4)(h)
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))


def test_grouped_convs_and_exact_gelu_export_to_onnx_in_parity(tmp_path):
    import exporters

    model = _grouped_gelu_model()
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 8)).astype(np.float32)
    art = exporters.export_and_check(model, "onnx", "fp32", tmp_path / "g.onnx", check_x=x)
    assert art.parity["top1_agreement"] == 1.0 and art.parity["max_abs_diff"] < 1e-5
    assert "Conv" in art.ops and "Erf" in art.ops


def test_the_grouped_conv_and_gelu_quirks_are_still_there():
    """When tf2onnx/Keras fix these, this fails: then exporters/onnx_trace.py can go."""
    import tensorflow as tf
    import tf2onnx

    model = _grouped_gelu_model()
    sig = [tf.TensorSpec((None, 12, 12, 8), tf.float32)]
    serve = tf.function(lambda t: model(t, training=False), input_signature=sig)
    with pytest.raises(Exception, match="StatefulPartitionedCall|Erfc|Unsupported"):
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=sig, opset=17)
        import onnx
        onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("target, epochs", [(0.0, 1), (1.01, 3)])
def test_training_stops_at_the_first_epoch_that_reaches_the_held_out_target(target, epochs):
    import keras

    from bench_applications_family import _stop_at
    from edgecomp import train
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    stop = _stop_at(x[:16], y[:16], target)
    train.fit(model, x, y, epochs=3, batch_size=16, verbose=0, callbacks=[stop])
    assert stop.epochs == epochs and 0.0 <= stop.accuracy <= 1.0


def test_md_describes_the_training_recipe_it_ran():
    from bench_applications_md import markdown
    settings = {"n_train": 8, "n_test": 4, "rate": 0.5, "n_fit": 4096, "train_steps": 1536, "train_target": 0.99,
                "anneal_epochs": 1, "fine_tune_epochs": 1, "fine_tune_lr": 1e-3}
    md = markdown([_row("A", {(f, v): True for f in ("tflite", "onnx") for v in ("fp32", "int8")})],
                  {"settings": settings, "command": "x", "machine": "m"})
    assert "on 4096 samples" in md and "or 1536 steps" in md and "99% accuracy on 256 held-out" in md
    assert "then 1 epoch(s) of cosine decay" in md
    assert "Adam 0.001 with cosine decay" in md


def test_reuse_keeps_an_untrained_row_when_only_training_settings_change():
    from bench_applications import relevant
    before = {"rate": 0.5, "n_train": 512, "n_test": 256, "train": ["T"], "train_steps": 960, "fine_tune_lr": 2e-4}
    after = {**before, "train_steps": 1536, "fine_tune_lr": 1e-3}
    assert relevant(before, "U") == relevant(after, "U")        # untrained: the same row
    assert relevant(before, "T") != relevant(after, "T")        # trained: run again
    assert relevant(before, "U") != relevant({**after, "train": ["T", "U"]}, "U")   # now trained: run again
    assert relevant(before, "U") != relevant({**before, "n_train": 256}, "U")


def test_qat_route_counts_where_post_training_int8_missed():
    """A trained family whose post-training int8 missed counts as in parity by QAT only when both
    QAT int8 files pass; the cell shows the QAT file beside the miss."""
    from bench_applications_md import counts, markdown
    ok = {(f, v): True for f in ("tflite", "onnx") for v in ("fp32", "int8")}
    rows = [_row("Q", {**ok, ("onnx", "int8"): False}, flipped=3, near=0, max_diff=0.7),
            _row("R", {**ok, ("onnx", "int8"): False}, flipped=3, near=0, max_diff=0.7)]
    for row, tflite_ok in zip(rows, (True, False)):
        row["trained_steps"] = 100
        for fmt, passed in (("tflite", tflite_ok), ("onnx", True)):
            row["artifacts"].append({"format": fmt, "variant": "int8", "route": "qat", "passed": passed,
                                     "parity": {"top1_agreement": 1.0 if passed else 0.9}, "median_ms": 2.0})
    rows[0]["deep_qat"] = {"ratio": 6.3, "container_bytes": 2_500_000, "decoded": True, "accuracy": 0.99}
    c = counts(rows)
    assert c["int8"] == [0, 2] and c["int8_trained"] == [0, 2]
    assert c["int8_trained_with_qat"] == [1, 2] and c["int8_by_qat"] == ["Q"]
    md = markdown(rows, {"settings": {"n_train": 1, "n_test": 1, "rate": 0.5, "qat_epochs": 1}, "command": "x",
                         "machine": "m"})
    assert "with QAT where post-training int8 missed: **1 of 2** (Q by QAT)" in md
    assert "; QAT int8: ok 100.0%, 2.00 ms" in md
    assert "Q 6.3x (2,500,000 B), decoded QAT model's accuracy 99.0%" in md


def test_reuse_counts_qat_epochs_only_where_the_qat_route_ran():
    from bench_applications import reusable
    cfg = {"rate": 0.5, "n_train": 512, "train": ["T"], "qat_epochs": 1}
    passed = {"settings": {"rate": 0.5, "n_train": 512, "train": ["T"]},   # made before --qat-epochs existed
              "artifacts": [{"format": "onnx", "variant": "int8", "passed": True}]}
    missed = {**passed, "artifacts": [{"format": "onnx", "variant": "int8", "passed": False}]}
    assert reusable(passed, cfg, "T")              # int8 passed: the QAT route never runs
    assert not reusable(missed, cfg, "T")          # it would run now: make the row again
    assert reusable({**missed, "settings": cfg}, cfg, "T")
    assert not reusable({**missed, "settings": cfg}, {**cfg, "qat_epochs": 2}, "T")
