"""CIFAR-10 and CIFAR-100 from the official "python" or "binary" versions.

Folders searched: ``data_dir`` (strict: it must hold the data), else
``$EDGECOMP_DATA``; in each, ``cifar-10-batches-py`` / ``cifar-100-python``
(pickles, read by :mod:`edgecomp.data.safe_unpickle`, never by ``pickle``),
then ``cifar-10-batches-bin`` / ``cifar-100-binary``; the folder itself may
also hold the files directly. If neither is set, or ``$EDGECOMP_DATA`` lacks
them, Keras's downloader fetches and extracts the python tarball (shared cache
with ``keras.datasets``), which is read with the same safe reader.

Images are NHWC float32 (32, 32, 3), normalised per channel as
``(pixel - mean) / std`` on 0-255 values; labels are int64 (CIFAR-100: the
100 fine labels).

Example:
    >>> from edgecomp.data import load_dataset
    >>> ds = load_dataset("c10", data_dir="~/data")  # doctest: +SKIP
    >>> ds.x_train.shape, ds.num_classes  # doctest: +SKIP
    ((50000, 32, 32, 3), 10)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.data.safe_unpickle import safe_load
from edgecomp.errors import EdgecompError

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
           "load_cifar10", "load_cifar100", "normalise"]

CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)
CIFAR100_MEAN = (129.3, 124.1, 112.4)
CIFAR100_STD = (68.2, 65.4, 70.4)
_PIXELS = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    py_dir: str
    py_files: tuple[tuple[str, ...], tuple[str, ...]]   # (train, test)
    label_key: str
    bin_dir: str
    bin_files: tuple[tuple[str, ...], tuple[str, ...]]
    label_bytes: int     # bytes before the pixels in a binary record
    label_index: int     # which of those bytes is the class
    url: str
    keras_name: str
    sha256: str


_CIFAR10 = _Spec(
    "cifar10", 10, CIFAR10_MEAN, CIFAR10_STD,
    "cifar-10-batches-py", (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)), "labels",
    "cifar-10-batches-bin", (tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",)), 1, 0,
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py-target",
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
_CIFAR100 = _Spec(
    "cifar100", 100, CIFAR100_MEAN, CIFAR100_STD,
    "cifar-100-python", (("train",), ("test",)), "fine_labels",
    "cifar-100-binary", (("train.bin",), ("test.bin",)), 2, 1,
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python-target",
    "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7")


def _fix(spec: _Spec) -> str:
    return (f"put {spec.py_dir} (or {spec.bin_dir}) from {spec.url.rsplit('/', 1)[0]}/ in a folder "
            "and pass --data-dir / set EDGECOMP_DATA")


def normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 NHWC pixels -> float32 ``(x - mean) / std`` per channel.

    Example:
        >>> normalise(np.full((1, 1, 1, 3), 255, np.uint8), CIFAR10_MEAN, CIFAR10_STD).round(3)
        array([[[[2.059, 2.126, 2.115]]]], dtype=float32)
    """
    out = np.empty(images.shape, np.float32)
    np.subtract(images, np.asarray(mean, np.float32), out=out)
    out /= np.asarray(std, np.float32)
    return out


def _read_python_batch(path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load(path)

    def get(key: str):
        if isinstance(batch, dict):
            for k in (key, key.encode()):
                if k in batch:
                    return batch[k]
        raise EdgecompError(f"{path} has no '{key}' entry", fix=_fix(spec))

    data, labels = get("data"), get(spec.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % _PIXELS:
        raise EdgecompError(f"{path}: 'data' is not a uint8 array of 32x32x3 images", fix=_fix(spec))
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise EdgecompError(f"{path}: '{spec.label_key}' is not a list of integers", fix=_fix(spec)) from None
    return data.reshape(-1, _PIXELS), y


def _read_binary_batch(path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = spec.label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise EdgecompError(f"{path} has {raw.size} bytes, not a whole number of {record}-byte records "
                            "(truncated or not a CIFAR binary file)", fix=_fix(spec))
    raw = raw.reshape(-1, record)
    return raw[:, spec.label_bytes:], raw[:, spec.label_index].astype(np.int64)


def _has_all(folder: Path, names: tuple[str, ...], strict: bool) -> bool:
    """Whether ``folder`` holds every file; ``strict``: a partial set is an error, not a miss."""
    present = [(folder / n).is_file() for n in names]
    if strict and any(present) and not all(present):
        missing = [n for n, ok in zip(names, present) if not ok]
        raise EdgecompError(f"{folder} lacks {', '.join(missing)}", fix="re-extract the dataset archive")
    return all(present)


def _find_in(root: Path, spec: _Spec) -> tuple[Path, str] | None:
    for kind, sub, files in (("py", spec.py_dir, spec.py_files), ("bin", spec.bin_dir, spec.bin_files)):
        for folder, strict in ((root / sub, True), (root, False)):
            if folder.is_dir() and _has_all(folder, files[0] + files[1], strict):
                return folder, kind
    return None


def _download(spec: _Spec) -> Path:
    try:
        import keras

        got = Path(keras.utils.get_file(fname=spec.keras_name, origin=spec.url, extract=True,
                                        file_hash=spec.sha256))
    except Exception as exc:  # no internet, bad hash, disk full, ...
        raise EdgecompError(f"{spec.name} not found locally and the download failed ({exc})",
                            fix=_fix(spec)) from None
    for base in (got, got.parent):
        for folder, dirs, _files in os.walk(base):
            if spec.py_dir in dirs:
                return Path(folder) / spec.py_dir
    raise EdgecompError(f"the downloaded {spec.name} archive has no {spec.py_dir} folder under {got}",
                        fix=_fix(spec))


def _locate(spec: _Spec, data_dir: str | os.PathLike | None) -> tuple[Path, str]:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if (hit := _find_in(root, spec)) is None:
            raise EdgecompError(f"no {spec.name} data in {root} (looked for {spec.py_dir} and {spec.bin_dir})",
                                fix=_fix(spec))
        return hit
    if os.environ.get("EDGECOMP_DATA") and (hit := _find_in(Path(os.environ["EDGECOMP_DATA"]), spec)):
        return hit
    return _download(spec), "py"


def _load(spec: _Spec, data_dir: str | os.PathLike | None) -> Dataset:
    folder, kind = _locate(spec, data_dir)
    reader = _read_python_batch if kind == "py" else _read_binary_batch
    files = spec.py_files if kind == "py" else spec.bin_files
    splits = []
    for names in files:
        parts = [reader(folder / name, spec) for name in names]
        x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([p[1] for p in parts])
        if len(x) != len(y):
            raise EdgecompError(f"{folder}: {len(x)} images but {len(y)} labels", fix=_fix(spec))
        if len(y) and (y.min() < 0 or y.max() >= spec.num_classes):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise EdgecompError(f"{folder}: label {bad} out of range for {spec.num_classes} classes",
                                fix=_fix(spec))
        splits.append((normalise(x, spec.mean, spec.std), y))
    (x_train, y_train), (x_test, y_test) = splits
    return Dataset(spec.name, x_train, y_train, x_test, y_test, spec.num_classes, str(folder))


@register_dataset("cifar10", "c10")
def load_cifar10(data_dir: str | os.PathLike | None = None, **_) -> Dataset:
    """CIFAR-10: 50000/10000 normalised 32x32x3 images, 10 classes.

    Example:
        >>> load_cifar10("~/data").x_test.shape  # doctest: +SKIP
        (10000, 32, 32, 3)
    """
    return _load(_CIFAR10, data_dir)


@register_dataset("cifar100", "c100")
def load_cifar100(data_dir: str | os.PathLike | None = None, **_) -> Dataset:
    """CIFAR-100 with its fine labels: 50000/10000 normalised 32x32x3 images, 100 classes.

    Example:
        >>> load_cifar100("~/data").num_classes  # doctest: +SKIP
        100
    """
    return _load(_CIFAR100, data_dir)
