import json

import numpy as np
import pytest

from edgecomp import train
from edgecomp.budget import back_off, compress_within_budget, estimated_bytes, plan, plan_for_ratio
from edgecomp.cli import main
from edgecomp.data import load_dataset
from edgecomp.models import build_model
from edgecomp.sensitivity import analyze

TABLE = {"rates": [0.5, 0.9], "bits": [8, 4, 2], "layers": [
    {"name": "big", "params": 1000, "prune": {"0.5": 0.0, "0.9": 0.2}, "bits": {"8": 0.0, "4": 0.1, "2": 3.0}},
    {"name": "small", "params": 10, "prune": {"0.5": 0.3, "0.9": 5.0}, "bits": {"8": 0.0, "4": 0.4, "2": 9.0}},
]}


def test_plan_biggest_first_within_budget():
    p = plan(TABLE, max_drop=1.0)  # margin 0.5 -> 0.5 points to share
    assert p["rates"] == {"big": 0.9, "small": 0.0}     # big spends 0.2 + 0.1, small can't afford 0.5 (0.3)
    assert p["bits"]["big"] == 4
    loose = plan(TABLE, max_drop=2.0)
    assert loose["rates"]["small"] == 0.5


def test_back_off_and_ratio_plan():
    p = plan(TABLE, max_drop=10.0, margin=1.0)
    q = back_off(p, TABLE)
    assert q["rates"]["big"] <= p["rates"]["big"] and q != p
    r = plan_for_ratio(TABLE, 4.0, fp32_bytes=4 * 1010)
    assert estimated_bytes(r, TABLE) <= 4 * 1010 / 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    ds = load_dataset("synthetic_images", n_train=600, n_test=200)
    model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.25)
    train.fit(model, ds.x_train, ds.y_train, epochs=3, verbose=0)
    path = tmp_path_factory.mktemp("m") / "m.keras"
    model.save(path)
    return ds, model, path


def test_sensitivity_table_shapes_and_sense(trained):
    ds, model, _ = trained
    table = analyze(model, ds.x_train[-200:], ds.y_train[-200:], rates=(0.5, 0.99), bits=(8, 1), progress=False)
    assert len(table["layers"]) == 9
    for row in table["layers"]:
        assert set(row["prune"]) == {"0.5", "0.99"} and set(row["bits"]) == {"8", "1"}
        assert row["macs"] > 0                     # MACs beside the parameter count
    # the whole model is unchanged afterwards
    assert train.evaluate(model, ds.x_train[-200:], ds.y_train[-200:]) == table["baseline_accuracy"]
    # pruning at 99% hurts more than at 50%, over all layers together, and sharing at 1 bit more than at 8
    assert sum(r["prune"]["0.99"] for r in table["layers"]) > sum(r["prune"]["0.5"] for r in table["layers"])
    assert sum(r["bits"]["1"] for r in table["layers"]) > sum(r["bits"]["8"] for r in table["layers"])


def test_budget_search_keeps_budget_on_held_out(trained):
    import keras
    ds, _, path = trained
    model = keras.saving.load_model(path)
    result, log = compress_within_budget(model, ds, max_accuracy_drop=2.0, val_size=200, attempts=4,
                                         schedule="oneshot", fine_tune_epochs=1, centroid_epochs=1, verbose=0)
    assert log[-1]["within_budget"] and log[-1]["val_drop_points"] <= 2.0
    assert result.bytes < 4 * result.params / 4        # well under fp32
    assert result.search["attempts"] == log and result.settings == result.recipe.get_config()
    # the plan is in the returned recipe: an exact-path rate rule for every planned layer
    rules = dict(result.recipe.pruning.layer_rates)
    assert set(log[-1]["plan"]["rates"]) <= set(rules)
    assert all(rules[n] == r for n, r in log[-1]["plan"]["rates"].items())


def test_analyze_cli_writes_table_and_plot(trained, tmp_path):
    ds, _, path = trained
    code = main(["analyze", str(path), "--data", "synthetic_images", "--val-size", "100", "-o", str(tmp_path)])
    assert code == 0
    table = json.loads((tmp_path / "sensitivity.json").read_text())
    assert len(table["layers"]) == 9
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
