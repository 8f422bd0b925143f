"""``compress(model, data)``: prune -> fine-tune with masks held -> quantize -> store.

    >>> result = compress(model, dataset, rate=0.8)
    >>> result.save("vgg.ecz")
    >>> small = result.decode()           # the Keras model the container restores

The defaults are the seed's method: per-filter magnitude pruning with the first
conv left dense, masked fine-tuning, then linear int8 values with uint8 relative
indices (:mod:`edgecomp.codec`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgecomp import codec, pruning, store, train
from edgecomp.errors import EdgecompError
from edgecomp.io import write_bytes

METHODS = ("seed",)


@dataclasses.dataclass
class CompressedModel:
    """A pruned, fine-tuned model, its masks, its container bytes and a per-tensor report."""

    model: object
    masks: dict[str, np.ndarray]
    container: bytes
    report: list[dict]
    settings: dict

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
        rows.append({"name": rec.name, "shape": list(rec.shape), "params": rec.size,
                     "nonzeros": int(np.count_nonzero(w)), "pruned": rec.name in masks,
                     "sparsity": float(1 - np.count_nonzero(w) / max(1, w.size)),
                     "method": codec.METHOD_NAMES[rec.method], "bytes": rec.stream_bytes})
    return rows


def compress(model, data=None, *, rate: float = 0.8, method: str = "seed", fine_tune_epochs: int = 1,
             batch_size: int = 64, skip_first: bool = True, seed: int = 0, verbose: int = 1,
             info: dict | None = None) -> CompressedModel:
    """Compress ``model`` in place the seed's way and return a :class:`CompressedModel`.

    ``data`` is a :class:`~edgecomp.data.Dataset` or an ``(x, y)`` pair for the masked
    fine-tuning; with ``data=None`` or ``fine_tune_epochs=0`` the model is pruned only.
    """
    rate = pruning.check_rate(rate)
    if method not in METHODS:
        raise EdgecompError(f"unknown compression method '{method}'", fix=f"use one of: {', '.join(METHODS)}")
    if fine_tune_epochs < 0:
        raise EdgecompError(f"fine-tune epochs must be >= 0, got {fine_tune_epochs}", fix="pass 0 or more")
    masks = pruning.prune(model, rate, skip_first=skip_first)
    if not masks:
        raise EdgecompError("the model has no prunable Conv/Dense kernels",
                            fix="compress a model with Conv or Dense layers")
    x, y = _xy(data)
    if x is not None and fine_tune_epochs > 0:
        with pruning.hold_masks(model, masks):
            train.fit(model, x, y, epochs=fine_tune_epochs, batch_size=batch_size, seed=seed, verbose=verbose)
    settings = {"method": method, "rate": rate, "fine_tune_epochs": fine_tune_epochs,
                "skip_first": skip_first, "seed": seed, **(info or {})}
    container = store.encode_model(model, {name: method for name in masks}, info=settings)
    return CompressedModel(model, masks, container, _report(model, container, masks), settings)
