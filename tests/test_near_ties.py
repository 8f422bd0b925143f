"""The near-tie diagnosis of a parity miss: flips within one output step vs. the arithmetic's error."""

from __future__ import annotations

import numpy as np
import pytest

from exporters.parity import diagnosis, near_ties, output_step

#: Three samples with top-two margins 0.002, 0.03 and 0.6.
REF = np.array([[0.501, 0.499, 0.0], [0.515, 0.485, 0.0], [0.8, 0.2, 0.0]])


@pytest.mark.parametrize("variant, steps", [("int8", 255), ("int8-sparse", 255), ("int16x8", 65535)])
def test_output_step_is_the_outputs_range_over_the_quantized_levels(variant, steps):
    assert output_step(REF, variant) == pytest.approx(0.8 / steps)


@pytest.mark.parametrize("variant", ["fp32", "fp16", "dynamic", None])
def test_float_outputs_have_no_step(variant):
    assert output_step(REF, variant) is None


def test_flips_are_split_by_the_output_step_and_by_twice_the_error():
    figures = near_ties(REF, np.array([True, True, True]), max_abs_diff=0.02, step=0.004)
    assert figures["flipped"] == 3
    assert figures["flipped_within_step"] == 1        # only the 0.002 margin is below one step
    assert figures["flipped_near_ties"] == 2          # 0.002 and 0.03 are below twice the error (0.04)
    assert figures["median_flipped_margin"] == pytest.approx(0.03)


def test_message_says_when_the_arithmetic_not_a_tie_moved_the_answers():
    beyond = {**near_ties(REF, np.array([True, True, True]), 0.02, 0.004), "variant": "int8"}
    text = diagnosis(beyond)
    assert "1 of the 3 flipped answers were near ties" in text
    assert "the other 2 were moved by the quantized arithmetic's error" in text
    assert "int16x8" in text

    ties = {**near_ties(REF, np.array([True, False, False]), 0.02, 0.004), "variant": "int8"}
    text = diagnosis(ties)
    assert "1 of the 1 flipped answers were near ties" in text and "moved by" not in text


def test_an_arithmetic_miss_points_to_qat_unless_the_file_was_made_by_qat():
    beyond = {**near_ties(REF, np.array([True, True, True]), 0.02, 0.004), "variant": "int8", "qat": False}
    assert "compress --qat-epochs 1" in diagnosis(beyond)
    assert "--qat-epochs" not in diagnosis({**beyond, "qat": True})        # QAT already: no such advice
    ties = {**near_ties(REF, np.array([True, False, False]), 0.02, 0.004), "variant": "int8"}
    assert "--qat-epochs" not in diagnosis(ties)                          # near ties only: QAT is no cure
    assert "--qat-epochs" not in diagnosis({**beyond, "variant": None})   # a bare file: no int8 advice


def test_no_flips_no_clause():
    assert diagnosis(near_ties(REF, np.array([False, False, False]), 0.02, 0.004)) == ""
    assert diagnosis({}) == ""


@pytest.mark.parametrize("fmt, variant, step", [("tflite", "int8", 1 / 256), ("onnx", "int8", 1 / 255),
                                                ("tflite", "fp32", None)])
def test_the_check_takes_the_output_step_the_file_holds(tmp_path, fmt, variant, step):
    import keras

    from exporters import ParityError, export_and_check
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(48, 6, 6, 2)).astype(np.float32)
    with pytest.raises(ParityError) as err:   # an impossible bar, so the diagnosis is computed
        export_and_check(model, fmt, variant, tmp_path / f"m.{fmt}", calibration=x, check_x=x,
                         thresholds={"top1_agreement": 1.01})
    figures = err.value.figures
    if step is None:
        assert "output_step" not in figures
    else:
        assert figures["output_step"] == pytest.approx(step, rel=1e-3)
