"""Offline stand-ins for the seed's segmentation, point-cloud and CIFAR-like data.

``synthetic_segmentation``: images of 1-3 bright shapes (ellipses, rectangles,
triangles) on a darker textured background, scaled like ``person_seg`` (to
[-1, 1]); the mask is 1 on the shapes (or, with ``num_classes=4``, the shape's
kind: 1 ellipse, 2 rectangle, 3 triangle). ``synthetic_pointclouds``: clouds of
points sampled on the surface of primitive solids (sphere, cube, cylinder,
cone, torus, square pyramid, ellipsoid, disc), one class per solid, randomly
scaled a little and rotated about the up axis, centred and scaled into the
unit sphere as ModelNet40's are, plus slight noise. ``synthetic_patterns``: 32x32
colour images of sinusoidal gratings, one class per (orientation, wavelength)
pair, at a random phase, contrast and tint: the class does not depend on where
anything is, so nets that end in global average pooling (ResNet, DenseNet,
Inception) can learn it (``synthetic_images`` encodes the class as a position).

Both are deterministic for a given ``seed`` and small enough for tests.

Example:
    >>> from edgecomp.data import load_dataset
    >>> seg = load_dataset("synthetic_segmentation", n_train=8, n_test=4, size=32)
    >>> seg.x_train.shape, seg.y_train.shape, seg.task
    ((8, 32, 32, 3), (8, 32, 32), 'segmentation')
    >>> pc = load_dataset("synthetic_pointclouds", n_train=8, n_test=4, num_points=64)
    >>> pc.x_train.shape, pc.num_classes
    ((8, 64, 3), 8)
"""

from __future__ import annotations

import numpy as np

from edgecomp.data.base import Dataset, register_dataset
from edgecomp.errors import EdgecompError

__all__ = ["SOLIDS", "make_segmentation", "make_pointclouds", "make_patterns", "sample_solid",
           "load_synthetic_segmentation", "load_synthetic_pointclouds", "load_synthetic_patterns"]

SOLIDS = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "ellipsoid", "disc")


def _int(dataset: str, name: str, value, minimum: int, maximum: int | None = None) -> int:
    whole = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)) or \
        (isinstance(value, str) and value.strip().isdigit())
    if not whole or int(value) < minimum or (maximum is not None and int(value) > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise EdgecompError(f"{dataset} option {name}={value!r} is invalid", fix=f"use an integer >= {minimum}{upper}")
    return int(value)


# -- segmentation ----------------------------------------------------------------

def make_segmentation(n: int, size: int, rng: np.random.Generator, num_classes: int = 2
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 images ``(size, size, 3)`` in [-1, 1] and int64 masks ``(size, size)``.

    Example:
        >>> x, y = make_segmentation(2, 16, np.random.default_rng(0))
        >>> x.shape, y.shape, sorted(np.unique(y).tolist())
        ((2, 16, 16, 3), (2, 16, 16), [0, 1])
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        # Background: a dark colour with a gentle gradient and noise.
        base = rng.uniform(0.05, 0.4, 3)
        slope = rng.uniform(-0.1, 0.1, 2)
        img = base + (slope[0] * yy / size + slope[1] * xx / size)[..., None]
        img = img + rng.normal(0.0, 0.04, (size, size, 3))
        for _ in range(int(rng.integers(1, 4))):
            kind = int(rng.integers(0, 3))
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            ry, rx = rng.uniform(0.1, 0.25, 2) * size
            if kind == 0:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            elif kind == 1:
                inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:  # an upright triangle: apex at the top, base at the bottom
                t = (yy - (cy - ry)) / (2 * ry)
                inside = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= rx * t)
            colour = rng.uniform(0.6, 1.0, 3)
            img[inside] = colour + rng.normal(0.0, 0.04, (int(inside.sum()), 3))
            masks[i][inside] = 1 if num_classes == 2 else kind + 1
        images[i] = np.clip(img, 0.0, 1.0) * 2.0 - 1.0
    return images, masks


@register_dataset("synthetic_segmentation", "synthetic_seg")
def load_synthetic_segmentation(data_dir=None, n_train: int = 256, n_test: int = 64, size: int = 64,
                                num_classes: int = 2, seed: int = 0, **_) -> Dataset:
    """Shapes-on-background segmentation; ``num_classes`` 2 (shape vs background) or 4 (per kind).

    Example:
        >>> load_synthetic_segmentation(n_train=4, n_test=2, size=32).input_shape
        (32, 32, 3)
    """
    name = "synthetic_segmentation"
    n_train, n_test = _int(name, "n_train", n_train, 1), _int(name, "n_test", n_test, 1)
    size, seed = _int(name, "size", size, 8), _int(name, "seed", seed, 0)
    num_classes = _int(name, "num_classes", num_classes, 2, 4)
    if num_classes == 3:
        raise EdgecompError(f"{name} option num_classes=3 is invalid", fix="use 2 (shape vs background) or 4 (per kind)")
    rng = np.random.default_rng(seed)
    x_train, y_train = make_segmentation(n_train, size, rng, num_classes)
    x_test, y_test = make_segmentation(n_test, size, rng, num_classes)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, "synthetic", task="segmentation")


# -- point clouds ----------------------------------------------------------------

def _sphere(n, rng):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(n, rng):
    p = rng.uniform(-1, 1, (n, 3))
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = rng.choice([-1.0, 1.0], n)
    return p


def _cylinder(n, rng):
    # Side area 2*pi*r*h = 4*pi (r=1, h=2); caps 2*pi: a third of the points on the caps.
    theta = rng.uniform(0, 2 * np.pi, n)
    y = rng.uniform(-1, 1, n)
    r = np.ones(n)
    cap = rng.random(n) < 1 / 3
    y[cap] = rng.choice([-1.0, 1.0], int(cap.sum()))
    r[cap] = np.sqrt(rng.random(int(cap.sum())))
    return np.stack([r * np.cos(theta), y, r * np.sin(theta)], axis=1)


def _cone(n, rng):
    # Apex at y=1, base of radius 1 at y=-1; side area pi*sqrt(5), base pi.
    theta = rng.uniform(0, 2 * np.pi, n)
    base = rng.random(n) < 1 / (1 + np.sqrt(5))
    t = np.sqrt(rng.random(n))           # area-uniform along the side
    r = np.where(base, np.sqrt(rng.random(n)), t)
    y = np.where(base, -1.0, 1.0 - 2.0 * t)
    return np.stack([r * np.cos(theta), y, r * np.sin(theta)], axis=1)


def _torus(n, rng, major=0.7, minor=0.3):
    u = rng.uniform(0, 2 * np.pi, n)
    # Rejection-free approximation of area-uniform v: weight by (major + minor cos v).
    v = rng.uniform(0, 2 * np.pi, 4 * n)
    keep = rng.random(4 * n) < (major + minor * np.cos(v)) / (major + minor)
    v = np.resize(v[keep], n)
    ring = major + minor * np.cos(v)
    return np.stack([ring * np.cos(u), minor * np.sin(v), ring * np.sin(u)], axis=1)


def _pyramid(n, rng):
    # Square base at y=-1 (side 2), apex (0, 1, 0); the base gets its area's share.
    base_area, side_area = 4.0, 4 * np.sqrt(5)
    base = rng.random(n) < base_area / (base_area + side_area)
    p = np.empty((n, 3))
    p[base] = np.stack([rng.uniform(-1, 1, int(base.sum())), -np.ones(int(base.sum())),
                        rng.uniform(-1, 1, int(base.sum()))], axis=1)
    k = int((~base).sum())
    a, b = rng.random(k), rng.random(k)
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    corners = np.array([[-1, -1, -1], [1, -1, -1], [1, -1, 1], [-1, -1, 1]], float)
    side = rng.integers(0, 4, k)
    c0, c1 = corners[side], corners[(side + 1) % 4]
    apex = np.array([0.0, 1.0, 0.0])
    p[~base] = c0 + a[:, None] * (c1 - c0) + b[:, None] * (apex - c0)
    return p


def _ellipsoid(n, rng):
    return _sphere(n, rng) * np.array([1.0, 0.45, 0.45])


def _disc(n, rng):
    theta = rng.uniform(0, 2 * np.pi, n)
    r = np.sqrt(rng.random(n))
    return np.stack([r * np.cos(theta), rng.normal(0, 0.01, n), r * np.sin(theta)], axis=1)


_SAMPLERS = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
             "pyramid": _pyramid, "ellipsoid": _ellipsoid, "disc": _disc}


def sample_solid(kind: str, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``num_points`` float32 points on the surface of one solid, scaled into the unit sphere.

    Example:
        >>> p = sample_solid("torus", 100, np.random.default_rng(0))
        >>> p.shape, bool(np.linalg.norm(p, axis=1).max() <= 1.0 + 1e-6)
        ((100, 3), True)
    """
    if kind not in _SAMPLERS:
        raise EdgecompError(f"unknown solid '{kind}'", fix=f"use one of: {', '.join(SOLIDS)}")
    p = _SAMPLERS[kind](num_points, rng)
    p = p * rng.uniform(0.85, 1.15, 3)                     # a little anisotropic scaling
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    p = p @ np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    p = p + rng.normal(0.0, 0.005, p.shape)
    p = p - p.mean(axis=0)
    return (p / np.linalg.norm(p, axis=1).max()).astype(np.float32)


def make_pointclouds(n: int, num_points: int, num_classes: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clouds ``(num_points, 3)`` of the first ``num_classes`` solids and their int64 labels (balanced).

    Example:
        >>> x, y = make_pointclouds(6, 32, 3, np.random.default_rng(0))
        >>> x.shape, sorted(set(y.tolist()))
        ((6, 32, 3), [0, 1, 2])
    """
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    x = np.stack([sample_solid(SOLIDS[k], num_points, rng) for k in labels]) if n else \
        np.zeros((0, num_points, 3), np.float32)
    return x, labels


@register_dataset("synthetic_pointclouds", "synthetic_pc")
def load_synthetic_pointclouds(data_dir=None, n_train: int = 512, n_test: int = 128, num_points: int = 2048,
                               num_classes: int = len(SOLIDS), seed: int = 0, **_) -> Dataset:
    """Primitive solids as point clouds, one class per solid (up to 8).

    Example:
        >>> load_synthetic_pointclouds(n_train=8, n_test=4, num_points=32, num_classes=4).num_classes
        4
    """
    name = "synthetic_pointclouds"
    n_train, n_test = _int(name, "n_train", n_train, 1), _int(name, "n_test", n_test, 1)
    num_points, seed = _int(name, "num_points", num_points, 1), _int(name, "seed", seed, 0)
    num_classes = _int(name, "num_classes", num_classes, 2, len(SOLIDS))
    rng = np.random.default_rng(seed)
    x_train, y_train = make_pointclouds(n_train, num_points, num_classes, rng)
    x_test, y_test = make_pointclouds(n_test, num_points, num_classes, rng)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, "synthetic")


# -- position-free image classes ---------------------------------------------------

def make_patterns(n: int, shape: tuple[int, int, int], num_classes: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 grating images in [-1, 1] and int64 labels (balanced).

    Class ``k`` has orientation ``(k // 2) * pi / ceil(num_classes / 2)`` and a
    wavelength of 4 (even ``k``) or 8 pixels (odd ``k``).

    Example:
        >>> x, y = make_patterns(6, (16, 16, 3), 4, np.random.default_rng(0))
        >>> x.shape, sorted(set(y.tolist()))
        ((6, 16, 16, 3), [0, 1, 2, 3])
    """
    height, width, channels = shape
    angles = -(-num_classes // 2)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    theta = (labels // 2) * np.pi / angles + rng.normal(0.0, 0.03, n)
    wavelength = np.where(labels % 2 == 0, 4.0, 8.0) * rng.uniform(0.95, 1.05, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    proj = (np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy)
    wave = np.sin(2 * np.pi * proj / wavelength[:, None, None] + phase[:, None, None])
    contrast = rng.uniform(0.4, 0.9, (n, 1, 1, 1))
    tint = rng.uniform(-0.3, 0.3, (n, 1, 1, channels))
    images = contrast * wave[..., None] * rng.uniform(0.7, 1.0, (n, 1, 1, channels)) + tint
    images = images + rng.normal(0.0, 0.1, images.shape)
    return np.clip(images, -1.0, 1.0).astype(np.float32), labels


@register_dataset("synthetic_patterns")
def load_synthetic_patterns(data_dir=None, n_train: int = 512, n_test: int = 256, shape=(32, 32, 3),
                            num_classes: int = 10, seed: int = 0, **_) -> Dataset:
    """Oriented gratings, one class per (orientation, wavelength); a CIFAR-shaped stand-in.

    Example:
        >>> load_synthetic_patterns(n_train=4, n_test=2).input_shape
        (32, 32, 3)
    """
    name = "synthetic_patterns"
    n_train, n_test = _int(name, "n_train", n_train, 1), _int(name, "n_test", n_test, 1)
    num_classes, seed = _int(name, "num_classes", num_classes, 2, 16), _int(name, "seed", seed, 0)
    if isinstance(shape, str) or len(shape) != 3:
        raise EdgecompError(f"{name} option shape={shape!r} is invalid", fix="give (height, width, channels)")
    dims = (_int(name, "shape height", shape[0], 8), _int(name, "shape width", shape[1], 8),
            _int(name, "shape channels", shape[2], 1))
    rng = np.random.default_rng(seed)
    x_train, y_train = make_patterns(n_train, dims, num_classes, rng)
    x_test, y_test = make_patterns(n_test, dims, num_classes, rng)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, "synthetic")
