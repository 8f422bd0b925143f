"""scripts/bench_structured_zoo.py: one small model through the whole per-model flow (seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_structured_zoo as bsz  # noqa: E402


def test_run_model_vgg_tiny(tmp_path):
    args = bsz.parser().parse_args(["--n-train", "64", "--n-test", "32", "--epochs", "1", "--fine-tune-epochs", "1",
                                    "--rounds", "2", "--runs", "3"])
    row = bsz.run_model("vgg", args, tmp_path, log=lambda msg: None)

    assert row["macs_after"] < row["macs_before"] and row["params_after"] < row["params_before"]
    assert row["structured_macs"] == [row["macs_before"], row["macs_after"]]  # the decoded model is the smaller one
    assert [(a["format"], a["variant"]) for a in row["baseline_files"]] == [("tflite", "fp32"), ("onnx", "fp32")]
    by = {(a["format"], a["variant"]): a for a in row["artifacts"]}
    assert set(bsz.COLUMNS) <= set(by)
    for key in (("tflite", "fp32"), ("onnx", "fp32")):
        a = by[key]
        assert a["passed"] and a["max_abs_diff"] <= 1e-4 and a["top1_agreement"] == 1.0
        assert a["median_ms"] > 0 and a["before_ms"] > 0 and a["speedup"] > 0
        assert len(a["round_ms"]) == 2
    for a in row["artifacts"]:
        assert "top1_agreement" in a or "error" in a
        if a["variant"] == "int8" and not a["passed"] and "error" not in a:  # a miss also tries int16x8
            assert (a["format"], "int16x8") in by or a["format"] not in ("tflite", "onnx")
    assert [g["name"] for g in row["coupling"]["kept_whole"]] == ["predictions"]

    cells = bsz.table_row(row)
    md = bsz.markdown([row], {**{k: getattr(args, k) for k in bsz.SETTINGS}, "machine": "test", "seconds": 1.0,
                              "command": "python scripts/bench_structured_zoo.py"})
    assert md.startswith("# ") and "Made by `python scripts/bench_structured_zoo.py`" in md
    assert cells[0] == "vgg" and "x)" in cells[2] and "->" in cells[5] and "predictions" in cells[-1]
    assert "| vgg |" in md and "## Groups kept whole" in md
