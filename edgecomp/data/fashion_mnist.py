"""Fashion-MNIST from its IDX files, plus a general IDX reader.

Folders searched, first hit wins: ``data_dir`` (strict: it must hold the
files), ``$EDGECOMP_DATA`` or ``$EDGECOMP_DATA/fashion-mnist``, Debian's
``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``);
else Keras's downloader fetches the same files as
``keras.datasets.fashion_mnist`` into ``~/.keras/datasets/fashion-mnist``.
Each file may be gzipped (``.gz``) or plain.

Example:
    >>> from edgecomp.data import load_dataset
    >>> ds = load_dataset("fmnist")  # doctest: +SKIP
    >>> ds.x_train.shape, ds.x_train.dtype, ds.num_classes  # doctest: +SKIP
    ((60000, 28, 28, 1), dtype('float32'), 10)
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.errors import EdgecompError

__all__ = ["read_idx", "find_fashion_mnist", "load_fashion_mnist"]

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
DOWNLOAD_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_FIX = ("install Debian's dataset-fashion-mnist, or put the IDX files in a folder "
        "and pass --data-dir / set EDGECOMP_DATA")

# IDX type code -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or plain) into an array of its stored shape.

    The header is two zero bytes, a type code (0x08 = ubyte, ...), the number of
    dimensions and one big-endian uint32 per dimension; the payload must be exactly
    ``prod(dims) * itemsize`` bytes. Anything else raises EdgecompError naming the file.

    Example:
        >>> read_idx("train-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
        (60000,)
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as exc:  # includes gzip.BadGzipFile and truncated gzip streams
        raise EdgecompError(f"cannot read IDX file {path}: {exc}", fix="re-download the dataset files") from None
    except (EOFError, zlib.error) as exc:
        raise EdgecompError(f"IDX file {path} is a corrupt gzip stream ({exc})",
                            fix="re-download the dataset files") from None

    def bad(what: str) -> EdgecompError:
        return EdgecompError(f"malformed IDX file {path}: {what}", fix="re-download the dataset files")

    if len(raw) < 4:
        raise bad(f"only {len(raw)} bytes, no 4-byte header")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] or raw[1] or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise bad(f"bad magic number 0x{magic:08x} (expected 0x000008NN: ubyte with NN dimensions)")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise bad(f"header declares {ndim} dimensions but the file ends after {len(raw)} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise bad(f"dims {dims} need {expected} data bytes but the file holds {len(raw) - header}"
                  + (" (truncated)" if len(raw) - header < expected else " (trailing bytes)"))
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (None if it has none of them; error if only some)."""
    found = {key: _file_in(folder, stem) for key, stem in FILES.items()}
    if not any(found.values()):
        return None
    missing = [FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise EdgecompError(f"Fashion-MNIST folder {folder} lacks {', '.join(missing)}[.gz]", fix=_FIX)
    return found  # type: ignore[return-value]


def _download() -> dict[str, Path]:
    try:
        import keras

        return {key: Path(keras.utils.get_file(stem + ".gz", origin=DOWNLOAD_BASE + stem + ".gz",
                                               cache_subdir=os.path.join("datasets", "fashion-mnist")))
                for key, stem in FILES.items()}
    except Exception as exc:  # no internet, proxy, disk full, ...: one clear message
        raise EdgecompError(f"Fashion-MNIST not found locally and the download failed ({exc})", fix=_FIX) from None


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate the four IDX files (see the module docstring for the search order).

    Example:
        >>> sorted(find_fashion_mnist("/usr/share/datasets/fashion-mnist"))  # doctest: +SKIP
        ['x_test', 'x_train', 'y_test', 'y_train']
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for folder in (root, root / "fashion-mnist"):
            if folder.is_dir() and (files := _complete(folder)):
                return files
        raise EdgecompError(f"no Fashion-MNIST IDX files in {root} (nor in {root / 'fashion-mnist'})",
                            fix="put train-images-idx3-ubyte[.gz] and the other three files there, "
                                "or leave --data-dir out to use the system copy or the downloader")
    candidates = []
    if os.environ.get("EDGECOMP_DATA"):
        env = Path(os.environ["EDGECOMP_DATA"])
        candidates += [env, env / "fashion-mnist"]
    candidates.append(Path(SYSTEM_DIR))
    for folder in candidates:
        if folder.is_dir() and (files := _complete(folder)):
            return files
    return _download()


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, H, W, 1) in [0, 1], without extra temporaries."""
    out = images.astype(np.float32)[..., None]
    out /= np.float32(255)
    return out


@register_dataset("fashion_mnist", "fmnist")
def load_fashion_mnist(data_dir: str | os.PathLike | None = None, **_) -> Dataset:
    """Fashion-MNIST: x float32 in [0, 1] shaped (N, 28, 28, 1), y int64 in 0..9.

    Example:
        >>> load_fashion_mnist("/usr/share/datasets/fashion-mnist").x_test.shape  # doctest: +SKIP
        (10000, 28, 28, 1)
    """
    files = find_fashion_mnist(data_dir)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise EdgecompError(f"{files['x_' + split]} holds {x.dtype} images of shape {x.shape[1:]}, "
                                "not 28x28 ubyte", fix=_FIX)
        if y.ndim != 1 or y.dtype != np.uint8 or len(y) != len(x):
            raise EdgecompError(f"{files['y_' + split]} holds {y.shape} {y.dtype} labels for {len(x)} images",
                                fix=_FIX)
        if len(y) and y.max() >= 10:
            raise EdgecompError(f"{files['y_' + split]} has label {int(y.max())}; Fashion-MNIST has 10 classes",
                                fix=_FIX)
    return Dataset(
        name="fashion_mnist",
        x_train=_to_unit_float(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=_to_unit_float(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
        source=str(files["x_train"].parent),
    )
