"""The dataset record and the dataset registry.

Each loader is one module that registers itself with ``@register_dataset``.
``load_dataset("fashion_mnist")`` returns a :class:`Dataset` of float32 NHWC
images (or other arrays) and int64 labels.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np

from edgecomp.errors import EdgecompError

_REGISTRY: dict[str, Callable[..., "Dataset"]] = {}
_ALIASES: dict[str, str] = {}


@dataclasses.dataclass
class Dataset:
    """Train and test arrays of one task, ready for ``model.fit``.

    ``x_*`` are float32 arrays (NHWC for images), ``y_*`` int64 class indices
    (or per-pixel class maps for segmentation). ``source`` says where the data
    came from (a folder, or ``"synthetic"``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def take(self, train: int | None = None, test: int | None = None) -> "Dataset":
        """Return a copy limited to the first ``train`` / ``test`` samples (None keeps all)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train[:train], y_train=self.y_train[:train],
            x_test=self.x_test[:test], y_test=self.y_test[:test])

    def check(self) -> "Dataset":
        """Raise EdgecompError for empty splits, NaN/Inf or label/array mismatches."""
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) == 0:
                raise EdgecompError(f"dataset '{self.name}' has an empty {split} split",
                                    fix="check the data files or the slice sizes")
            if len(x) != len(y):
                raise EdgecompError(f"dataset '{self.name}' {split} split has {len(x)} inputs but {len(y)} labels",
                                    fix="check the data files")
            if not np.isfinite(x).all():
                raise EdgecompError(f"dataset '{self.name}' {split} split contains NaN or Inf values",
                                    fix="clean the data before compressing")
        return self


def register_dataset(name: str, *aliases: str):
    """Decorator: register ``fn(data_dir=None, **options) -> Dataset`` under ``name``.

    A name or alias registered again is taken by the new loader, with a warning.
    """

    def wrap(fn):
        taken = [n for n in (name, *aliases) if n in _REGISTRY or n in _ALIASES]
        if taken:
            warnings.warn(f"dataset name(s) {', '.join(taken)} registered already; "
                          f"{fn.__module__}.{fn.__qualname__} replaces them", UserWarning, stacklevel=2)
        _REGISTRY[name] = fn
        _ALIASES.pop(name, None)            # the name now means this loader, not an older alias
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return wrap


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, data_dir: str | None = None, **options) -> Dataset:
    """Load a registered dataset by name (or alias, e.g. ``c10`` for ``cifar10``).

    Example:
        >>> ds = load_dataset("fashion_mnist")
        >>> ds.input_shape, ds.num_classes
        ((28, 28, 1), 10)
    """
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY and (name.endswith(".npz") or "/" in name or name.startswith(".")):
        # a path: your own data (an .npz file, or a folder of images per class)
        key, data_dir = ("npz" if name.endswith(".npz") else "folder"), name
    if key not in _REGISTRY:
        raise EdgecompError(f"unknown dataset '{name}'",
                            fix=f"use one of: {', '.join(dataset_names())}")
    return _REGISTRY[key](data_dir=data_dir, **options).check()
