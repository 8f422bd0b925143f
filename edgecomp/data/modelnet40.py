"""ModelNet40 point clouds from the standard HDF5 files, and the seed's augmentation.

The files are those of ``modelnet40_ply_hdf5_2048`` (PointNet's release):
``ply_data_train0.h5`` ... ``ply_data_train4.h5`` and ``ply_data_test0.h5``,
``ply_data_test1.h5`` (or one merged ``ply_data_train.h5`` / ``ply_data_test.h5``
as the seed reads them). Each holds ``data``, float ``(N, 2048, 3)`` points, and
``label``, integer ``(N, 1)`` class ids in ``[0, 40)``. Files are read in name
order (``train0`` .. ``train4``), with h5py.

Folders searched: ``data_dir`` (strict), else ``$EDGECOMP_DATA``; in each, the
folder itself, then ``modelnet40_ply_hdf5_2048/`` and ``ModelNet40/`` (the
seed's folder). There is no download (the original host is gone).

:func:`augment_point_clouds` is the seed's training augmentation: each cloud
is, with probability 1/2 each, rotated by a random angle about the up (y) axis
and jittered per point by Gaussian noise (sigma 0.01, clipped to +-0.05).
:func:`augmented_batches` wraps it as a Keras ``PyDataset`` that ``fit`` takes.

Example:
    >>> from edgecomp.data import load_dataset
    >>> ds = load_dataset("modelnet40", data_dir="~/data")  # doctest: +SKIP
    >>> ds.x_train.shape, ds.num_classes  # doctest: +SKIP
    ((9840, 2048, 3), 40)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.errors import EdgecompError, first_line

__all__ = ["NUM_CLASSES", "augment_point_clouds", "augmented_batches", "load_modelnet40", "read_h5_split"]

NUM_CLASSES = 40
SUBFOLDERS = ("", "modelnet40_ply_hdf5_2048", "ModelNet40")
_FIX = ("put modelnet40_ply_hdf5_2048/ (ply_data_train*.h5, ply_data_test*.h5) in a folder "
        "and pass --data-dir / set EDGECOMP_DATA")


def _split_files(folder: Path, split: str) -> list[Path]:
    """``ply_data_<split>*.h5`` in ``folder``, in numeric order (train0, train1, ..., train10)."""
    pattern = re.compile(rf"ply_data_{split}(\d*)\.h5$")
    hits = [(p, pattern.match(p.name)) for p in folder.glob(f"ply_data_{split}*.h5")]
    hits = [(int(m.group(1) or -1), p) for p, m in hits if m and p.is_file()]
    return [p for _, p in sorted(hits)]


def _locate(data_dir) -> Path:
    roots = [Path(data_dir).expanduser()] if data_dir is not None else (
        [Path(os.environ["EDGECOMP_DATA"]).expanduser()] if os.environ.get("EDGECOMP_DATA") else [])
    for root in roots:
        for sub in SUBFOLDERS:
            folder = root / sub if sub else root
            if folder.is_dir() and _split_files(folder, "train") and _split_files(folder, "test"):
                return folder
    where = roots[0] if roots else "no folder (neither --data-dir nor EDGECOMP_DATA is set)"
    raise EdgecompError(f"no ModelNet40 HDF5 files in {where}", fix=_FIX)


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("data", "label") if k not in fh]
            if missing:
                raise EdgecompError(f"{path.name} has no '{missing[0]}' dataset (keys: {', '.join(sorted(fh)) or 'none'})",
                                    fix=_FIX)
            if not isinstance(fh["data"], h5py.Dataset) or not isinstance(fh["label"], h5py.Dataset):
                raise EdgecompError(f"{path.name}: 'data' and 'label' must be datasets, not groups", fix=_FIX)
            data, label = fh["data"][()], fh["label"][()]
    except EdgecompError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise EdgecompError(f"cannot read {path.name} as HDF5 ({first_line(exc)})",
                            fix=_FIX) from None
    data, label = np.asarray(data), np.asarray(label)
    if data.ndim != 3 or data.shape[-1] != 3 or data.dtype.kind != "f":
        raise EdgecompError(f"{path.name}: 'data' is {data.dtype} {data.shape}, expected float (N, points, 3)", fix=_FIX)
    if label.dtype.kind not in "iu" or label.ndim not in (1, 2) or (label.ndim == 2 and label.shape[1] != 1):
        raise EdgecompError(f"{path.name}: 'label' is {label.dtype} {label.shape}, expected integer (N, 1)", fix=_FIX)
    label = label.reshape(-1).astype(np.int64)
    if len(label) != len(data):
        raise EdgecompError(f"{path.name}: {len(data)} clouds but {len(label)} labels", fix=_FIX)
    if len(label) and (label.min() < 0 or label.max() >= NUM_CLASSES):
        bad = int(label.min()) if label.min() < 0 else int(label.max())
        raise EdgecompError(f"{path.name}: label {bad} is out of range for {NUM_CLASSES} classes", fix=_FIX)
    if not np.isfinite(data).all():
        raise EdgecompError(f"{path.name}: 'data' contains NaN or Inf", fix=_FIX)
    return data.astype(np.float32, copy=False), label


def read_h5_split(folder: str | os.PathLike, split: str, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every ``ply_data_<split>*.h5`` in ``folder``; keep the first ``num_points`` points.

    Example:
        >>> x, y = read_h5_split("modelnet40_ply_hdf5_2048", "test")  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        ((2468, 2048, 3), (2468,))
    """
    folder = Path(folder)
    files = _split_files(folder, split)
    if not files:
        raise EdgecompError(f"no ply_data_{split}*.h5 in {folder}", fix=_FIX)
    parts = [_read_h5(p) for p in files]
    points = {p[0].shape[1] for p in parts}
    if len(points) > 1:
        raise EdgecompError(f"{folder}: the {split} files hold different point counts {sorted(points)}", fix=_FIX)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if num_points is not None:
        n = int(num_points)
        if not 1 <= n <= x.shape[1]:
            raise EdgecompError(f"num_points={num_points} is out of range for clouds of {x.shape[1]} points",
                                fix=f"use 1..{x.shape[1]}")
        x = np.ascontiguousarray(x[:, :n])
    return x, y


@register_dataset("modelnet40", "m40")
def load_modelnet40(data_dir: str | os.PathLike | None = None, num_points: int | None = None, **_) -> Dataset:
    """ModelNet40: 9840 / 2468 clouds of 2048 (x, y, z) points, 40 classes.

    ``num_points`` keeps the first n points of each cloud (the files' order is random).

    Example:
        >>> load_modelnet40("~/data", num_points=1024).input_shape  # doctest: +SKIP
        (1024, 3)
    """
    folder = _locate(data_dir)
    x_train, y_train = read_h5_split(folder, "train", num_points)
    x_test, y_test = read_h5_split(folder, "test", num_points)
    return Dataset("modelnet40", x_train, y_train, x_test, y_test, NUM_CLASSES, str(folder))


def rotation_about_up(angle: float) -> np.ndarray:
    """The seed's 3x3 rotation about the y axis, applied as ``points @ R``.

    Example:
        >>> rotation_about_up(0.0)
        array([[ 1.,  0.,  0.],
               [ 0.,  1.,  0.],
               [-0.,  0.,  1.]])
    """
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def augment_point_clouds(points: np.ndarray, rng: np.random.Generator, rotate_p: float = 0.5,
                         jitter_p: float = 0.5, sigma: float = 0.01, clip: float = 0.05) -> np.ndarray:
    """The seed's augmentation of a batch ``(N, points, 3)``: a new float32 array.

    Each cloud is rotated about the up axis by a uniform random angle with
    probability ``rotate_p``, and jittered (each coordinate plus
    ``clip(N(0, sigma), -clip, clip)``) with probability ``jitter_p``.

    Example:
        >>> x = np.zeros((2, 4, 3), np.float32)
        >>> augment_point_clouds(x, np.random.default_rng(0)).shape
        (2, 4, 3)
    """
    x = np.array(points, dtype=np.float32, copy=True)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise EdgecompError(f"point clouds must be (N, points, 3), got {x.shape}", fix="pass a batch of clouds")
    if clip <= 0 or sigma < 0:
        raise EdgecompError(f"jitter needs sigma >= 0 and clip > 0, got {sigma}, {clip}", fix="use the defaults")
    n = len(x)
    rotate = rng.random(n) < rotate_p
    jitter = rng.random(n) < jitter_p
    angles = rng.uniform(0.0, 2 * np.pi, n)
    for i in np.flatnonzero(rotate):
        x[i] = x[i] @ rotation_about_up(angles[i]).astype(np.float32)
    if jitter.any():
        noise = np.clip(sigma * rng.standard_normal(x[jitter].shape), -clip, clip).astype(np.float32)
        x[jitter] += noise
    return x


def augmented_batches(x: np.ndarray, y: np.ndarray, batch_size: int = 32, seed: int = 0, **augment):
    """A Keras ``PyDataset`` of shuffled, freshly augmented ``(x, y)`` batches for ``model.fit``.

    Every epoch reshuffles and re-augments (deterministically from ``seed``);
    ``augment`` goes to :func:`augment_point_clouds`. The last partial batch is kept.

    Example:
        >>> batches = augmented_batches(ds.x_train, ds.y_train, batch_size=32)  # doctest: +SKIP
        >>> model.fit(batches, epochs=2)  # doctest: +SKIP
    """
    import keras

    x, y = np.asarray(x, np.float32), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise EdgecompError(f"augmented_batches needs matching non-empty x and y, got {len(x)} and {len(y)}",
                            fix="pass the training split")
    if int(batch_size) < 1:
        raise EdgecompError(f"batch_size must be >= 1, got {batch_size}", fix="pass e.g. 32")

    class _Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._order()

        def _order(self):
            self.rng = np.random.default_rng([int(seed), self.epoch])
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return -(-len(x) // int(batch_size))

        def __getitem__(self, index):
            idx = np.sort(self.order[index * int(batch_size):(index + 1) * int(batch_size)])
            rng = np.random.default_rng([int(seed), self.epoch, int(index)])
            return augment_point_clouds(x[idx], rng, **augment), y[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._order()

    return _Batches()
