"""The recipe: config objects, one matching rule, and every compression flag reaching the result."""

import json

import numpy as np
import pytest

from edgecomp import codec, train
from edgecomp.cli import main
from edgecomp.data import load_dataset
from edgecomp.errors import EdgecompError
from edgecomp.match import matches, rule_value
from edgecomp.models import build_model
from edgecomp.pipeline import compress
from edgecomp.pruning_config import BlockMagnitude, Gradual, Iterative, Magnitude, criterion_from, schedule_from
from edgecomp.recipe import Coding, FineTune, Pruning, Recipe, Sharing

# Every compression flag with a non-default value, and where its value lands in recipe.get_config().
FLAGS = {
    "--method": ("deep", lambda c: c["coding"]["method"] == "deep"),
    "--compress-rate": ("0.6", lambda c: c["pruning"]["rate"] == 0.6),
    "--criterion": ("layer", lambda c: c["pruning"]["criterion"] == {"kind": "magnitude", "scope": "layer"}),
    "--layer-rates": ("fc1=0.9", lambda c: c["pruning"]["layer_rates"][0] == ["fc1", 0.9]),
    "--prune-schedule": ("iterative:2", lambda c: c["pruning"]["schedule"] == {"kind": "iterative", "steps": 2}),
    "--fine-tune-epochs": ("2", lambda c: c["fine_tune"]["epochs"] == 2),
    "--lr-schedule": ("cosine", lambda c: c["fine_tune"]["lr_schedule"] == "cosine"),
    "--prune-first": (None, lambda c: c["pruning"]["skip_first"] is False),
    "--bits": ("conv=7,dense=6,fc1=3", lambda c: c["sharing"]["bits"][:3] == [["conv", 7], ["dense", 6], ["fc1", 3]]),
    "--init": ("density", lambda c: c["sharing"]["init"] == "density"),
    "--centroid-epochs": ("2", lambda c: c["sharing"]["epochs"] == 2),
    "--index-bits": ("5", lambda c: c["coding"]["index_bits"] == 5),
    "--coder": ("deflate", lambda c: c["coding"]["coder"] == "deflate"),
    "--batch-size": ("32", lambda c: c["fine_tune"]["batch_size"] == 32),
    "--seed": ("3", lambda c: c["seed"] == 3),
    # the structured stage's
    "--channels": ("0.75", lambda c: c["structured"]["keep"] == 0.75),
    "--structured-steps": ("3", lambda c: c["structured"]["steps"] == 3),
    "--structured-epochs": ("2", lambda c: c["structured"]["epochs"] == 2),
    "--importance": ("l2", lambda c: c["structured"]["importance"] == "l2"),
    "--channel-ranking": ("global", lambda c: c["structured"]["ranking"] == "global"),
    "--round-to": ("2", lambda c: c["structured"]["round_to"] == 2),
    "--distill": ("2,0.5", lambda c: c["structured"]["distill"] == {"temperature": 2.0, "weight": 0.5}),
    "--bn-sparsity": ("1e-4,1", lambda c: c["structured"]["sparsity"] == 1e-4 and c["structured"]["sparsity_epochs"] == 1),
    # quantization-aware training's
    "--qat-epochs": ("1", lambda c: c["qat"]["epochs"] == 1),
    "--qat-learning-rate": ("0.0002", lambda c: c["qat"]["learning_rate"] == 0.0002),
    "--qat-weight-bits": ("7", lambda c: c["qat"]["weight_bits"] == 7),
    "--qat-distill": ("2,0.5", lambda c: c["qat"]["distill"] == {"temperature": 2.0, "weight": 0.5}),
}
#: Flags that exclude --channels, each checked in a run of its own.
TARGET_FLAGS = {
    "--target-macs": ("0.7", lambda c: c["structured"]["target_macs"] == 0.7 and c["structured"]["keep"] is None),
    "--target-latency": ("50", lambda c: c["structured"]["target_latency"] == 50.0),
    "--latency-profile": ("mobile-little", lambda c: c["structured"]["profile"] == "mobile-little"),
}
TARGET_RUNS = {"--target-macs": ["--target-macs"], "--target-latency": ["--target-latency", "--latency-profile"],
               "--latency-profile": ["--target-latency", "--latency-profile"]}


def _flag_args(flags=None):
    out = []
    for flag in flags or FLAGS:
        value = {**FLAGS, **TARGET_FLAGS}[flag][0]
        out += [flag] if value is None else [flag, value]
    return out


def _container_recipe(path):
    meta, _ = codec.decode_weights(path.read_bytes())
    return meta["info"]["recipe"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    ds = load_dataset("synthetic_images", n_train=400, n_test=100)
    model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.125)
    train.fit(model, ds.x_train[:-100], ds.y_train[:-100], epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("m") / "m.keras"
    model.save(path)
    return path


def _run_modes(model_file, out, flags) -> dict:
    """One CLI run per mode with ``flags`` set: ``{mode: (settings, container recipe, layer rows)}``."""
    found = {}
    data = ["--data", "synthetic_images", "--test-size", "50"]
    for mode, extra in (("plain", []), ("budget", ["--max-accuracy-drop", "50", "--val-size", "100"])):
        ecz, rep = out / f"{mode}.ecz", out / f"{mode}.json"
        assert main(["compress", str(model_file), *data, *flags, *extra, "-o", str(ecz), "--report", str(rep)]) == 0
        report = json.loads(rep.read_text())
        found[mode] = (report["settings"], _container_recipe(ecz), report["layers"])
    run_out = out / "run"
    # the run's int8 export must pass parity: a model trained as check_resume.py's, 200 test images
    assert main(["run", "--width", "0.25", "--epochs", "2", "--train-size", "512", "--latency-runs", "5", "--seed-rate", "none",
                 "--data", "synthetic_images", "--test-size", "200", *flags, "-o", str(run_out)]) == 0
    report = json.loads((run_out / "report.json").read_text())
    found["run"] = (report["config"]["recipe"], _container_recipe(run_out / "edgecomp.ecz"), report["layers"])
    return found


@pytest.fixture(scope="module")
def outcomes(model_file, tmp_path_factory):
    """Every flag of FLAGS at once, in each mode."""
    return _run_modes(model_file, tmp_path_factory.mktemp("modes"), _flag_args())


@pytest.fixture(scope="module")
def target_outcomes(model_file, tmp_path_factory):
    """``{run name: outcomes}`` for the target flags, run lazily (each excludes --channels)."""
    cache = {}

    def get(flag):
        name = TARGET_RUNS[flag][0]
        if name not in cache:
            cache[name] = _run_modes(model_file, tmp_path_factory.mktemp("targets"),
                                     _flag_args(["--method", "--fine-tune-epochs", *TARGET_RUNS[flag]]))
        return cache[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "budget", "run"])
@pytest.mark.parametrize("flag", list(FLAGS))
def test_every_flag_reaches_settings_and_container(outcomes, mode, flag):
    settings, in_container, _ = outcomes[mode]
    check = FLAGS[flag][1]
    assert check(settings), (flag, mode, settings)
    assert check(in_container), (flag, mode, in_container)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "budget", "run"])
@pytest.mark.parametrize("flag", list(TARGET_FLAGS))
def test_every_target_flag_reaches_settings_and_container(target_outcomes, mode, flag):
    settings, in_container, _ = target_outcomes(flag)[mode]
    check = TARGET_FLAGS[flag][1]
    assert check(settings), (flag, mode, settings)
    assert check(in_container), (flag, mode, in_container)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "run"])
def test_bits_and_layer_rates_act_on_layer_fc1(outcomes, mode):
    _, _, layers = outcomes[mode]
    row = next(r for r in layers if r["name"] == "fc1/kernel")
    assert row["bits"] == 3                       # --bits fc1=3: a layer name matches its weights
    assert abs(row["sparsity"] - 0.9) < 0.01      # --layer-rates fc1=0.9
    other = next(r for r in layers if r["name"] == "fc2/kernel")
    assert other["bits"] == 6 and abs(other["sparsity"] - 0.6) < 0.01


def test_matching_rule_layer_name_or_weight_path():
    assert matches("fc1", "fc1/kernel") and matches("fc1/kernel", "fc1/kernel") and matches("fc*", "fc1/bias")
    assert not matches("fc1", "fc10/kernel") and not matches("kernel", "fc1/kernel")
    assert matches("*/bias", "fc1/bias")
    assert rule_value({"block*": 0.5, "fc1": 0.9, "*": 0.1}, "fc1/kernel") == 0.9
    assert rule_value([("x", 1)], "fc1/kernel", default=7) == 7


def test_recipe_round_trips_and_validates():
    r = Recipe.from_options(method="deep", rate=0.9, criterion="block:4x1", schedule="gradual:5",
                            layer_rates="fc1=0.95,block1_*=0.5", bits="conv=6,fc2=2", init="random",
                            index_bits=4, coder="huffman", lr_schedule="cosine", seed=5,
                            layer_criteria={"fc*": "block:16x1"})
    assert r.pruning.criterion == BlockMagnitude((4, 1)) and r.pruning.schedule == Gradual(5)
    assert r.pruning.layer_rates == (("fc1", 0.95), ("block1_*", 0.5))
    assert r.sharing.bits_map == {"conv": 6, "dense": 5, "fc2": 2}
    assert Recipe.from_config(json.loads(json.dumps(r.get_config()))) == r
    assert r.stages == ["pruning", "sharing", "coding"]
    assert Recipe().method == "seed" and Recipe().sharing is None
    assert Recipe(coding=Coding("deep")).sharing == Sharing()
    assert schedule_from("iterative:4").step_rates(0.8) == [0.2, 0.4, 0.6000000000000001, 0.8]
    assert criterion_from("global") == Magnitude("global") and str(Iterative(2)) == "iterative:2"
    bad = [lambda: Pruning(rate=1.0), lambda: Pruning(criterion="best"), lambda: Pruning(schedule="iterative:x"),
           lambda: Pruning(layer_rates={"fc1": 2.0}), lambda: FineTune(epochs=-1), lambda: FineTune(lr_schedule="step"),
           lambda: Sharing(bits={"conv": 9}), lambda: Sharing(init="kmeans++"), lambda: Coding(method="zip"),
           lambda: Coding(index_bits=12), lambda: Coding(coder="lzma"), lambda: Recipe(sharing=Sharing()),
           lambda: Recipe.from_options(rates=0.5), lambda: criterion_from("block:axb"), lambda: Iterative(0),
           lambda: Recipe.from_config({"pruning": {"rate": 0.5, "speed": 1}})]
    for make in bad:
        with pytest.raises(EdgecompError):
            make()


def _tiny_data():
    ds = load_dataset("synthetic_images", n_train=128, n_test=32)
    return ds


def test_compress_takes_a_recipe_and_records_it():
    import keras
    keras.utils.set_random_seed(0)
    ds = _tiny_data()
    model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.125)
    recipe = Recipe.from_options(method="deep", rate=0.5, fine_tune_epochs=0, centroid_epochs=0,
                                 layer_criteria={"fc*": "block:4x1", "predictions": "block:4x1"}, bits="fc1=2")
    result = compress(model, ds, recipe, verbose=0)
    assert result.recipe == recipe and result.settings == recipe.get_config()
    meta, _ = codec.decode_weights(result.container)
    assert meta["info"]["recipe"] == recipe.get_config()
    # block criterion on the Dense kernels: whole (4, 1) blocks are zero or kept
    w = result.model.get_layer("fc1").kernel.numpy()
    blocks = (w.reshape(-1, 4, w.shape[-1]) != 0).any(axis=1)
    assert np.array_equal(blocks, (w.reshape(-1, 4, w.shape[-1]) != 0).all(axis=1))
    assert next(r for r in result.report if r["name"] == "fc1/kernel")["bits"] == 2


def test_a_rule_that_matches_no_layer_is_an_error():
    ds = _tiny_data()
    model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.125)
    for options in ({"layer_rates": "fc9=0.5"}, {"method": "deep", "bits": "fcX=3"}):
        with pytest.raises(EdgecompError, match="matches no prunable layer"):
            compress(model, None, verbose=0, **options)


def test_deep_only_flags_with_the_seed_method_are_refused(model_file, capsys):
    code = main(["compress", str(model_file), "--data", "synthetic_images", "--bits", "fc1=3", "-o", "x.ecz"])
    err = capsys.readouterr().err
    assert code == 2 and "only --method deep" in err and len(err.strip().splitlines()) == 1


def test_recipe_checks_from_the_library_too():
    from edgecomp.structured_stage import Structured
    assert isinstance(Recipe(structured={"keep": 0.5}).structured, Structured)
    for make in (lambda: Recipe(structured=0.5), lambda: Recipe.from_config({"pruning": {}, "bogus": 1}),
                 lambda: Recipe.from_options(rate=0.8, bits="conv=4"), lambda: Recipe.from_options(coder="deflate")):
        with pytest.raises(EdgecompError):
            make()
    # switching a deep recipe to the seed's method drops its coding settings
    deep = Recipe.from_options(method="deep", coder="deflate", index_bits=4)
    assert Recipe.from_options(deep, method="seed").coding == Coding("seed")
    # the first bits rule for a pattern wins, as in matching: a budget plan can't override a pinned rule
    assert Sharing(bits=[("fc1/kernel", 3), ("fc1/kernel", 5)]).bits_map["fc1/kernel"] == 3


def test_budget_mode_builds_on_the_search_defaults(model_file, tmp_path):
    rep = tmp_path / "r.json"
    assert main(["compress", str(model_file), "--data", "synthetic_images", "--test-size", "50",
                 "--max-accuracy-drop", "50", "--val-size", "100", "-o", str(tmp_path / "b.ecz"),
                 "--report", str(rep)]) == 0
    settings = json.loads(rep.read_text())["settings"]
    assert settings["coding"]["method"] == "deep" and settings["pruning"]["skip_first"] is False
    assert settings["pruning"]["schedule"] == {"kind": "iterative", "steps": 2}
