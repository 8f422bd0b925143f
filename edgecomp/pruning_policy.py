"""Pruning policies: which weights may be pruned so that a runtime's fast path takes the model.

As tfmot's ``PruneForLatencyOnXNNPack``: :class:`XNNPackSparse` prunes only the
1x1 convolutions, to at least 2/3 zeros each, and checks that the model is one
XNNPACK's sparse NCHW path can take. That path runs only on ARM (it is off on x86
CPUs with AVX), for fp32/fp16 files exported with sparse weights
(``tflite:fp32-sparse``: the DENSIFY op is what tells the delegate to try it), and
only for a subgraph that (XNNPACK ``xnn_check_nchw_compatibility``, ai-edge-litert 2.3):

- starts with a 3x3 stride-2 convolution on 3 channels padded by exactly 1 on every
  side. Keras ``padding="same"`` reaches XNNPACK as TensorFlow SAME padding, which
  the check refuses; write ``ZeroPadding2D(1)`` then ``padding="valid"`` (XNNPACK
  fuses the pad into the convolution);
- holds 1x1 stride-1 convolutions (sparse: at least 2/3 of each kernel zero),
  depthwise 3x3 / 5x5 convolutions padded the same explicit way, element-wise
  add/multiply and activations;
- ends in a global average pooling (a MEAN).

``edgecomp.runtime_bench`` shows the path running on the emulated arm64 target
(``xnn_f32_spmm_*`` kernels in the record's ``kernels``).

    >>> policy = policy_from("xnnpack-sparse")
    >>> policy.problems(model)              # [] when the model is eligible   # doctest: +SKIP
    >>> policy.layer_rates(model)           # (("stem", 0.0), ("head", 0.0)): only 1x1 convs pruned  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from edgecomp.errors import EdgecompError
from edgecomp.graph import leaf_layers
from edgecomp.pruning_config import Config, from_kind_config

#: XNNPACK takes a 1x1 convolution sparse when at least this share of its weights is zero.
XNNPACK_MIN_SPARSITY = 2 / 3
_INSIDE = ("ReLU", "Activation", "BatchNormalization", "Add", "Multiply", "Dropout", "ZeroPadding2D")


def _is_pointwise(layer) -> bool:
    from keras import layers
    return (type(layer) is layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and getattr(layer, "groups", 1) == 1)


def _pad_before(layer, previous) -> int | None:
    """The symmetric explicit padding a layer gets from the ZeroPadding2D right before it (None: none)."""
    from keras import layers
    if not isinstance(previous, layers.ZeroPadding2D):
        return None
    (top, bottom), (left, right) = previous.padding
    return top if top == bottom == left == right else -1


@dataclasses.dataclass(frozen=True)
class XNNPackSparse(Config):
    """Prune only 1x1 convolutions, each to at least 2/3 zeros; refuse models the sparse path can't take.

    Args:
        strict: raise on an ineligible model (default); False only warns in :meth:`check`.

    Example:
        >>> from edgecomp import compress                                  # doctest: +SKIP
        >>> result = compress(model, data, rate=0.8, policy="xnnpack-sparse")   # doctest: +SKIP
    """

    strict: bool = True
    kind: ClassVar[str] = "xnnpack-sparse"

    def eligible(self, model) -> list[str]:
        """Names of the layers this policy prunes: plain 1x1 stride-1 Conv2D layers."""
        return [layer.name for layer in leaf_layers(model) if _is_pointwise(layer)]

    def problems(self, model) -> list[str]:
        """Why XNNPACK's sparse path would not take ``model`` (empty when it would)."""
        from keras import layers
        seq = list(leaf_layers(model))
        conv_kinds = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
        convs = [(i, l) for i, l in enumerate(seq) if isinstance(l, conv_kinds)]
        out = []
        if not convs:
            return ["the model has no convolutions"]
        i, stem = convs[0]
        if isinstance(stem, layers.DepthwiseConv2D) or type(stem) is not layers.Conv2D \
                or tuple(stem.kernel_size) != (3, 3) or tuple(stem.strides) != (2, 2) \
                or stem.input.shape[-1] != 3:
            out.append(f"the first convolution {stem.name} must be a 3x3 stride-2 Conv2D on 3 channels")
        elif not (stem.padding == "valid" and _pad_before(stem, seq[i - 1] if i else None) == 1):
            out.append(f"{stem.name}: use ZeroPadding2D(1) then padding='valid' (XNNPACK refuses TensorFlow "
                       "SAME padding on the sparse path's first convolution)")
        for i, layer in convs[1:]:
            if isinstance(layer, layers.DepthwiseConv2D):
                k = tuple(layer.kernel_size)
                if k not in ((3, 3), (5, 5)) or layer.depth_multiplier != 1:
                    out.append(f"{layer.name}: depthwise {k[0]}x{k[1]} (multiplier {layer.depth_multiplier}) is "
                               "not on the sparse path (3x3 or 5x5, multiplier 1)")
                elif not (layer.padding == "valid" and _pad_before(layer, seq[i - 1]) == k[0] // 2):
                    out.append(f"{layer.name}: use ZeroPadding2D({k[0] // 2}) then padding='valid' (XNNPACK "
                               "refuses TensorFlow SAME padding on its sparse path)")
            elif not _is_pointwise(layer):
                out.append(f"{layer.name}: only 1x1 stride-1 convolutions follow the stem on the sparse path")
        pools = [i for i, l in enumerate(seq) if isinstance(l, layers.GlobalAveragePooling2D)]
        if not pools or pools[0] < convs[-1][0]:
            out.append("the convolutions must end in a GlobalAveragePooling2D (a MEAN)")
        else:
            between = {type(l).__name__ for l in seq[convs[0][0]:pools[0]]
                       if not isinstance(l, (*conv_kinds, layers.InputLayer))}
            bad = sorted(b for b in between if b not in _INSIDE)
            if bad:
                out.append(f"layers {', '.join(bad)} are not on XNNPACK's sparse path")
        if not self.eligible(model):
            out.append("the model has no 1x1 convolutions to prune")
        return out

    def check(self, model, rate: float) -> None:
        """Raise (``strict``) or warn when ``model`` or ``rate`` can't give the sparse path."""
        if rate < XNNPACK_MIN_SPARSITY - 1e-9:
            raise EdgecompError(f"policy xnnpack-sparse needs a rate of at least 2/3 (XNNPACK's sparse 1x1 "
                                f"convolutions need 2/3 zeros), got {rate:g}", fix="use e.g. --compress-rate 0.8")
        found = self.problems(model)
        if found and self.strict:
            raise EdgecompError(f"policy xnnpack-sparse: {found[0]}" + (f" (and {len(found) - 1} more)"
                                                                     if len(found) > 1 else ""),
                                fix="change the model as said, or drop --pruning-policy")
        if found:
            import warnings
            warnings.warn("policy xnnpack-sparse: " + "; ".join(found), stacklevel=2)

    def layer_rates(self, model) -> tuple:
        """Per-layer rate rules that keep every other prunable layer dense (rate 0); the eligible
        layers get the recipe's rate, criterion and schedule."""
        from edgecomp.match import layer_name
        from edgecomp.pruning import prunable_weights

        keep = set(self.eligible(model))
        names = dict.fromkeys(layer_name(v.path) for v, _ in prunable_weights(model, skip_first=False))
        return tuple((name, 0.0) for name in names if name not in keep)

    def verify(self, model, masks: dict) -> None:
        """Raise when a pruned 1x1 kernel kept more than 1/3 of its weights (XNNPACK would run it dense)."""
        from edgecomp.match import layer_name

        keep = set(self.eligible(model))
        for path, mask in masks.items():
            zeros = 1.0 - float(mask.mean())
            if layer_name(path) in keep and zeros < XNNPACK_MIN_SPARSITY - 1e-9:
                raise EdgecompError(f"policy xnnpack-sparse: {path} has {zeros:.1%} zeros, under the 2/3 XNNPACK's "
                                    "sparse path needs", fix="raise the rate, or use --criterion layer")

    def __str__(self):
        return self.kind


POLICIES = {"xnnpack-sparse": XNNPackSparse}


def policy_from(spec):
    """A policy from an object, its config, its name, or None (no policy)."""
    if spec is None or spec == "none" or isinstance(spec, XNNPackSparse):
        return None if spec in (None, "none") else spec
    if isinstance(spec, dict):
        return from_kind_config(POLICIES, spec, "pruning policy")
    if str(spec) not in POLICIES:
        raise EdgecompError(f"unknown pruning policy '{spec}'", fix=f"use one of: {', '.join(POLICIES)}")
    return POLICIES[str(spec)]()
