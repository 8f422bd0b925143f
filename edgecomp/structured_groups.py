"""Channel dependency groups for structured pruning: which channels must be removed together.

:class:`Dependencies` walks a model's :class:`~edgecomp.graph.ModelGraph` once and gives every
tensor a channel :class:`Layout` (the last axis, channels last) over *channel spaces*:

- a Conv/Dense/SeparableConv/ConvTranspose/Embedding output starts a new space (its filters);
- channel-preserving layers (BatchNorm, DepthwiseConv, pooling, activations, dropout, padding,
  upsampling, cropping, a Reshape that keeps the last axis) pass the layout through;
- Add/Subtract/Multiply/Average/Maximum/Minimum unite their inputs' spaces (residual blocks);
- Concatenate on the last axis lays its inputs' layouts side by side (offsets);
- Flatten tiles the layout over the positions (channel ``c`` of ``HxWxC`` is row ``h*W*C + w*C + c``);
  a depthwise multiplier ``m`` repeats each channel ``m`` times.

A space with a producer is a :class:`Group`: its channels go together through every layer whose
weights index it (filters, BatchNorms, depthwise kernels, consumers' input rows). What the walk
cannot map (Dot, a reshape of the channel axis, an unknown layer, a nested model, a model output)
keeps the spaces it touches whole, with the reason. :func:`rebuild` is the surgery.

    >>> deps = Dependencies(model)
    >>> [(g.name, g.channels, g.reasons) for g in deps.groups]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgecomp.errors import EdgecompError, first_line
from edgecomp.graph import ModelGraph, count_macs

__all__ = ["Dependencies", "Group", "Layout", "Seg", "WEIGHT_ROLES", "SIZE_KEYS", "planned_macs", "rebuild"]

_CONV = ("Conv1D", "Conv2D", "Conv3D")
_TRANSPOSE = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_SEPARABLE = ("SeparableConv1D", "SeparableConv2D")
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")
_PRODUCERS = _CONV + _TRANSPOSE + _SEPARABLE + ("Dense", "Embedding")
_MERGE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
_PASS = {"Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
         "SpatialDropout3D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization",
         "Identity", "RepeatVector", "BatchNormalization", "PReLU", "Reshape"}
_PASS |= {f"{p}{d}D" for d in (1, 2, 3) for p in ("MaxPooling", "AveragePooling", "GlobalAveragePooling",
                                                   "GlobalMaxPooling", "ZeroPadding", "UpSampling", "Cropping")}

_KERNEL = {"kernel": {-2: "in", -1: "out"}, "bias": {0: "out"}}
#: Per layer class: {weight name: {axis: role}}; a role names the layout ("in", "out", "mid") it follows.
WEIGHT_ROLES: dict[str, dict[str, dict[int, str]]] = {
    **{k: _KERNEL for k in _CONV + ("Dense",)},
    **{k: {"kernel": {-1: "in", -2: "out"}, "bias": {0: "out"}} for k in _TRANSPOSE},
    **{k: {"kernel": {-2: "in"}, "bias": {0: "out"}} for k in _DEPTHWISE},
    **{k: {"depthwise_kernel": {-2: "in"}, "pointwise_kernel": {-2: "mid", -1: "out"}, "bias": {0: "out"}}
       for k in _SEPARABLE},
    "BatchNormalization": {w: {0: "out"} for w in ("gamma", "beta", "moving_mean", "moving_variance")},
    "PReLU": {"alpha": {-1: "out"}},
    "Embedding": {"embeddings": {-1: "out"}},
}
#: The config key that holds a producer's output channel count.
SIZE_KEYS = {**{k: "filters" for k in _CONV + _TRANSPOSE + _SEPARABLE}, "Dense": "units", "Embedding": "output_dim"}


def _last(tensor) -> int | None:
    """The size of a tensor's last axis, which every :class:`Layout` describes."""
    return tensor.shape[-1] if tensor.rank >= 2 else None


@dataclass(frozen=True)
class Seg:
    """``n`` channels of one space, each repeated ``rep`` times in a row."""
    space: int
    n: int
    rep: int = 1


@dataclass(frozen=True)
class Layout:
    """A tensor's last axis: its segments side by side, the whole repeated ``tiles`` times."""
    segs: tuple
    tiles: int = 1

    @property
    def period(self) -> int:
        return sum(s.n * s.rep for s in self.segs)

    @property
    def width(self) -> int:
        return self.tiles * self.period

    def scaled(self, mult: int) -> "Layout":
        return Layout(tuple(Seg(s.space, s.n, s.rep * mult) for s in self.segs), self.tiles)

    def same_shape(self, other: "Layout") -> bool:
        return (self.tiles == other.tiles and len(self.segs) == len(other.segs)
                and all((a.n, a.rep) == (b.n, b.rep) for a, b in zip(self.segs, other.segs)))


@dataclass
class Group:
    """Channels removed together: ``producers`` make them; ``members`` are ``(layer path, role)``
    pairs whose weights index them (role ``out``: filters/units/channels, ``in``/``mid``: input rows)."""
    id: int
    channels: int
    producers: list = field(default_factory=list)
    members: list = field(default_factory=list)
    reasons: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.producers[0]

    @property
    def prunable(self) -> bool:
        return not self.reasons


class Dependencies:
    """The channel dependency groups of a model (see the module docstring).

    Args:
        model: a built Sequential or functional Keras 3 model (nested models are kept whole).
        graph: its :class:`ModelGraph`, if already built.

    Example:
        >>> [g.name for g in Dependencies(model).kept_whole]       # e.g. ['predictions'] (an output)
    """

    def __init__(self, model, graph: ModelGraph | None = None):
        self.graph = graph or ModelGraph(model)
        self._parent: list[int] = []
        self._size: list[int] = []
        self._reasons: dict[int, list[str]] = {}
        self._producers: dict[int, list[str]] = {}
        self.layouts: dict[int, Layout | None] = {}       # tensor index -> layout
        self.roles: dict[str, dict[str, Layout | None]] = {}  # layer path -> {"in"/"out"/"mid": layout}
        self.kinds: dict[str, str] = {}
        for node in self.graph.nodes:
            outs = self._visit(node, [self.layouts.get(t.index) for t in node.inputs])
            for tensor, lay in zip(node.outputs, outs):
                self.layouts[tensor.index] = lay
        for tensor in self.graph.outputs:
            self._block(self.layouts.get(tensor.index), f"reaches the model output ('{tensor.producer.name}')")
        self.groups = self._collect()

    # --- union-find over spaces ---------------------------------------------------------------

    def _new(self, n) -> Layout | None:
        if not isinstance(n, int):
            return None
        self._parent.append(len(self._parent))
        self._size.append(n)
        return Layout((Seg(len(self._parent) - 1, n),))

    def find(self, space: int) -> int:
        while self._parent[space] != space:
            self._parent[space] = self._parent[self._parent[space]]
            space = self._parent[space]
        return space

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self._parent[b] = a
            self._reasons.setdefault(a, []).extend(self._reasons.pop(b, []))
            if b in self._producers:
                self._producers.setdefault(a, []).extend(self._producers.pop(b))

    def _block(self, layout: Layout | None, reason: str) -> None:
        for seg in layout.segs if layout else ():
            reasons = self._reasons.setdefault(self.find(seg.space), [])
            if reason not in reasons:
                reasons.append(reason)

    def _unify(self, a: Layout | None, b: Layout | None, who: str) -> Layout | None:
        if a is None or b is None or not a.same_shape(b):
            for lay in (a, b):
                self._block(lay, f"'{who}' joins tensors whose channels do not line up")
            return a
        for sa, sb in zip(a.segs, b.segs):
            self._union(sa.space, sb.space)
        return a

    # --- the walk -----------------------------------------------------------------------------

    def _opaque(self, node) -> list:
        return [self._new(_last(t)) for t in node.outputs]

    def _stop(self, node, ins, reason: str) -> list:
        outs = self._opaque(node)  # new spaces without a producer, blocked (an Add may join them later)
        for lay in (*ins, *outs):
            self._block(lay, reason)
        return outs

    def _visit(self, node, ins: list) -> list:
        layer, kind, path = node.layer, node.kind, node.path
        self.kinds[path] = kind
        if node.is_input:
            return self._stop(node, [], f"tied to the model input '{path}'")
        if node.scope:
            return self._stop(node, ins, f"inside nested model '{node.scope[0]}' (nested models are kept whole)")
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            if kind in _PRODUCERS:  # its filters are a group, kept whole
                record = self._new(node.outputs[0].channels)
                self._producers[record.segs[0].space] = [path]
                ins = [*ins, record]
            return self._stop(node, ins, f"'{path}' is channels_first")
        lay = ins[0] if len(ins) == 1 else None
        out_ch = _last(node.outputs[0]) if len(node.outputs) == 1 else None
        act = getattr(getattr(layer, "activation", None), "__name__", "")
        if kind in _PRODUCERS and len(ins) == 1:
            return [self._producer(node, lay, act)]
        if kind in _DEPTHWISE and lay is not None:
            return [self._weighted(path, lay, lay.scaled(int(layer.depth_multiplier)))]
        if kind in _MERGE:
            keep = [(lo, t) for lo, t in zip(ins, node.inputs) if not (_last(t) == 1 and out_ch != 1)]
            if any(lo is None for lo, _ in keep) or not keep:
                return self._stop(node, ins, f"'{path}' has inputs without a channel axis")
            base = keep[0][0]
            for other, _ in keep[1:]:
                base = self._unify(base, other, path)
            return [base]
        if kind == "Concatenate":
            return [self._concat(node, ins)]
        if kind == "Flatten" and lay is not None:
            spatial = node.inputs[0].shape[1:-1]
            if all(isinstance(d, int) for d in spatial):
                return [Layout(lay.segs, lay.tiles * int(np.prod(spatial, dtype=np.int64)))]
            return self._stop(node, ins, f"'{path}' flattens a tensor of unknown size")
        if kind == "Dot":
            return self._stop(node, ins, f"multiplied in Dot '{path}', which mixes channels (a learned transform)")
        if kind in _PASS and lay is not None and out_ch == lay.width:
            if (act in ("softmax", "log_softmax")
                    or (kind == "Softmax" and int(np.atleast_1d(layer.axis)[0]) in (-1, node.inputs[0].rank - 1))):
                self._block(lay, f"'{path}' normalizes over the channels (softmax)")
                return [lay]
            if kind == "BatchNormalization":
                if layer.axis in (-1, node.inputs[0].rank - 1):
                    return [self._weighted(path, lay, lay)]
            elif kind == "PReLU" and layer.alpha.shape[-1] == lay.width and lay.width > 1:
                return [self._weighted(path, lay, lay)]
            else:
                if kind == "Reshape":
                    self.roles[path] = {"in": lay, "out": lay}
                return [lay]
        if kind == "Reshape":
            dots = [c.path for t in node.outputs for c, _ in t.consumers if c.kind == "Dot"]
            into = f", the matrix of Dot '{dots[0]}' (a learned transform)" if dots else ""
            shapes = f"{node.inputs[0].shape[1:]} -> {node.outputs[0].shape[1:]}"
            return self._stop(node, ins, f"reshaped by '{path}' ({shapes}){into}")
        return self._stop(node, ins, f"read by '{path}' ({kind}), which structured pruning cannot map")

    def _producer(self, node, lay: Layout | None, act: str) -> Layout | None:
        layer, kind, path = node.layer, node.kind, node.path
        roles = self.roles.get(path)
        if roles is None:
            out = self._new(node.outputs[0].shape[-1])
            if out is None:
                return None
            self._producers[out.segs[0].space] = [path]
            roles = self.roles[path] = {"out": out}
            if kind != "Embedding":
                roles["in"] = lay
            if kind in _SEPARABLE:
                roles["mid"] = lay.scaled(int(layer.depth_multiplier)) if lay else None
        elif kind != "Embedding":
            self._unify(roles["in"], lay, path)
        if int(getattr(layer, "groups", 1) or 1) > 1:
            self._block(roles.get("in"), f"grouped convolution '{path}'")
            self._block(roles["out"], f"grouped convolution '{path}'")
        if act in ("softmax", "log_softmax"):
            self._block(roles["out"], f"'{path}' normalizes over the channels (softmax)")
        return roles["out"]

    def _weighted(self, path: str, lay: Layout, out: Layout) -> Layout:
        roles = self.roles.get(path)
        if roles is None:  # a BatchNorm's or PReLU's weights follow its (unchanged) channels: role "out" only
            self.roles[path] = {"in": lay, "out": out} if out is not lay else {"out": out}
            return out
        self._unify(roles.get("in", roles["out"]), lay, path)
        return roles["out"]

    def _concat(self, node, ins):
        rank, path = node.inputs[0].rank, node.path
        axis = int(node.layer.axis) % rank
        if any(lay is None for lay in ins):
            return self._stop(node, ins, f"'{path}' has inputs without a channel axis")[0]
        if axis != rank - 1:  # concatenated along another axis: every input has the same channels
            base = ins[0]
            for other in ins[1:]:
                base = self._unify(base, other, path)
            return base
        if any(lay.tiles != 1 for lay in ins):
            return self._stop(node, ins, f"'{path}' concatenates flattened tensors")[0]
        return Layout(tuple(seg for lay in ins for seg in lay.segs))

    # --- results ------------------------------------------------------------------------------

    def _collect(self) -> list[Group]:
        groups: dict[int, Group] = {}
        for space, prods in self._producers.items():
            root = self.find(space)
            groups[root] = Group(root, self._size[root], list(prods), [], list(self._reasons.get(root, [])))
        for path, roles in self.roles.items():
            for role, lay in roles.items():
                for seg in lay.segs if lay else ():
                    g = groups.get(self.find(seg.space))
                    if g is not None and (path, role) not in g.members:
                        g.members.append((path, role))
        order = {n.path: n.index for n in self.graph.nodes}
        for g in groups.values():
            g.producers.sort(key=order.get)
        return sorted(groups.values(), key=lambda g: order[g.producers[0]])

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def kept_whole(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    def groups_of(self, path: str) -> list[Group]:
        """The groups of a layer's output channels (a producer's filters, a BatchNorm's channels, ...)."""
        by_id = {g.id: g for g in self.groups}
        lays = [self.roles.get(path, {}).get("out")]
        lays += [self.layouts.get(t.index) for n in self.graph.calls(path) for t in n.outputs]
        roots = dict.fromkeys(self.find(s.space) for lay in lays if lay for s in lay.segs)
        return [by_id[r] for r in roots if r in by_id]

    def indices(self, layout: Layout | None, kept: dict[int, np.ndarray]) -> np.ndarray | None:
        """The kept positions of ``layout``'s axis, given each group's kept channels (others whole)."""
        if layout is None:
            return None
        parts, offset = [], 0
        for seg in layout.segs:
            k = kept.get(self.find(seg.space))
            k = np.arange(seg.n) if k is None else np.asarray(k)
            parts.append(offset + (k[:, None] * seg.rep + np.arange(seg.rep)).ravel())
            offset += seg.n * seg.rep
        base = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return (np.arange(layout.tiles)[:, None] * offset + base).ravel().astype(np.int64)

    def spread(self, layout: Layout | None, values: np.ndarray, into: dict[int, np.ndarray]) -> None:
        """Add ``values`` (one per position of ``layout``'s axis) into each space's per-channel sums."""
        if layout is None:
            return
        v = np.asarray(values, np.float64).reshape(layout.tiles, layout.period)
        offset = 0
        for seg in layout.segs:
            part = v[:, offset:offset + seg.n * seg.rep].reshape(layout.tiles, seg.n, seg.rep).sum(axis=(0, 2))
            root = self.find(seg.space)
            into[root] = into.get(root, 0) + part
            offset += seg.n * seg.rep


def planned_macs(deps: Dependencies, kept: dict) -> int:
    """Total MACs of the model once each group keeps only ``kept[group id]`` (no model is built)."""
    def width(t):
        idx = deps.indices(deps.layouts.get(t.index), kept)
        return None if idx is None else len(idx)
    return count_macs(deps.graph, width)[1]


def rebuild(model, deps: Dependencies, kept: dict[int, np.ndarray]):
    """A new model with the kept channels only: configs edited (filters/units), weights sliced."""
    import keras

    width = {t.index: len(deps.indices(deps.layouts[t.index], kept)) for t in deps.graph.tensors
             if deps.layouts.get(t.index) is not None}
    touched = {n.path for n in deps.graph.layer_nodes()
               if any(width.get(t.index, _last(t)) != _last(t) for t in (*n.inputs, *n.outputs))}
    config = model.get_config()
    for entry in config["layers"]:
        name, cfg = entry["config"]["name"], entry["config"]
        if name not in touched:
            continue
        entry.pop("build_config", None)  # the layer is rebuilt at its new input shape
        out = deps.roles.get(name, {}).get("out")
        if deps.kinds[name] in SIZE_KEYS:
            cfg[SIZE_KEYS[deps.kinds[name]]] = len(deps.indices(out, kept))
        elif deps.kinds[name] == "Reshape" and cfg["target_shape"][-1] != -1:
            cfg["target_shape"] = [*cfg["target_shape"][:-1], len(deps.indices(out, kept))]
    try:
        new = (keras.Sequential if isinstance(model, keras.Sequential) else keras.Model).from_config(config)
    except Exception as exc:  # Keras raises many types for a config it cannot rebuild
        raise EdgecompError(f"cannot rebuild '{model.name}' with fewer channels: {first_line(exc)}",
                            fix="prune a plain functional or Sequential model") from None
    for layer in model.layers:
        target = new.get_layer(layer.name)
        if layer.name not in touched:
            target.set_weights(layer.get_weights())
            continue
        table = WEIGHT_ROLES.get(deps.kinds[layer.name], {})
        idx = {role: deps.indices(lay, kept) for role, lay in deps.roles.get(layer.name, {}).items()}
        for old, var in zip(layer.weights, target.weights):
            w = np.asarray(old.numpy())
            for axis, role in table.get(old.name, {}).items():
                if idx.get(role) is not None:
                    w = np.take(w, idx[role], axis=axis)
            var.assign(w)
    return new
