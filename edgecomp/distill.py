"""Knowledge distillation: fine-tune a (pruned) student towards its unpruned teacher's answers.

The loss is Hinton et al.'s: ``(1 - weight) * CE(labels, student) + weight * T**2 *
KL(soft(teacher) || soft(student))``, with ``soft(p) = softmax(log(p) / T)`` (the models here end in
a softmax, so ``log(p)`` are their logits up to a constant). The teacher's outputs are computed
once, in inference mode, and travel with the labels (one extra column per class), so plain
``model.fit`` trains the student.

    >>> fit_distilled(student, teacher, x, y, temperature=4.0, weight=0.7, epochs=2)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from edgecomp import train
from edgecomp.errors import EdgecompError
from edgecomp.pruning_config import Config

_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class Distill(Config):
    """Distillation settings: softmax ``temperature`` and the soft loss's ``weight`` in [0, 1]."""

    temperature: float = 4.0
    weight: float = 0.7
    kind: ClassVar[str] = ""

    def __post_init__(self):
        t, w = float(self.temperature), float(self.weight)
        if not (t > 0 and np.isfinite(t)):
            raise EdgecompError(f"distillation temperature must be > 0, got {self.temperature}", fix="e.g. --distill 4,0.7")
        if not 0.0 <= w <= 1.0:
            raise EdgecompError(f"distillation weight must be in [0, 1], got {self.weight}", fix="e.g. --distill 4,0.7")
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "weight", w)

    @classmethod
    def parse(cls, spec) -> "Distill | None":
        """``"T,W"``, ``"T"``, ``True`` (the defaults), a dict or a Distill -> Distill; falsy, ``off`` or
        ``none`` -> None."""
        if spec is None or spec is False or str(spec).strip().lower() in ("", "off", "none"):
            return None
        if isinstance(spec, Distill):
            return spec
        if spec is True:
            return cls()
        if isinstance(spec, dict):
            return cls.from_config(spec)
        parts = [p.strip() for p in str(spec).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if not 1 <= len(values) <= 2:
            raise EdgecompError(f"bad --distill {spec!r}", fix="write TEMPERATURE[,WEIGHT], e.g. --distill 4,0.7")
        return cls(*values)


def distillation_loss(temperature: float, weight: float):
    """A Keras loss on ``y_true = [label, teacher probabilities...]`` (last axis) and student probabilities."""
    import keras
    from keras import ops

    t = float(temperature)

    def soft_log(p):
        return ops.log_softmax(ops.log(ops.clip(p, _EPS, 1.0)) / t, axis=-1)

    def loss(y_true, y_pred):
        labels = ops.cast(y_true[..., 0], "int32")
        hard = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        log_t, log_s = soft_log(y_true[..., 1:]), soft_log(y_pred)
        kl = ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1)
        return (1.0 - weight) * hard + weight * t * t * kl

    return loss


def label_accuracy(y_true, y_pred):
    """Top-1 accuracy against the label column of packed distillation targets."""
    from keras import ops
    return ops.cast(ops.equal(ops.cast(y_true[..., 0], "int32"),
                              ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")


def pack_targets(y, teacher_probs) -> np.ndarray:
    """Labels and the teacher's probabilities in one float32 array (the label first, last axis)."""
    y = np.asarray(y)
    teacher_probs = np.asarray(teacher_probs, np.float32)
    if teacher_probs.shape[:-1] != y.shape:
        raise EdgecompError(f"teacher outputs {teacher_probs.shape} do not match the labels {y.shape}",
                            fix="distill only between models with the same outputs")
    return np.concatenate([y[..., None].astype(np.float32), teacher_probs], axis=-1)


def fit_distilled(student, teacher, x, y, *, temperature: float = 4.0, weight: float = 0.7,
                  teacher_probs=None, **fit_options) -> dict:
    """Fine-tune ``student`` on ``(x, y)`` with the teacher's softened answers; returns the history.

    Args:
        student: the model to train (e.g. the channel-pruned one); its outputs must match the teacher's.
        teacher: the model to learn from (e.g. the unpruned one); run once, in inference mode.
        temperature, weight: see :class:`Distill`.
        teacher_probs: the teacher's outputs on ``x``, when already computed (they are reused
            across pruning steps).
        **fit_options: :func:`edgecomp.train.fit`'s (epochs, batch_size, learning_rate, ...).

    Example:
        >>> fit_distilled(small, model, x_train, y_train, temperature=4, weight=0.7, epochs=1)
    """
    if teacher_probs is None:
        teacher_probs = train.predict(teacher, x)
    targets = pack_targets(y, teacher_probs)
    hist = train.fit(student, x, targets, loss=distillation_loss(temperature, weight),
                     metrics=[label_accuracy], **fit_options)
    return {("accuracy" if k == "label_accuracy" else k): v for k, v in hist.items()}
