"""The model registry: ``build_model("vgg", input_shape, num_classes)``.

Each architecture is one module that registers a builder with ``@register_model``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from edgecomp.errors import EdgecompError, first_line

_REGISTRY: dict[str, Callable] = {}


def register_model(name: str):
    """Decorator: register ``fn(input_shape, num_classes, **options) -> keras.Model``.

    A name registered again is taken by the new builder, with a warning.
    """

    def wrap(fn):
        if name in _REGISTRY:
            warnings.warn(f"model '{name}' is registered already ({_qualname(_REGISTRY[name])}); "
                          f"{_qualname(fn)} replaces it", UserWarning, stacklevel=2)
        _REGISTRY[name] = fn
        return fn

    return wrap


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, input_shape, num_classes: int, **options):
    """Build a registered architecture for any input shape and class count.

    Example:
        >>> model = build_model("vgg", (28, 28, 1), 10)
        >>> model.count_params()
        1602442
    """
    if name not in _REGISTRY:
        raise EdgecompError(f"unknown model '{name}'", fix=f"use one of: {', '.join(model_names())}")
    if int(num_classes) < 2:
        raise EdgecompError(f"num_classes must be at least 2, got {num_classes}", fix="check the dataset")
    model = _REGISTRY[name](tuple(int(d) for d in input_shape), int(num_classes), **options)
    return model


def load_keras_model(path: str | os.PathLike, trust: bool = False):
    """Load a ``.keras`` file in Keras's safe mode (no code runs on load).

    A model that carries code (a Lambda layer) is refused unless ``trust=True``.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise EdgecompError(f"model file {path} does not exist", fix="check the path")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "lambda" in text:
            raise EdgecompError(f"{path.name} holds code (a Lambda layer) that would run on load",
                                fix="pass --trust-model only if you trust its author") from None
        raise EdgecompError(f"cannot load {path.name}: {first_line(exc)}",
                            fix="pass a .keras file saved by Keras 3") from None
    except (OSError, KeyError) as exc:
        raise EdgecompError(f"cannot read {path.name} as a Keras model: {exc}",
                            fix="pass a .keras file saved by Keras 3") from None
