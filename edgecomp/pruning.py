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
from edgecomp.graph import leaf_layers
# The prunable-layer registry's home is edgecomp.prunable; its names are public here too.
from edgecomp.prunable import PRUNABLE, PRUNABLE_LAYERS, kept_dense, prunable_spec, register_prunable  # noqa: F401


def check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0 or not np.isfinite(rate):
        raise EdgecompError(f"compress rate must be in [0, 1), got {rate}",
                            fix="pass e.g. --compress-rate 0.8 to prune 80% of each filter")
    return rate


def prunable_weights(model, skip_first: bool = True) -> list[tuple]:
    """``(variable, filter_axes)`` for every prunable weight, in model order (nested models too).

    ``skip_first`` leaves the first prunable weight dense, as the seed leaves its first conv.
    """
    found = []
    for layer in leaf_layers(model):
        for attr, axes in (prunable_spec(layer) or {}).items():
            var = getattr(layer, attr, None)
            if var is not None and len(var.shape) >= 2:
                found.append((var, axes))
    return found[1:] if skip_first else found


def prunable_kernels(model, skip_first: bool = True) -> list:
    """The weight variables to prune, in model order (see :func:`prunable_weights`)."""
    return [var for var, _ in prunable_weights(model, skip_first=skip_first)]


def unsupported_layers(model) -> list[str]:
    """Names of layers that hold weights edgecomp doesn't know how to prune (left dense)."""
    return [f"{layer.name} ({type(layer).__name__})" for layer in leaf_layers(model)
            if layer.weights and prunable_spec(layer) is None and not kept_dense(layer)]


def filter_mask(kernel: np.ndarray, rate: float, axes: tuple[int, ...] = (-1,)) -> np.ndarray:
    """Boolean keep-mask that zeroes the ``floor(n * rate)`` smallest |w| in each output filter.

    ``axes`` index one filter (the last axis for Dense and Conv kernels). Ties are broken by
    position, so each filter loses exactly ``floor(n * rate)`` weights.

    Example:
        >>> filter_mask(np.array([[1., -4.], [3., 2.]]), 0.5)
        array([[False,  True],
               [ True, False]])
    """
    rate = check_rate(rate)
    w = np.asarray(kernel)
    if w.ndim < 2:
        raise EdgecompError(f"cannot prune a {w.ndim}-d tensor per filter", fix="prune kernels only")
    axes = tuple(a % w.ndim for a in axes)
    rest = tuple(a for a in range(w.ndim) if a not in axes)
    moved = np.transpose(w, rest + axes)
    flat = np.abs(moved.reshape(-1, int(np.prod([w.shape[a] for a in axes]))))
    n_drop = int(flat.shape[0] * rate)
    keep = np.ones(flat.shape, dtype=bool)
    if n_drop:
        order = np.argsort(flat, axis=0, kind="stable")[:n_drop]
        np.put_along_axis(keep, order, False, axis=0)
    return np.transpose(keep.reshape(moved.shape), np.argsort(rest + axes))


def layer_mask(kernel: np.ndarray, rate: float) -> np.ndarray:
    """Keep-mask that zeroes the ``floor(n * rate)`` smallest |w| of the whole tensor."""
    rate = check_rate(rate)
    flat = np.abs(np.asarray(kernel)).ravel()
    keep = np.ones(flat.shape, dtype=bool)
    n_drop = int(flat.size * rate)
    if n_drop:
        keep[np.argsort(flat, kind="stable")[:n_drop]] = False
    return keep.reshape(np.shape(kernel))


def rate_for(path: str, rate: float, rates) -> float:
    """The rate for weight ``path``: the first rule in ``rates`` that matches its layer name or path
    (:mod:`edgecomp.match`), else ``rate``."""
    from edgecomp.match import rule_value
    found = rule_value(rates, path)
    return rate if found is None else check_rate(found)


def parse_rates(spec: str | None) -> dict[str, float]:
    """``"fc1=0.95,block1_*=0.5"`` -> ``{"fc1": 0.95, "block1_*": 0.5}``."""
    out = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        key, sep, val = part.partition("=")
        try:
            rate = float(val) if sep else float("nan")
        except ValueError:
            rate = float("nan")
        if not 0.0 <= rate < 1.0 or not key.strip():
            raise EdgecompError(f"bad per-layer rate {part!r}: each rate must be in [0, 1)",
                                fix="write e.g. --layer-rates fc1=0.95,block1_*=0.5")
        out[key.strip()] = rate
    return out


def compute_masks(model, rate: float = 0.8, *, criterion="filter", rates=None, criteria=None,
                  skip_first: bool = True) -> dict[str, np.ndarray]:
    """Keep-masks for every prunable kernel from the current weights (nothing is changed).

    ``criterion``: a criterion object or its name (:mod:`edgecomp.pruning_config`): ``filter``
    (the seed's: per output filter), ``layer`` (per tensor), ``global`` (one magnitude threshold
    over all pruned kernels, so layers end up with different sparsities) or ``block:RxC``.
    ``rates`` overrides the rate per layer name or weight path glob (:mod:`edgecomp.match`;
    for ``global``, matching layers are pruned per layer at their own rate), ``criteria`` the
    criterion (e.g. ``{"fc*": "block:16x1"}``: LiteRT's sparse int8 blocks for the Dense layers).
    """
    from edgecomp.match import rule_value
    from edgecomp.pruning_config import criterion_from

    rate = check_rate(rate)
    criterion = criterion_from(criterion)
    criteria = [(p, criterion_from(c)) for p, c in (criteria.items() if isinstance(criteria, dict) else criteria or ())]
    found = prunable_weights(model, skip_first=skip_first)
    axes_of = {var.path: axes for var, axes in found}
    weights = {}
    for var, _ in found:
        w = np.asarray(var.numpy())
        if not np.isfinite(w).all():
            raise EdgecompError(f"weights of {var.path} contain NaN or Inf",
                                fix="retrain the model; compression needs finite weights")
        weights[var.path] = w
    masks = {}
    chosen = {p: rule_value(criteria, p, criterion) for p in weights}
    pooled = [p for p in weights if chosen[p].pooled and rule_value(rates, p) is None]
    if pooled:
        mags = np.concatenate([np.abs(weights[p]).ravel() for p in pooled])
        n_drop = int(mags.size * rate)
        threshold = np.partition(mags, n_drop - 1)[n_drop - 1] if n_drop else -1.0
        for p in pooled:
            masks[p] = np.abs(weights[p]) > threshold
    for path, w in weights.items():
        if path not in masks:
            masks[path] = chosen[path].mask(w, rate_for(path, rate, rates), axes_of[path])
    return masks


def zero_masks(model) -> dict[str, np.ndarray]:
    """``{kernel path: weight != 0}`` of every Conv/Dense kernel: the masks a pruned (e.g. decoded)
    model holds, to keep them through more training.

    Example:
        >>> with hold_masks(decoded, zero_masks(decoded)):
        ...     decoded.fit(x_train, y_train)
    """
    return {k.path: np.asarray(k.numpy()) != 0 for k in prunable_kernels(model, skip_first=False)}


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
    """Zero the weights that ``masks`` drop (in place)."""
    by_path = {v.path: v for v in model.weights}
    for path, mask in masks.items():
        var = by_path[path]
        var.assign(np.where(mask, var.numpy(), 0).astype(var.dtype))


def prune(model, rate: float = 0.8, *, skip_first: bool = True, criterion="filter", rates=None,
          criteria=None) -> dict[str, np.ndarray]:
    """Prune every prunable kernel of ``model`` at ``rate``, in place (the seed's per-filter
    criterion by default). Returns the keep-masks keyed by variable path (``"fc1/kernel"``).
    """
    masks = compute_masks(model, rate, criterion=criterion, rates=rates, criteria=criteria, skip_first=skip_first)
    apply_masks(model, masks)
    return masks


class _MaskConstraint:
    """Keras constraint: multiply by a 0/1 mask held in a variable (so a schedule can change it
    between steps without retracing), after any earlier constraint."""

    def __init__(self, mask, inner=None):
        import keras
        self.mask = keras.Variable(mask.astype("float32"), trainable=False, name="prune_mask")
        self.inner = inner

    def set(self, mask):
        self.mask.assign(mask.astype("float32"))

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
        yield {path: by_path[path].constraint for path in masks}
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


def cubic_rate(step: int, total: int, final_rate: float) -> float:
    """Zhu & Gupta's gradual schedule: ``final * (1 - (1 - step/total)**3)``, reaching ``final`` at ``total``."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return final_rate * (1.0 - (1.0 - t) ** 3)


def gradual_pruning_callback(model, constraints: dict, final_rate: float, total_steps: int, updates: int,
                             **mask_options):
    """A Keras callback that raises the sparsity along :func:`cubic_rate` during ``fit``.

    It recomputes the masks ``updates`` times over the first 75% of ``total_steps`` batches
    (the last quarter fine-tunes at ``final_rate``) and writes them into the constraints made by
    :func:`hold_masks`, so pruned weights stay exactly 0 between updates.
    """
    import keras

    end = max(1, int(0.75 * total_steps))
    every = max(1, end // max(1, updates))

    class GradualPruning(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.rate = 0.0

        def _update(self, rate):
            masks = compute_masks(model, rate, **mask_options)
            for path, mask in masks.items():
                constraints[path].set(mask)
            apply_masks(model, masks)
            self.rate = rate

        def on_train_batch_begin(self, batch, logs=None):
            if self.step % every == 0 and self.step <= end:
                self._update(cubic_rate(self.step, end, final_rate))
            self.step += 1

        def on_train_end(self, logs=None):
            if self.rate != final_rate:
                self._update(final_rate)

    return GradualPruning()


def block_mask(kernel: np.ndarray, rate: float, block: tuple[int, int] = (16, 1),
               norm: str = "l2") -> np.ndarray:
    """Keep-mask that prunes whole ``block``-shaped groups of weights, per output unit.

    Rows are the kernel's input dimension (all leading axes flattened; for a Keras
    ``Dense`` kernel ``(in, out)`` that is ``in``), columns its output units (the
    last axis). ``block=(16, 1)`` groups 16 consecutive input rows of one output
    unit: exactly the 1x16 blocks of LiteRT's int8 sparse FULLY_CONNECTED kernel
    (its weights are stored ``(out, in)``); ``(4, 1)`` are the float kernel's 1x4
    blocks, and every (16, 1)-block mask is also a (4, 1)-block mask. In each
    column of blocks the ``floor(n_blocks * rate)`` blocks with the smallest
    magnitude (``norm="l2"``: root mean square, ``"l1"``: mean absolute value, so a
    short last block is scored fairly) are pruned; ties go by position. A
    dimension that is not a multiple of its block size ends in a short block
    (LiteRT then stores the tensor as plain CSR with a DENSIFY op, so prefer sizes
    that divide). LiteRT has no sparse conv kernel: on a conv kernel this only
    shapes the pattern.

    Example:
        >>> w = np.array([[0.1], [0.2], [3.0], [-4.0]])
        >>> block_mask(w, 0.5, block=(2, 1))[:, 0]
        array([False, False,  True,  True])
    """
    rate = check_rate(rate)
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim < 2:
        raise EdgecompError(f"cannot block-prune a {w.ndim}-d tensor", fix="prune kernels only")
    try:
        br, bc = (int(b) for b in block)
    except (TypeError, ValueError):
        raise EdgecompError(f"block must be two sizes (rows, cols), got {block!r}",
                            fix="pass e.g. block=(16, 1)") from None
    if br < 1 or bc < 1:
        raise EdgecompError(f"block sizes must be >= 1, got {block!r}", fix="pass e.g. block=(16, 1)")
    if norm not in ("l1", "l2"):
        raise EdgecompError(f"unknown block norm '{norm}'", fix="use 'l1' or 'l2'")
    flat = w.reshape(-1, w.shape[-1])
    rows, cols = flat.shape
    nrb, ncb = -(-rows // br), -(-cols // bc)
    padded = np.zeros((nrb * br, ncb * bc))
    real = np.zeros_like(padded)
    padded[:rows, :cols] = flat ** 2 if norm == "l2" else np.abs(flat)
    real[:rows, :cols] = 1.0
    total = padded.reshape(nrb, br, ncb, bc).sum(axis=(1, 3))
    count = real.reshape(nrb, br, ncb, bc).sum(axis=(1, 3))
    score = total / count  # mean square (l2) or mean |w| (l1): same order as the block norm
    keep = np.ones((nrb, ncb), dtype=bool)
    n_drop = int(nrb * rate)
    if n_drop:
        order = np.argsort(score, axis=0, kind="stable")[:n_drop]
        np.put_along_axis(keep, order, False, axis=0)
    full = np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:rows, :cols]
    return full.reshape(w.shape)
