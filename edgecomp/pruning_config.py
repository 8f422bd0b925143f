"""Pruning's config objects: schedules (when to prune) and criteria (which weights go).

Small frozen classes with ``get_config`` / ``from_config``, as tfmot's ``PruningSchedule``;
a string form (``"iterative:3"``, ``"global"``, ``"block:16x1"``) is parsed once by
:func:`schedule_from` / :func:`criterion_from` at the entry points.

    >>> schedule_from("iterative:3").step_rates(0.9)
    [0.3, 0.6, 0.9]
    >>> criterion_from("block:16x1")
    BlockMagnitude(block=(16, 1), norm='l2')
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from edgecomp.errors import EdgecompError


class Config:
    """Mixin for frozen dataclasses: ``get_config`` (JSON-ready) and ``from_config``.

    A subclass with a ``kind`` is polymorphic: its config carries ``{"kind": ...}`` and
    :func:`from_kind_config` picks the class back from its family's registry.
    """

    kind: ClassVar[str] = ""

    def get_config(self) -> dict:
        out = {"kind": self.kind} if self.kind else {}
        for f in dataclasses.fields(self):
            out[f.name] = to_config(getattr(self, f.name))
        return out

    @classmethod
    def from_config(cls, config: dict):
        config = {k: v for k, v in dict(config).items() if k != "kind"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise EdgecompError(f"{cls.__name__} has no setting(s) {', '.join(unknown)}",
                                fix=f"use: {', '.join(sorted(names))}")
        return cls(**config)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def to_config(value):
    if isinstance(value, Config):
        return value.get_config()
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                                  for v in value):
        return [[k, to_config(v)] for k, v in value]   # ordered rules: a list, since JSON writers may sort keys
    if isinstance(value, tuple):
        return [to_config(v) for v in value]
    return value


def from_kind_config(family: dict, config, what: str):
    if isinstance(config, Config):
        return config
    kind = dict(config).get("kind")
    if kind not in family:
        raise EdgecompError(f"unknown {what} {kind!r}", fix=f"use one of: {', '.join(family)}")
    return family[kind].from_config(config)


def whole_number(what: str, value, low: int = 0, example: str | None = None) -> int:
    """``value`` if it is a whole number >= ``low`` (not a bool), else a one-line EdgecompError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise EdgecompError(f"{what} must be a whole number >= {low}, got {value!r}",
                            fix=example or f"pass {low} or more")
    return int(value)


def rules(value, what: str, check) -> tuple:
    """Per-layer rules as an ordered tuple of ``(pattern, value)`` (from a dict or a list of pairs),
    each value checked by ``check``."""
    items = value.items() if isinstance(value, dict) else (value or ())
    if any(not isinstance(i, (tuple, list)) or len(i) != 2 for i in items if not isinstance(value, dict)):
        raise EdgecompError(f"bad {what} rules {value!r}", fix="pass {pattern: value} or [(pattern, value), ...]")
    out = []
    for pattern, v in items:
        if not isinstance(pattern, str) or not pattern:
            raise EdgecompError(f"bad {what} pattern {pattern!r}", fix="use a layer name, weight path or glob")
        out.append((pattern, check(v)))
    return tuple(out)


# --- schedules ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OneShot(Config):
    """Prune once to the final rate, then fine-tune."""

    kind: ClassVar[str] = "oneshot"

    def step_rates(self, rate: float) -> list[float]:
        return [rate]

    def __str__(self):
        return "oneshot"


@dataclasses.dataclass(frozen=True)
class Iterative(Config):
    """Prune in ``steps`` equal steps to the final rate, fine-tuning after each (Han et al.)."""

    steps: int = 3
    kind: ClassVar[str] = "iterative"

    def __post_init__(self):
        whole_number("iterative pruning's steps", self.steps, 1, "write e.g. iterative:3")

    def step_rates(self, rate: float) -> list[float]:
        return [rate * (i + 1) / self.steps for i in range(self.steps)]

    def __str__(self):
        return f"iterative:{self.steps}"


@dataclasses.dataclass(frozen=True)
class Gradual(Config):
    """Raise the sparsity along Zhu & Gupta's cubic curve in ``updates`` mask updates during fine-tuning."""

    updates: int = 10
    kind: ClassVar[str] = "gradual"

    def __post_init__(self):
        whole_number("gradual pruning's mask updates", self.updates, 1, "write e.g. gradual:10")

    def __str__(self):
        return f"gradual:{self.updates}"


SCHEDULES = {c.kind: c for c in (OneShot, Iterative, Gradual)}


def schedule_from(spec):
    """A schedule object from an object, its config dict, or ``oneshot`` / ``iterative[:N]`` / ``gradual[:N]``."""
    if isinstance(spec, (OneShot, Iterative, Gradual)):
        return spec
    if isinstance(spec, dict):
        return from_kind_config(SCHEDULES, spec, "pruning schedule")
    kind, _, steps = str(spec).partition(":")
    if kind not in SCHEDULES or (steps and not steps.isdigit()):
        raise EdgecompError(f"bad pruning schedule {spec!r}", fix="use oneshot, iterative[:STEPS] or gradual[:UPDATES]")
    if kind == "oneshot":
        if steps:
            raise EdgecompError(f"bad pruning schedule {spec!r}", fix="oneshot takes no steps; use iterative:STEPS")
        return OneShot()
    return SCHEDULES[kind](int(steps)) if steps else SCHEDULES[kind]()


# --- criteria ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Magnitude(Config):
    """Smallest |w| go: per output ``filter`` (the seed's), per ``layer``, or one ``global`` threshold."""

    scope: str = "filter"
    kind: ClassVar[str] = "magnitude"
    SCOPES: ClassVar[tuple] = ("filter", "layer", "global")

    def __post_init__(self):
        if self.scope not in self.SCOPES:
            raise EdgecompError(f"unknown pruning criterion '{self.scope}'",
                                fix=f"use one of: {', '.join(self.SCOPES)}, or block[:RxC]")

    @property
    def pooled(self) -> bool:
        """Whether the layers without a rule of their own share one threshold."""
        return self.scope == "global"

    def mask(self, w: np.ndarray, rate: float, axes) -> np.ndarray:
        from edgecomp.pruning import filter_mask, layer_mask
        return filter_mask(w, rate, axes) if self.scope == "filter" else layer_mask(w, rate)

    def __str__(self):
        return self.scope


@dataclasses.dataclass(frozen=True)
class BlockMagnitude(Config):
    """Whole ``block``-shaped groups go (:func:`edgecomp.pruning.block_mask`): ``(16, 1)`` are the
    blocks LiteRT's int8 sparse FULLY_CONNECTED runs without DENSIFY, ``(4, 1)`` the float ones."""

    block: tuple = (16, 1)
    norm: str = "l2"
    kind: ClassVar[str] = "block"
    pooled: ClassVar[bool] = False

    def __post_init__(self):
        try:
            block = tuple(int(b) for b in self.block)
        except (TypeError, ValueError):
            block = ()
        if len(block) != 2 or min(block) < 1:
            raise EdgecompError(f"block must be two sizes >= 1, got {self.block!r}", fix="write e.g. block:16x1")
        object.__setattr__(self, "block", block)
        if self.norm not in ("l1", "l2"):
            raise EdgecompError(f"unknown block norm '{self.norm}'", fix="use l1 or l2")

    def mask(self, w: np.ndarray, rate: float, axes) -> np.ndarray:
        from edgecomp.pruning import block_mask
        return block_mask(w, rate, self.block, self.norm)

    def __str__(self):
        return f"block:{self.block[0]}x{self.block[1]}"


CRITERIA = {"magnitude": Magnitude, "block": BlockMagnitude}


def criterion_from(spec):
    """A criterion from an object, its config, ``filter`` / ``layer`` / ``global`` or ``block[:RxC]``."""
    if isinstance(spec, (Magnitude, BlockMagnitude)):
        return spec
    if isinstance(spec, dict):
        return from_kind_config(CRITERIA, spec, "pruning criterion")
    kind, _, size = str(spec).partition(":")
    if kind == "block":
        rows, _, cols = size.partition("x")
        if size and not (rows.isdigit() and cols.isdigit()):
            raise EdgecompError(f"bad block criterion {spec!r}", fix="write e.g. block:16x1")
        return BlockMagnitude((int(rows), int(cols))) if size else BlockMagnitude()
    return Magnitude(str(spec))
