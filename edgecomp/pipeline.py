"""``compress(model, data)``: prune -> fine-tune with masks held -> quantize -> store.

    >>> result = compress(model, dataset, rate=0.8)                    # the seed's method
    >>> result = compress(model, dataset, rate=0.9, method="deep",     # Deep Compression
    ...                   schedule="iterative:3", bits="conv=8,dense=5")
    >>> result.save("vgg.ecz")
    >>> small = result.decode()           # the Keras model the container restores

``method="seed"`` stores the kept weights as linear int8 values with uint8 relative
indices. ``method="deep"`` adds k-means weight sharing with fine-tuned centroids and
entropy-coded centroid indices and index gaps (:mod:`edgecomp.codec`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgecomp import codec, pruning, store, train
from edgecomp.errors import EdgecompError
from edgecomp.io import write_bytes

METHODS = ("seed", "deep")
#: What each coding method's streams hold, for the per-stream report.
STREAM_NAMES = {"raw": ("values",), "seed": ("gaps", "values"), "deep": ("codebook", "gaps", "indices")}
BITS = {"raw": 32, "seed": 8}


@dataclasses.dataclass
class CompressedModel:
    """A pruned (and, for ``deep``, weight-shared) model, its masks, container bytes and report."""

    model: object
    masks: dict[str, np.ndarray]
    container: bytes
    report: list[dict]
    settings: dict
    history: list[dict] = dataclasses.field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r["params"] for r in self.report)

    @property
    def nonzeros(self) -> int:
        return sum(r["nonzeros"] for r in self.report)

    @property
    def bytes(self) -> int:
        return len(self.container)

    def save(self, path) -> int:
        """Write the container atomically; returns its size in bytes."""
        write_bytes(path, self.container)
        return len(self.container)

    def decode(self):
        """The Keras model rebuilt from the container (what a device would get)."""
        return store.decode_model(self.container)


def _xy(data):
    if data is None:
        return None, None
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train
    x, y = data
    return x, y


def _report(model, container: bytes, masks) -> list[dict]:
    weights = store.model_weights(model)
    rows = []
    for rec in codec.tensor_records(container):
        w = weights[rec.name]
        method = codec.METHOD_NAMES[rec.method]
        names = STREAM_NAMES.get(method, ())
        rows.append({"name": rec.name, "shape": list(rec.shape), "params": rec.size,
                     "nonzeros": int(np.count_nonzero(w)), "pruned": rec.name in masks,
                     "sparsity": float(1 - np.count_nonzero(w) / max(1, w.size)),
                     "method": method, "bits": int(rec.params[0]) if method == "deep" else BITS.get(method),
                     "bytes": rec.stream_bytes,
                     "streams": {n: len(s) for n, s in zip(names, rec.streams)}})
    return rows


def _prune_and_fine_tune(model, x, y, *, rate, criterion, layer_rates, schedule, fine_tune_epochs,
                         batch_size, skip_first, seed, verbose, history, checkpoints, lr_schedule="constant"):
    kind, steps = pruning.parse_schedule(schedule)
    opts = dict(criterion=criterion, rates=layer_rates, skip_first=skip_first)
    fit = x is not None and fine_tune_epochs > 0
    if checkpoints is not None and checkpoints.done("pruned"):
        history.extend(checkpoints.info("pruned")["history"])
        return {k: v.astype(bool) for k, v in checkpoints.load("pruned", model).items()}
    if kind == "gradual" and fit:
        masks = {k: np.ones(v.shape, bool) for k, v in
                 ((k.path, k) for k in pruning.prunable_kernels(model, skip_first=skip_first))}
        total = fine_tune_epochs * int(np.ceil(len(x) / batch_size))
        with pruning.hold_masks(model, masks) as constraints:
            cb = pruning.gradual_pruning_callback(model, constraints, rate, total, steps, **opts)
            h = train.fit(model, x, y, epochs=fine_tune_epochs, batch_size=batch_size, seed=seed + 1,
                          verbose=verbose, callbacks=[cb], lr_schedule=lr_schedule)
            history.append({"stage": "gradual", "rate": rate, **{k: v[-1] for k, v in h.items()}})
        masks = pruning.compute_masks(model, rate, **opts)
        if checkpoints is not None:
            checkpoints.save("pruned", model, masks, info={"history": history})
        return masks
    rates = [rate * (i + 1) / steps for i in range(steps)] if kind == "iterative" else [rate]
    masks = {}
    # Resume: the last finished step's checkpoint holds everything the earlier ones did.
    done = [i for i in range(1, len(rates) + 1) if checkpoints is not None and checkpoints.done(f"prune-{i}")]
    last = max(done, default=0)
    if last:
        history.extend(checkpoints.info(f"prune-{i}") for i in range(1, last + 1))
        masks = {k: v.astype(bool) for k, v in checkpoints.load(f"prune-{last}", model).items()}
    for i, r in enumerate(rates, 1):
        stage = f"prune-{i}"
        if i <= last:
            continue
        step_rates = {k: v * i / len(rates) for k, v in (layer_rates or {}).items()} if kind == "iterative" else layer_rates
        masks = pruning.prune(model, r, **{**opts, "rates": step_rates})
        if fit:
            with pruning.hold_masks(model, masks):
                h = train.fit(model, x, y, epochs=fine_tune_epochs, batch_size=batch_size, seed=seed + i,
                              verbose=verbose, lr_schedule=lr_schedule)
            history.append({"stage": stage, "rate": r, **{k: v[-1] for k, v in h.items()}})
        if checkpoints is not None:
            checkpoints.save(stage, model, masks, info=history[-1] if fit else {"stage": stage, "rate": r})
    return masks


def compress(model, data=None, *, rate: float = 0.8, method: str = "seed", criterion: str = "filter",
             layer_rates: dict[str, float] | None = None, schedule: str = "oneshot",
             fine_tune_epochs: int = 1, bits="conv=8,dense=5", init: str = "linear",
             centroid_epochs: int = 1, index_bits: int | None = None, coder: str = "auto",
             batch_size: int = 64, lr_schedule: str = "constant", skip_first: bool = True, seed: int = 0,
             verbose: int = 1, info: dict | None = None, checkpoints=None) -> CompressedModel:
    """Compress ``model`` in place and return a :class:`CompressedModel`.

    ``data`` is a :class:`~edgecomp.data.Dataset` or an ``(x, y)`` pair for fine-tuning; with
    ``data=None`` or zero epochs the model is pruned (and shared) only.

    Pruning: ``criterion`` (``filter``/``layer``/``global``), ``layer_rates`` (glob -> rate),
    ``schedule`` (``oneshot``, ``iterative[:steps]`` with ``fine_tune_epochs`` per step, or
    ``gradual[:updates]`` over ``fine_tune_epochs``), ``skip_first`` (first layer dense),
    ``lr_schedule`` of each fine-tuning run (``constant`` or ``cosine``, see :func:`edgecomp.train.fit`).
    Deep: ``bits`` per layer kind or glob (``"conv=8,dense=5"``), k-means ``init``,
    ``centroid_epochs`` of centroid fine-tuning, ``index_bits`` for the relative index
    (None: the codec's default), and the entropy ``coder``.

    ``checkpoints`` (an :class:`edgecomp.checkpoint.Checkpoints`) saves each finished stage
    (every pruning step, the trained centroids) and skips the stages it already holds.
    """
    rate = pruning.check_rate(rate)
    if method not in METHODS:
        raise EdgecompError(f"unknown compression method '{method}'", fix=f"use one of: {', '.join(METHODS)}")
    for name, value in (("fine-tune epochs", fine_tune_epochs), ("centroid epochs", centroid_epochs)):
        if value < 0:
            raise EdgecompError(f"{name} must be >= 0, got {value}", fix="pass 0 or more")
    if lr_schedule not in train.LR_SCHEDULES:
        raise EdgecompError(f"unknown learning-rate schedule '{lr_schedule}'",
                            fix=f"use one of: {', '.join(train.LR_SCHEDULES)}")
    if not pruning.prunable_kernels(model, skip_first=skip_first):
        raise EdgecompError("the model has no prunable Conv/Dense kernels",
                            fix="compress a model with Conv or Dense layers")
    x, y = _xy(data)
    history: list[dict] = []
    masks = _prune_and_fine_tune(model, x, y, rate=rate, criterion=criterion, layer_rates=layer_rates,
                                 schedule=schedule, fine_tune_epochs=fine_tune_epochs, batch_size=batch_size,
                                 skip_first=skip_first, seed=seed, verbose=verbose, history=history,
                                 checkpoints=checkpoints, lr_schedule=lr_schedule)
    settings = {"method": method, "rate": rate, "criterion": criterion, "schedule": schedule,
                "layer_rates": layer_rates or {}, "fine_tune_epochs": fine_tune_epochs,
                **({"lr_schedule": lr_schedule} if lr_schedule != "constant" else {}),
                "skip_first": skip_first, "seed": seed}
    if method == "seed":
        specs = {name: "seed" for name in masks}
    else:
        from edgecomp import weight_sharing
        bits_map = weight_sharing.parse_bits(bits)
        if checkpoints is not None and checkpoints.done("centroids"):
            arrays = checkpoints.load("centroids", model)
            shared = {p: weight_sharing.SharedTensor(arrays[p + "|codebook"], arrays[p + "|assignment"], b)
                      for p, b in checkpoints.info("centroids")["bits"].items()}
            history.append(checkpoints.info("centroids")["history"])
        else:
            shared = weight_sharing.share_weights(model, bits=bits_map, init=init, seed=seed)
            entry = {"stage": "centroids", "epochs": 0}
            if x is not None and centroid_epochs > 0:
                losses = weight_sharing.fine_tune_centroids(model, shared, x, y, epochs=centroid_epochs,
                                                            batch_size=batch_size, seed=seed + 100,
                                                            verbose=verbose)
                entry = {"stage": "centroids", "epochs": centroid_epochs, "loss": losses[-1]}
            history.append(entry)
            if checkpoints is not None:
                arrays = {}
                for p, st in shared.items():
                    arrays[p + "|codebook"], arrays[p + "|assignment"] = st.codebook, st.assignment
                checkpoints.save("centroids", model, arrays,
                                 info={"bits": {p: st.bits for p, st in shared.items()}, "history": entry})
        specs = {name: codec.deep_spec(st, index_bits=index_bits, coder=coder) for name, st in shared.items()}
        settings.update({"bits": bits_map, "init": init, "centroid_epochs": centroid_epochs,
                         "index_bits": index_bits, "coder": coder})
    settings.update(info or {})
    container = store.encode_model(model, specs, info=settings)
    return CompressedModel(model, masks, container, _report(model, container, masks), settings, history)
