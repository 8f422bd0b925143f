import numpy as np
import pytest

from edgecomp import train
from edgecomp.errors import EdgecompError
from edgecomp.models import build_model
from edgecomp.pruning import compute_masks, cubic_rate, parse_rates, prune
from edgecomp.pruning_config import Gradual, Iterative, schedule_from
from edgecomp.weight_sharing import (fine_tune_centroids, kmeans_1d, parse_bits, share_tensor,
                                     share_weights)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_reduces_error_and_is_deterministic(init):
    v = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    c, lab = kmeans_1d(v, 16, init=init)
    c2, lab2 = kmeans_1d(v, 16, init=init)
    assert np.array_equal(c, c2) and np.array_equal(lab, lab2)
    assert len(c) == 16 and np.all(np.diff(c) > 0)
    # every value is assigned to its nearest centroid
    nearest = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
    assert np.mean(nearest == lab) > 0.999
    assert np.mean((c[lab] - v) ** 2) < np.var(v) / 80  # Lloyd-Max optimum for 16 levels: var/105


def test_kmeans_fewer_distinct_values_than_k():
    c, lab = kmeans_1d(np.array([1.0, 1.0, 2.0], np.float32), 8)
    assert len(c) == 2 and np.array_equal(c[lab], [1.0, 1.0, 2.0])


def test_share_tensor_keeps_zeros_and_uses_at_most_2_pow_bits_values():
    w = np.random.default_rng(1).normal(size=(3, 3, 8, 16)).astype(np.float32)
    w[np.abs(w) < 0.8] = 0
    st = share_tensor(w, bits=3)
    out = st.weights()
    assert np.all(out[w == 0] == 0) and np.all(out[w != 0] != 0)
    assert len(np.unique(out[w != 0])) <= 8
    assert np.array_equal(st.assignment < 0, w == 0)


def test_parse_bits_and_rates_and_schedule():
    assert parse_bits("conv=6,dense=4") == {"conv": 6, "dense": 4}
    assert parse_bits("fc1/*=3")["fc1/*"] == 3
    with pytest.raises(EdgecompError, match="bits"):
        parse_bits("conv=9")
    with pytest.raises(EdgecompError, match="--bits"):
        parse_bits("conv")
    assert parse_rates("fc1=0.95,block1_*=0.5") == {"fc1": 0.95, "block1_*": 0.5}
    with pytest.raises(EdgecompError, match="per-layer rate"):
        parse_rates("fc1=1.2")
    assert schedule_from("iterative:4") == Iterative(4)
    assert schedule_from("gradual") == Gradual(10)
    with pytest.raises(EdgecompError, match="schedule"):
        schedule_from("sometimes")
    assert cubic_rate(0, 100, 0.9) == 0 and cubic_rate(100, 100, 0.9) == pytest.approx(0.9)
    assert cubic_rate(50, 100, 0.9) == pytest.approx(0.9 * (1 - 0.125))


def test_layer_and_global_criteria_and_per_layer_rates():
    model = build_model("vgg", (12, 12, 1), 3, width=0.25)
    layer = compute_masks(model, 0.7, criterion="layer")
    for path, m in layer.items():
        assert (~m).sum() == int(m.size * 0.7), path
    glob = compute_masks(model, 0.7, criterion="global")
    total = sum(m.size for m in glob.values())
    dropped = sum((~m).sum() for m in glob.values())
    assert abs(dropped - int(total * 0.7)) <= 2
    sparsities = [1 - m.mean() for m in glob.values()]
    assert max(sparsities) - min(sparsities) > 0.05  # global: layers differ
    custom = compute_masks(model, 0.5, criterion="filter", rates={"fc1": 0.9})
    assert 1 - custom["fc1/kernel"].mean() == pytest.approx(0.9, abs=0.01)
    assert 1 - custom["fc2/kernel"].mean() == pytest.approx(0.5, abs=0.01)


def test_centroid_fine_tuning_sums_gradients_keeps_assignment_and_zeros():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((64, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = build_model("vgg", (12, 12, 1), 3, width=0.125, dropout=0.0)
    train.fit(model, x, y, epochs=1, verbose=0)
    prune(model, 0.8)
    shared = share_weights(model, bits="conv=3,dense=2")
    before = {p: (s.codebook.copy(), s.assignment.copy()) for p, s in shared.items()}

    # The gradient each centroid gets equals the sum of its weights' gradients.
    path = "fc1/kernel"
    var = {v.path: v for v in model.weights}[path]
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(y[:16], model(x[:16], training=False))
    g = tape.gradient(loss, var.value).numpy()
    st = shared[path]
    expected = np.array([g[st.assignment == k].sum() for k in range(len(st.codebook))])
    centroid = tf.Variable(st.codebook)
    idx = tf.constant(np.where(st.assignment < 0, len(st.codebook), st.assignment))
    with tf.GradientTape() as tape:
        kernel = tf.gather(tf.concat([centroid, tf.zeros([1])], 0), idx)
        values = [kernel if v.path == path else v.value for v in model.trainable_variables]
        pred, _ = model.stateless_call(values, [v.value for v in model.non_trainable_variables], x[:16],
                                       training=False)
        loss2 = keras.losses.SparseCategoricalCrossentropy()(y[:16], pred)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(loss2, centroid)).numpy(), expected, rtol=1e-4, atol=1e-7)

    fine_tune_centroids(model, shared, x, y, epochs=2, batch_size=16, learning_rate=1e-2, verbose=0)
    weights = {v.path: v.numpy() for v in model.weights}
    moved = 0
    for p, st in shared.items():
        codebook, assignment = before[p]
        assert np.array_equal(st.assignment, assignment)               # assignment fixed
        assert np.array_equal(weights[p], st.weights())                # kernel = codebook[assignment]
        assert np.all(weights[p][assignment < 0] == 0)                 # pruned stay exactly 0
        moved += not np.allclose(st.codebook, codebook)
    assert moved >= len(shared) // 2                                   # centroids were trained
