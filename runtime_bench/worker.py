"""The isolated measuring process: ``python -m runtime_bench.worker SPEC.json``.

``SPEC.json`` names the model (``path``), the inputs (``x`` and optional ``y``,
``.npy`` files read with ``allow_pickle=False``), the measuring ``settings`` and
the ``out`` file where the result JSON is written (atomically). A bad model
file is reported in the result's ``error`` field with exit code 0; a non-zero
exit or a missing result means the worker itself failed (the parent reports
that). Used by :func:`runtime_bench.bench_file`; not meant to be run by hand.

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

    from edgecomp.io import write_json
    from runtime_bench.bench import measure_here

    # A memmap: only the latency batch is paged in before peak memory is taken.
    x = np.load(spec["x"], mmap_mode="r", allow_pickle=False)
    y = np.load(spec["y"], allow_pickle=False) if spec.get("y") else None
    result = measure_here(spec["path"], x, y, spec["settings"])
    write_json(spec["out"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
