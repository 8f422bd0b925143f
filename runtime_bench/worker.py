"""The isolated measuring process: ``python -m runtime_bench.worker SPEC.json``.

``SPEC.json`` names the job, the model (``path``), the inputs (``x``, and for a
``measure`` job optional labels ``y`` and reference outputs ``ref``: ``.npy``
files read with ``allow_pickle=False``), the measuring ``settings`` and the
``out`` file, written atomically:

- ``"job": "measure"`` (the default): the result JSON of
  :func:`runtime_bench.bench.measure_here`. A bad model file is reported in its
  ``error`` field with exit code 0.
- ``"job": "predict"``: the model's outputs for ``x`` as a ``.npy`` file (the
  reference outputs for parity). A model that fails exits with code 1. With
  ``"info": FILE`` it also writes what ran it: the machine, the LiteRT resolver
  (and the default delegate's error when it fell back to the builtin kernels),
  and where the runtime libraries were loaded (for :mod:`runtime_bench.kernels`).
  ``"resolver"`` picks LiteRT's resolver (default ``"default"``).

The emulated arm64 target runs this same worker, in the arm64 sysroot's Python
under qemu (:mod:`runtime_bench.emulated`).

A non-zero exit or a missing result means the job failed (the parent reports
that, quoting the last line of stderr). Used by :func:`runtime_bench.bench_files`;
not meant to be run by hand.

Example:
    $ python -m runtime_bench.worker /tmp/runtime_bench_x/result_1.spec.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m runtime_bench.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())

    from edgecomp.errors import EdgecompError
    from edgecomp.io import atomic_path, write_json
    from runtime_bench.bench import measure_here

    # A memmap: only the latency batch is paged in before peak memory is taken.
    x = np.load(spec["x"], mmap_mode="r", allow_pickle=False)
    if spec.get("job", "measure") == "predict":
        from runtime_bench.runners import open_runner
        try:
            runner = open_runner(spec["path"], threads=1, **({"resolver": spec["resolver"]}
                                                             if spec.get("resolver") else {}))
            pred = runner.predict(x)
        except EdgecompError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        with atomic_path(spec["out"]) as tmp, open(tmp, "wb") as fh:  # a file object: no suffix added
            np.save(fh, pred, allow_pickle=False)
        if spec.get("info"):
            write_json(spec["info"], _run_info(runner))
        return 0
    y = np.load(spec["y"], allow_pickle=False) if spec.get("y") else None
    ref = np.load(spec["ref"], allow_pickle=False) if spec.get("ref") else None
    result = measure_here(spec["path"], x, y, spec["settings"], ref=ref)
    write_json(spec["out"], result)
    return 0


def _run_info(runner) -> dict:
    """The machine, the resolver that ran the file, and the runtime libraries' load addresses."""
    import platform
    try:
        maps = [ln.strip() for ln in open("/proc/self/maps") if ln.rstrip().endswith(".so")
                and ("ai_edge_litert" in ln or "onnxruntime" in ln)]
    except OSError:
        maps = []
    return {"machine": platform.machine(), "format": runner.format,
            "resolver": runner.options.get("resolver"), "fallback": getattr(runner, "fallback", None),
            "maps": maps}


if __name__ == "__main__":
    sys.exit(main())
