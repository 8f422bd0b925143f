"""Measure a ``.tflite`` file on an Android phone with LiteRT's own ``benchmark_model``.

The phone needs the ``benchmark_model`` binary for its ABI (from the LiteRT /
TensorFlow Lite releases) at ``/data/local/tmp/benchmark_model`` (``chmod +x``),
and the host needs ``adb`` on ``PATH`` (set ``ANDROID_SERIAL`` to pick a phone).
:class:`AdbRunner` pushes the model, runs

    /data/local/tmp/benchmark_model --graph=/data/local/tmp/edgecomp_m.tflite --num_threads=N
        --use_xnnpack=true --warmup_runs=W --num_runs=R --min_secs=S --report_peak_memory_footprint=true

removes the pushed file again, and :func:`parse_benchmark_output` turns the log
into the fields of a bench record (times in ms):

    >>> rec = AdbRunner().benchmark("m_int8.tflite", threads=4)
    >>> rec["median_ms"], rec["peak_rss_mb"], rec["device"]            # doctest: +SKIP
    (3.41, 38.2, 'Pixel 8')

The log lines it reads (``INFO: `` or logcat prefixes are ignored)::

    count=50 first=106022 curr=105780 min=105416 max=106528 avg=105784 std=260 p5=105485 median=105718 p95=106281
    Inference timings in us: Init: 87639, First inference: 106436, Warmup (avg): 106065, Inference (avg): 105784
    Memory footprint delta from the start of the tool (MB): init=14.4414 overall=14.8164
    Overall peak memory footprint (MB) via periodic monitoring: 21.0898

Older builds print ``Peak memory footprint (MB): init=... overall=...`` instead of
the delta line, and no ``p5/median/p95`` on the ``count=`` lines; what the tool
does not print stays None.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from edgecomp.errors import EdgecompError

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_TIMINGS = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM
                      + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM)
_STAT = re.compile(r"\bcount=(\d+)\b(.*)$")
_FIELD = re.compile(r"\b(first|curr|min|max|avg|std|p5|median|p95)=" + _NUM)
_MEM_PAIR = re.compile(r"(Memory footprint delta from the start of the tool|Peak memory footprint) "
                       r"\(MB\): init=" + _NUM + r" overall=" + _NUM)
_MEM_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _stat_line(rest: str) -> dict:
    fields = {k: float(v) for k, v in _FIELD.findall(rest)}
    if "min" not in fields and "curr" in fields:  # "count=1 curr=3512391" / "(all same)"
        fields.update(min=fields["curr"], max=fields["curr"], avg=fields["curr"], std=0.0)
        if "(all same)" in rest or "median" not in fields:
            fields.setdefault("median", fields["curr"])
    return fields


def parse_benchmark_output(text: str) -> dict:
    """Read a ``benchmark_model`` log into bench-record fields (milliseconds, MiB).

    Returns ``init_ms``, ``first_ms``, ``warmup_ms`` (warm-up average), ``warmup``
    (warm-up runs), ``runs``, ``mean_ms``, ``std_ms``, ``min_ms``, ``p5_ms``,
    ``median_ms``, ``p95_ms``, ``max_ms``, ``runs_per_s``, ``peak_rss_mb`` and the
    memory figures as printed: ``mem_init_mb``, ``mem_overall_mb`` (deltas from the
    tool's start, or peaks in older builds) and ``mem_peak_mb`` (periodic
    monitoring). ``peak_rss_mb`` is ``mem_peak_mb`` when printed, else
    ``mem_overall_mb``. Raises :class:`EdgecompError` when the log has no timings
    (the message quotes the tool's last error line).

    Example:
        >>> r = parse_benchmark_output(open("tests/data/benchmark_model_android.log").read())
        >>> r["median_ms"], r["runs"]                                    # doctest: +SKIP
        (0.312, 3120)
    """
    lines = text.splitlines()
    timing_at = None
    for i, line in enumerate(lines):
        if _TIMINGS.search(line):
            timing_at = i
    if timing_at is None:
        complaints = [ln.strip() for ln in lines if re.search(r"\b(ERROR|error|not found|denied|"
                                                              r"[Ff]ailed)\b", ln)]
        tail = (complaints or [ln.strip() for ln in lines if ln.strip()] or ["no output"])[-1]
        raise EdgecompError(f"benchmark_model printed no timings: {tail[:200]}",
                            fix="check that benchmark_model for the phone's ABI is at the given "
                                "path and executable (adb shell chmod +x), and that the model loads")
    init_us, first_us, warm_us, avg_us = (float(v) for v in _TIMINGS.search(lines[timing_at]).groups())
    stats = [_stat_line(m.group(2)) | {"count": int(m.group(1))}
             for m in (_STAT.search(ln) for ln in lines[:timing_at]) if m]
    regular = stats[-1] if stats else {}
    warm = stats[-2] if len(stats) >= 2 else {}

    out: dict = {
        "init_ms": init_us / 1e3, "first_ms": first_us / 1e3, "warmup_ms": warm_us / 1e3,
        "warmup": warm.get("count"), "runs": regular.get("count"),
        "mean_ms": avg_us / 1e3,
    }
    for key, name in (("std", "std_ms"), ("min", "min_ms"), ("p5", "p5_ms"), ("median", "median_ms"),
                      ("p95", "p95_ms"), ("max", "max_ms")):
        out[name] = regular[key] / 1e3 if key in regular else None
    out["runs_per_s"] = 1e3 / out["mean_ms"] if out["mean_ms"] > 0 else None

    out["mem_init_mb"] = out["mem_overall_mb"] = out["mem_peak_mb"] = None
    for line in lines[timing_at:]:
        if m := _MEM_PAIR.search(line):
            out["mem_init_mb"], out["mem_overall_mb"] = float(m.group(2)), float(m.group(3))
        elif m := _MEM_PEAK.search(line):
            out["mem_peak_mb"] = float(m.group(1))
    out["peak_rss_mb"] = out["mem_peak_mb"] if out["mem_peak_mb"] is not None else out["mem_overall_mb"]
    return out


class AdbRunner:
    """Run LiteRT's ``benchmark_model`` on a phone through ``adb``.

    ``adb`` is the host executable (looked up on ``PATH``); ``serial`` picks a
    phone (default: ``adb``'s own choice, which honours ``ANDROID_SERIAL``).

    Example:
        >>> r = AdbRunner().benchmark("model.tflite", threads=2, runs=100)   # doctest: +SKIP
    """

    def __init__(self, adb: str = "adb", serial: str | None = None, timeout_s: float = 600.0,
                 remote_dir: str = "/data/local/tmp",
                 binary: str = "/data/local/tmp/benchmark_model"):
        found = shutil.which(adb)
        if found is None:
            raise EdgecompError(f"'{adb}' is not on PATH",
                                fix="install Android platform-tools and connect a phone with USB debugging on")
        self.adb = found
        self.serial = serial
        self.timeout_s = float(timeout_s)
        self.remote_dir = remote_dir.rstrip("/")
        self.binary = binary

    def _call(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [self.adb, *(["-s", self.serial] if self.serial else []), *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EdgecompError(f"adb {args[0]} timed out after {self.timeout_s:g} s",
                                fix="check the phone's connection (adb devices)") from None

    def device(self) -> str | None:
        """The phone's model name (``ro.product.model``), or None if adb cannot say."""
        proc = self._call("shell", "getprop", "ro.product.model")
        name = proc.stdout.strip()
        return name if proc.returncode == 0 and name else None

    def benchmark(self, path: str | os.PathLike, *, threads: int = 1, warmup: int = 10,
                  runs: int = 100, min_time_s: float = 1.0, xnnpack: bool = True) -> dict:
        """Push ``path``, run ``benchmark_model`` on it, remove it; return the parsed fields.

        Adds ``device`` (the phone's model name) to :func:`parse_benchmark_output`'s result.
        """
        path = Path(path)
        if path.suffix.lower() != ".tflite":
            raise EdgecompError(f"{path.name}: the phone's benchmark_model runs .tflite files only",
                                fix="bench .keras/.onnx/.ecz files on a local target")
        if not path.is_file():
            raise EdgecompError(f"model file {path} does not exist", fix="check the path")
        remote = f"{self.remote_dir}/edgecomp_{os.getpid()}_{_SAFE_NAME.sub('_', path.name)}"
        push = self._call("push", str(path), remote)
        if push.returncode != 0:
            lines = [ln for ln in (push.stderr + push.stdout).splitlines() if ln.strip()]
            raise EdgecompError(f"adb push failed: {(lines or ['no output'])[-1].strip()[:200]}",
                                fix="check 'adb devices' lists the phone as 'device'")
        try:
            proc = self._call("shell", self.binary, f"--graph={remote}", f"--num_threads={int(threads)}",
                              f"--use_xnnpack={'true' if xnnpack else 'false'}",
                              f"--warmup_runs={int(warmup)}", f"--num_runs={int(runs)}",
                              f"--min_secs={float(min_time_s):g}", "--report_peak_memory_footprint=true")
            result = parse_benchmark_output(proc.stdout + "\n" + proc.stderr)
        finally:
            self._call("shell", "rm", "-f", remote)
        result["device"] = self.device()
        return result
