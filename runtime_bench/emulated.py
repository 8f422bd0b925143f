"""Run model files on the emulated arm64 target and compare them with Keras and with x86.

Each file runs in the same worker as on x86 (:mod:`runtime_bench.worker`, job
``predict``), but in the arm64 sysroot's Python under qemu
(:mod:`runtime_bench.emulation`), on a pinned Cortex CPU model. The record says:

- ``vs_keras``: the arm64 outputs against the Keras reference (max abs diff,
  top-1 agreement, and accuracies when labels are given);
- ``vs_x86``: the arm64 outputs against the same file run on this machine;
- ``resolver`` / ``default_delegate``: whether LiteRT's default (XNNPACK)
  delegate took the file or it fell back to the builtin kernels, and why;
- ``kernels``: the native kernels that ran (:mod:`runtime_bench.kernels`),
  including whether XNNPACK's sparse NCHW path ran (``sparse_path``);
- ``latency_ms`` is always None, and ``latency_note`` says why.

Which figures pass is the caller's call (the parity gate's thresholds live in
``exporters.parity``); this module only measures.

    >>> rec = check_file("m_fp32.tflite", x, keras_ref, y=y, cpu="a76")   # doctest: +SKIP
    >>> rec["vs_keras"]["top1_agreement"], rec["kernels"]["sparse_path"]  # doctest: +SKIP
    (1.0, False)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edgecomp.errors import EdgecompError, one_line
from edgecomp.metrics import parity_figures, task_scores
from runtime_bench import emulation, kernels

LATENCY_NOTE = ("not reported: qemu translates every arm64 instruction on this x86 machine (about 600x "
                "slower than native), so its timings say nothing about a phone; measure latency with "
                "--target android")
#: Libraries whose kernels are named in the record: name -> path inside the wheels' folder (and the
#: suffix of its line in the guest's /proc/self/maps).
_LIBRARIES = {"litert": "ai_edge_litert/libpywrap_litert_common.so"}
_TABLES: dict[str, tuple] = {}


def _function_tables(env: emulation.Arm64Env) -> dict[str, tuple]:
    for lib, rel in _LIBRARIES.items():
        if lib not in _TABLES:
            _TABLES[lib] = (rel, kernels.function_table(env.sysroot / emulation._SITE / rel))
    return _TABLES


def figures(out: np.ndarray, ref: np.ndarray, y: np.ndarray | None = None, task: str = "classification") -> dict:
    """``parity_figures`` of ``out`` against ``ref``, with both accuracies and their delta when ``y`` is given."""
    fig = parity_figures(out, ref)
    if y is not None and task:
        acc_out, acc_ref = task_scores(out, y, task)["accuracy"], task_scores(ref, y, task)["accuracy"]
        fig.update(accuracy_keras=acc_ref, accuracy_artifact=acc_out, accuracy_delta=acc_out - acc_ref)
    return fig


def run_on_arm(path: str | Path, x_file: str | Path, folder: str | Path, *, cpu: str = "a76",
               resolver: str = "auto", trace: bool = True, env: emulation.Arm64Env | None = None,
               timeout_s: float = 900) -> tuple[np.ndarray, dict]:
    """``(outputs, info)`` of ``path`` on the saved inputs ``x_file``, run by the worker under qemu.

    ``info`` is the worker's (machine, resolver, fallback) plus ``kernels``
    (:func:`runtime_bench.kernels.summarize_kernels`, when ``trace``) and the
    emulator. Raises :class:`EdgecompError` when the file does not run there.
    """
    env = env or emulation.ensure()
    folder = Path(folder)
    stem = Path(path).name
    out, info_file, spec_file = (folder / f"arm_{stem}.npy", folder / f"arm_{stem}.info.json",
                                 folder / f"arm_{stem}.spec.json")
    trace_file = folder / f"arm_{stem}.trace" if trace else None
    spec = {"job": "predict", "path": str(Path(path).resolve()), "x": str(Path(x_file).resolve()),
            "out": str(out), "info": str(info_file), "resolver": resolver if str(path).endswith(".tflite") else None}
    spec_file.write_text(json.dumps(spec))
    try:
        run = emulation.run_python(env, ["-m", "runtime_bench.worker", str(spec_file)], cpu=cpu,
                                   trace=trace_file, timeout_s=timeout_s)
        if run.returncode != 0 or not out.is_file():
            last = next((ln for ln in reversed(run.stderr.splitlines()) if ln.strip()), f"exit code {run.returncode}")
            how = "crashed" if run.returncode < 0 else "failed"
            raise EdgecompError(f"{Path(path).name} {how} on arm64 ({emulation.CPU_MODELS[cpu]}): {last.strip()[:200]}",
                                fix="run it on x86 to compare; a crash only under arm64 is a runtime bug to report")
        pred = np.load(out, allow_pickle=False)
        info = json.loads(info_file.read_text())
        info["delegate_log"] = sorted({ln.strip() for ln in run.stderr.splitlines() if "delegate" in ln.lower()})[:5]
        if trace_file is not None:
            ran = kernels.executed_functions(trace_file, info.get("maps", []), _function_tables(env))
            info["kernels"] = kernels.summarize_kernels(ran) if info.get("format") == "tflite" else {
                "note": "n/a: the onnxruntime aarch64 wheel has no symbols to name its kernels"}
        info.pop("maps", None)
        info["emulator"] = f"{env.manifest.get('qemu', 'qemu')} -cpu {emulation.CPU_MODELS[cpu]}"
        return pred, info
    finally:
        for f in (out, info_file, spec_file, trace_file):
            if f is not None:
                Path(f).unlink(missing_ok=True)


def check_file(path: str | Path, x: np.ndarray, keras_ref: np.ndarray | None, *, y: np.ndarray | None = None,
               x86: np.ndarray | None = None, task: str = "classification", cpu: str = "a76",
               trace: bool = True, env: emulation.Arm64Env | None = None, runner=None) -> dict:
    """One file's arm64 record (see the module doc); errors come back in ``record["error"]``.

    ``x86`` is the same file's outputs on this machine (computed here in a fresh
    x86 worker when None). ``runner`` replaces :func:`run_on_arm` (a test double).
    """
    rec = {"name": Path(path).name, "target": f"arm64-emulated ({emulation.CPU_MODELS.get(cpu, cpu)})",
           "n": int(len(x)), "vs_keras": None, "vs_x86": None, "resolver": None, "default_delegate": None,
           "kernels": None, "latency_ms": None, "latency_note": LATENCY_NOTE, "error": None}
    with tempfile.TemporaryDirectory(prefix="edgecomp_arm64_") as tmp:
        x_file = Path(tmp) / "x.npy"
        np.save(x_file, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
        try:
            if x86 is None:
                from runtime_bench.bench import _predict_in_worker
                x86 = _predict_in_worker(Path(path), {"x": str(x_file), "folder": tmp}, 600,
                                         resolver="auto" if str(path).endswith(".tflite") else None)
            pred, info = (runner or run_on_arm)(path, x_file, tmp, cpu=cpu, trace=trace, env=env)
        except EdgecompError as exc:
            rec["error"] = one_line(exc)
            return rec
    rec["vs_x86"] = figures(pred, x86)
    if y is not None and task:
        rec["accuracy"] = task_scores(pred, y, task)["accuracy"]
    if keras_ref is not None:
        rec["vs_keras"] = figures(pred, keras_ref, y, task)
    rec["resolver"] = info.get("resolver")
    if rec["resolver"] is not None:
        rec["default_delegate"] = ("took the file" if not info.get("fallback")
                                   else f"did not take the file ({info['fallback']}); ran on the builtin kernels")
    rec.update(kernels=info.get("kernels"), machine=info.get("machine"), emulator=info.get("emulator"),
               delegate_log=info.get("delegate_log"))
    return rec


#: Samples an emulated bench row runs (qemu runs the VGG-like net at about 0.6 s a sample).
EMULATED_SAMPLES = 256


def bench_result(path, x, y, ref, settings: dict, cpu: str) -> dict:
    """A :func:`runtime_bench.bench_files` result for an emulated target: no latency, the check in ``emulation``."""
    n = min(len(x), EMULATED_SAMPLES)
    task = settings.get("task")
    rec = check_file(path, x[:n], None if ref is None else ref[:n], y=None if y is None else y[:n],
                     task=task or "classification", cpu=cpu)
    out = {"error": rec["error"], "resolver": rec["resolver"], "n_eval": n, "emulation": rec,
           "accuracy": rec.get("accuracy") if task else None}
    if rec["vs_keras"]:
        out.update({k: rec["vs_keras"][k] for k in ("max_abs_diff", "mean_abs_diff", "top1_agreement")})
    return out
