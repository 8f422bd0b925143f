"""Structured (channel) pruning: dependency groups, exactness of the smaller model, the zoo,
MACs targets and bad inputs. Tiny models only."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from edgecomp.errors import EdgecompError
from edgecomp.models import build_model
from edgecomp.structured import (IMPORTANCE, BNScale, Dependencies, L1Norm, Taylor, bn_l1_penalty, bn_sparsity,
                                 count_macs, get_importance, prune_channels, search_keep)
from edgecomp.structured_groups import WEIGHT_ROLES

RNG = np.random.default_rng(3)


def randomize(model):
    """Random weights everywhere (so L1 keeps a scattered set) and non-trivial BN statistics."""
    for layer in model.layers:
        for var in layer.weights:
            if var.name == "moving_variance":
                var.assign(RNG.uniform(0.3, 2.0, var.shape).astype("float32"))
            else:
                var.assign(RNG.normal(0, 0.5, var.shape).astype("float32"))
    return model


def zeroed(model, deps, kept):
    """A copy of ``model`` whose consumers ignore the removed channels (their input rows zeroed)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for path, roles in deps.roles.items():
        for var in clone.get_layer(path).weights:
            for axis, role in WEIGHT_ROLES.get(deps.kinds[path], {}).get(var.name, {}).items():
                if role in ("in", "mid") and roles.get(role) is not None:
                    w = var.numpy()
                    drop = np.setdiff1d(np.arange(w.shape[axis]), deps.indices(roles[role], kept))
                    index = [slice(None)] * w.ndim
                    index[axis] = drop
                    w[tuple(index)] = 0
                    var.assign(w)
    return clone


def check_exact(model, keep=0.5, x=None, **options):
    """Prune, then compare the smaller model with the zeroed original on random inputs."""
    small, report = prune_channels(model, keep=keep, **options)
    deps = Dependencies(model)
    kept = {g.id: np.asarray(r["kept"]) for g, r in zip(deps.prunable, report.groups)}
    x = RNG.normal(size=(2,) + tuple(model.inputs[0].shape[1:])).astype("float32") if x is None else x
    want = np.asarray(zeroed(model, deps, kept)(x, training=False))
    np.testing.assert_allclose(np.asarray(small(x, training=False)), want, atol=1e-5)
    return small, report, deps


def group(deps, name):
    return next(g for g in deps.groups if g.name == name)


def members(g):
    return sorted(f"{p}:{r}" for p, r in g.members)


# --- group discovery --------------------------------------------------------------------------

def test_conv_bn_relu_conv_and_exactness():
    i = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(i)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv2D(4, 3, name="c2")(x)
    model = randomize(keras.Model(i, x))
    small, report, deps = check_exact(model)
    assert members(group(deps, "c1")) == ["bn:out", "c1:out", "c2:in"]
    assert [g.name for g in deps.kept_whole] == ["c2"] and "model output" in deps.kept_whole[0].reasons[0]
    assert small.get_layer("c1").filters == 4 and small.get_layer("bn").gamma.shape == (4,)
    assert small.get_layer("c2").kernel.shape == (3, 3, 4, 4)
    kept = report.groups[0]["kept"]
    np.testing.assert_array_equal(small.get_layer("c2").kernel.numpy(), model.get_layer("c2").kernel.numpy()[:, :, kept])
    np.testing.assert_array_equal(small.get_layer("bn").moving_mean.numpy(), model.get_layer("bn").moving_mean.numpy()[kept])


def test_residual_add_ties_its_producers():
    i = keras.Input((6, 6, 3))
    a = layers.Conv2D(6, 3, padding="same", name="a")(i)
    b = layers.Conv2D(6, 1, name="b")(layers.ReLU(name="r")(a))
    y = layers.Add(name="add")([a, b])
    y = layers.Conv2D(2, 1, name="head")(y)
    deps = check_exact(randomize(keras.Model(i, y)))[2]
    g = group(deps, "a")
    assert g.producers == ["a", "b"] and members(g) == ["a:out", "b:in", "b:out", "head:in"]


def test_squeeze_excite_multiply_and_a_reshape_that_keeps_the_channel_axis():
    i = keras.Input((4, 4, 2))
    x = layers.Conv2D(6, 3, padding="same", name="c")(i)
    s = layers.Dense(3, activation="relu", name="squeeze")(layers.GlobalAveragePooling2D(name="gap")(x))
    s = layers.Reshape((1, 1, 6), name="to_map")(layers.Dense(6, activation="sigmoid", name="excite")(s))
    y = layers.Multiply(name="scale")([x, s])                          # broadcast over H, W
    y = layers.Reshape((16, 6), name="rows")(y)                        # keeps the channel axis
    model = randomize(keras.Model(i, layers.Conv1D(2, 1, name="head")(y)))
    before = [w.copy() for w in model.get_weights()]
    small, _, deps = check_exact(model)
    assert group(deps, "c").producers == ["c", "excite"] and "squeeze:in" in members(group(deps, "c"))
    assert small.get_layer("to_map").target_shape == (1, 1, 3) and small.get_layer("rows").target_shape == (16, 3)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))   # the original is unchanged


def test_concatenate_maps_offsets():
    i = keras.Input((5, 5, 2))
    a = layers.Conv2D(3, 1, name="a")(i)
    b = layers.Conv2D(5, 1, name="b")(i)
    y = layers.Conv2D(2, 1, name="head")(layers.Concatenate(name="cat")([a, b]))
    model = randomize(keras.Model(i, y))
    small, report, deps = check_exact(model, keep=0.6)
    ka, kb = report.groups[0]["kept"], report.groups[1]["kept"]
    assert (len(ka), len(kb)) == (2, 3)
    rows = list(ka) + [3 + k for k in kb]
    np.testing.assert_array_equal(small.get_layer("head").kernel.numpy(), model.get_layer("head").kernel.numpy()[:, :, rows])


def test_flatten_dense_rows_and_global_pooling_rows():
    i = keras.Input((2, 3, 1))
    c = layers.Conv2D(4, 1, name="c")(i)
    f = layers.Dense(3, name="fc")(layers.Flatten(name="flat")(c))
    g = layers.Dense(3, name="gfc")(layers.GlobalAveragePooling2D(name="gap")(c))
    model = randomize(keras.Model(i, layers.Add(name="sum")([f, g])))
    small, report, deps = check_exact(model)
    assert members(group(deps, "c")) == ["c:out", "fc:in", "gfc:in"]
    kept = report.groups[0]["kept"]
    rows = [p * 4 + k for p in range(6) for k in kept]          # h*W*C + w*C + c
    np.testing.assert_array_equal(small.get_layer("fc").kernel.numpy(), model.get_layer("fc").kernel.numpy()[rows])
    np.testing.assert_array_equal(small.get_layer("gfc").kernel.numpy(), model.get_layer("gfc").kernel.numpy()[kept])
    assert group(deps, "fc").producers == ["fc", "gfc"]            # tied by the Add, which is the output


def test_depthwise_passes_through_with_its_multiplier():
    i = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="c")(i)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = layers.Conv2D(2, 1, name="head")(x)
    model = randomize(keras.Model(i, x))
    small, report, deps = check_exact(model)
    assert members(group(deps, "c")) == ["c:out", "dw:in", "dw:out", "head:in"]
    assert small.get_layer("dw").kernel.shape == (3, 3, 2, 2) and small.get_layer("head").kernel.shape[2] == 4


def test_separable_conv_inputs_pass_through_and_outputs_are_its_filters():
    i = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="c")(i)
    x = layers.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", name="sep")(x)
    x = layers.Conv2D(2, 1, name="head")(layers.ReLU(name="r")(x))
    model = randomize(keras.Model(i, x))
    small, _, deps = check_exact(model)
    assert members(group(deps, "c")) == ["c:out", "sep:in", "sep:mid"]
    assert members(group(deps, "sep")) == ["head:in", "sep:out"]
    assert small.get_layer("sep").pointwise_kernel.shape == (1, 1, 4, 3)


def test_conv_transpose_and_conv1d_and_conv3d():
    i = keras.Input((4, 4, 2))
    x = layers.Conv2D(4, 1, name="c")(i)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(x)
    x = layers.Conv2D(2, 1, name="head")(x)
    model = randomize(keras.Model(i, x))
    small, _, deps = check_exact(model)
    assert members(group(deps, "c")) == ["c:out", "up:in"] and members(group(deps, "up")) == ["head:in", "up:out"]
    assert small.get_layer("up").kernel.shape == (3, 3, 3, 2)       # (h, w, out, in)
    seq = keras.Sequential([keras.Input((10, 3)), layers.Conv1D(6, 3, activation="relu", name="c1"),
                            layers.MaxPooling1D(2, name="pool"), layers.Conv1D(4, 3, name="c2"),
                            layers.GlobalMaxPooling1D(name="gmp"), layers.Dense(2, name="out")])
    small, _, deps = check_exact(randomize(seq))
    assert isinstance(small, keras.Sequential) and [small.get_layer(n).filters for n in ("c1", "c2")] == [3, 2]
    vol = keras.Sequential([keras.Input((4, 4, 4, 1)), layers.Conv3D(4, 3, padding="same", name="c"),
                            layers.BatchNormalization(name="bn"), layers.Conv3D(2, 1, name="head")])
    check_exact(randomize(vol))


def test_embedding_prelu_batchnorm_on_flattened_rows_and_a_shared_layer():
    i = keras.Input((6,), dtype="int32")
    h = layers.Conv1D(6, 3, name="c")(layers.Embedding(20, 8, name="emb")(i))
    h = layers.BatchNormalization(name="bn")(layers.Flatten(name="flat")(layers.PReLU(name="prelu")(h)))
    model = randomize(keras.Model(i, layers.Dense(3, name="out")(h)))
    small, _, deps = check_exact(model, x=RNG.integers(0, 20, (2, 6)))
    assert members(group(deps, "c")) == ["bn:out", "c:out", "out:in", "prelu:out"]
    assert members(group(deps, "emb")) == ["c:in", "emb:out"]
    assert small.get_layer("emb").output_dim == 4 and small.get_layer("bn").gamma.shape == (12,)   # 4 rows x 3
    a, b = keras.Input((5, 5, 2)), keras.Input((5, 5, 2))
    shared = layers.Conv2D(6, 3, name="shared")
    y = layers.Conv2D(2, 1, name="head")(layers.Add(name="add")([shared(a), shared(b)]))
    small, report = prune_channels(randomize(keras.Model([a, b], y)))
    assert report.groups[0]["producers"] == ["shared"] and small.get_layer("shared").filters == 3


def test_pointnet_transforms_and_unmapped_layers_are_kept_whole_with_reasons():
    deps = Dependencies(build_model("pointnet", (16, 3), 4, width=0.0625))
    whole = {g.name: " ".join(g.reasons) for g in deps.kept_whole}
    assert set(whole) == {"input_tnet_matrix", "mlp1_2_conv", "feature_tnet_matrix", "predictions"}
    assert "Dot 'feature_transform_apply'" in whole["mlp1_2_conv"] and "reshaped" in whole["feature_tnet_matrix"]
    inner = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="in1")], name="inner")
    i = keras.Input((5,))
    x = layers.Dense(4, name="pre")(i)
    model = keras.Model(i, layers.Dense(2, name="out")(layers.Dense(6, name="post")(inner(x))))
    deps = Dependencies(model)
    assert "nested model 'inner'" in " ".join(group(deps, "pre").reasons) and group(deps, "post").prunable
    small, _ = prune_channels(model, keep=0.5)
    assert small.get_layer("post").units == 3 and small.get_layer("pre").units == 4


# --- the zoo ----------------------------------------------------------------------------------

ZOO = [("vgg", (32, 32, 3), {"width": 0.125}, {"predictions"}),
       ("resnet", (32, 32, 3), {"depth": 8}, {"predictions"}),
       ("densenet", (32, 32, 3), {"depth": 7, "growth_rate": 4}, {"predictions"}),
       ("inception", (32, 32, 3), {"width": 0.0625, "modules": 1}, {"predictions"}),
       ("unet", (32, 32, 3), {"width": 0.0625}, {"logits"}),
       ("pointnet", (16, 3), {"width": 0.0625}, {"input_tnet_matrix", "mlp1_2_conv", "feature_tnet_matrix",
                                                 "predictions"})]


@pytest.mark.parametrize("name, shape, options, whole", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_models_prune_to_half_and_compute_exactly(tmp_path, name, shape, options, whole):
    model = randomize(build_model(name, shape, 4, **options))
    small, report, deps = check_exact(model)
    assert {g["name"] for g in report.kept_whole} == whole and all(g["reasons"] for g in report.kept_whole)
    assert report.macs_after < 0.45 * report.macs_before and report.params_after < report.params_before
    assert count_macs(small)[1] == report.macs_after and count_macs(model)[1] == report.macs_before
    if name == "resnet":
        assert group(deps, "stem_conv").producers == ["stem_conv", "stage1_block1_conv_b"]
    path = tmp_path / f"{name}.keras"
    small.save(path)
    back = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = RNG.normal(size=(1,) + shape).astype("float32")
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(small(x)), atol=1e-6)


# --- criteria, selection, targets ---------------------------------------------------------------

def _bn_net():
    i = keras.Input((6, 6, 3))
    x = layers.Conv2D(16, 3, padding="same", name="c1")(i)
    x = layers.ReLU(name="r1")(layers.BatchNormalization(name="bn1")(x))
    x = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(layers.ReLU(name="r2")(layers.BatchNormalization(name="bn2")(x)))
    return randomize(keras.Model(i, layers.Dense(3, activation="softmax", name="out")(x)))


def test_criteria_registry_round_trip_and_ranking():
    model = _bn_net()
    assert {"l1", "l2", "bn_scale", "taylor"} <= set(IMPORTANCE)
    t = get_importance({"name": "taylor", "config": {"batches": 2, "batch_size": 4}})
    assert isinstance(t, Taylor) and type(t).from_config(t.get_config()).get_config() == t.get_config()
    bn1 = model.get_layer("bn1")
    gamma = np.linspace(-1, 2, 16).astype("float32")
    bn1.gamma.assign(gamma)
    _, report = prune_channels(model, keep=0.25, importance=BNScale())
    assert report.groups[0]["kept"] == sorted(np.argsort(-np.abs(gamma))[:4].tolist())
    data = (RNG.normal(size=(8, 6, 6, 3)).astype("float32"), RNG.integers(0, 3, 8))
    small, report = prune_channels(model, keep=0.5, importance="taylor", data=data)
    assert [g["channels_after"] for g in report.groups] == [8, 4] and report.importance["name"] == "taylor"
    _, glob = prune_channels(model, keep=0.5, ranking="global")
    assert sum(g["channels_after"] for g in glob.groups) == 12
    _, per = prune_channels(model, keep={"c2": 0.25, "*": 1.0}, round_to=2)
    assert [g["channels_after"] for g in per.groups] == [16, 2]
    _, r8 = prune_channels(model, keep=0.3, round_to=8)
    assert [g["channels_after"] for g in r8.groups] == [8, 8]
    _, l1 = prune_channels(model, keep=0.5, importance=L1Norm())
    assert l1.importance == {"name": "l1", "config": {}}


def test_bn_sparsity_attaches_and_detaches_an_l1_penalty():
    model = _bn_net()
    assert not model.losses
    with bn_sparsity(model, 1e-2):
        assert len(model.losses) == 2
        want = 1e-2 * sum(np.abs(model.get_layer(n).gamma.numpy()).sum() for n in ("bn1", "bn2"))
        np.testing.assert_allclose(float(sum(model.losses)), want, rtol=1e-5)
    assert not model.losses
    np.testing.assert_allclose(float(bn_l1_penalty(model, 1e-2)), want, rtol=1e-5)


def test_target_macs_and_search_keep():
    model = build_model("vgg", (16, 16, 1), 4, width=0.25)
    base = count_macs(model)[1]
    small, report = prune_channels(model, target_macs=0.3)
    assert count_macs(small)[1] <= 0.3 * base and report.macs_after / base > 0.2 and report.target_macs == 0.3
    with pytest.raises(EdgecompError, match=r"cannot reach 0.01% of the MACs: reached .* at the smallest keep"):
        prune_channels(model, target_macs=0.0001)
    params = model.count_params()
    keep, small, report, value = search_keep(model, lambda m: m.count_params(), params / 3, steps=5)
    assert value == small.count_params() <= params / 3 and 0 < keep < 1
    with pytest.raises(EdgecompError, match="reached"):
        search_keep(model, lambda m: m.count_params(), 10, steps=2, what="10 params")


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": 0}, "keep ratio must be in"), ({"keep": 1.5}, "keep ratio must be in"),
    ({"keep": "half"}, "keep ratio must be in"), ({"keep": True}, "keep ratio must be in"),
    ({"keep": {"block1_*": 2.0}}, "keep ratio for 'block1_\\*'"),
    ({"keep": {"nope*": 0.5}}, "no layer matches 'nope\\*'"),
    ({"keep": {"predictions": 0.5}}, "cannot prune the channels of 'predictions'.*model output"),
    ({"keep": 0.5, "target_macs": 0.5}, "not both"), ({"target_macs": 1.5}, "target_macs must be in"),
    ({"importance": "magic"}, "unknown importance"), ({"importance": "taylor"}, "needs data"),
    ({"ranking": "best"}, "unknown ranking"), ({"round_to": 0}, "round_to"),
])
def test_bad_inputs_raise_edgecomp_error(kwargs, message):
    model = build_model("vgg", (16, 16, 1), 4, width=0.125)
    with pytest.raises(EdgecompError, match=message):
        prune_channels(model, **kwargs)


def test_bad_layer_requests_name_the_reason():
    model = build_model("pointnet", (16, 3), 4, width=0.0625)
    with pytest.raises(EdgecompError, match="mlp1_2_conv.*Dot 'feature_transform_apply'"):
        prune_channels(model, keep={"mlp1_2_conv": 0.5})
    small, _ = prune_channels(model, keep={"mlp1_1_conv": 0.5})
    assert small.get_layer("mlp1_1_conv").filters == 2 and small.get_layer("mlp2_1_conv").filters == 4
    with pytest.raises(EdgecompError, match="subclassed"):
        prune_channels(keras.Model())
