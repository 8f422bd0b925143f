"""Registries: prunable layers are looked up by class (subclasses too); a name registered twice warns."""

from __future__ import annotations

import warnings

import keras
import pytest

from edgecomp.data import base as data_base
from edgecomp.errors import EdgecompError
from edgecomp.data import dataset_names, register_dataset
from edgecomp.models import base as model_base
from edgecomp.models import build_model, model_names, register_model
from edgecomp.pruning import (PRUNABLE, prunable_spec, prunable_weights, register_prunable,
                              unsupported_layers)


class MyConv(keras.layers.Conv2D):
    """A subclass of a registered kind, not registered itself."""


class Scale(keras.layers.Layer):
    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 4), initializer="ones")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)


@pytest.fixture
def registry_restored():
    saved = dict(PRUNABLE)
    yield
    PRUNABLE.clear()
    PRUNABLE.update(saved)


def test_a_subclass_of_conv2d_is_prunable():
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(MyConv(4, 3, name="mine")(inp))))
    assert prunable_spec(model.get_layer("mine")) == {"kernel": (-1,)}
    assert [v.path for v, _ in prunable_weights(model, skip_first=False)] == ["mine/kernel", "head/kernel"]
    assert unsupported_layers(model) == []
    assert prunable_spec(keras.layers.ReLU()) is None


def test_a_normalization_subclass_is_left_dense_quietly():
    class MyNorm(keras.layers.BatchNormalization):
        pass

    inp = keras.Input((6,))
    model = keras.Model(inp, MyNorm()(keras.layers.Dense(3)(inp)))
    assert unsupported_layers(model) == []


def test_the_most_specific_registered_class_wins(registry_restored):
    class Wide(MyConv):
        pass

    register_prunable(MyConv, {"kernel": (-2, -1)})
    assert prunable_spec(Wide(4, 3)) == {"kernel": (-2, -1)}          # MyConv's, not Conv2D's
    assert prunable_spec(keras.layers.Conv2D(4, 3)) == {"kernel": (-1,)}


def test_registering_by_name_still_works(registry_restored):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(2)(Scale(name="scale")(inp)))
    assert unsupported_layers(model) == ["scale (Scale)"]
    register_prunable("Scale", {"kernel": (-1,)})
    assert unsupported_layers(model) == [] and len(prunable_weights(model, skip_first=False)) == 2


def test_registering_twice_warns_and_replaces(registry_restored):
    register_prunable(Scale)
    with pytest.warns(UserWarning, match="Scale is registered already"):
        register_prunable(Scale, {"kernel": (0,)})
    assert prunable_spec(Scale()) == {"kernel": (0,)}
    with pytest.warns(UserWarning, match="Conv2D is registered already"):
        register_prunable("Conv2D", {"kernel": (-2,)})          # the name of a registered class
    assert prunable_spec(keras.layers.Conv2D(2, 1)) == {"kernel": (-2,)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_prunable(MyConv)                               # a new class: no warning
    with pytest.raises(EdgecompError, match="layer class or its name"):
        register_prunable(keras.layers.Dense(2))


def test_model_name_registered_twice_warns():
    real = model_base._REGISTRY["vgg"]
    try:
        with pytest.warns(UserWarning, match="model 'vgg' is registered already"):
            register_model("vgg")(lambda input_shape, num_classes: "replaced")
        assert build_model("vgg", (8, 8, 1), 2) == "replaced"
    finally:
        model_base._REGISTRY["vgg"] = real
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_model("test_only_model")(real)
    model_base._REGISTRY.pop("test_only_model")
    assert "test_only_model" not in model_names()


def test_dataset_name_or_alias_registered_twice_warns():
    real, alias = data_base._REGISTRY["cifar10"], data_base._ALIASES["c10"]
    try:
        with pytest.warns(UserWarning, match=r"dataset name\(s\) c10 registered already"):
            register_dataset("my_data", "c10")(lambda data_dir=None: None)
        assert data_base._ALIASES["c10"] == "my_data"
        with pytest.warns(UserWarning, match=r"dataset name\(s\) cifar10 registered already"):
            register_dataset("cifar10")(real)
    finally:
        data_base._REGISTRY.pop("my_data", None)
        data_base._ALIASES["c10"] = alias
        data_base._REGISTRY["cifar10"] = real
    assert "my_data" not in dataset_names() and data_base._ALIASES["c10"] == "cifar10"
