"""A small, deterministic image classification set for tests and demos without data files.

Class ``k`` is a bright Gaussian blob centred in cell ``k`` of a
``ceil(sqrt(num_classes))``-square grid over the image, with random sub-cell
jitter, brightness and pixel noise, so a tiny CNN separates the classes within
a couple of epochs. The same options and ``seed`` always give the same arrays.

Example:
    >>> from edgecomp.data import load_dataset
    >>> ds = load_dataset("synthetic_images", n_train=64, n_test=32)
    >>> ds.x_train.shape, ds.y_train.dtype, ds.source
    ((64, 28, 28, 1), dtype('int64'), 'synthetic')
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.errors import EdgecompError

__all__ = ["load_synthetic_images", "make_blob_images"]


def _int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (digit strings from the CLI are accepted)."""
    whole = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)) or \
        (isinstance(value, str) and value.strip().isdigit())
    if not whole or int(value) < minimum:
        raise EdgecompError(f"synthetic_images option {name}={value!r} is invalid",
                            fix=f"use an integer >= {minimum}")
    return int(value)


def make_blob_images(n: int, shape: tuple[int, int, int], num_classes: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 images in [0, 1] of ``shape`` (H, W, C) and their int64 labels (balanced).

    Example:
        >>> x, y = make_blob_images(20, (16, 16, 3), 4, np.random.default_rng(0))
        >>> x.shape, sorted(set(y.tolist()))
        ((20, 16, 16, 3), [0, 1, 2, 3])
    """
    height, width, channels = shape
    grid = math.ceil(math.sqrt(num_classes))
    cell_h, cell_w = height / grid, width / grid
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    centre_y = (labels // grid + 0.5) * cell_h + rng.uniform(-0.15, 0.15, n) * cell_h
    centre_x = (labels % grid + 0.5) * cell_w + rng.uniform(-0.15, 0.15, n) * cell_w
    sigma = max(0.8, 0.3 * min(cell_h, cell_w))
    yy = np.arange(height, dtype=np.float32)[None, :, None]
    xx = np.arange(width, dtype=np.float32)[None, None, :]
    dist2 = (yy - centre_y[:, None, None]) ** 2 + (xx - centre_x[:, None, None]) ** 2
    blobs = np.exp(-dist2 / (2 * sigma ** 2)) * rng.uniform(0.7, 1.0, (n, 1, 1))
    images = blobs[..., None] + rng.normal(0.0, 0.08, (n, height, width, channels))
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels


@register_dataset("synthetic_images")
def load_synthetic_images(data_dir=None, n_train: int = 512, n_test: int = 256,
                          shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
                          seed: int = 0, **_) -> Dataset:
    """The synthetic blob set; ``data_dir`` is ignored.

    Example:
        >>> load_synthetic_images(shape=(32, 32, 3), num_classes=4).input_shape
        (32, 32, 3)
    """
    n_train, n_test = _int("n_train", n_train, 1), _int("n_test", n_test, 1)
    num_classes, seed = _int("num_classes", num_classes, 2), _int("seed", seed, 0)
    if isinstance(shape, str) or len(shape) != 3:
        raise EdgecompError(f"synthetic_images option shape={shape!r} is invalid",
                            fix="give (height, width, channels), e.g. (28, 28, 1)")
    dims = (_int("shape height", shape[0], 4), _int("shape width", shape[1], 4), _int("shape channels", shape[2], 1))
    grid = math.ceil(math.sqrt(num_classes))
    if min(dims[:2]) < 2 * grid:
        raise EdgecompError(f"synthetic_images shape {dims} is too small for {num_classes} classes",
                            fix=f"use height and width >= {2 * grid}")
    rng = np.random.default_rng(seed)
    x_train, y_train = make_blob_images(n_train, dims, num_classes, rng)
    x_test, y_test = make_blob_images(n_test, dims, num_classes, rng)
    return Dataset("synthetic_images", x_train, y_train, x_test, y_test, num_classes, "synthetic")
