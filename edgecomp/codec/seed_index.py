"""The seed's sparse storage: per kept weight a uint8 gap to the previous kept weight
and an int8 value, with filler entries (gap 255, value 0) for gaps over 255.

Weights are laid out output-filter first (Keras kernel axes reordered to
``(out, in, *spatial)``), then flattened. The first gap counts from position 0.
Vectorised numpy: no per-weight Python loop.
"""

from __future__ import annotations

import numpy as np

MAX_GAP = 255


def filter_major_axes(ndim: int) -> tuple[int, ...]:
    """Axis order that puts the output axis (last) first, then the input axis, then the rest."""
    if ndim < 2:
        return tuple(range(ndim))
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def to_filter_major(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, filter_major_axes(w.ndim))


def from_filter_major(t: np.ndarray) -> np.ndarray:
    return np.transpose(t, np.argsort(filter_major_axes(t.ndim)))


def encode_gaps(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat positions -> (uint8 gaps with fillers, index of each real entry).

    Example:
        >>> encode_gaps(np.array([3, 600]))
        (array([  3, 255, 255,  87], dtype=uint8), array([0, 3]))
    """
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=0)
    fillers = np.maximum(gaps - 1, 0) // MAX_GAP
    slots = np.arange(len(positions)) + np.cumsum(fillers)
    out = np.full(len(positions) + int(fillers.sum()), MAX_GAP, dtype=np.uint8)
    out[slots] = (gaps - fillers * MAX_GAP).astype(np.uint8)
    return out, slots


def decode_positions(gaps: np.ndarray) -> np.ndarray:
    """uint8 gaps (fillers included) -> absolute flat position of every entry."""
    return np.cumsum(gaps, dtype=np.int64)


def seed_storage_bytes(w: np.ndarray) -> int:
    """Bytes the seed's format needs for the nonzeros of ``w``: 2 per entry, fillers included."""
    positions = np.flatnonzero(to_filter_major(np.asarray(w)))
    gaps, _ = encode_gaps(positions)
    return 2 * len(gaps)
