"""Person segmentation from image/mask list files, letterboxed as the seed does.

The seed's layout (``utils/seg_data.py``): a list file per split
(``seg_train.txt``, ``seg_test.txt``) with one sample per line, an image path
and a mask path separated by a space, both relative to a dataset root::

    images/0001.jpg masks/0001.png

The mask's pixel values are class ids (0 = background, 1 = person). A mask
stored as 0/255 is read as 0/1. For an RGB mask the blue channel is used (the
seed reads masks with OpenCV, BGR, and takes channel 0); palette and grayscale
masks are used as they are.

Letterboxing (per sample, to ``size`` x ``size``): the image is resized so its
longer side is ``size`` (the shorter one ``int(side / scale)``), centred, and
padded with grey 128 (masks with 0 = background). Pixels become
``x / 127.5 - 1`` in [-1, 1]. Differences from the seed: images are RGB (the
seed's OpenCV arrays are BGR) and masks are resized with nearest-neighbour
(the seed's bilinear resize of a 0/1 mask rounds to the same classes except
along edges). Labels are ``(N, size, size)`` int64 class maps.

Where the files are: ``data_dir`` is the root the list's paths are relative to
(absolute paths are used as they are); ``train_list`` / ``test_list`` default
to ``seg_train.txt`` / ``seg_test.txt`` in ``data_dir`` or ``data_dir/data``
(the seed's ``./data/``). ``$EDGECOMP_DATA/person_seg`` is the default root.

Example:
    >>> from edgecomp.data import load_dataset
    >>> ds = load_dataset("person_seg", data_dir="~/datasets", size=256, n_train=2000)  # doctest: +SKIP
    >>> ds.x_train.shape, ds.y_train.shape, ds.task  # doctest: +SKIP
    ((2000, 256, 256, 3), (2000, 256, 256), 'segmentation')
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.errors import EdgecompError, first_line

__all__ = ["letterbox", "load_person_seg", "read_list", "read_pair"]

_FIX = "give a list file of 'image_path mask_path' lines (--train-list/--test-list) and the root (--data-dir)"


def read_list(path: str | os.PathLike, root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of a list file; relative paths are joined to ``root``.

    Blank lines are skipped; a line needs at least two space-separated fields
    (the first is the image, the last the mask, as in the seed).

    Example:
        >>> read_list("data/seg_test.txt", "datasets")[0]  # doctest: +SKIP
        (PosixPath('datasets/images/0001.jpg'), PosixPath('datasets/masks/0001.png'))
    """
    path, root = Path(path), Path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgecompError(f"list file {path} does not exist", fix=_FIX) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgecompError(f"cannot read list file {path}: {exc}", fix=_FIX) from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise EdgecompError(f"{path.name} line {number}: expected 'image_path mask_path', got {line.strip()!r}",
                                fix=_FIX)
        pairs.append((root / fields[0], root / fields[-1]))
    if not pairs:
        raise EdgecompError(f"list file {path} has no samples", fix=_FIX)
    return pairs


def letterbox(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``image`` (H, W, 3 uint8) and ``mask`` (H, W) to fit ``size`` x ``size``, centred and padded.

    Example:
        >>> im, m = letterbox(np.zeros((10, 20, 3), np.uint8), np.ones((10, 20), np.uint8), 8)
        >>> im.shape, m.shape, int(im[0, 0, 0]), int(m[0, 0]), int(m[4, 4])
        ((8, 8, 3), (8, 8), 128, 0, 1)
    """
    from PIL import Image

    h, w = image.shape[:2]
    if mask.shape[:2] != (h, w):
        raise EdgecompError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {w}x{h}", fix=_FIX)
    if h >= w:
        new_h, new_w = size, max(1, int(w / (h / size)))
    else:
        new_h, new_w = max(1, int(h / (w / size))), size
    img = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.NEAREST))
    out_img = np.full((size, size, 3), 128, np.uint8)
    out_lab = np.zeros((size, size), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out_img[top:top + new_h, left:left + new_w] = img
    out_lab[top:top + new_h, left:left + new_w] = lab
    return out_img, out_lab


def _open(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise EdgecompError(f"{what} {path} does not exist", fix=_FIX) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise EdgecompError(f"cannot read {what} {path}: {first_line(exc, default='not an image')}",
                            fix="check the file (a truncated or non-image file?)") from None


def read_pair(image_path: Path, mask_path: Path, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One letterboxed sample: float32 ``(size, size, 3)`` in [-1, 1] and uint8 class ids ``(size, size)``."""
    image = np.asarray(_open(image_path, "image").convert("RGB"))
    m = _open(mask_path, "mask")
    if m.mode in ("RGB", "RGBA"):
        mask = np.asarray(m.convert("RGB"))[..., 2]  # blue: the seed's channel 0 of a BGR array
    elif m.mode in ("P", "L", "1"):
        mask = np.asarray(m.convert("L") if m.mode == "1" else m)
        if m.mode == "1":
            mask = (mask > 0).astype(np.uint8)
    else:
        mask = np.asarray(m.convert("L"))
    mask = np.asarray(mask, dtype=np.uint8)
    values = np.unique(mask)
    if num_classes == 2 and set(values.tolist()) <= {0, 255}:
        mask = (mask > 0).astype(np.uint8)
    elif values.max() >= num_classes:
        raise EdgecompError(f"mask {mask_path.name} holds value {int(values.max())}, not a class id in [0, {num_classes})",
                            fix="store masks as class ids (0 = background, 1 = person), or 0/255")
    img, lab = letterbox(image, mask, size)
    return img.astype(np.float32) / 127.5 - 1.0, lab


def _read_split(list_file: Path, root: Path, size: int, num_classes: int, limit: int | None):
    pairs = read_list(list_file, root)[:limit]
    x = np.empty((len(pairs), size, size, 3), np.float32)
    y = np.empty((len(pairs), size, size), np.int64)
    for i, (image_path, mask_path) in enumerate(pairs):
        x[i], y[i] = read_pair(image_path, mask_path, size, num_classes)
    return x, y


def _find_list(root: Path, name: str) -> Path:
    for folder in (root, root / "data"):
        if (folder / name).is_file():
            return folder / name
    raise EdgecompError(f"no {name} in {root} or {root / 'data'}", fix=_FIX)


@register_dataset("person_seg", "seg")
def load_person_seg(data_dir: str | os.PathLike | None = None, train_list: str | os.PathLike | None = None,
                    test_list: str | os.PathLike | None = None, size: int = 256, num_classes: int = 2,
                    n_train: int | None = None, n_test: int | None = None, **_) -> Dataset:
    """Person segmentation from list files; ``n_train``/``n_test`` read only the first samples.

    Memory: 256x256 float32 images take 768 KB each, so the seed's 12,706 training
    images need about 10 GB; pass ``n_train`` (or a smaller ``size``) on small machines.

    Example:
        >>> load_person_seg("~/datasets", size=64, n_train=8, n_test=4).input_shape  # doctest: +SKIP
        (64, 64, 3)
    """
    if data_dir is None:
        if not os.environ.get("EDGECOMP_DATA"):
            raise EdgecompError("no person segmentation data given", fix="pass --data-dir (the dataset root) or set EDGECOMP_DATA")
        data_dir = Path(os.environ["EDGECOMP_DATA"]) / "person_seg"
    root = Path(data_dir).expanduser()
    size, num_classes = int(size), int(num_classes)
    if size < 1 or num_classes < 2:
        raise EdgecompError(f"person_seg size={size}, num_classes={num_classes} are invalid",
                            fix="use size >= 1 (e.g. 256) and num_classes >= 2")
    train_file = Path(train_list).expanduser() if train_list else _find_list(root, "seg_train.txt")
    test_file = Path(test_list).expanduser() if test_list else _find_list(root, "seg_test.txt")
    x_train, y_train = _read_split(train_file, root, size, num_classes, n_train)
    x_test, y_test = _read_split(test_file, root, size, num_classes, n_test)
    return Dataset("person_seg", x_train, y_train, x_test, y_test, num_classes, str(root), task="segmentation")
