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
from edgecomp.metrics import TASKS, task_scores
from edgecomp.train import predict

__all__ = ["evaluate", "predict", "TASKS"]


def evaluate(model, x: np.ndarray, y: np.ndarray, task: str = "classification", batch_size: int = 64) -> dict:
    """``{"accuracy": ...}`` (plus ``"mean_iou"`` for segmentation) of ``model`` on ``(x, y)``.

    Example:
        >>> evaluate(model, ds.x_test[:100], ds.y_test[:100], task=ds.task)["accuracy"]  # doctest: +SKIP
        0.91
    """
    if task not in TASKS:
        raise EdgecompError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASKS)}")
    return task_scores(predict(model, x, batch_size), y, task)
