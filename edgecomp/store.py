"""Keras model <-> ``.ecz`` container.

The container holds the model's architecture as Keras's own JSON config (data, no
code: it is rebuilt in Keras's safe mode) and every weight, each coded with the
method chosen for it. Decoding the weights needs numpy only
(:func:`edgecomp.codec.decode_weights`); rebuilding the Keras model needs Keras.

    >>> save_compressed(model, "vgg.ecz", methods={"fc1/kernel": "seed"})
    >>> restored = load_compressed("vgg.ecz")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from pathlib import Path

import numpy as np

from edgecomp import codec
from edgecomp.errors import ContainerError, EdgecompError, first_line
from edgecomp.io import write_bytes

FORMAT_NAME = "edgecomp.ecz"
_PATCH_LOCK = threading.Lock()   # one guarded rebuild at a time (it wraps Layer.add_weight)


def model_weights(model) -> dict[str, np.ndarray]:
    """``{variable path: float32 array}`` for every weight of ``model`` in order."""
    out = {}
    for var in model.weights:
        if var.path in out:
            raise EdgecompError(f"weight {var.path} appears twice (a shared layer)",
                                fix="compress models whose layers are used once")
        out[var.path] = np.asarray(var.numpy(), dtype=np.float32)
    return out


#: How the tensors ``methods`` does not code (BatchNorm parameters, biases, uncoded kernels) are
#: stored: policy -> (store BNs in their folded form?, compact methods allowed).
#: ``raw``: float32, as before (lossless: what checkpoints need). ``fold``: BN folded form
#: (:func:`edgecomp.fold.storage_form`), its constant vectors as ``const``. ``fp16`` adds half
#: floats, ``compact`` adds 8-bit, each only where the decode stays within ``tol``.
SMALL_POLICIES = {"raw": (False, ()), "fold": (True, ("const",)), "fp16": (True, ("const", "f16")),
                  "compact": (True, ("const", "q8", "f16"))}


def _small_plan(model, weights: dict, coded: set, small: str, tol: float | None):
    """``(weights, {name: compact MethodSpec} or None, storage meta or None)`` for policy ``small``:
    a BN's rewritten scale and shift are held to their error scales in output units
    (:func:`edgecomp.fold.storage_form`), any other tensor to its own values'."""
    if small not in SMALL_POLICIES:
        raise EdgecompError(f"unknown small-tensor storage '{small}'", fix=f"use one of: {', '.join(SMALL_POLICIES)}")
    fold_bn, allow = SMALL_POLICIES[small]
    if small == "raw":
        return weights, None, None
    tol = codec.COMPACT_TOL if tol is None else float(tol)
    summary, scales = {}, {}
    if fold_bn:
        from edgecomp.fold import storage_form
        weights, scales, summary = storage_form(model, weights, coded)
    storage = {"small": small, "tol": tol, "bn_affine": summary.get("bn_affine", 0),
               "bn_folded": len(summary.get("bn_folded", ()))}
    spec = lambda n: codec.MethodSpec("compact", {"tol": tol, "allow": allow,  # noqa: E731
                                                  **({"scale": scales[n]} if n in scales else {})})
    return weights, {n: spec(n) for n in weights if n not in coded}, storage


def _method_name(m) -> str:
    return m.method if isinstance(m, codec.MethodSpec) else m


def encode_model(model, methods: dict[str, str] | None = None, info: dict | None = None, *,
                 small: str = "raw", tol: float | None = None) -> bytes:
    """Container bytes for ``model``: architecture config, weights coded per ``methods``; the
    weights ``methods`` leaves out are stored per ``small`` (:data:`SMALL_POLICIES`) within ``tol``
    (default ``codec.COMPACT_TOL``: each value within 2**-10, see :func:`edgecomp.codec.compact.within`).

    Example:
        >>> data = encode_model(model, specs, small="compact")   # BN folded form, fp16/8-bit/const
    """
    config = json.loads(model.to_json())
    # The architecture only: training settings (optimizer, loss, with process-global counters
    # in their names) are not part of the model and would make the bytes depend on history.
    config.pop("compile_config", None)
    meta = {"format": FORMAT_NAME, "keras_config": config, "info": info or {}}
    methods = dict(methods or {})
    coded = {n for n, m in methods.items() if _method_name(m) != "raw"}
    weights, specs, storage = _small_plan(model, model_weights(model), coded, small, tol)
    if specs is not None:
        methods = {**{n: s for n, s in specs.items() if n not in methods}, **methods}
        meta["storage"] = storage
    return codec.encode_weights(weights, methods, meta)


def compact_container(data: bytes, small: str = "compact", tol: float | None = None) -> bytes:
    """``data`` (container bytes) with its raw float32 records stored per ``small`` instead;
    every coded record (seed, deep) is kept byte for byte.

    Example:
        >>> smaller = compact_container(result.container)    # same model, fewer bytes
    """
    from edgecomp.codec.container import write_container

    meta, records = codec.read_container(data)
    model = decode_model(data, qat=False)
    raw = {r.name for r in records if r.method == codec.RAW}
    weights, specs, storage = _small_plan(model, model_weights(model), {r.name for r in records} - raw, small, tol)
    if specs is None:
        return bytes(data)
    out = [codec.encode_tensor(r.name, weights[r.name], specs[r.name]) if r.name in raw else r for r in records]
    return write_container({**meta, "storage": storage}, out)


def save_compressed(model, path: str | os.PathLike, methods: dict[str, str] | None = None,
                    info: dict | None = None, *, small: str = "raw", tol: float | None = None) -> int:
    """Write ``model`` as a container at ``path`` (atomically); return the file's bytes."""
    data = encode_model(model, methods, info, small=small, tol=tol)
    write_bytes(path, data)
    return len(data)


def read_compressed(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise EdgecompError(f"container {path} does not exist", fix="check the path, or run compress first")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EdgecompError(f"cannot read {path}: {exc.strerror}", fix="check the file's permissions") from None


#: Bounds on a container's model description, checked before Keras builds anything.
MAX_DESCRIPTION_DEPTH = 64
#: Layers a description may declare: this many per stored tensor, plus a base (weightless
#: layers, activations, pools, adds, are a few per weighted one in every family we know).
LAYERS_PER_TENSOR, LAYERS_BASE = 4, 64
#: Dense elements a container may declare per byte it holds, plus a base: far above any real
#: compression (122x smaller than fp32 is 30 elements per byte), far below a few bytes declaring
#: a huge all-zero tensor (a pruned record stores only its kept weights, so shapes are free).
ELEMENTS_PER_BYTE, ELEMENTS_BASE = 4096, 1 << 22
#: Classes that carry code; refused even where Keras's safe mode would only warn.
CODE_CLASSES = frozenset({"Lambda", "TFSMLayer", "__lambda__"})


def check_description(config, n_tensors: int) -> None:
    """Refuse a model description that is too deep, declares more layers than the container's
    tensors can account for, or names a class that is code-bearing, not Keras's own and not
    registered here. Pure JSON: nothing is built. Raises ContainerError."""
    import keras

    fix = "pass a .ecz file written by edgecomp compress/run"
    layers, stack = 0, [(config, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_DESCRIPTION_DEPTH:
            raise ContainerError(f"the model description nests deeper than {MAX_DESCRIPTION_DEPTH} levels", fix=fix)
        if isinstance(obj, dict):
            name = obj.get("class_name")
            if isinstance(name, str):
                module, registered = obj.get("module"), obj.get("registered_name")
                if name in CODE_CLASSES:
                    raise ContainerError(f"the model description holds a {name} (code), which a container never "
                                         "carries", fix=fix)
                if module is not None and not (isinstance(module, str) and module.split(".")[0] == "keras"):
                    if not (isinstance(registered, str) and keras.saving.get_registered_object(registered)):
                        raise ContainerError(f"the model description names class {str(name)[:60]!r} of module "
                                             f"{str(module)[:60]!r}, which is neither Keras's nor registered here",
                                             fix="register the custom layer (keras.saving.register_keras_serializable) "
                                                 "before decoding, or pass a container of Keras layers")
                if isinstance(obj.get("config"), dict) and ("inbound_nodes" in obj or "build_config" in obj):
                    layers += 1
            stack.extend((v, depth + 1) for v in obj.values() if isinstance(v, (dict, list)))
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj if isinstance(v, (dict, list)))
    limit = LAYERS_PER_TENSOR * n_tensors + LAYERS_BASE
    if layers > limit:
        raise ContainerError(f"the model description declares {layers} layers for {n_tensors} stored tensors "
                             f"(at most {limit})", fix=fix)


@contextlib.contextmanager
def _weights_held_by(shapes: list[tuple]):
    """While Keras rebuilds a model, refuse (before it is allocated) any weight whose shape is
    not one of the container's stored tensors, or past twice their total: a description can
    only make the loader allocate what the file holds."""
    from keras.src.layers.layer import Layer

    stored = [tuple(int(d) for d in s) for s in shapes]
    held = set(stored)
    # A shape the container does not hold is refused; a held shape may be built more often than it
    # is stored (Bidirectional builds a template layer besides its two directions), up to twice the
    # stored total.
    budget = 2 * sum(math.prod(s) for s in stored) + (1 << 16)
    owner = threading.get_ident()

    def guarded(original):
        def add_weight(self, *args, shape=None, **kwargs):
            nonlocal budget
            if threading.get_ident() != owner:   # another thread building its own model: not ours to check
                return original(self, *args, shape=shape, **kwargs)
            given = shape if shape is not None else (args[0] if args and not isinstance(args[0], str) else ())
            want = tuple(int(d) for d in given)
            budget -= math.prod(want)
            if want not in held or budget < 0:
                raise ContainerError(f"the model description makes layer {self.name!r} allocate a weight of shape "
                                     f"{list(want)}, which the container does not hold",
                                     fix="re-create the container; its description and tensors disagree")
            return original(self, *args, shape=shape, **kwargs)
        return add_weight

    with _PATCH_LOCK:   # the original is read under the lock: a concurrent decode cannot capture our wrapper
        original = Layer.add_weight
        Layer.add_weight = guarded(original)
        try:
            yield
        finally:
            Layer.add_weight = original


def _pair_weights(variables, weights: dict) -> list:
    """``(variable, (stored name, value))`` pairs: by path, or by position where Keras named the
    rebuilt variables anew.

    Keras 3.15 gives a variable created without a name a process-wide counter in its path
    (ConvNeXt's ``LayerScale``: ``variable_18`` in one process, ``variable`` in the next), and renames
    the weights of a rebuilt ``Bidirectional``. The container holds the weights in the model's own
    order (``model.weights``), which the same description rebuilds, so where the names differ the
    weights pair by position, provided every shape matches in order.
    """
    variables = list(variables)
    by_path = {v.path: v for v in variables}
    if set(by_path) == set(weights) and len(by_path) == len(variables):
        return [(by_path[name], (name, value)) for name, value in weights.items()]
    stored = list(weights.items())
    if len(variables) == len(stored) and all(tuple(v.shape) == w.shape for v, (_, w) in zip(variables, stored)):
        return list(zip(variables, stored))
    missing = sorted(set(by_path) ^ set(weights))
    raise ContainerError(f"container weights do not match the model: {', '.join(missing[:3])}",
                         fix="re-create the container")


def decode_model(data: bytes, qat: bool = True):
    """Rebuild the Keras model stored in container bytes (safe mode) and set its weights.

    A container from a run with quantization-aware training decodes to its QAT model (the
    float layers with the stored activation ranges: int8 simulated, exporting int8 on them);
    ``qat=False`` gives the float model. Before anything is built, the declared weights are
    bounded by the file's size and the description by :func:`check_description`; while Keras
    builds it, no layer may allocate a weight the container does not hold.
    """
    import keras

    meta, records = codec.read_container(data)   # parsed once: bounded here, then decoded
    declared = sum(rec.size for rec in records)
    limit = ELEMENTS_PER_BYTE * len(data) + ELEMENTS_BASE
    if declared > limit:
        raise ContainerError(f"the container's {len(data):,} bytes declare {declared:,} weights, over the "
                             f"{ELEMENTS_PER_BYTE:,}-per-byte bound ({limit:,})",
                             fix="re-create the container; no compressed model is that sparse")
    weights = codec.weights_from_records(records)
    if meta.get("format") != FORMAT_NAME or not isinstance(meta.get("keras_config"), dict):
        raise ContainerError("container holds no edgecomp model description",
                             fix="pass a .ecz file written by edgecomp compress/run")
    check_description(meta["keras_config"], len(weights))
    try:
        with _weights_held_by([w.shape for w in weights.values()]):
            model = keras.saving.deserialize_keras_object(meta["keras_config"], safe_mode=True)
    except ContainerError:
        raise
    except Exception as exc:  # Keras raises many types for a bad config
        raise ContainerError(f"cannot rebuild the model from the container: {first_line(exc)}",
                             fix="decode it with the edgecomp and Keras versions that wrote it") from None
    for var, (name, value) in _pair_weights(model.weights, weights):
        if tuple(var.shape) != value.shape:
            raise ContainerError(f"weight {name} has shape {value.shape}, the model expects {tuple(var.shape)}",
                                 fix="re-create the container")
        var.assign(value)
    info = meta.get("info")
    record = info.get("qat") if isinstance(info, dict) else None
    if qat and record is not None:
        from edgecomp.qat import restore
        return restore(model, record)
    return model


def load_compressed(path: str | os.PathLike):
    """Read and decode a container file into a Keras model."""
    return decode_model(read_compressed(path))
