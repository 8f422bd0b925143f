"""Training helpers: the learning-rate schedules used by the baseline recipe and fine-tuning."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from edgecomp import train  # noqa: E402
from edgecomp.errors import EdgecompError  # noqa: E402
from edgecomp.pipeline import compress  # noqa: E402


def _tiny():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", name="fc1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(h))


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1)


def test_cosine_schedule_decays_to_zero_over_the_call():
    model, (x, y) = _tiny(), _data()
    train.fit(model, x, y, epochs=2, batch_size=32, lr_schedule="cosine", verbose=0)
    lr = model.optimizer.learning_rate
    assert int(model.optimizer.iterations.numpy()) == 6
    assert float(lr) == pytest.approx(0.0, abs=1e-9)
    sched = model.optimizer._learning_rate
    assert float(sched(0)) == pytest.approx(1e-3) and float(sched(3)) == pytest.approx(5e-4, rel=1e-5)


def test_constant_schedule_keeps_the_rate():
    model, (x, y) = _tiny(), _data()
    train.fit(model, x, y, epochs=1, batch_size=32, learning_rate=2e-3, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(2e-3)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        train.learning_rate_for(1e-3, "step", 10)
    with pytest.raises(EdgecompError, match="learning-rate schedule"):
        compress(_tiny(), _data(), rate=0.5, lr_schedule="step", verbose=0)


def test_compress_fine_tunes_with_the_schedule_and_records_it():
    model, data = _tiny(), _data()
    result = compress(model, data, rate=0.5, lr_schedule="cosine", skip_first=False, verbose=0)
    assert result.settings["fine_tune"]["lr_schedule"] == "cosine"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
