"""The model graph: the one way edgecomp walks a Keras 3 model's layers.

:class:`ModelGraph` is built once from a Sequential, functional or nested Keras 3 model. It holds
one :class:`Node` per layer call, in topological order (inputs first), and one :class:`Tensor` per
symbolic tensor, each with its producer, its consumers and its channel axis (channels last). With
``expand_nested=True`` (the default) the calls inside a nested model are expanded into the outer
graph, each with the nested model's name in its ``scope``; with ``False`` a nested model is one node.

    >>> g = ModelGraph(model)
    >>> [n.name for n in g.consumers_of(g.node("block1_conv1"))]
    ['block1_conv2']

BatchNorm folding (:mod:`edgecomp.fold`), export preparation, structured pruning
(:mod:`edgecomp.structured`) and MAC counting (:func:`count_macs`) all walk the model through here.
"""

from __future__ import annotations

from edgecomp.errors import EdgecompError

__all__ = ["ModelGraph", "Node", "Tensor", "functional_of", "is_nested_model", "node_macs", "count_macs"]


class Tensor:
    """One symbolic tensor of the model.

    Attributes:
        index: position in ``ModelGraph.tensors``.
        shape: the Keras shape (batch dimension first, ``None`` where unknown).
        producer: the :class:`Node` that outputs it (an ``InputLayer`` node for a model input).
        consumers: ``[(node, position in node.inputs)]``.
        keras_tensor: the ``KerasTensor`` (the inner one for a tensor inside a nested model).
    """

    __slots__ = ("index", "shape", "producer", "consumers", "keras_tensor")

    def __init__(self, index: int, keras_tensor, producer: "Node"):
        self.index, self.keras_tensor, self.producer = index, keras_tensor, producer
        self.shape = tuple(keras_tensor.shape)
        self.consumers: list[tuple[Node, int]] = []

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def channel_axis(self) -> int | None:
        """The channel axis (non-negative): the last one, or 1 after a ``channels_first`` layer; None for rank < 2."""
        if self.rank < 2:
            return None
        fmt = getattr(self.producer.layer, "data_format", "channels_last") if self.producer else "channels_last"
        return 1 if fmt == "channels_first" else self.rank - 1

    @property
    def channels(self) -> int | None:
        """The size of the channel axis (None when unknown)."""
        axis = self.channel_axis
        return None if axis is None else self.shape[axis]

    def __repr__(self):
        return f"<Tensor {self.index} {self.shape} from {self.producer.name if self.producer else None}>"


class Node:
    """One call of one layer.

    Attributes:
        index: position in ``ModelGraph.nodes`` (topological order).
        layer: the Keras layer (an ``InputLayer`` for a model input).
        call_index: which call of the layer this is (0 for a layer called once).
        inputs, outputs: lists of :class:`Tensor`, in the layer's argument / output order.
        scope: names of the nested models the call is inside (outermost first; ``()`` at top level).
    """

    __slots__ = ("index", "layer", "call_index", "inputs", "outputs", "scope")

    def __init__(self, index: int, layer, call_index: int, scope: tuple[str, ...]):
        self.index, self.layer, self.call_index, self.scope = index, layer, call_index, scope
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def path(self) -> str:
        """``outer/inner/layer`` for a call inside nested models, else the layer name."""
        return "/".join(self.scope + (self.layer.name,))

    @property
    def kind(self) -> str:
        return type(self.layer).__name__

    @property
    def is_input(self) -> bool:
        return self.kind == "InputLayer"

    def __repr__(self):
        return f"<Node {self.path}#{self.call_index} ({self.kind})>"


def leaf_layers(model):
    """Every layer of ``model`` in order, with nested models (anything holding ``layers``) expanded.

    Example:
        >>> [layer.name for layer in leaf_layers(model)]          # doctest: +SKIP
        ['input', 'conv1', 'inner_dense', 'fc']
    """
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested model
            yield from leaf_layers(layer)
        else:
            yield layer


def is_nested_model(layer) -> bool:
    """True for a functional or built Sequential model used as a layer."""
    return functional_of(layer) is not None


def functional_of(model):
    """The functional graph behind ``model`` (a Sequential's inner one), or None (subclassed, unbuilt)."""
    import keras

    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and hasattr(model, "_operations"):
        return model
    return None


class ModelGraph:
    """Nodes, tensors, producers and consumers of a Sequential, functional or nested Keras 3 model.

    Args:
        model: a built ``keras.Sequential`` or functional ``keras.Model``.
        expand_nested: expand the calls inside nested models into this graph (default), or keep
            each nested model as one node.

    Raises:
        EdgecompError: for an unbuilt Sequential or a subclassed model (no graph to walk).

    Example:
        >>> g = ModelGraph(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")]))
        >>> g.node("d").inputs[0].shape, g.outputs[0].producer.name
        ((None, 4), 'd')
    """

    def __init__(self, model, expand_nested: bool = True):
        functional = functional_of(model)
        if functional is None:
            import keras

            if isinstance(model, keras.Sequential):
                raise EdgecompError(f"cannot walk the unbuilt Sequential model '{model.name}'",
                                    fix="give it an Input or call it on data first")
            raise EdgecompError(f"cannot walk a {type(model).__name__} (a subclassed model has no layer graph)",
                                fix="use a functional or Sequential Keras model")
        self.model, self.expand_nested = model, bool(expand_nested)
        self.nodes: list[Node] = []
        self.tensors: list[Tensor] = []
        bound: dict[int, Tensor] = {}
        self._walk(functional, (), bound)
        self.inputs = [bound[id(t)] for t in functional.inputs]
        self.outputs = [bound[id(t)] for t in functional.outputs]
        self._by_path: dict[str, list[Node]] = {}
        for node in self.nodes:
            self._by_path.setdefault(node.path, []).append(node)

    def _walk(self, functional, scope: tuple[str, ...], bound: dict[int, Tensor]) -> None:
        order = {id(op): i for i, op in enumerate(functional._operations)}
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for knode in sorted(functional._nodes_by_depth[depth], key=lambda n: order.get(id(n.operation), 0)):
                layer = knode.operation
                if knode.is_input:
                    if not scope:  # a nested model's inputs are bound to the outer call's arguments
                        node = self._add_node(layer, 0, scope)
                        for kt in knode.outputs:
                            bound[id(kt)] = self._add_tensor(kt, node)
                    continue
                inputs = [bound[id(kt)] for kt in knode.input_tensors]
                call_index = layer._inbound_nodes.index(knode)
                inner = functional_of(layer) if self.expand_nested else None
                if inner is not None:
                    inner_bound = {id(kt): t for kt, t in zip(inner.inputs, inputs)}
                    self._walk(inner, scope + (layer.name,), inner_bound)
                    for kt, inner_kt in zip(knode.outputs, inner.outputs):
                        bound[id(kt)] = inner_bound[id(inner_kt)]
                    continue
                node = self._add_node(layer, call_index, scope)
                for pos, tensor in enumerate(inputs):
                    node.inputs.append(tensor)
                    tensor.consumers.append((node, pos))
                for kt in knode.outputs:
                    bound[id(kt)] = self._add_tensor(kt, node)

    def _add_node(self, layer, call_index: int, scope: tuple[str, ...]) -> Node:
        node = Node(len(self.nodes), layer, call_index, scope)
        self.nodes.append(node)
        return node

    def _add_tensor(self, kt, producer: Node) -> Tensor:
        tensor = Tensor(len(self.tensors), kt, producer)
        producer.outputs.append(tensor)
        self.tensors.append(tensor)
        return tensor

    # --- queries --------------------------------------------------------------------------------

    def calls(self, path: str) -> list[Node]:
        """Every call of the layer at ``path`` (a top-level layer's name, or ``outer/inner``)."""
        return list(self._by_path.get(path, []))

    def node(self, path: str) -> Node:
        """The only call of the layer at ``path``; EdgecompError if there is none or several."""
        calls = self._by_path.get(path, [])
        if len(calls) != 1:
            raise EdgecompError(f"layer '{path}' is called {len(calls)} times in model '{self.model.name}'",
                                fix="name a layer that the model calls exactly once")
        return calls[0]

    def layer_nodes(self):
        """The nodes of real layers (no ``InputLayer``), in topological order."""
        return [n for n in self.nodes if not n.is_input]

    def producers_of(self, node: Node) -> list[Node]:
        """The nodes whose outputs ``node`` reads, one per input (repeats kept)."""
        return [t.producer for t in node.inputs]

    def consumers_of(self, node: Node) -> list[Node]:
        """The nodes that read any of ``node``'s outputs, once each, in topological order."""
        seen = {c.index: c for t in node.outputs for c, _ in t.consumers}
        return [seen[i] for i in sorted(seen)]

    def is_output(self, tensor: Tensor) -> bool:
        return any(tensor is t for t in self.outputs)

    def feeds_output(self, node: Node) -> bool:
        """True when any of ``node``'s outputs is a model output."""
        return any(self.is_output(t) for t in node.outputs)

    def __repr__(self):
        return f"<ModelGraph {self.model.name}: {len(self.nodes)} nodes, {len(self.tensors)} tensors>"


# --- multiply-adds ------------------------------------------------------------------------------

_CONVS = {f"{k}{d}D" for k in ("Conv", "SeparableConv", "DepthwiseConv") for d in (1, 2, 3)}
_TRANSPOSES = {f"Conv{d}DTranspose" for d in (1, 2, 3)}


def node_macs(node: Node, cin: int | None = None, cout: int | None = None) -> int:
    """Multiply-adds of one layer call at batch 1: Conv*, Depthwise, Separable, Transpose and Dense
    (from the output positions; a transpose conv from its input positions); 0 for other layers.

    ``cin``/``cout`` override the input/output channel counts (to count a planned smaller model).
    """
    kind, layer = node.kind, node.layer
    if kind not in _CONVS | _TRANSPOSES | {"Dense"} or len(node.inputs) != 1:
        return 0
    tin, tout = node.inputs[0], node.outputs[0]
    if not all(isinstance(d, int) for d in (*tin.shape[1:], *tout.shape[1:])):
        raise EdgecompError(f"cannot count the MACs of '{node.path}': unknown size {tout.shape}",
                            fix="build the model with a fixed input shape")
    cin, cout = tin.shape[-1] if cin is None else cin, tout.shape[-1] if cout is None else cout
    positions = 1
    for d in (tin if kind in _TRANSPOSES else tout).shape[1:-1]:
        positions *= d
    k = 1
    for d in getattr(layer, "kernel_size", ()):
        k *= d
    if kind == "Dense":
        return positions * cin * cout
    if kind.startswith("Depthwise"):
        return positions * k * cout
    if kind.startswith("Separable"):
        mid = cin * int(layer.depth_multiplier)
        return positions * (k * mid + mid * cout)
    return positions * k * (cin // int(getattr(layer, "groups", 1) or 1)) * cout


def count_macs(model, width=None) -> tuple[dict[str, int], int]:
    """``({layer path: multiply-adds}, total)`` at batch 1 (calls of a shared layer add up).

    Args:
        model: a Keras model or a :class:`ModelGraph`.
        width: optional ``tensor -> channel count`` (None: as built), to count a planned model.

    Example:
        >>> per_layer, total = count_macs(build_model("vgg", (28, 28, 1), 10))
    """
    graph = model if isinstance(model, ModelGraph) else ModelGraph(model)
    width = width or (lambda t: None)
    per: dict[str, int] = {}
    for node in graph.layer_nodes():
        m = node_macs(node, width(node.inputs[0]) if len(node.inputs) == 1 else None, width(node.outputs[0]))
        if m:
            per[node.path] = per.get(node.path, 0) + int(m)
    return per, sum(per.values())
