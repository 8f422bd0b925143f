"""Weight sharing (Deep Compression, Han et al. 2015): k-means per layer, then fine-tuned centroids.

The kept (nonzero) weights of each kernel are clustered into ``2**bits`` centroids;
every weight is replaced by its centroid. Fine-tuning then trains the centroids
themselves: the kernel is ``gather(centroids, assignment)``, so the gradient of
each centroid is the sum of the gradients of its weights, the assignment stays
fixed, and pruned weights (a constant zero slot) stay exactly 0.

    >>> shared = share_weights(model, masks, bits={"conv": 8, "dense": 5})
    >>> fine_tune_centroids(model, shared, x_train, y_train, epochs=1)
    >>> shared["fc1/kernel"].codebook.shape
    (32,)

Numpy for the clustering; TensorFlow only inside :func:`fine_tune_centroids`.
"""

from __future__ import annotations

import contextlib

import dataclasses
import sys

import numpy as np

from edgecomp.errors import EdgecompError

INITS = ("linear", "density", "random")


@dataclasses.dataclass
class SharedTensor:
    """One weight-shared kernel: its codebook and, per weight, the centroid index (-1 = pruned)."""

    codebook: np.ndarray      # float32 (k,)
    assignment: np.ndarray    # int32, kernel-shaped; -1 marks a pruned (zero) weight
    bits: int

    def refresh(self, kernel: np.ndarray) -> None:
        """Read the codebook back from a kernel that kept this assignment (after training the
        centroids elsewhere, e.g. a resumed QAT run); a centroid no weight uses keeps its value."""
        kernel = np.asarray(kernel, np.float32).reshape(-1)
        flat = self.assignment.reshape(-1)
        used = flat >= 0
        first = np.full(len(self.codebook), -1)
        idx = np.flatnonzero(used)
        first[flat[idx[::-1]]] = idx[::-1]      # any member will do: all hold the centroid's value
        hit = first >= 0
        self.codebook = self.codebook.astype(np.float32).copy()
        self.codebook[hit] = kernel[first[hit]]

    def weights(self) -> np.ndarray:
        """The kernel the codebook and assignment describe (pruned weights exactly 0)."""
        table = np.append(self.codebook.astype(np.float32), np.float32(0))
        return table[self.assignment]            # index -1 picks the trailing zero


def _init_centroids(values: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if init == "linear":          # evenly spaced over [min, max]: the paper's best choice
        return np.linspace(lo, hi, k)
    if init == "density":         # evenly spaced in the CDF: quantiles
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    if init == "random":          # k weights drawn from the layer (Forgy)
        return np.sort(rng.choice(values, size=k, replace=len(values) < k))
    raise EdgecompError(f"unknown k-means initialisation '{init}'", fix=f"use one of: {', '.join(INITS)}")


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", iters: int = 30,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means in one dimension, vectorised: ``(centroids (k,), labels)``.

    Centroids stay sorted, so assignment is a binary search over the midpoints.
    Empty clusters keep their previous centroid. Deterministic for a given seed.

    Example:
        >>> c, lab = kmeans_1d(np.array([0., 0.1, 1., 1.1], np.float32), 2)
        >>> [round(float(v), 2) for v in c], lab.tolist()
        ([0.05, 1.05], [0, 0, 1, 1])
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int32)
    k = max(1, min(int(k), np.unique(v).size))
    c = np.sort(_init_centroids(v, k, init, np.random.default_rng(seed)).astype(np.float64))
    order = np.argsort(v, kind="stable")
    vs = v[order]
    csum = np.concatenate([[0.0], np.cumsum(vs)])
    for _ in range(iters):
        bounds = np.searchsorted(vs, (c[1:] + c[:-1]) / 2)
        edges = np.concatenate([[0], bounds, [len(vs)]])
        counts = np.diff(edges)
        sums = csum[edges[1:]] - csum[edges[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new = np.sort(new)
        if np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    labels_sorted = np.searchsorted(vs, (c[1:] + c[:-1]) / 2)
    edges = np.concatenate([[0], labels_sorted, [len(vs)]])
    lab_s = np.repeat(np.arange(k, dtype=np.int32), np.diff(edges))
    labels = np.empty_like(lab_s)
    labels[order] = lab_s
    return c.astype(np.float32), labels


def layer_kind(kernel_ndim: int) -> str:
    """``"dense"`` for 2-d kernels, ``"conv"`` for the rest (the paper's two bit widths)."""
    return "dense" if kernel_ndim == 2 else "conv"


def parse_bits(spec) -> dict[str, int]:
    """``"conv=8,dense=5"`` or ``{"conv": 8, "dense": 5}`` or ``5`` -> a pattern->bits dict.

    Keys are ``conv``, ``dense`` or globs of layer names or weight paths (``"fc1"``,
    ``"fc1/*"``; :mod:`edgecomp.match`); patterns win over kinds.
    """
    if isinstance(spec, int):
        out = {"conv": spec, "dense": spec}
    elif isinstance(spec, str):
        out = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, val = part.partition("=")
            if not sep or not val.strip().isdigit():
                raise EdgecompError(f"bad --bits entry {part!r}", fix="write e.g. --bits conv=8,dense=5")
            out[key.strip()] = int(val)
    else:
        out = dict(spec)
    for key, b in out.items():
        if not 1 <= int(b) <= 8:
            raise EdgecompError(f"weight-sharing bits for {key} must be in 1..8, got {b}",
                                fix="use e.g. --bits conv=8,dense=5")
    return {"conv": 8, "dense": 5, **{k: int(v) for k, v in out.items()}}


def bits_for(path: str, ndim: int, bits: dict[str, int]) -> int:
    """Bits for weight ``path``: the first glob rule that matches its layer name or path
    (:mod:`edgecomp.match`), else its kind's (``conv`` / ``dense``)."""
    from edgecomp.match import rule_value
    found = rule_value([(p, b) for p, b in bits.items() if p not in ("conv", "dense")], path)
    return bits[layer_kind(ndim)] if found is None else found


def share_tensor(w: np.ndarray, bits: int, init: str = "linear", seed: int = 0) -> SharedTensor:
    """Cluster the nonzero weights of ``w`` into at most ``2**bits`` centroids."""
    w = np.asarray(w, dtype=np.float32)
    keep = w != 0
    centroids, labels = kmeans_1d(w[keep], 2 ** bits, init=init, seed=seed)
    assignment = np.full(w.shape, -1, dtype=np.int32)
    assignment[keep] = labels
    return SharedTensor(centroids, assignment, bits)


def share_weights(model, kernels: list[str] | None = None, bits="conv=8,dense=5", init: str = "linear",
                  seed: int = 0) -> dict[str, SharedTensor]:
    """Weight-share the named kernels of ``model`` in place (default: every Conv/Dense kernel).

    Returns ``{path: SharedTensor}``; the model's kernels are set to the shared values.
    """
    from edgecomp.pruning import prunable_kernels

    if init not in INITS:
        raise EdgecompError(f"unknown k-means initialisation '{init}'", fix=f"use one of: {', '.join(INITS)}")
    bits = parse_bits(bits)
    by_path = {v.path: v for v in prunable_kernels(model, skip_first=False)}
    names = list(by_path) if kernels is None else list(kernels)
    shared = {}
    for path in names:
        var = by_path[path]
        w = var.numpy()
        st = share_tensor(w, bits_for(path, w.ndim, bits), init=init, seed=seed)
        var.assign(st.weights())
        shared[path] = st
    return shared


def fine_tune_centroids(model, shared: dict[str, SharedTensor], x, y, *, epochs: int = 1,
                        batch_size: int = 64, learning_rate: float = 1e-4, seed: int = 0,
                        verbose: int = 1, loss=None, title: str = "Centroid fine-tuning") -> list[float]:
    """Train the centroids (and every other trainable weight) with assignments fixed.

    Each shared kernel is computed as ``gather([centroids, 0], assignment)`` inside the
    forward pass (Keras 3 ``stateless_call``), so autodiff gives each centroid the sum of
    its weights' gradients. ``loss`` replaces the integer-label cross-entropy (e.g. a
    distillation loss, with ``y`` the packed targets); ``title`` heads each epoch's progress line.
    Returns the mean loss per epoch.
    """
    import keras
    import tensorflow as tf

    from edgecomp.train import reset_rng

    if epochs <= 0 or not shared:
        return []
    reset_rng(model, seed)
    trainable = list(model.trainable_variables)
    paths = [v.path for v in trainable]
    missing = sorted(set(shared) - set(paths))
    if missing:
        raise EdgecompError(f"shared kernels not trainable in the model: {', '.join(missing[:3])}",
                            fix="share kernels of this model")
    centroids = {p: keras.Variable(st.codebook.astype("float32"), name=p.replace("/", "_") + "_centroids")
                 for p, st in shared.items()}
    # -1 (pruned) points at the constant zero appended after the k centroids.
    index = {p: tf.constant(np.where(st.assignment < 0, len(st.codebook), st.assignment).astype("int32"))
             for p, st in shared.items()}
    others = [v for v in trainable if v.path not in shared]
    train_vars = list(centroids.values()) + others
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(train_vars)
    loss_fn = loss or keras.losses.SparseCategoricalCrossentropy()
    zero = tf.zeros([1], tf.float32)

    def kernel_values():
        return [tf.gather(tf.concat([centroids[p].value, zero], 0), index[p]) if p in shared else v.value
                for p, v in zip(paths, trainable)]

    from edgecomp import distribute
    timed = distribute.active()   # times the run; ``ses`` when it trains under a strategy
    ses = timed if timed is not None and timed.strategy is not None else None
    replicas = ses.replicas if ses else 1

    def replica_step(xb, yb, scale):
        with tf.GradientTape() as tape:
            non_trainable = [v.value for v in model.non_trainable_variables]
            pred, new_non_trainable = model.stateless_call(kernel_values(), non_trainable, xb, training=True)
            # a plain loss function gives one value per sample; ``scale`` (this replica's share of
            # the global batch) makes the optimizer's sum over replicas the global batch's mean
            loss = tf.reduce_mean(loss_fn(yb, pred)) * scale
        # gather's gradient is IndexedSlices (the per-weight gradients, one row each); densifying
        # sums the rows per centroid: the paper's rule.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, [v.value for v in train_vars])]
        optimizer.apply(grads, train_vars)
        for var, value in zip(model.non_trainable_variables, new_non_trainable):
            var.assign(value)
        return loss

    @tf.function
    def step(xb, yb):
        return replica_step(xb, yb, tf.constant(1.0))

    @tf.function
    def distributed_step(xs, ys, scales):
        losses = ses.strategy.run(replica_step, args=(xs, ys, scales))
        return ses.strategy.reduce("SUM", losses, axis=None)

    def run_step(xb, yb):
        if ses is None:
            return step(tf.constant(xb), tf.constant(yb))
        n = len(xb)
        parts = distribute.replica_slices(n, replicas)

        def part(ctx):   # each replica's rows of the global batch (its global id on a multi-worker cluster)
            a, b = parts[ctx.replica_id_in_sync_group]
            return tf.constant(xb[a:b]), tf.constant(yb[a:b]), tf.constant((b - a) / n, tf.float32)
        return distributed_step(*ses.strategy.experimental_distribute_values_from_function(part))

    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    history = []
    guard = (timed.training(model, samples=len(x), batch_size=batch_size, epochs=epochs, learning_rate=learning_rate,
                            title=title) if timed else contextlib.nullcontext())
    with guard:
        for epoch in range(epochs):
            order = rng.permutation(len(x))
            # a last batch smaller than the replica count would leave a replica empty: dropped
            n_steps = int(np.ceil(len(x) / batch_size)) - (0 < len(x) % batch_size < replicas)
            bar = keras.utils.Progbar(n_steps, verbose=verbose if sys.stdout.isatty() else (2 if verbose else 0))
            if verbose:
                print(f"{title} epoch {epoch + 1}/{epochs}", flush=True)
            losses = []
            for i in range(n_steps):
                sel = order[i * batch_size:(i + 1) * batch_size]
                losses.append(float(run_step(x[sel], y[sel])))
                bar.update(i + 1, [("loss", losses[-1])])
            history.append(float(np.mean(losses)))
    # Write the trained centroids back: codebooks and the model's kernels.
    for p, st in shared.items():
        st.codebook = centroids[p].numpy().astype(np.float32)
    by_path = {v.path: v for v in model.weights}
    for p, st in shared.items():
        by_path[p].assign(st.weights())
    return history
