"""tf2onnx quirk: tensors a traced Keras call captures by value become required ONNX graph inputs.

Versions: tf2onnx 1.17 with TF 2.21 + Keras 3.15 (the route of :func:`exporters.onnx._tf2onnx`,
and Keras's own ``model.export(path, format="onnx")``, which calls the same
``tf2onnx.convert.from_function``). ``from_function`` names the ONNX graph's inputs after every
non-resource input of the concrete function, and a concrete function's inputs end with its
captures. Variables are captured as resources (frozen into initializers, correctly); a plain
eager tensor captured from Python is captured as a float placeholder and stays an input. Keras
3's ``Normalization`` layer keeps its mean and variance as such tensors (``finalize_state``
reshapes its variables into eager tensors), so keras.applications EfficientNet* (and any model
with a ``Normalization`` layer) converts to a file that ONNX Runtime refuses to run: "Required
inputs (['efficientnetb0_1/normalization_1/Sub/y:0', '.../Sqrt/x:0']) are missing from input
feed (['input'])".

The fix: read those captured values from the same concrete function tf2onnx converts and make
each such graph input an initializer holding its value (the parity check then compares the file
with the Keras model like any other). Checked input by input: name, dtype and shape must match
what was captured, else the input is left as it is (and the load probe reports it). An input that
no node reads (tf2onnx usually folds the value into the next node) is simply dropped.

    >>> values = captured_constants(serve, signature)     # {placeholder name: numpy array}
    >>> inline_captured_constants(proto, values)
    ['efficientnetb0_1/normalization_1/Sub/y:0', 'efficientnetb0_1/normalization_1/Sqrt/x:0']
"""

from __future__ import annotations

import numpy as np


def captured_constants(function, signature) -> dict[str, np.ndarray]:
    """``{placeholder tensor name: value}`` of each non-resource capture of ``function``'s concrete function.

    ``function`` is the ``tf.function`` that tf2onnx will convert with ``signature``; tracing it
    here first means tf2onnx gets the same (cached) concrete function, so the names agree.
    """
    import tensorflow as tf

    concrete = function.get_concrete_function(*signature)
    captured = list(concrete.captured_inputs)
    if not captured:
        return {}
    placeholders = list(concrete.inputs)[-len(captured):]
    out = {}
    for placeholder, value in zip(placeholders, captured):
        if placeholder.dtype == tf.resource or value.dtype == tf.resource:
            continue   # a variable: tf2onnx freezes it
        try:
            out[placeholder.name] = np.asarray(value.numpy())
        except (AttributeError, ValueError, TypeError):   # a symbolic capture: nothing to inline
            continue
    return out


def _matches(graph_input, value: np.ndarray) -> bool:
    import onnx

    t = graph_input.type.tensor_type
    if not t.HasField("elem_type"):
        return False
    if onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) != value.dtype:
        return False
    if not t.HasField("shape"):
        return True
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return len(dims) == value.ndim and all(d is None or d == s for d, s in zip(dims, value.shape))


def _used_names(graph) -> set[str]:
    import onnx

    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                used |= _used_names(g)
    return used


def inline_captured_constants(proto, values: dict[str, np.ndarray]) -> list[str]:
    """Turn each graph input of ``proto`` named in ``values`` (and shaped like it) into an initializer.

    An input no node reads (tf2onnx's constant folding has usually folded the value into a
    node already, as in EfficientNet's Normalization) is dropped instead. Changes ``proto`` in
    place; returns the names taken out of the inputs, in graph-input order.
    """
    from onnx import numpy_helper

    graph = proto.graph
    used = _used_names(graph)
    keep, moved = [], []
    for graph_input in graph.input:
        value = values.get(graph_input.name)
        if value is not None and _matches(graph_input, value):
            if graph_input.name in used:
                graph.initializer.append(numpy_helper.from_array(value, graph_input.name))
            moved.append(graph_input.name)
        else:
            keep.append(graph_input)
    if moved:
        del graph.input[:]
        graph.input.extend(keep)
    return moved
