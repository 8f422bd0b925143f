"""Magnitude pruning with masks that stay exact through fine-tuning.

The seed's criterion is per output filter: in each filter (the last axis of a
Conv or Dense kernel) the ``floor(n * rate)`` smallest-magnitude weights are set
to zero. Each technique here works alone on any Keras 3 model:

    >>> masks = prune(model, rate=0.8)           # zero the weights, return the masks
    >>> with hold_masks(model, masks):            # pruned weights stay exactly 0
    ...     model.fit(x, y, epochs=1)

Masks are held by a Keras variable constraint, which Keras 3 optimizers apply
inside the compiled train step after every update, so no optimizer step (Adam's
momentum included) can move a pruned weight off zero.
"""

from __future__ import annotations

import contextlib

import numpy as np

from edgecomp.errors import EdgecompError

#: Layer classes whose ``kernel`` is pruned (issue-specific kinds are added as they land).
PRUNABLE_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D")


def check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0 or not np.isfinite(rate):
        raise EdgecompError(f"compress rate must be in [0, 1), got {rate}",
                            fix="pass e.g. --compress-rate 0.8 to prune 80% of each filter")
    return rate


def prunable_kernels(model, skip_first: bool = True) -> list:
    """The kernel variables to prune, in model order.

    ``skip_first`` leaves the first conv/dense kernel dense, as the seed does.
    """
    kernels = []
    for layer in _walk_layers(model):
        if type(layer).__name__ in PRUNABLE_LAYERS and getattr(layer, "kernel", None) is not None:
            kernels.append(layer.kernel)
    return kernels[1:] if skip_first else kernels


def _walk_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # nested model
            yield from _walk_layers(layer)
        else:
            yield layer


def filter_mask(kernel: np.ndarray, rate: float) -> np.ndarray:
    """Boolean keep-mask that zeroes the ``floor(n * rate)`` smallest |w| in each output filter.

    The output filter axis is the last one (Keras kernels). Ties are broken by position,
    so each filter loses exactly ``floor(n * rate)`` weights.

    Example:
        >>> filter_mask(np.array([[1., -4.], [3., 2.]]), 0.5)
        array([[False,  True],
               [ True, False]])
    """
    rate = check_rate(rate)
    w = np.asarray(kernel)
    if w.ndim < 2:
        raise EdgecompError(f"cannot prune a {w.ndim}-d tensor per filter", fix="prune kernels only")
    flat = np.abs(w.reshape(-1, w.shape[-1]))
    n_drop = int(flat.shape[0] * rate)
    keep = np.ones(flat.shape, dtype=bool)
    if n_drop:
        order = np.argsort(flat, axis=0, kind="stable")[:n_drop]
        np.put_along_axis(keep, order, False, axis=0)
    return keep.reshape(w.shape)


def prune(model, rate: float = 0.8, *, skip_first: bool = True) -> dict[str, np.ndarray]:
    """Prune every prunable kernel of ``model`` per filter at ``rate``, in place.

    Returns the keep-masks keyed by variable path (``"fc1/kernel"``).
    """
    rate = check_rate(rate)
    masks = {}
    for var in prunable_kernels(model, skip_first=skip_first):
        w = np.asarray(var.numpy())
        if not np.isfinite(w).all():
            raise EdgecompError(f"weights of {var.path} contain NaN or Inf",
                                fix="retrain the model; compression needs finite weights")
        mask = filter_mask(w, rate)
        var.assign(np.where(mask, w, 0).astype(w.dtype))
        masks[var.path] = mask
    return masks


class _MaskConstraint:
    """Keras constraint: multiply by a fixed 0/1 mask, after any earlier constraint."""

    def __init__(self, mask, inner=None):
        import keras
        self.mask = keras.ops.convert_to_tensor(mask.astype("float32"))
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * self.mask


@contextlib.contextmanager
def hold_masks(model, masks: dict[str, np.ndarray]):
    """Keep pruned weights at exactly 0 during training inside the ``with`` block.

    Example:
        >>> with hold_masks(model, masks):
        ...     model.fit(x_train, y_train, epochs=1)
    """
    by_path = {v.path: v for v in model.weights}
    missing = sorted(set(masks) - set(by_path))
    if missing:
        raise EdgecompError(f"masks name weights the model lacks: {', '.join(missing[:3])}",
                            fix="use masks made for this model")
    saved = {}
    for path, mask in masks.items():
        var = by_path[path]
        saved[path] = var.constraint
        var.constraint = _MaskConstraint(mask, inner=var.constraint)
        var.assign(np.where(mask, var.numpy(), 0).astype(var.dtype))
    try:
        yield model
    finally:
        for path, constraint in saved.items():
            by_path[path].constraint = constraint


def sparsity_report(model, masks: dict[str, np.ndarray]) -> list[dict]:
    """Per-kernel rows: name, shape, params, kept and sparsity (from the weights themselves)."""
    rows = []
    for var in model.weights:
        if var.path in masks:
            w = var.numpy()
            kept = int(np.count_nonzero(w))
            rows.append({"name": var.path, "shape": list(w.shape), "params": int(w.size),
                         "kept": kept, "sparsity": 1.0 - kept / w.size})
    return rows
