"""Fold inference-mode BatchNorm layers into the Conv/Dense layers beside them.

In inference a BatchNormalization layer is a per-channel affine map
``y = a * x + c`` with ``a = gamma / sqrt(var + eps)`` and ``c = beta - a * mean``.
:func:`fold_batchnorm` returns a new model without the BN layers it can absorb:

- **backward** (``conv -> BN``): the BN follows a ``Conv1D/2D/3D`` or ``Dense``
  with no activation whose output feeds only that BN (DenseNet, Inception:
  conv - BN - ReLU). The kernel's output channels are scaled by ``a``; the bias
  becomes ``a * b + c``.
- **forward** (``BN -> layer``): the BN's output feeds only (through any
  Dropouts, identities at inference) a ``Dense`` or a 1x1 ``Conv`` whose
  receptive field is one position, so there is no zero padding to disturb
  (PointNet: conv - ReLU - BN - conv / dense). Input channel ``i`` of the
  kernel is scaled by ``a[i]``; the bias gains ``sum_i c[i] * W[i, :]``.

Any other BN stays as it is: e.g. ResNet's pre-activation BNs that follow an
``Add`` (the BN after each block's first conv does fold), or a BN before a 3x3
conv (zero padding) or a max-pool (which does not commute with a negative scale). The result computes the same function
in inference mode (to float rounding); it is meant for storage and export, not
for more training (the folded layers have no BN statistics to update).

    >>> folded = fold_batchnorm(model)
    >>> np.abs(folded.predict(x) - model.predict(x)).max() < 1e-4
    True

Only a functional (or Sequential) model's top-level layers are folded; a nested
model is kept whole. Pruned zeros stay zeros (backward folding scales whole
output channels, forward folding whole input channels).
"""

from __future__ import annotations

import copy
import json

import numpy as np

from edgecomp.errors import EdgecompError, first_line
from edgecomp.graph import ModelGraph, leaf_layers

__all__ = ["fold_batchnorm", "fold_plan", "bn_affine", "folded_summary", "storage_form"]

_CONVS = ("Conv1D", "Conv2D", "Conv3D")
_TARGETS = _CONVS + ("Dense",)
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")


def bn_affine(layer) -> tuple[np.ndarray, np.ndarray]:
    """The inference-mode BN as ``(a, c)`` with ``y = a * x + c`` per channel (float64).

    Example:
        >>> a, c = bn_affine(model.get_layer("stem_bn"))
    """
    mean = np.asarray(layer.moving_mean.numpy(), np.float64)
    var = np.asarray(layer.moving_variance.numpy(), np.float64)
    gamma = np.asarray(layer.gamma.numpy(), np.float64) if layer.gamma is not None else np.ones_like(mean)
    beta = np.asarray(layer.beta.numpy(), np.float64) if layer.beta is not None else np.zeros_like(mean)
    a = gamma / np.sqrt(var + float(layer.epsilon))
    return a, beta - a * mean


def _functional_config(model) -> tuple[object, dict]:
    """``(functional model, its config)``; a Sequential model is rewired as a functional one."""
    import keras

    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise EdgecompError("cannot fold an unbuilt Sequential model", fix="build or call the model first")
        one = lambda ts: ts[0] if len(ts) == 1 else ts  # noqa: E731  (a single tensor, not a 1-list)
        model = keras.Model(one(model.inputs), one(model.outputs), name=model.name)
    if not isinstance(model, keras.Model) or "layers" not in (model.get_config() or {}):
        raise EdgecompError(f"cannot fold BatchNorm in a {type(model).__name__} (a subclassed model)",
                            fix="fold a functional or Sequential Keras model")
    # Through JSON: plain lists and dicts (get_config has tuples), as a saved model would hold.
    return model, json.loads(model.to_json())["config"]


def _replace_refs(obj, old: str, new_tensor: dict):
    """Point every reference to layer ``old``'s output at ``new_tensor`` (a ``__keras_tensor__`` dict)."""
    if isinstance(obj, dict):
        hist = obj.get("config", {}).get("keras_history") if obj.get("class_name") == "__keras_tensor__" else None
        if hist is not None and hist[0] == old:
            return copy.deepcopy(new_tensor)
        return {k: _replace_refs(v, old, new_tensor) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_refs(v, old, new_tensor) for v in obj]
    return obj


def _replace_io(spec, old: str, new: list):
    if spec and isinstance(spec[0], str):
        return list(new) if spec[0] == old else spec
    return [list(new) if s[0] == old else s for s in spec]


def _is_pointwise_conv(cfg: dict) -> bool:
    size = cfg["kernel_size"] if isinstance(cfg["kernel_size"], (list, tuple)) else [cfg["kernel_size"]]
    return all(int(k) == 1 for k in size) and int(cfg.get("groups", 1)) == 1


def fold_plan(model, depthwise: bool = False) -> dict[str, tuple[str, str]]:
    """Which BatchNorm layers fold, and into what: ``{bn name: ("back" | "forward", layer name)}``.

    The one plan :func:`fold_batchnorm` (for export) and quantization-aware training (folding
    on the fly, :mod:`edgecomp.qat`) both follow. ``depthwise=True`` also folds a BN back into
    a ``DepthwiseConv1D/2D`` before it (what :func:`storage_form` does; its output channel
    ``i * multiplier + m`` is kernel entry ``[..., i, m]``).

    Example:
        >>> fold_plan(model)["stem_bn"]
        ('back', 'stem_conv')
    """
    model, config = _functional_config(model)
    entries = {entry["name"]: entry for entry in config["layers"]}
    graph = ModelGraph(model, expand_nested=False)  # a nested model is one node, kept whole

    def node(name: str):
        return graph.calls(name)[0]

    def single_call(name: str) -> bool:
        return len(graph.calls(name)) == 1

    def consumers(name: str) -> list[str]:
        """Who reads the layer's outputs, once per read; a model output reads as ``__output__``."""
        return [c.name for call in graph.calls(name) for t in call.outputs for c, _ in t.consumers] + [
            "__output__" for call in graph.calls(name) for t in call.outputs if graph.is_output(t)]

    def kind(name: str) -> str:
        return node(name).kind if graph.calls(name) else ""

    # Plan: bn name -> ("back" | "forward", target layer name).
    plan: dict[str, tuple[str, str]] = {}
    claimed: set[str] = set()
    for entry in config["layers"]:
        name = entry["name"]
        if kind(name) != "BatchNormalization" or not single_call(name):
            continue
        bn = node(name)
        axis = bn.layer.axis if isinstance(bn.layer.axis, int) else None
        if axis is None or len(bn.inputs) != 1 or axis not in (-1, bn.inputs[0].rank - 1):
            continue
        prev = bn.inputs[0].producer.name
        pcfg = entries[prev]["config"]
        if (kind(prev) in _TARGETS + (_DEPTHWISE if depthwise else ()) and prev not in claimed and single_call(prev)
                and consumers(prev) == [name] and pcfg.get("activation", "linear") == "linear"
                and pcfg.get("data_format", "channels_last") == "channels_last"):
            plan[name] = ("back", prev)
            claimed.add(prev)
            continue
        nxt = name  # skip Dropouts (identities at inference) between the BN and its consumer
        while len(consumers(nxt)) == 1 and kind(consumers(nxt)[0]) == "Dropout" and single_call(consumers(nxt)[0]):
            nxt = consumers(nxt)[0]
        if len(consumers(nxt)) != 1:
            continue
        target = consumers(nxt)[0]
        tcfg = entries.get(target, {}).get("config", {})
        ok_kind = kind(target) == "Dense" or (kind(target) in _CONVS and _is_pointwise_conv(tcfg)
                                               and tcfg.get("data_format", "channels_last") == "channels_last")
        if ok_kind and target not in claimed and single_call(target):
            plan[name] = ("forward", target)
            claimed.add(target)

    return plan


def fold_batchnorm(model):
    """A new model computing ``model``'s inference function with its foldable BN layers absorbed.

    The original model is not changed. Returns a model with the same inputs,
    outputs and layer names (less the folded BNs); layers that absorbed a BN get
    a bias if they had none.

    Example:
        >>> from edgecomp.models import build_model
        >>> m = build_model("densenet", (32, 32, 3), 10, depth=7, growth_rate=4)
        >>> f = fold_batchnorm(m)
        >>> sum(type(l).__name__ == "BatchNormalization" for l in f.layers)   # only the head's BN stays
        1
    """
    import keras

    model, config = _functional_config(model)
    entries = {entry["name"]: entry for entry in config["layers"]}
    plan = fold_plan(model)
    if not plan:
        return _copy_model(model, config)

    # Rewire: drop each folded BN; its consumers (and any later BN's source) read the BN's input.
    new_layers = [entry for entry in config["layers"] if entry["name"] not in plan]
    sources = {bn: entries[bn]["inbound_nodes"][0]["args"][0] for bn in plan}
    for bn in plan:
        src_tensor = sources[bn]
        new_layers = [{**e, "inbound_nodes": _replace_refs(e["inbound_nodes"], bn, src_tensor)} for e in new_layers]
        sources = {k: _replace_refs(v, bn, src_tensor) for k, v in sources.items()}
        config["output_layers"] = _replace_io(config["output_layers"], bn, src_tensor["config"]["keras_history"])
    for _mode, target in plan.values():
        tcfg = next(e for e in new_layers if e["name"] == target)["config"]
        tcfg["use_bias"] = True
    config["layers"] = new_layers

    try:
        folded = keras.Model.from_config(config)
    except Exception as exc:  # Keras raises many types for a bad config
        raise EdgecompError(f"cannot rebuild the model without its BatchNorm layers: {first_line(exc)}",
                            fix="fold a plain functional model, or skip folding") from None

    folded_into = {target: (mode, bn) for bn, (mode, target) in plan.items()}
    for layer in folded.layers:
        src = model.get_layer(layer.name)
        if layer.name not in folded_into:
            layer.set_weights(src.get_weights())
            continue
        mode, bn = folded_into[layer.name]
        a, c = bn_affine(model.get_layer(bn))
        w = np.asarray(src.kernel.numpy(), np.float64)
        b = np.asarray(src.bias.numpy(), np.float64) if src.bias is not None else np.zeros(w.shape[-1])
        if mode == "back":
            w2, b2 = w * a, a * b + c
        else:
            shape = [1] * (w.ndim - 2) + [len(a), 1]
            w2 = w * a.reshape(shape)
            b2 = b + np.einsum("io,i->o", w.reshape(-1, len(a), w.shape[-1]).sum(axis=0), c)
        layer.kernel.assign(w2.astype(np.float32))
        layer.bias.assign(b2.astype(np.float32))
    return folded


def _copy_model(model, config):
    """A same-weights copy (nothing to fold), so the caller always gets a new model."""
    import keras

    copy_ = keras.Model.from_config(config)
    copy_.set_weights(model.get_weights())
    return copy_


def folded_summary(model, folded) -> dict:
    """How many BN layers folding removed and how many stayed.

    Example:
        >>> folded_summary(model, fold_batchnorm(model))   # densenet, depth 40, growth 12
        {'bn_before': 40, 'bn_after': 1, 'params_before': 591310, 'params_after': 589348}
    """
    count = lambda m: sum(type(layer).__name__ == "BatchNormalization" for layer in m.layers)  # noqa: E731
    return {"bn_before": count(model), "bn_after": count(folded),
            "params_before": int(model.count_params()), "params_after": int(folded.count_params())}



def unit_variance(epsilon: float) -> np.float32:
    """The float32 ``v`` with ``float32(v + float32(epsilon)) == 1``: a stored moving variance
    that makes the BN's ``1 / sqrt(var + eps)`` exactly 1."""
    eps = np.float32(epsilon)
    v = np.float32(1) - eps
    for _ in range(8):
        total = np.float32(v + eps)
        if total == 1:
            break
        v = np.nextafter(v, np.float32(-np.inf) if total > 1 else np.float32(np.inf))
    return v


def storage_form(model, weights: dict[str, np.ndarray], coded=frozenset()) -> tuple[dict, dict, dict]:
    """``weights`` (``{variable path: array}``, as :func:`edgecomp.store.model_weights` gives)
    rewritten so each inference BatchNorm stores fewer distinct numbers, computing the same
    inference function (to float rounding); the original model is not changed.

    - A BN with both ``gamma`` and ``beta`` is stored as its affine map ``y = a * x + c``:
      ``gamma = a``, ``beta = c``, ``moving_mean = 0``, ``moving_variance = v`` with
      ``v + eps == 1`` in float32 (two constant vectors, one value each in a ``const`` record).
    - Where :func:`fold_plan` (depthwise included) folds that BN back into a Conv/Dense/Depthwise
      layer whose kernel is not in ``coded`` (a codebook-coded kernel must keep its shared
      values), ``a`` goes into the kernel's output channels, ``gamma = 1``, and the layer's bias
      (when it has one) becomes ``a * b + c`` with ``beta = 0``.

    The BN layers stay, so the decoded model has the same layers and weights; only its BN
    moving statistics are gone (training it further in training mode starts them afresh).

    Returns ``(weights, scales, summary)``. ``scales`` maps each rewritten scale and shift
    vector to the per-channel error scale compact storage holds it to, in units of the BN
    output's spread ``s = |a| * sqrt(var)`` (measured by the moving statistics): an error
    ``d`` in the shift moves the output by ``d``, so its scale is ``s / 2``; an error in the
    scale moves it by about ``d * (|mean| + sqrt(var))``, so its scale is
    ``s / (2 * (|mean| + sqrt(var)))``. The summary counts ``bn_affine`` and lists ``bn_folded``.

    Example:
        >>> w2, scales, s = storage_form(model, store.model_weights(model), coded={"conv2/kernel"})
        >>> s["bn_folded"]
        ['stem_bn']
    """
    out = dict(weights)
    bns = [layer for layer in leaf_layers(model) if type(layer).__name__ == "BatchNormalization"
           and layer.gamma is not None and layer.beta is not None
           and all(v.path in out for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))]
    try:
        plan = fold_plan(model, depthwise=True) if bns else {}
    except EdgecompError:   # a subclassed model: affine form only
        plan = {}
    by_name = {layer.name: layer for layer in leaf_layers(model)}
    folded, scales = [], {}
    for bn in bns:
        g, b = bn.gamma.path, bn.beta.path
        mean = np.asarray(out[bn.moving_mean.path], np.float64)
        var = np.asarray(out[bn.moving_variance.path], np.float64)
        a = np.asarray(out[g], np.float64) / np.sqrt(var + float(bn.epsilon))
        c = np.asarray(out[b], np.float64) - a * mean
        spread = np.abs(a) * np.sqrt(np.maximum(var, 0))
        shift_scale, scale_scale = spread / 2, spread / (2 * (np.abs(mean) + np.sqrt(np.maximum(var, 0))) + 1e-30)
        mode, target = plan.get(bn.name, ("", ""))
        layer = by_name.get(target)
        kernel = getattr(layer, "kernel", None)
        bias = getattr(layer, "bias", None)
        free = lambda var: var is not None and var.path in out and var.path not in coded  # noqa: E731
        if mode == "back" and free(kernel) and (bias is None or free(bias)):
            w = np.asarray(out[kernel.path], np.float64)
            if type(layer).__name__ in _DEPTHWISE:
                w = w * a.reshape(w.shape[-2], w.shape[-1])
            else:
                w = w * a
            out[kernel.path] = w.astype(np.float32)
            if bias is not None:
                out[bias.path] = (a * np.asarray(out[bias.path], np.float64) + c).astype(np.float32)
                scales[bias.path] = shift_scale
                c = np.zeros_like(c)
            a = np.ones_like(a)
            folded.append(bn.name)
        out[g], out[b] = a.astype(np.float32), c.astype(np.float32)
        scales[g], scales[b] = scale_scale, shift_scale
        out[bn.moving_mean.path] = np.zeros(mean.shape, np.float32)
        out[bn.moving_variance.path] = np.full(var.shape, unit_variance(bn.epsilon), np.float32)
    return out, scales, {"bn_affine": len(bns), "bn_folded": folded}
