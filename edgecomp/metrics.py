"""Quality figures computed from a model's outputs: accuracy, segmentation IoU, parity (numpy only).

All functions take the float outputs a runner returns, ``(N, ..., C)`` scores
(one channel = a sigmoid score, class 1 when > 0.5), and labels as class ids
``(N, ...)`` / ``(N, ..., 1)`` or one-hot/probabilities shaped like the output.

    >>> seg = segmentation_metrics(pred_masks, y_masks)
    >>> seg["pixel_accuracy"], seg["mean_iou"]                     # doctest: +SKIP
    (0.962, 0.811)
    >>> parity_figures(tflite_out, keras_out)["top1_agreement"]     # doctest: +SKIP
    0.998

:func:`parity_figures` uses the figure names of ``exporters.check_parity``
(``max_abs_diff``, ``mean_abs_diff``, ``top1_agreement``) so a bench record and
an export report can be read side by side. The compression core, ``exporters`` and
``runtime_bench`` all score outputs with these.
"""

from __future__ import annotations

import numpy as np

from edgecomp.errors import EdgecompError

#: What a model's outputs are scored as: one label per sample, or one per pixel.
TASKS = ("classification", "segmentation")


def predicted_classes(pred: np.ndarray) -> np.ndarray:
    """Class id per sample (per pixel for dense outputs): argmax, or ``> 0.5`` for one channel.

    Example:
        >>> predicted_classes(np.array([[0.2, 0.8], [0.9, 0.1]])).tolist()
        [1, 0]
        >>> predicted_classes(np.array([[[0.7], [0.3]]])).tolist()
        [[1, 0]]
    """
    pred = np.asarray(pred)
    if pred.shape[-1] == 1:
        return (pred[..., 0] > 0.5).astype(np.int64)
    return pred.argmax(axis=-1).astype(np.int64)


def label_classes(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Labels ``y`` as class ids shaped like :func:`predicted_classes` of ``pred``.

    Accepts ids ``(N, ...)``, ids with a trailing 1 ``(N, ..., 1)``, or one-hot /
    probabilities shaped like ``pred``; anything else raises :class:`EdgecompError`.

    Example:
        >>> label_classes(np.eye(3)[[2, 0]], np.zeros((2, 3))).tolist()
        [2, 0]
    """
    pred = np.asarray(pred)
    y = np.asarray(y)
    if y.shape == pred.shape and pred.shape[-1] > 1:
        y = y.argmax(axis=-1)
    elif y.ndim == pred.ndim and y.shape[-1] == 1:
        y = y[..., 0]
    if y.shape != pred.shape[:-1]:
        raise EdgecompError(f"labels shaped {y.shape} do not match predictions shaped {pred.shape}",
                            fix="pass class ids (N, ...) or one-hot labels shaped like the output")
    return y.astype(np.int64)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of positions where the predicted class equals the label (top-1, or per pixel).

    Example:
        >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        0.5
    """
    return float(np.mean(predicted_classes(pred) == label_classes(y, pred)))


def segmentation_metrics(pred: np.ndarray, y: np.ndarray, num_classes: int | None = None) -> dict:
    """Pixel accuracy and mean IoU of dense predictions over the whole set.

    Classes come from a per-pixel argmax (or ``> 0.5`` for one channel, giving
    classes 0 and 1). One confusion matrix is summed over every pixel of every
    sample; class ``c``'s IoU is ``TP / (TP + FP + FN)``, and ``mean_iou``
    averages the classes that occur in the labels or the predictions (a class
    absent from both has no IoU: ``None`` in ``iou``), as Keras's ``MeanIoU``
    does. ``num_classes`` defaults to the output's channels (2 for one channel).

    Returns ``{"pixel_accuracy", "mean_iou", "iou": [per class]}``.

    Example:
        >>> p = np.array([[0, 0, 1, 1]]); t = np.array([[0, 1, 1, 1]])
        >>> m = segmentation_metrics(np.eye(2)[p], t)
        >>> m["pixel_accuracy"], m["iou"], round(m["mean_iou"], 4)
        (0.75, [0.5, 0.6666666666666666], 0.5833)
    """
    pred = np.asarray(pred)
    got = predicted_classes(pred).ravel()
    want = label_classes(y, pred).ravel()
    k = int(num_classes or max(2, pred.shape[-1]))
    if want.size == 0:
        raise EdgecompError("no pixels to score", fix="pass at least one labelled sample")
    if want.min() < 0 or want.max() >= k:
        raise EdgecompError(f"labels must be class ids in [0, {k}), got {want.min()}..{want.max()}",
                            fix="pass integer class ids, or num_classes=")
    confusion = np.bincount(want * k + got, minlength=k * k).reshape(k, k)  # rows: label
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    iou = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(k)]
    present = [v for v in iou if v is not None]
    return {"pixel_accuracy": float(tp.sum() / want.size),
            "mean_iou": float(np.mean(present)) if present else None,
            "iou": iou}


def parity_figures(got: np.ndarray, ref: np.ndarray) -> dict:
    """How closely ``got`` (a file's outputs) matches ``ref`` (the Keras reference's).

    Returns ``max_abs_diff``, ``mean_abs_diff`` and ``top1_agreement`` (share of
    samples/pixels whose predicted class is the same), the names
    ``exporters.check_parity`` uses. Raises :class:`EdgecompError` if the shapes differ.

    Example:
        >>> f = parity_figures(np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([[0.25, 0.75], [0.4, 0.6]]))
        >>> round(f["max_abs_diff"], 6), f["top1_agreement"]
        (0.2, 0.5)
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        raise EdgecompError(f"output shaped {got.shape} does not match the reference's {ref.shape}",
                            fix="compare a file with the model it was exported from")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "top1_agreement": float(np.mean(predicted_classes(got) == predicted_classes(ref)))}


def task_scores(pred: np.ndarray, y: np.ndarray, task: str = "classification") -> dict:
    """``{"accuracy"}`` of outputs ``pred`` against labels ``y``, plus ``"mean_iou"`` for segmentation.

    ``accuracy`` is top-1 accuracy (classification) or pixel accuracy (segmentation).

    Example:
        >>> task_scores(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        {'accuracy': 0.5}
    """
    if task not in TASKS:
        raise EdgecompError(f"unknown task '{task}'", fix=f"use one of: {', '.join(TASKS)}")
    if task == "segmentation":
        m = segmentation_metrics(pred, y)
        return {"accuracy": m["pixel_accuracy"], "mean_iou": m["mean_iou"]}
    return {"accuracy": accuracy(pred, y)}
