"""The seed-compatible UNet/PointNet scripts and bench_zoo: flags and one-line errors (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_qat  # noqa: E402
import bench_zoo  # noqa: E402
import decode_and_evaluate_pointnet  # noqa: E402
import decode_and_evaluate_unet  # noqa: E402
import train_and_compress_pointnet  # noqa: E402
import train_and_compress_unet  # noqa: E402


def test_seed_flags_parse():
    args = train_and_compress_unet.parser().parse_args(["--compress-rate", "0.8"])
    assert args.compress_rate == 0.8 and args.data == "person_seg" and args.size == 256 and args.width == 1.0
    args = train_and_compress_pointnet.parser().parse_args(["--compress-rate=0.8"])
    assert args.compress_rate == 0.8 and args.data == "modelnet40" and args.num_points == 2048
    assert train_and_compress_unet.parser().parse_args([]).compress_rate == 0.9   # the seed's default


@pytest.mark.parametrize("main, argv, message", [
    (train_and_compress_unet.main, ["--compress-rate", "1.5"], "compress rate must be in [0, 1)"),
    (train_and_compress_unet.main, ["--data-dir", "{tmp}"], "no seg_train.txt in"),
    (train_and_compress_pointnet.main, ["--data-dir", "{tmp}"], "no ModelNet40 HDF5 files in"),
    (decode_and_evaluate_unet.main, ["--results", "{tmp}"], "compressed_unet.ecz does not exist"),
    (decode_and_evaluate_pointnet.main, ["--results", "{tmp}"], "compressed_pointnet.ecz does not exist"),
    (bench_zoo.main, ["--models", "vgg,alexnet", "--out", "{tmp}"], "unknown model(s): alexnet"),
    (bench_qat.main, ["--models", "vgg,alexnet", "--out", "{tmp}"], "unknown model(s) alexnet"),
    (bench_qat.main, ["--qat-epochs", "0", "--out", "{tmp}"], "--qat-epochs must be 1 or more"),
])
def test_scripts_fail_with_one_line(tmp_path, capsys, main, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
