"""Runners: load one model file in its real runtime and run float inputs through it.

Every runner takes float32 inputs shaped like the Keras model's input and returns
float32 outputs, whatever the file's own I/O types are (int8 I/O is quantized
and dequantized here with the file's own scale and zero point).

    >>> runner = open_runner("model.tflite", threads=1)   # or .onnx, .keras, .ecz
    >>> probs = runner.predict(x_test)          # batched, float32
    >>> runner.prepare(batch=1); runner.invoke() # one timed call on prepared input

Runtime quirks live here, each with the version that needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgecomp.errors import EdgecompError, first_line

FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras", ".ecz": "ecz"}


class Runner:
    """Base interface. Subclasses implement ``_load``, ``_run`` (float in, float out)."""

    format = "?"

    def __init__(self, path: str | os.PathLike, threads: int = 1, **options):
        self.path = Path(path)
        self.threads = int(threads)
        self.options = options
        self._prepared = None
        if not self.path.is_file():
            raise EdgecompError(f"model file {self.path} does not exist", fix="check the path")
        self._load()

    # -- subclass hooks -------------------------------------------------
    def _load(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public API -----------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Run ``x`` (float32, N first) in chunks and return the float32 outputs."""
        x = np.asarray(x, dtype=np.float32)
        outs = [self._run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs, axis=0) if outs else np.zeros((0,), np.float32)

    def prepare(self, x: np.ndarray):
        """Set the input for :meth:`invoke` (used by the latency loop)."""
        self._prepared = np.asarray(x, dtype=np.float32)

    def invoke(self) -> np.ndarray:
        return self._run(self._prepared)


class KerasRunner(Runner):
    """A ``.keras`` file in Keras (safe mode), on TensorFlow with ``threads`` intra-op threads."""

    format = "keras"

    def _load(self):
        try:  # only possible before TensorFlow's runtime starts (so: in a fresh worker)
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(self.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except (ImportError, RuntimeError):
            pass
        self.model = self._load_model()

    def _load_model(self):
        from edgecomp.models import load_keras_model
        return load_keras_model(self.path)

    def _run(self, x):
        return np.asarray(self.model(x, training=False), dtype=np.float32)


class EczRunner(KerasRunner):
    """A ``.ecz`` container, decoded with ``edgecomp.store.load_compressed`` and run as Keras.

    The decode is part of the load, so a record's ``init_ms`` includes it.
    """

    format = "ecz"

    def _load_model(self):
        from edgecomp.store import load_compressed
        return load_compressed(self.path)


class LiteRTRunner(Runner):
    """LiteRT (``ai_edge_litert``) interpreter.

    ``resolver="auto"`` tries the default delegate and falls back to the built-in kernels
    when the delegate can't take the graph; ``resolver="default"`` uses the default XNNPACK delegate; ``"builtin"`` the
    built-in kernels without default delegates. ai-edge-litert 2.3: int8 +
    EXPERIMENTAL_SPARSITY files fail to prepare under XNNPACK, so they need
    ``builtin`` (see exporters.tflite).
    """

    format = "tflite"

    def _load(self):
        from ai_edge_litert import interpreter as litert
        resolver = self.options.get("resolver", "default")
        kind = {"default": litert.OpResolverType.AUTO, "auto": litert.OpResolverType.AUTO,
                "builtin": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}.get(resolver)
        if kind is None:
            raise EdgecompError(f"unknown LiteRT resolver '{resolver}'", fix="use 'default', 'builtin' or 'auto'")
        try:
            self.interp = litert.Interpreter(model_path=str(self.path), num_threads=self.threads,
                                             experimental_op_resolver_type=kind)
            self.interp.allocate_tensors()
            # Prepare once at batch 1 and run: a delegate that can't take the graph fails here.
            first = self.interp.get_input_details()[0]
            self.interp.resize_tensor_input(first["index"], [1, *first["shape"][1:]])
            self.interp.allocate_tensors()
            self.interp.set_tensor(first["index"], np.zeros([1, *first["shape"][1:]], first["dtype"]))
            self.interp.invoke()
        except (ValueError, RuntimeError) as exc:
            # ai-edge-litert 2.3: int8 + EXPERIMENTAL_SPARSITY files fail to prepare under the
            # default XNNPACK delegate ("failed to delegate FULLY_CONNECTED"); they run on the
            # built-in kernels. Fall back, and say so in the runner's ``resolver``.
            if resolver == "auto" and "delegate" in str(exc).lower():
                self.fallback = first_line(exc)
                self.options["resolver"] = "builtin"
                return self._load()
            raise EdgecompError(f"LiteRT cannot load {self.path.name}: {first_line(exc)}",
                                fix="re-export the model, or try resolver='builtin'") from None
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._batch = int(self._in["shape"][0])

    def _resize(self, n: int):
        if n != self._batch:
            self.interp.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
            self.interp.allocate_tensors()
            self._in = self.interp.get_input_details()[0]
            self._out = self.interp.get_output_details()[0]
            self._batch = n

    def _quantize_input(self, x):
        dtype = self._in["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize_output(self, y):
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = self._out["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def _run(self, x):
        self._resize(len(x))
        self.interp.set_tensor(self._in["index"], self._quantize_input(x))
        self.interp.invoke()
        return self._dequantize_output(self.interp.get_tensor(self._out["index"]))

    def prepare(self, x):
        self._resize(len(x))
        self.interp.set_tensor(self._in["index"], self._quantize_input(np.asarray(x, np.float32)))

    def invoke(self):
        self.interp.invoke()
        return self.interp.get_tensor(self._out["index"])


class OnnxRunner(Runner):
    """ONNX Runtime CPU session; ``optimization`` is one of disable/basic/extended/all."""

    format = "onnx"

    def _load(self):
        import onnxruntime as ort
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        level = self.options.get("optimization", "all")
        if level not in levels:
            raise EdgecompError(f"unknown ONNX Runtime optimization level '{level}'",
                                fix=f"use one of: {', '.join(levels)}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = levels[level]
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EdgecompError(f"ONNX Runtime cannot load {self.path.name}: {first_line(exc)}",
                                fix="re-export the model") from None
        self._in = self.sess.get_inputs()[0]
        self._out = self.sess.get_outputs()[0].name

    def _run(self, x):
        return np.asarray(self.sess.run([self._out], {self._in.name: x})[0], dtype=np.float32)

    def prepare(self, x):
        self._feed = {self._in.name: np.asarray(x, np.float32)}

    def invoke(self):
        return self.sess.run([self._out], self._feed)[0]


_RUNNERS = {"tflite": LiteRTRunner, "onnx": OnnxRunner, "keras": KerasRunner, "ecz": EczRunner}


def format_of(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise EdgecompError(f"cannot tell the format of {path}",
                            fix=f"use a file ending in one of: {', '.join(FORMATS)}")
    return FORMATS[suffix]


def set_cpu_affinity(cpus) -> set[int] | None:
    """Pin the calling thread (and threads it starts later) to ``cpus``; return the old set.

    Call it before opening a runner so the runtime's thread pool inherits it.
    Returns None (and does nothing) where the OS has no affinity call (macOS).

    Example:
        >>> old = set_cpu_affinity([0])
        >>> _ = set_cpu_affinity(old)  # restore
    """
    if not (hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")):
        return None
    wanted = {int(c) for c in cpus}
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, wanted)
    except (OSError, ValueError) as exc:
        raise EdgecompError(f"cannot pin to CPUs {sorted(wanted)}: {exc}",
                            fix=f"use CPU ids from {sorted(old)}") from None
    return old


def open_runner(path: str | os.PathLike, threads: int = 1, **options) -> Runner:
    """Open ``path`` in the runtime its suffix names (.tflite, .onnx, .keras, .ecz).

    Example:
        >>> open_runner("m.onnx", threads=2).predict(x).shape     # doctest: +SKIP
        (64, 10)
    """
    return _RUNNERS[format_of(path)](path, threads=threads, **options)
