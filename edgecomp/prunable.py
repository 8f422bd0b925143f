"""The prunable-layer registry: which layer classes edgecomp prunes, and which weights of them.

A layer is prunable when its class, or one of its base classes, is registered: a subclass of
``keras.layers.Conv2D`` is pruned as a Conv2D is, unless it is registered itself (the most
specific class wins). Keras's own kinds are built in; a custom layer is one call away:

    >>> from edgecomp.prunable import prunable_spec, register_prunable
    >>> register_prunable(MyLayer, {"kernel": (-1,)})
    >>> prunable_spec(MyLayer())
    {'kernel': (-1,)}

Registering a class (or name) a second time replaces its entry and warns.
"""

from __future__ import annotations

import warnings

from edgecomp.errors import EdgecompError

#: Keras's own prunable layer kinds: class name -> {weight attribute: axes that index one output filter}.
_KERAS_KINDS: dict[str, dict[str, tuple[int, ...]]] = {
    "Dense": {"kernel": (-1,)},
    "EinsumDense": {"kernel": (-1,)},
    "Conv1D": {"kernel": (-1,)},
    "Conv2D": {"kernel": (-1,)},
    "Conv3D": {"kernel": (-1,)},
    "Conv1DTranspose": {"kernel": (-2,)},        # (k, out, in)
    "Conv2DTranspose": {"kernel": (-2,)},        # (h, w, out, in)
    "Conv3DTranspose": {"kernel": (-2,)},
    "DepthwiseConv1D": {"kernel": (-2, -1)},
    "DepthwiseConv2D": {"kernel": (-2, -1)},     # (h, w, in, multiplier): one filter per pair
    "SeparableConv1D": {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)},
    "SeparableConv2D": {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)},
    "Embedding": {"embeddings": (0,)},           # one token's vector per filter
}
#: The names of Keras's prunable layer classes (their subclasses are prunable too).
PRUNABLE_LAYERS = tuple(_KERAS_KINDS)

#: The prunable-layer registry: layer class -> {weight attribute: axes that index one output
#: filter}. A layer is prunable when its class or one of its base classes is here, the most
#: specific first (:func:`prunable_spec`). A key may also be a class name (a string, the older
#: form), which matches a class of that name. Keras's kinds are added on first use, so importing
#: this module does not import Keras. Add a kind (a custom layer) with :func:`register_prunable`.
PRUNABLE: dict[type | str, dict[str, tuple[int, ...]]] = {}
_keras_kinds_added = False

#: Layers that hold weights edgecomp leaves dense on purpose (matched by class name, subclasses too).
_NOT_PRUNED = ("BatchNormalization", "LayerNormalization", "GroupNormalization", "Normalization")


def _registry() -> dict:
    """:data:`PRUNABLE`, with Keras's own kinds in it."""
    global _keras_kinds_added
    if not _keras_kinds_added:
        import keras

        for name, weights in _KERAS_KINDS.items():
            PRUNABLE.setdefault(getattr(keras.layers, name), dict(weights))
        _keras_kinds_added = True
    return PRUNABLE


def register_prunable(layer_class, weights: dict[str, tuple[int, ...]] | None = None) -> None:
    """Let edgecomp prune (and weight-share) a custom layer's weights, and its subclasses'.

    ``layer_class`` is a layer class, or (the older form) a class name. ``weights`` maps
    attribute names to the axes that index one output filter (default ``{"kernel": (-1,)}``,
    as for Dense and Conv). Registering a class (or name) again replaces its weights and warns.

    Example:
        >>> register_prunable(MyConv, {"kernel": (-1,)})
    """
    registry = _registry()
    key = layer_class
    if isinstance(layer_class, str):   # a registered class of that name is that class
        key = next((k for k in registry if isinstance(k, type) and k.__name__ == layer_class), layer_class)
    elif not isinstance(layer_class, type):
        raise EdgecompError(f"register_prunable takes a layer class or its name, not {layer_class!r}",
                            fix="pass the class, e.g. register_prunable(MyConv, {'kernel': (-1,)})")
    if key in registry:
        name = key if isinstance(key, str) else f"{key.__module__}.{key.__qualname__}"
        warnings.warn(f"prunable layer {name} is registered already ({registry[key]}); "
                      f"the new weights replace it", UserWarning, stacklevel=2)
    registry[key] = dict(weights or {"kernel": (-1,)})


def prunable_spec(layer) -> dict[str, tuple[int, ...]] | None:
    """``{weight attribute: filter axes}`` of ``layer``'s most specific registered class, else None.

    Example:
        >>> prunable_spec(keras.layers.Conv2D(8, 3))
        {'kernel': (-1,)}
    """
    registry = _registry()
    for cls in type(layer).__mro__:
        if cls in registry:
            return registry[cls]
        if cls.__name__ in registry:
            return registry[cls.__name__]
    return None


def kept_dense(layer) -> bool:
    """Whether ``layer`` is one edgecomp leaves dense on purpose (a normalization layer)."""
    return any(cls.__name__ in _NOT_PRUNED for cls in type(layer).__mro__)
