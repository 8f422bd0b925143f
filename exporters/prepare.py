"""Model clean-up before a calibrated export (``int8*``, ``int16x8``); the Keras model itself is never changed.

**Constant BatchNorm channels.** A unit that ReLU keeps at 0 on every input (a "dead" unit,
common after pruning) reaches the next BatchNormalization with moving variance ~0, so that
channel's gain is ``gamma / sqrt(var + eps)``, about 32 for Keras's ``eps=1e-3``. The channel's
output is a constant, but the converters fold the gain into the weights around it: TF 2.21's
TFLite converter folds a BatchNormalization that follows Dense+ReLU into the *next*
FULLY_CONNECTED's weights, where these 32x rows set the int8 weight scale and crush every
other weight (bench_zoo's PointNet, Nov 2026: 40% of its T-net and head units were dead, and its
int8 TFLite file agreed with Keras on 87.5% of the test clouds, 93.8% once settled);
ONNX Runtime's static quantizer (1.32) sees the same 32x rows after tf2onnx folds the Mul.
:func:`settle_constant_channels` finds the channels whose input is constant on the
calibration data and gives them gain 0 and the constant output as their offset, which is
the same function on those inputs and leaves nothing for the converters to blow up.

    >>> clean = settle_constant_channels(model, x_train[:200])

**ReLU -> BatchNorm range equalization.** A Conv/Dense with ReLU followed by a BatchNormalization
(PointNet's blocks) hands the BN channels whose ranges differ by up to ~800x (bench_zoo's PointNet,
Nov 2026); the int8 converters give that tensor one scale, so the narrow channels get a few levels,
and the BN gain (or the next layer's weights, where the converter folds the BN in) amplifies
their rounding error. ReLU commutes with a positive scale, so :func:`equalize_relu_batchnorm`
multiplies each such channel by ``s = max range / its range`` in the Conv/Dense (kernel column and
bias; per-channel int8 weights absorb it) and divides it out in the BN (moving mean times ``s``,
gamma over ``s``): the same function in float, one range for every channel of the ReLU output
(Nagel et al. 2019, "Data-Free Quantization", cross-layer equalization).
"""

from __future__ import annotations

import numpy as np


def _batchnorms(model, graph=None):
    """Top-level BatchNormalization layers with a gain and an offset, one call, channels last."""
    import keras

    from edgecomp.graph import ModelGraph

    graph = graph or ModelGraph(model, expand_nested=False)
    found = []
    for node in graph.layer_nodes():
        layer = node.layer
        if not isinstance(layer, keras.layers.BatchNormalization) or not (layer.scale and layer.center):
            continue
        if len(graph.calls(node.path)) != 1 or layer.axis not in (-1, node.inputs[0].rank - 1):
            continue
        found.append(layer)
    return found


#: Upper bound on the activations one probe batch may hold (every BN input of every sample).
_PROBE_BYTES = 256 << 20


def _input_ranges(model, layers, calibration, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel ``(min, max)`` of each layer's input over ``calibration``.

    Batches are at most ``batch_size`` samples and small enough that all the inputs of one
    batch fit in 256 MB, however large the model's feature maps are.
    """
    import keras

    per_sample = 4 * sum(int(np.prod([d or 1 for d in layer.input.shape[1:]])) for layer in layers)
    batch_size = max(1, min(int(batch_size), _PROBE_BYTES // max(1, per_sample)))
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    lo = hi = None
    for start in range(0, len(calibration), batch_size):
        outs = probe([calibration[start:start + batch_size]], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        flat = [np.asarray(o).reshape(-1, o.shape[-1]) for o in outs]
        mins, maxs = [f.min(0) for f in flat], [f.max(0) for f in flat]
        lo = mins if lo is None else [np.minimum(a, b) for a, b in zip(lo, mins)]
        hi = maxs if hi is None else [np.maximum(a, b) for a, b in zip(hi, maxs)]
    return list(zip(lo, hi))


def _copy(model):
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def constant_channels(model, calibration, batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{bn layer name: (mask of channels whose input never changes, their value)}`` on ``calibration``."""
    layers = _batchnorms(model)
    if not layers:
        return {}
    found = {}
    for layer, (a, b) in zip(layers, _input_ranges(model, layers, calibration, batch_size)):
        mask = a == b
        if mask.any():
            found[layer.name] = (mask, a)
    return found


def relu_batchnorm_pairs(model):
    """``[(conv or dense layer, batchnorm layer)]``: a ReLU Conv/Dense with a bias whose only
    consumer is the BN (and whose output is not also a model output)."""
    import keras

    from edgecomp.graph import ModelGraph

    linear = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Dense)
    graph = ModelGraph(model, expand_nested=False)
    pairs = []
    for bn in _batchnorms(model, graph):
        parents = graph.producers_of(graph.node(bn.name))
        src = parents[0] if len(parents) == 1 else None
        if (src is not None and isinstance(src.layer, linear) and src.layer.use_bias
                and getattr(src.layer, "activation", None) is keras.activations.relu
                and len(graph.calls(src.path)) == 1 and sum(len(t.consumers) for t in src.outputs) == 1
                and not graph.feeds_output(src)):
            pairs.append((src.layer, bn))
    return pairs


#: Largest factor a channel is scaled up by (a nearly dead channel would ask for more).
MAX_EQUALIZATION_SCALE = 1e4


def equalize_relu_batchnorm(model, calibration, batch_size: int = 64):
    """A copy of ``model`` where each ReLU output feeding a BatchNormalization has every channel's
    maximum (on ``calibration``) scaled up to the largest one, undone in the BN; ``model`` itself
    when there is nothing to scale. Outputs are unchanged up to float rounding."""

    pairs = relu_batchnorm_pairs(model)
    if not pairs:
        return model
    ranges = _input_ranges(model, [bn for _, bn in pairs], np.asarray(calibration, np.float32), batch_size)
    clone = _copy(model)
    for (src, bn), (_, top) in zip(pairs, ranges):
        live = top > 0
        if not live.any():
            continue
        scale = np.ones_like(top)
        scale[live] = np.clip(top[live].max() / top[live], 1.0, MAX_EQUALIZATION_SCALE)
        conv, norm = clone.get_layer(src.name), clone.get_layer(bn.name)
        conv.kernel.assign(conv.kernel.numpy() * scale)
        conv.bias.assign(conv.bias.numpy() * scale)
        norm.moving_mean.assign(norm.moving_mean.numpy() * scale)
        norm.gamma.assign(norm.gamma.numpy() / scale)
    return clone


def settle_constant_channels(model, calibration, batch_size: int = 64):
    """A copy of ``model`` where each BatchNormalization channel with a constant input (on
    ``calibration``) has gain 0 and its constant output as offset; ``model`` itself when no
    channel is constant. Outputs on inputs like ``calibration`` are unchanged."""

    found = constant_channels(model, np.asarray(calibration, np.float32), batch_size)
    if not found:
        return model
    clone = _copy(model)
    for name, (mask, value) in found.items():
        layer = clone.get_layer(name)
        gamma, beta = np.array(layer.gamma.numpy()), np.array(layer.beta.numpy())
        mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
        out = gamma * (value - mean) / np.sqrt(var + layer.epsilon) + beta
        beta[mask] = out[mask]
        gamma[mask] = 0.0
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return clone
