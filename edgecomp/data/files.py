"""Your own data: an ``.npz`` of arrays, or a folder of images per class.

    >>> ds = load_dataset("npz", data_dir="my_data.npz")        # x_train, y_train, x_test, y_test
    >>> ds = load_dataset("folder", data_dir="photos/", image_size=(64, 64), test_fraction=0.2)

``edgecomp`` commands take a path as ``--data`` too: a ``.npz`` file or a folder.
Preprocessing: ``scale`` multiplies the pixels (default 1/255 for images), then
``mean``/``std`` (per channel, comma-separated) normalise them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.errors import EdgecompError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def _floats(spec, name) -> np.ndarray | None:
    if spec is None:
        return None
    try:
        values = [float(v) for v in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise EdgecompError(f"--{name} must be comma-separated numbers, got {spec!r}",
                            fix=f"e.g. --{name} 0.5,0.5,0.5") from None
    return np.asarray(values, np.float32)


def preprocess(x: np.ndarray, scale: float | None = None, mean=None, std=None) -> np.ndarray:
    """``(x * scale - mean) / std`` per channel, as float32."""
    x = np.asarray(x, np.float32)
    if scale is not None:
        x = x * np.float32(scale)
    mean, std = _floats(mean, "mean"), _floats(std, "std")
    if mean is not None:
        x = x - mean
    if std is not None:
        if np.any(std == 0):
            raise EdgecompError("--std has a zero", fix="pass the per-channel standard deviations")
        x = x / std
    return x


@register_dataset("npz")
def load_npz(data_dir=None, scale: float | None = None, mean=None, std=None, **_) -> Dataset:
    """An ``.npz`` holding ``x_train``, ``y_train``, ``x_test``, ``y_test`` (no pickled objects)."""
    if data_dir is None:
        raise EdgecompError("the npz dataset needs a file", fix="pass --data my_data.npz")
    path = Path(data_dir)
    if not path.is_file():
        raise EdgecompError(f"data file {path} does not exist", fix="check the path")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise EdgecompError(f"{path.name} lacks arrays {', '.join(missing)}",
                                    fix="save x_train, y_train, x_test, y_test with numpy.savez")
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise EdgecompError(f"cannot read {path.name} as an .npz of arrays: {exc}",
                            fix="save plain numeric arrays with numpy.savez (object arrays are refused)") from None
    y_all = np.concatenate([arrays["y_train"].reshape(-1), arrays["y_test"].reshape(-1)])
    if y_all.size and (y_all.min() < 0 or not np.issubdtype(y_all.dtype, np.integer)):
        raise EdgecompError(f"{path.name}: labels must be non-negative integers", fix="store class ids")
    x_train = preprocess(arrays["x_train"], scale, mean, std)
    x_test = preprocess(arrays["x_test"], scale, mean, std)
    return Dataset("npz", x_train, arrays["y_train"].reshape(-1).astype(np.int64), x_test,
                   arrays["y_test"].reshape(-1).astype(np.int64), int(y_all.max()) + 1 if y_all.size else 0,
                   str(path))


@register_dataset("folder")
def load_folder(data_dir=None, image_size=(64, 64), test_fraction: float = 0.2, color: str = "rgb",
                scale: float | None = 1 / 255, mean=None, std=None, seed: int = 0, **_) -> Dataset:
    """A folder with one sub-folder of images per class (``image_dataset_from_directory`` layout).

    Images are resized to ``image_size``; a fixed, seeded ``test_fraction`` is held out.
    """
    from PIL import Image, UnidentifiedImageError

    if data_dir is None:
        raise EdgecompError("the folder dataset needs a folder", fix="pass --data path/to/images/")
    root = Path(data_dir)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise EdgecompError(f"{root} has {len(classes)} class folders", fix="put each class's images in its own sub-folder")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if color == "grayscale" else "RGB").resize(tuple(image_size)[::-1])
                    xs.append(np.asarray(im, np.float32).reshape(*image_size, -1))
            except (UnidentifiedImageError, OSError) as exc:
                raise EdgecompError(f"cannot read image {f}: {exc}", fix="remove or replace the file") from None
            ys.append(label)
    if not xs:
        raise EdgecompError(f"no images under {root}", fix=f"add {', '.join(sorted(IMAGE_SUFFIXES))} files")
    x, y = np.stack(xs), np.asarray(ys, np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, tr = order[:n_test], order[n_test:]
    x = preprocess(x, scale, mean, std)
    return Dataset("folder", x[tr], y[tr], x[test], y[test], len(classes), str(root))
