"""Each row of docs/BAD_INPUTS.md: one line, the right exit code, no traceback, nothing half-written."""

import pytest

from bad_input_cases import CASES, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    r = run_case(case, tmp_path)
    assert r["code"] == case.code, r["stderr"]
    assert "Traceback" not in r["stderr"]
    assert len(r["lines"]) == 1, r["stderr"]
    assert r["lines"][0].startswith("edgecomp"), r["lines"]
    assert case.message in r["lines"][0], r["lines"][0]
    # nothing new at a final path: no output, no temp file
    assert r["leftovers"] == [], r["leftovers"]
