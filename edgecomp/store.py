"""Keras model <-> ``.ecz`` container.

The container holds the model's architecture as Keras's own JSON config (data, no
code: it is rebuilt in Keras's safe mode) and every weight, each coded with the
method chosen for it. Decoding the weights needs numpy only
(:func:`edgecomp.codec.decode_weights`); rebuilding the Keras model needs Keras.

    >>> save_compressed(model, "vgg.ecz", methods={"fc1/kernel": "seed"})
    >>> restored = load_compressed("vgg.ecz")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgecomp import codec
from edgecomp.errors import ContainerError, EdgecompError, first_line
from edgecomp.io import write_bytes

FORMAT_NAME = "edgecomp.ecz"


def model_weights(model) -> dict[str, np.ndarray]:
    """``{variable path: float32 array}`` for every weight of ``model`` in order."""
    out = {}
    for var in model.weights:
        if var.path in out:
            raise EdgecompError(f"weight {var.path} appears twice (a shared layer)",
                                fix="compress models whose layers are used once")
        out[var.path] = np.asarray(var.numpy(), dtype=np.float32)
    return out


def encode_model(model, methods: dict[str, str] | None = None, info: dict | None = None) -> bytes:
    """Container bytes for ``model``: architecture config, weights coded per ``methods``."""
    config = json.loads(model.to_json())
    # The architecture only: training settings (optimizer, loss, with process-global counters
    # in their names) are not part of the model and would make the bytes depend on history.
    config.pop("compile_config", None)
    meta = {"format": FORMAT_NAME, "keras_config": config, "info": info or {}}
    return codec.encode_weights(model_weights(model), methods, meta)


def save_compressed(model, path: str | os.PathLike, methods: dict[str, str] | None = None,
                    info: dict | None = None) -> int:
    """Write ``model`` as a container at ``path`` (atomically); return the file's bytes."""
    data = encode_model(model, methods, info)
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


def decode_model(data: bytes, qat: bool = True):
    """Rebuild the Keras model stored in container bytes (safe mode) and set its weights.

    A container from a run with quantization-aware training decodes to its QAT model (the
    float layers with the stored activation ranges: int8 simulated, exporting int8 on them);
    ``qat=False`` gives the float model.
    """
    import keras

    meta, weights = codec.decode_weights(data)
    if meta.get("format") != FORMAT_NAME or not isinstance(meta.get("keras_config"), dict):
        raise ContainerError("container holds no edgecomp model description",
                             fix="pass a .ecz file written by edgecomp compress/run")
    try:
        model = keras.saving.deserialize_keras_object(meta["keras_config"], safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad config
        raise ContainerError(f"cannot rebuild the model from the container: {first_line(exc)}",
                             fix="decode it with the edgecomp and Keras versions that wrote it") from None
    by_path = {v.path: v for v in model.weights}
    if set(by_path) != set(weights):
        missing = sorted(set(by_path) ^ set(weights))
        raise ContainerError(f"container weights do not match the model: {', '.join(missing[:3])}",
                             fix="re-create the container")
    for name, value in weights.items():
        var = by_path[name]
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
