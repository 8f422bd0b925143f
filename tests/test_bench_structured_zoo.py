"""scripts/bench_structured_zoo.py: one small model through the whole per-model flow (seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_structured_zoo as bsz  # noqa: E402


def test_run_model_vgg_tiny(tmp_path):
    args = bsz.parser().parse_args(["--n-train", "64", "--n-test", "32", "--epochs", "1", "--structured-epochs", "1",
                                    "--rounds", "2", "--runs", "3"])
    row = bsz.run_model("vgg", args, tmp_path, log=lambda msg: None)

    assert row["macs_after"] < row["macs_before"] and row["params_after"] < row["params_before"]
    assert row["structured_macs"] == [row["macs_before"], row["macs_after"]]  # the decoded model is the smaller one
    # the channel pruning alone: 2 fine-tuned structured steps, no magnitude pruning or masked fine-tuning on top
    assert [h["stage"] for h in row["history"]] == ["structured-1", "structured-2"]
    assert row["structured_steps"] == 2 and row["structured_epochs"] == 1
    assert "no weight pruning" in row["recipe"] and "in 2 steps" in row["recipe"]
    assert row["kept_nonzeros"] > 0.95 * row["params_after"]  # no weight pruned (biases may be 0)
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
    md = bsz.markdown([row], {**bsz.settings_of(args), "machine": "test", "seconds": 1.0,
                              "command": "python scripts/bench_structured_zoo.py"})
    assert md.startswith("# ") and "Made by `python scripts/bench_structured_zoo.py`" in md
    assert cells[0] == "vgg" and cells[1] == "1 / 2 x 1 (reduced from 8)" and "x)" in cells[3]
    assert "->" in cells[6] and "predictions" in cells[-1]
    assert "| vgg |" in md and "## Groups kept whole" in md and "rate=0, fine_tune_epochs=0" in md


def test_settings_and_default_epochs(monkeypatch):
    args = bsz.parser().parse_args([])
    settings = bsz.settings_of(args)
    assert settings["compress_rate"] == 0.0 and settings["masked_epochs"] == 0  # no magnitude pruning on top
    assert settings["structured_steps"] == 2 and settings["lr_schedule"] == "cosine"
    # max(8, the training epochs); a model in REDUCED_EPOCHS fewer, said in the table
    assert bsz.structured_epochs_for("vgg", 8, None) == 8
    assert bsz.structured_epochs_for("resnet", 4, None) == 8 and bsz.structured_epochs_for("unet", 3, None) == 8
    assert bsz.structured_epochs_for("pointnet", 20, None) == 20
    assert bsz.structured_epochs_for("resnet", 4, 1) == 1
    monkeypatch.setattr(bsz, "REDUCED_EPOCHS", {"unet": 4})
    assert bsz.structured_epochs_for("unet", 3, None) == 4 and bsz.settings_of(args) != settings
    unet = {"model": "unet", "epochs": 3, "structured_steps": 2, "structured_epochs": 4}
    assert bsz.epochs_cell(unet) == "3 / 2 x 4 (reduced from 8)"
    assert bsz.epochs_cell({**unet, "model": "resnet", "structured_epochs": 8}) == "3 / 2 x 8"
