"""Does the runtime load this file, and compute the same thing, under which setting?

A runtime can abort the whole process on a file it cannot handle, so every
attempt runs in ``python -m exporters.probe FILE key=value ...``: it opens the
file with :func:`runtime_bench.runners.open_runner` (the path the parity check
and the benchmarks take), runs a fixed batch of random inputs through it and
prints the outputs as one JSON line.

:func:`choose_setting` tries the settings in order. The first one that loads
is taken if its outputs match those of the *reference* setting (the last in the
list: LiteRT's built-in kernels, ONNX Runtime without graph rewrites), so that
a delegate that loads a file but computes it wrongly is caught as well as one
that refuses it.

    >>> setting, tried = choose_setting(data, ".tflite", [{"resolver": "default"}, {"resolver": "builtin"}])
    >>> setting, tried
    ({'resolver': 'builtin'}, {'resolver=default': 'LiteRT cannot load ...', 'resolver=builtin': 'ok'})
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

from edgecomp.errors import first_line
from edgecomp.subproc import run_module

#: Seconds one load attempt may take before it counts as failed.
TIMEOUT_S = 120.0

#: Largest output difference to the reference setting, relative to the reference's
#: largest output magnitude, that still counts as "computes the same". Kernels of
#: different back-ends round differently (int8: about one step per layer); a
#: miscomputing one is off by the size of the output itself.
RELATIVE_TOLERANCE = 0.1

#: Random inputs (uniform in [0, 1), seed 0) each probe runs.
PROBE_BATCH = 8


def _label(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "defaults"


def probe(path: str | os.PathLike, setting: dict, timeout_s: float = TIMEOUT_S) -> tuple[str, np.ndarray | None]:
    """``("ok", outputs)`` if ``path`` loads and runs under ``setting`` in a fresh process, else ``(why not, None)``.

    Example:
        >>> status, out = probe("m_int8-sparse.tflite", {"resolver": "builtin"})
        >>> status, out.shape
        ('ok', (8, 10))
    """
    args = [str(path)] + [f"{k}={v}" for k, v in setting.items()]
    run = run_module("exporters.probe", args, timeout_s=timeout_s)
    if run.timed_out:
        return f"timed out after {timeout_s:g} s", None
    reply = run.json_line()
    if reply is not None:
        try:
            out = reply.get("output")
            return str(reply["result"]), None if out is None else np.asarray(out, dtype=np.float64)
        except (ValueError, KeyError, TypeError):
            pass
    if run.signal_name:
        return f"crashed ({run.signal_name})", None
    err = run.last_line("stderr")
    return f"exited with code {run.returncode}" + (f": {err[:200]}" if err else ""), None


def _difference(out: np.ndarray, ref: np.ndarray) -> float:
    if out.shape != ref.shape:
        return float("inf")
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-6))


def probe_inputs(shape) -> np.ndarray:
    """The inputs every probe runs: :data:`PROBE_BATCH` samples of ``shape`` (batch first, any size
    there), uniform in [0, 1), seed 0."""
    shape = [PROBE_BATCH] + [int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in list(shape)[1:]]
    return np.random.default_rng(0).uniform(0.0, 1.0, shape).astype(np.float32)


def choose_setting(data: bytes, suffix: str, settings: list[dict],
                   reference=None) -> tuple[dict | None, dict[str, str]]:
    """The first of ``settings`` that loads ``data`` and computes what the last (reference) one does;
    with ``reference`` (the outputs the file should give on :func:`probe_inputs`, e.g. a
    quantization-aware-trained model's, which simulates the int8 kernels where two LiteRT resolvers
    round differently), the loading setting nearest it.

    Returns the setting (None when none loads) and a one-line result per
    setting tried (``"ok"``, or why it was passed over). The reference setting is only
    run when an earlier setting loads.
    """
    tried: dict[str, str] = {}
    fd, name = tempfile.mkstemp(prefix="edgecomp_probe_", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if reference is not None:
            return _closest(name, settings, np.asarray(reference, np.float64), tried)
        ref_label = _label(settings[-1])
        ref = None
        for setting in settings:
            label = _label(setting)
            status, out = probe(name, setting)
            if status != "ok":
                tried[label] = status
                continue
            if label == ref_label:
                tried[label] = "ok"
                return dict(setting), tried
            if ref is None:
                ref_status, ref = probe(name, settings[-1])
                if ref_status != "ok":  # nothing to compare with: loading is all we can check
                    tried[ref_label] = ref_status
                    tried[label] = "ok"
                    return dict(setting), tried
            diff = _difference(out, ref)
            if diff <= RELATIVE_TOLERANCE:
                tried[label] = "ok"
                return dict(setting), tried
            tried[label] = (f"loads, but its outputs differ from {ref_label}'s by {diff:.3g} "
                            f"of their range (> {RELATIVE_TOLERANCE:g})")
        return None, tried
    finally:
        os.unlink(name)


def _closest(name: str, settings: list[dict], reference: np.ndarray, tried: dict) -> tuple[dict | None, dict]:
    """Of the settings that load, the one whose outputs are nearest ``reference``. No tolerance: on
    random inputs a deep int8 net's small rounding differences can grow past any fixed one (the
    parity gate then judges the file on real data)."""
    best, best_diff = None, float("inf")
    for setting in settings:
        status, out = probe(name, setting)
        if status != "ok":
            tried[_label(setting)] = status
            continue
        diff = _difference(out, reference)
        tried[_label(setting)] = f"loads; outputs differ from the model's by {diff:.3g} of their range"
        if diff < best_diff:
            best, best_diff = dict(setting), diff
    if best is not None:
        tried[_label(best)] += " (nearest: chosen)"
    return best, tried


def _run(path: str, setting: dict) -> tuple[str, list | None]:
    from runtime_bench.runners import open_runner

    runner = open_runner(path, threads=1, **setting)
    if hasattr(runner, "interp"):  # LiteRT
        shape = runner.interp.get_input_details()[0]["shape"]
    else:  # ONNX Runtime: symbolic dims are strings or None
        shape = runner.sess.get_inputs()[0].shape
    out = runner.predict(probe_inputs(shape))
    if not np.isfinite(out).all():
        return "loads, but its outputs are not finite (NaN or Inf)", None
    return "ok", out.astype(np.float64).tolist()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m exporters.probe FILE [key=value ...]", file=sys.stderr)
        return 2
    setting = dict(a.split("=", 1) for a in argv[1:])
    output = None
    try:
        result, output = _run(argv[0], setting)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the answer
        result = first_line(exc)[:300]
    print(json.dumps({"result": result, "output": output}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
