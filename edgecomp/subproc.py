"""Run a Python module in a fresh process with a timeout: the one way worker processes are spawned.

A runtime can abort the whole process on a file it cannot handle, and one model's memory and
thread pools should not colour the next measurement, so load probes (:mod:`exporters.probe`) and
benchmark workers (:mod:`runtime_bench.worker`) each run in ``python -m MODULE ARGS`` through
:func:`run_module`. The child finds this project on ``PYTHONPATH`` whatever the current folder,
and TensorFlow's C++ logging is kept to warnings unless the caller's environment says otherwise.

    >>> run = run_module("exporters.probe", ["m.tflite", "resolver=builtin"], timeout_s=120)
    >>> run.timed_out, run.returncode, run.json_line()["result"]
    (False, 0, 'ok')
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

#: The folder that holds the ``edgecomp``, ``exporters`` and ``runtime_bench`` packages.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModuleRun:
    """How a :func:`run_module` child ended: ``returncode`` (None when it timed out) and its output."""

    module: str
    returncode: int | None
    stdout: str
    stderr: str
    timeout_s: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def signal_name(self) -> str | None:
        """``"SIGSEGV"`` (or ``"signal 77"``) when a signal killed the child, else None."""
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def last_line(self, stream: str = "stderr") -> str | None:
        """The last non-blank line of ``"stderr"`` or ``"stdout"``, stripped (None if there is none)."""
        lines = [ln.strip() for ln in getattr(self, stream).splitlines() if ln.strip()]
        return lines[-1] if lines else None

    def json_line(self) -> dict | None:
        """The last stdout line as a JSON object when the child exited with code 0, else None."""
        line = self.last_line("stdout")
        if self.returncode != 0 or line is None:
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None


def worker_env() -> dict[str, str]:
    """This process's environment with the project first on ``PYTHONPATH`` (and quiet TensorFlow)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_module(module: str, args: Sequence[str] = (), *, timeout_s: float,
               capture_stdout: bool = True) -> ModuleRun:
    """Run ``python -m module *args`` with this interpreter; wait at most ``timeout_s`` seconds.

    Never raises for what the child does (a crash, a non-zero exit, a timeout, after which it is
    killed): the returned :class:`ModuleRun` says. ``capture_stdout=False`` discards stdout.
    """
    cmd = [sys.executable, "-m", module, *map(str, args)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=worker_env(), timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        return ModuleRun(module, None, _text(exc.stdout), _text(exc.stderr), float(timeout_s))
    return ModuleRun(module, proc.returncode, _text(proc.stdout), _text(proc.stderr), float(timeout_s))


def _text(data: bytes | None) -> str:
    return data.decode("utf-8", "replace") if data else ""
