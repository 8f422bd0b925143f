#!/usr/bin/env python
"""Run every bad-input case (tests/bad_input_cases.py) and write docs/BAD_INPUTS.md:
the input, the command, the exit code and the one-line message each gets.

    python scripts/bad_inputs_table.py

Each row is also a test (tests/test_bad_inputs.py).
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bad_input_cases import CASES, run_case  # noqa: E402
from edgecomp.io import write_text  # noqa: E402


def main() -> int:
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_case(case, Path(tmp))
        message = r["lines"][0] if r["lines"] else "(none)"
        ok = (r["code"] == case.code and len(r["lines"]) == 1 and case.message in message
              and not r["leftovers"] and "Traceback" not in r["stderr"])
        rows.append(f"| {case.what} | `{' '.join(r['argv'])}` | {r['code']} | `{message}` | "
                    f"{'none' if not r['leftovers'] else ', '.join(r['leftovers'])} | {'yes' if ok else 'NO'} |")
        print(f"{'ok ' if ok else 'BAD'} {case.id}: {r['code']} {message}")
    text = "\n".join([
        "# Bad inputs and the answers they get", "",
        "Made by `python scripts/bad_inputs_table.py`; each row is a test in `tests/test_bad_inputs.py`. "
        "`TMP` is a fresh temporary folder. Every case must exit non-zero with one line on stderr naming the "
        "problem and the fix, no traceback, and no new file at any path.", "",
        "| bad input | command | exit | message | files left | as required |", "|---|---|---|---|---|---|",
        *rows, ""])
    write_text(ROOT / "docs" / "BAD_INPUTS.md", text)
    print(f"wrote {ROOT / 'docs' / 'BAD_INPUTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
