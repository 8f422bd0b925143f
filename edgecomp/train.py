"""Training and evaluation helpers shared by the pipeline, the scripts and the tests."""

from __future__ import annotations

import sys

import numpy as np


def _progress(verbose: int) -> int:
    """Keras verbosity: the live progress bar on a terminal, one line per epoch in a log."""
    if verbose and verbose == 1 and not sys.stdout.isatty():
        return 2
    return verbose


def compile_model(model, learning_rate: float = 1e-3, loss=None, metrics=None):
    """Compile with Adam; by default for integer-label classification (keywords: Keras 3's
    third positional argument of ``compile`` is ``loss_weights``)."""
    import keras
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=loss or "sparse_categorical_crossentropy", metrics=metrics or ["accuracy"])
    return model


def check_model_data(model, data) -> None:
    """Raise EdgecompError when ``data`` (a Dataset) doesn't fit ``model``'s input or output."""
    from edgecomp.errors import EdgecompError

    want = tuple(model.inputs[0].shape[1:])
    got = tuple(data.x_train.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
        raise EdgecompError(f"the model takes inputs of shape {want} but dataset '{data.name}' has {got}",
                            fix="use the dataset the model was trained on, or a model built for this data")
    units = model.outputs[0].shape[-1]
    if units is not None and data.task == "classification" and units != data.num_classes:
        raise EdgecompError(f"the model predicts {units} classes but dataset '{data.name}' has {data.num_classes}",
                            fix="use the dataset the model was trained on")


def reset_rng(model, seed: int = 0) -> None:
    """Seed Keras's global RNG and every SeedGenerator of ``model`` (Dropout's) from ``seed``.

    Each training stage starts from here, so a stage computes the same thing whether the
    model went through earlier stages in this process or was loaded from a checkpoint.
    """
    import keras
    keras.utils.set_random_seed(seed)
    gens = [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]
    for i, var in enumerate(gens):
        var.assign(np.array([seed + i + 1, 0], dtype=var.dtype))


#: Learning-rate schedules :func:`fit` accepts: ``constant``, or ``cosine`` (decays to 0 over all
#: the steps of the call, the usual recipe for short training and fine-tuning runs).
LR_SCHEDULES = ("constant", "cosine")


def learning_rate_for(learning_rate: float, schedule: str, steps: int):
    """``learning_rate`` as Adam takes it under ``schedule`` over ``steps`` optimizer steps."""
    import keras
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if schedule == "cosine" and steps > 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    return learning_rate


def fit(model, x, y, *, epochs: int = 1, batch_size: int = 64, seed: int = 0, verbose: int = 1,
        learning_rate: float = 1e-3, lr_schedule: str = "constant", callbacks=None, loss=None, metrics=None):
    """Fit ``model`` on ``(x, y)`` with a fixed shuffling seed; returns the history dict.

    ``lr_schedule="cosine"`` decays Adam's rate from ``learning_rate`` to 0 over the call;
    ``loss`` / ``metrics`` replace the integer-label cross-entropy and accuracy (distillation).
    Inside :func:`edgecomp.distribute.session`, ``batch_size`` is the global batch, split over
    the replicas (the model's variables must have been made under its strategy).
    """
    from edgecomp import distribute

    reset_rng(model, seed)
    steps = max(0, epochs) * int(np.ceil(len(x) / batch_size))
    rate = learning_rate_for(learning_rate, lr_schedule, steps)
    compile_model(model, rate, loss=loss, metrics=metrics)
    if epochs <= 0:
        return {}
    ses = distribute.active()
    if ses is None:
        return model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=_progress(verbose), shuffle=True,
                         callbacks=callbacks).history
    callbacks = list(callbacks or []) + ([ses.mask_check_callback(model)] if ses.config.check_masks else [])
    with ses.training(model, samples=len(x), batch_size=batch_size, epochs=epochs, learning_rate=rate):
        return model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=_progress(verbose), shuffle=True,
                         callbacks=callbacks).history


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """Inference-mode outputs of ``model`` on ``x``, ``batch_size`` samples a call, as float32.

    The one batched Keras predict (evaluation, parity references, benchmarks). It calls the
    model directly (``training=False``) instead of ``model.predict``, so nothing is traced;
    the outputs are the same to the bit.

    Example:
        >>> predict(model, x_test[:300]).shape
        (300, 10)
    """
    from edgecomp.errors import EdgecompError

    x = np.asarray(x, dtype=np.float32)
    batch_size = max(1, int(batch_size))
    outs = [np.asarray(model(x[i:i + batch_size], training=False), dtype=np.float32)
            for i in range(0, len(x), batch_size)]
    if not outs:
        raise EdgecompError("nothing to predict", fix="pass at least one sample")
    return np.concatenate(outs, axis=0)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of class scores ``probs`` against integer labels ``y`` (per pixel for
    segmentation maps)."""
    return float(np.mean(np.argmax(probs, axis=-1).reshape(-1) == np.asarray(y).reshape(-1)))


def evaluate(model, x, y, batch_size: int = 256) -> float:
    return accuracy(predict(model, x, batch_size), y)
