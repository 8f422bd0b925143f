import json

import numpy as np
import pytest

from edgecomp import codec, store, train
from edgecomp.errors import ContainerError, EdgecompError
from edgecomp.models import build_model, load_keras_model
from edgecomp.pipeline import compress


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((128, 16, 16, 1)).astype(np.float32)
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype(np.int64)
    return x, y


def test_vgg_param_counts_match_seed():
    # seed models/vggnet.py at 32x32x3 (1.6 M) and the cnn.py layout of the seed's table (1.34 M)
    assert build_model("vgg", (32, 32, 3), 10).count_params() == 1_603_882
    assert build_model("vgg", (32, 32, 3), 10, fc_layers=1).count_params() == 1_341_226
    assert build_model("vgg", (28, 28, 1), 10).count_params() == 1_603_306


def test_unknown_model_name():
    with pytest.raises(EdgecompError, match="unknown model 'nope'.*vgg"):
        build_model("nope", (8, 8, 1), 2)


def test_compress_store_decode_round_trip(tmp_path, data):
    x, y = data
    model = build_model("vgg", x.shape[1:], 2, width=0.125)
    train.fit(model, x, y, epochs=1, batch_size=32, verbose=0)
    result = compress(model, (x, y), rate=0.8, fine_tune_epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "m.ecz"
    assert result.save(path) == path.stat().st_size == result.bytes
    decoded = store.load_compressed(path)
    fine = store.model_weights(result.model)
    dec = store.model_weights(decoded)
    assert list(fine) == list(dec)
    for name, w in fine.items():
        if name in result.masks:
            step = np.abs(w).max() / 127
            assert np.abs(dec[name] - w).max() <= step / 2 + 1e-7
            assert np.all(dec[name][w == 0] == 0)
            assert np.all(dec[name][~result.masks[name]] == 0)
        else:
            assert np.array_equal(dec[name], w)       # dense parts stored exactly
    pa, pb = train.predict(result.model, x[:32]), train.predict(decoded, x[:32])
    assert np.abs(pa - pb).max() < 0.05
    # report: every tensor, bytes add up to the streams, pruned ones are seed-coded
    assert {r["name"] for r in result.report} == set(fine)
    assert all(r["method"] == ("seed" if r["pruned"] else "raw") for r in result.report)
    assert result.nonzeros < 0.35 * result.params


def test_decode_refuses_container_without_model(tmp_path):
    data = codec.encode_weights({"w": np.ones((2, 2), np.float32)}, meta={"format": "other"})
    with pytest.raises(ContainerError, match="no edgecomp model"):
        store.decode_model(data)


def test_decode_refuses_mismatched_weights():
    model = build_model("vgg", (8, 8, 1), 2, width=0.125)
    data = store.encode_model(model)
    meta, weights = codec.decode_weights(data)
    weights.pop(next(iter(weights)))
    with pytest.raises(ContainerError, match="does not hold|do not match"):
        store.decode_model(codec.encode_weights(weights, meta=meta))


def test_container_is_deterministic(data):
    x, y = data
    outs = []
    for _ in range(2):
        model = build_model("vgg", x.shape[1:], 2, width=0.125)
        model.set_weights([np.full(w.shape, 0.01, np.float32) * (i + 1) for i, w in enumerate(model.get_weights())])
        outs.append(compress(model, None, rate=0.5).container)
    assert outs[0] == outs[1]


def test_lambda_model_refused_in_safe_mode(tmp_path):
    import keras
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2)(inp)
    path = tmp_path / "lam.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(EdgecompError, match="Lambda"):
        load_keras_model(path)
    assert load_keras_model(path, trust=True) is not None
