"""The recipe's structured stage: smaller models through the whole pipeline, targets, distillation, bad input."""

import json

import numpy as np
import pytest

from edgecomp import codec, store, train
from edgecomp.checkpoint import Checkpoints
from edgecomp.cli import main
from edgecomp.data import load_dataset
from edgecomp.distill import Distill, distillation_loss, fit_distilled, pack_targets
from edgecomp.errors import EdgecompError
from edgecomp.models import build_model
from edgecomp.pipeline import compress
from edgecomp.recipe import Recipe
from edgecomp.structured import count_macs
from edgecomp.structured_stage import Structured


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    ds = load_dataset("synthetic_images", n_train=300, n_test=100)
    model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.25)
    train.fit(model, ds.x_train, ds.y_train, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("m") / "m.keras"
    model.save(path)
    return ds, path


def _load(path):
    import keras
    return keras.saving.load_model(path)


def test_structured_recipe_gives_a_smaller_model_through_the_container(trained):
    ds, path = trained
    model = _load(path)
    before = count_macs(model)[1]
    recipe = Recipe.from_options(channels=0.5, structured_steps=2, distill="3,0.5", method="deep", rate=0.5,
                                 centroid_epochs=0)
    result = compress(model, ds, recipe, verbose=0)
    s = result.structured
    assert s["macs_before"] == before and s["macs_after"] < 0.4 * before
    assert s["channels"]["block1_conv1"] == [8, 4] and s["channels"]["predictions"] == [10, 10]
    assert [h["stage"] for h in result.history][:2] == ["structured-1", "structured-2"]
    assert result.settings["structured"]["distill"] == {"temperature": 3.0, "weight": 0.5}
    decoded = result.decode()              # the container holds the smaller architecture
    assert decoded.count_params() == result.model.count_params() < model.count_params()
    assert count_macs(decoded)[1] == s["macs_after"] == result.macs
    assert np.allclose(train.predict(decoded, ds.x_test), train.predict(result.model, ds.x_test), atol=1e-5)
    assert model.count_params() == _load(path).count_params()   # the teacher is untouched


def test_macs_target_is_met_and_an_impossible_one_says_what_was_reached(trained):
    ds, path = trained
    result = compress(_load(path), ds, Recipe.from_options(channels=None, target_macs=0.3, structured_epochs=0,
                                                           fine_tune_epochs=0), verbose=0)
    s = result.structured
    assert s["macs_after"] <= 0.3 * s["macs_before"] and s["macs_fraction"] <= 0.3
    assert 0 < s["searched_keep"] < 1
    with pytest.raises(EdgecompError, match="reached"):
        compress(_load(path), ds, Recipe.from_options(target_macs=1e-6, structured_epochs=0), verbose=0)


def test_latency_target_searches_the_measure_it_is_given(trained):
    ds, path = trained
    calls = []

    def fake_ms(m):                       # stands in for an exported file's timing: grows with MACs
        calls.append(m.count_params())
        return count_macs(m)[1] / 1e6

    full = count_macs(_load(path))[1] / 1e6
    recipe = Recipe.from_options(target_latency=0.4 * full, structured_epochs=0, fine_tune_epochs=0)
    result = compress(_load(path), ds, recipe, verbose=0, measure=fake_ms)
    assert result.structured["measured_ms"] <= 0.4 * full and len(calls) >= 3
    with pytest.raises(EdgecompError, match="measure"):
        compress(_load(path), ds, recipe, verbose=0)


def test_structured_stage_resumes_from_its_checkpoints(trained, tmp_path):
    ds, path = trained
    recipe = Recipe.from_options(channels=0.5, structured_steps=2, rate=0.5)
    first = compress(_load(path), ds, recipe, verbose=0, checkpoints=Checkpoints(tmp_path, {"r": 1}))
    again = compress(_load(path), ds, recipe, verbose=0, checkpoints=Checkpoints(tmp_path, {"r": 1}, resume=True))
    assert again.container == first.container
    assert [h["stage"] for h in again.history] == [h["stage"] for h in first.history]


def test_distillation_loss_matches_its_formula_and_pulls_towards_the_teacher(trained):
    import keras
    ds, path = trained
    t, w = 2.0, 0.6
    y = np.array([1, 0])
    teacher = np.array([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]], np.float32)
    student = np.array([[0.3, 0.4, 0.3], [0.6, 0.2, 0.2]], np.float32)
    soft = lambda p: np.exp(np.log(p) / t) / np.exp(np.log(p) / t).sum(-1, keepdims=True)  # noqa: E731
    kl = (soft(teacher) * (np.log(soft(teacher)) - np.log(soft(student)))).sum(-1)
    want = (1 - w) * -np.log(student[np.arange(2), y]) + w * t * t * kl
    got = np.asarray(distillation_loss(t, w)(pack_targets(y, teacher), student))
    assert np.allclose(got, want, atol=1e-5)
    # weight 1: the student learns the teacher's answers, not the labels
    teacher_model = _load(path)
    keras.utils.set_random_seed(1)
    student_model = build_model("vgg", ds.input_shape, ds.num_classes, width=0.125)
    x = ds.x_train[:200]
    gap = lambda: np.abs(train.predict(student_model, x) - train.predict(teacher_model, x)).mean()  # noqa: E731
    before = gap()
    fit_distilled(student_model, teacher_model, x, np.zeros(len(x), int), temperature=1.0, weight=1.0, epochs=3,
                  verbose=0)
    assert gap() < 0.7 * before


def test_structured_config_validates():
    assert Structured(keep=0.5).get_config()["keep"] == 0.5
    assert Structured.from_config(Structured(layer_keep={"fc1": 0.3}, distill="2").get_config()).distill == Distill(2.0)
    for bad in (dict(keep=0.0), dict(keep=1.5), dict(), dict(keep=0.5, target_macs=0.5), dict(target_latency=-1),
                dict(keep=0.5, importance="magic"), dict(keep=0.5, steps=0), dict(keep=0.5, distill="4,2"),
                dict(layer_keep={"fc1": 2.0})):
        with pytest.raises(EdgecompError):
            Structured(**bad)


@pytest.mark.parametrize("args, needle", [
    (["--channels", "1.5"], "keep ratio must be in (0, 1]"),
    (["--channels", "0"], "keep ratio must be in (0, 1]"),
    (["--channels", "nope9=0.5"], "nope9"),
    (["--channels", "predictions=0.5"], "predictions"),
    (["--target-macs", "0.000001"], "reached"),
    (["--target-latency", "0.1", "--latency-profile", "phone-x"], "unknown target 'phone-x'"),
    (["--structured-steps", "2"], "needs --channels"),
    (["--channels", "0.5", "--distill", "4,3"], "distillation weight"),
])
def test_bad_structured_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, args, needle):
    _, path = trained
    out = tmp_path / "o.ecz"
    code = main(["compress", str(path), "--data", "synthetic_images", "--test-size", "50",
                 "--structured-epochs", "0", "--fine-tune-epochs", "0", *args, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_channels_rules_reach_the_container(trained, tmp_path):
    _, path = trained
    out, rep = tmp_path / "s.ecz", tmp_path / "s.json"
    assert main(["compress", str(path), "--data", "synthetic_images", "--test-size", "50", "--channels", "fc1=0.25",
                 "--structured-epochs", "0", "--fine-tune-epochs", "0", "-o", str(out), "--report", str(rep)]) == 0
    meta, _ = codec.decode_weights(out.read_bytes())
    assert meta["info"]["recipe"]["structured"]["layer_keep"] == [["fc1", 0.25]]
    small = store.load_compressed(out)
    assert small.get_layer("fc1").units == 32 and small.get_layer("block1_conv1").filters == 8
    assert json.loads(rep.read_text())["settings"]["structured"]["keep"] is None


def test_taylor_importance_over_distilled_steps(trained):
    ds, path = trained
    recipe = Recipe.from_options(channels=0.5, structured_steps=2, importance="taylor", distill="4,0.7")
    result = compress(_load(path), ds, recipe, verbose=0)   # step 2 scores a model compiled for distillation
    assert result.structured["channels"]["fc1"] == [128, 64]


def test_macs_target_over_steps_is_met_by_the_final_model(trained):
    ds, path = trained
    recipe = Recipe.from_options(target_macs=0.3, structured_steps=3, round_to=4, structured_epochs=0,
                                 fine_tune_epochs=0)
    s = compress(_load(path), ds, recipe, verbose=0).structured
    assert s["macs_after"] <= 0.3 * s["macs_before"] and s["macs_fraction"] == s["macs_after"] / s["macs_before"]
    with pytest.raises(EdgecompError, match="can't be combined"):
        Recipe.from_options(channels="fc1=0.5", target_macs=0.3)


def test_network_slimming_sparsity_phase_shrinks_gammas_on_a_copy():
    import keras
    from edgecomp.structured_stage import _sparsity_phase
    keras.utils.set_random_seed(0)
    ds = load_dataset("synthetic_patterns", n_train=128, n_test=32, shape=(16, 16, 3), num_classes=4)
    model = build_model("resnet", ds.input_shape, ds.num_classes, depth=8)
    gammas = lambda m: sum(float(np.abs(l.gamma.numpy()).sum()) for l in m.layers  # noqa: E731
                           if isinstance(l, keras.layers.BatchNormalization))
    before = gammas(model)
    recipe = Recipe.from_options(channels=0.5, importance="bn_scale", bn_sparsity="0.05,2")
    assert recipe.structured.sparsity == 0.05 and recipe.structured.sparsity_epochs == 2
    history = []
    student = _sparsity_phase(model, ds.x_train, ds.y_train, recipe.structured, recipe, 0, history)
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    train.fit(plain, ds.x_train, ds.y_train, epochs=2, seed=recipe.seed + 199, verbose=0)   # the same, no penalty
    # Adam moves each gamma about one learning rate a step towards 0 under the penalty: 288 gammas x 4 steps
    assert gammas(student) < gammas(plain) - 0.5 and gammas(model) == before      # the teacher is untouched
    assert history[0]["stage"] == "bn-sparsity"
    for bad in ("0.05,0", "x", "-1,2"):
        with pytest.raises(EdgecompError):
            Recipe.from_options(channels=0.5, bn_sparsity=bad)
    result = compress(model, ds, Recipe.from_options(channels=0.5, importance="bn_scale", bn_sparsity="0.05,1",
                                                      structured_epochs=0, fine_tune_epochs=0), verbose=0)
    assert result.history[0]["stage"] == "bn-sparsity" and result.structured["macs_after"] < result.structured["macs_before"]
