"""Task-aware evaluation for the model zoo (classification and per-pixel segmentation).

``train.evaluate`` scores one label per sample; a segmentation model has one per
pixel. :func:`evaluate` picks the right score from the dataset's task:

    >>> from edgecomp.zoo import evaluate
    >>> evaluate(model, ds.x_test, ds.y_test, task="segmentation")   # doctest: +SKIP
    {'accuracy': 0.962, 'mean_iou': 0.811}
    >>> evaluate(model, ds.x_test, ds.y_test)                          # doctest: +SKIP
    {'accuracy': 0.875}

``accuracy`` is top-1 accuracy for classification and pixel accuracy (the seed's
"val acc" for U-Net) for segmentation, as a fraction.
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import EdgecompError

__all__ = ["evaluate", "predict"]

TASKS = ("classification", "segmentation")


def predict(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Inference-mode outputs of ``model`` on ``x`` in batches, float32 (no ``predict`` tracing)."""
    x = np.asarray(x, dtype=np.float32)
    outs = [np.asarray(model(x[i:i + batch_size], training=False), dtype=np.float32)
            for i in range(0, len(x), batch_size)]
    if not outs:
        raise EdgecompError("nothing to evaluate", fix="pass at least one test sample")
    return np.concatenate(outs, axis=0)


def evaluate(model, x: np.ndarray, y: np.ndarray, task: str = "classification", batch_size: int = 64) -> dict:
    """``{"accuracy": ...}`` (plus ``"mean_iou"`` for segmentation) of ``model`` on ``(x, y)``.

    Example:
        >>> evaluate(model, ds.x_test[:100], ds.y_test[:100], task=ds.task)["accuracy"]  # doctest: +SKIP
        0.91
    """
    from runtime_bench.metrics import accuracy, segmentation_metrics

    if task not in TASKS:
        raise EdgecompError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASKS)}")
    pred = predict(model, x, batch_size)
    if task == "segmentation":
        m = segmentation_metrics(pred, y)
        return {"accuracy": m["pixel_accuracy"], "mean_iou": m["mean_iou"]}
    return {"accuracy": accuracy(pred, np.asarray(y).reshape(len(pred)))}
