"""Helpers shared by the timing checks in ``scripts/`` (bench_latency_check, bench_spread).

    >>> model = check_model(None, "runs/bench_checks")   # runs/latest/edgecomp_int8.tflite, or a built one
    >>> x = inputs_for(model, n=64)                       # float32, shaped like the model's input

Not part of the measuring path: nothing here is imported by ``bench_files``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from edgecomp.errors import EdgecompError

#: The model the checks use when none is given, if it exists.
DEFAULT_MODEL = Path("runs/latest/edgecomp_int8.tflite")


def check_model(model: str | os.PathLike | None, work_dir: str | os.PathLike) -> Path:
    """``model`` if given; else :data:`DEFAULT_MODEL` if it exists; else a small CNN converted here.

    The built model (``work_dir/small_cnn_fp32.tflite``, untrained: latency does
    not depend on the weights' values) is a 28x28x1 CNN of two 3x3 convolutions
    (16 and 32 filters, each followed by 2x2 max-pooling) and a 10-way dense layer,
    converted to float32 TFLite.

    Example:
        >>> check_model("m.tflite", "/tmp")
        PosixPath('m.tflite')
    """
    if model is not None:
        path = Path(model)
        if not path.is_file():
            raise EdgecompError(f"model file {path} does not exist", fix="check --model")
        return path
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    out = Path(work_dir) / "small_cnn_fp32.tflite"
    if out.is_file():
        return out
    import keras
    import tensorflow as tf

    from edgecomp.io import write_bytes

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    out_t = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(h))
    data = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out_t)).convert()
    write_bytes(out, data)
    return out


def input_shape(model: str | os.PathLike) -> tuple[int, ...]:
    """The first input's shape as the file declares it (batch first), read with LiteRT.

    Example:
        >>> input_shape("runs/latest/edgecomp_int8.tflite")      # doctest: +SKIP
        (1, 28, 28, 1)
    """
    from ai_edge_litert import interpreter as litert

    interp = litert.Interpreter(model_path=str(model))
    return tuple(int(d) for d in interp.get_input_details()[0]["shape"])


def inputs_for(model: str | os.PathLike, n: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` uniform [0, 1) float32 samples shaped like ``model``'s input (without its batch)."""
    shape = input_shape(model)[1:]
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def write_check(out: Path, result: dict, *, title: str, script: str, argv, setup: str,
                head: list[str], rows: list[list[str]], align: str, verdict: str) -> None:
    """Write a check's ``result`` as JSON to ``out`` and as a Markdown table beside it
    (``out`` with ``.md``): title, the command that made it, ``setup``, the table, ``verdict``."""
    from edgecomp.io import write_json, write_text
    from edgecomp.report import markdown_table

    command = " ".join(["python", f"scripts/{script}", *(argv if argv is not None else sys.argv[1:])])
    write_json(out, result)
    write_text(out.with_suffix(".md"), "\n".join([f"# {title}", "", f"Made by `{command}`: {setup}", "",
                                                  markdown_table(head, rows, align), "", verdict, ""]))


def run_check(main) -> None:
    """Run a check's ``main`` as the script: its return code, or one line and exit 2 on bad input."""
    try:
        sys.exit(main())
    except EdgecompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
