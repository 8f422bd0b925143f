"""The zoo's data: ModelNet40 HDF5, person segmentation list files, synthetic stand-ins, augmentation.

Every real-format file is written here, small (no network, no real data).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from edgecomp.data import load_dataset
from edgecomp.data.modelnet40 import augment_point_clouds, augmented_batches, read_h5_split
from edgecomp.data.person_seg import letterbox, read_list
from edgecomp.data.synthetic_zoo import SOLIDS, sample_solid
from edgecomp.errors import EdgecompError

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- ModelNet40 HDF5

def write_h5(path: Path, n: int, points: int = 16, label_shape=None, **overrides) -> tuple[np.ndarray, np.ndarray]:
    data = RNG.normal(size=(n, points, 3)).astype(np.float32)
    label = RNG.integers(0, 40, (n, 1)).astype(np.uint8)
    arrays = {"data": data, "label": label if label_shape is None else label.reshape(label_shape)}
    arrays.update(overrides)
    with h5py.File(path, "w") as fh:
        for key, value in arrays.items():
            if value is not None:
                fh.create_dataset(key, data=value)
    return data, label.reshape(-1).astype(np.int64)


def write_modelnet(folder: Path, train=(3, 2), test=(2,), points: int = 16) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, sizes in (("train", train), ("test", test)):
        parts = [write_h5(folder / f"ply_data_{split}{i}.h5", n, points) for i, n in enumerate(sizes)]
        if parts:
            out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def test_modelnet40_reads_split_files_in_order(tmp_path):
    want = write_modelnet(tmp_path / "modelnet40_ply_hdf5_2048", train=(3, 2, 1), test=(2, 2))
    ds = load_dataset("modelnet40", data_dir=tmp_path)  # found in the standard subfolder
    assert ds.x_train.shape == (6, 16, 3) and ds.x_test.shape == (4, 16, 3)
    assert ds.num_classes == 40 and ds.task == "classification" and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train, want["train"][0])
    np.testing.assert_array_equal(ds.y_train, want["train"][1])
    np.testing.assert_array_equal(ds.y_test, want["test"][1])
    assert ds.y_train.dtype == np.int64 and ds.source.endswith("modelnet40_ply_hdf5_2048")


def test_modelnet40_merged_files_env_folder_and_num_points(tmp_path, monkeypatch):
    seed_dir = tmp_path / "ModelNet40"  # the seed's folder and merged file names
    seed_dir.mkdir()
    x, y = write_h5(seed_dir / "ply_data_train.h5", 4, points=32, label_shape=(4,))
    write_h5(seed_dir / "ply_data_test.h5", 2, points=32)
    monkeypatch.setenv("EDGECOMP_DATA", str(tmp_path))
    ds = load_dataset("m40", num_points=8)
    assert ds.input_shape == (8, 3)
    np.testing.assert_array_equal(ds.x_train, x[:, :8])
    np.testing.assert_array_equal(ds.y_train, y)
    with pytest.raises(EdgecompError, match="num_points=64 is out of range"):
        read_h5_split(seed_dir, "train", 64)


@pytest.mark.parametrize("case, message", [
    ("not_hdf5", "cannot read ply_data_test0.h5 as HDF5"),
    ("no_label", "has no 'label' dataset"),
    ("bad_shape", r"'data' is float32 \(2, 16, 2\), expected float \(N, points, 3\)"),
    ("float_label", "'label' is float32"),
    ("count", "2 clouds but 3 labels"),
    ("range", "label 40 is out of range for 40 classes"),
    ("nan", "'data' contains NaN or Inf"),
    ("points", "different point counts"),
])
def test_modelnet40_malformed_files(tmp_path, case, message):
    write_modelnet(tmp_path, train=(2,), test=())
    bad = tmp_path / "ply_data_test0.h5"
    ok_data = RNG.normal(size=(2, 16, 3)).astype(np.float32)
    if case == "not_hdf5":
        bad.write_bytes(b"this is not an HDF5 file" * 10)
    elif case == "no_label":
        write_h5(bad, 2, label=None)
    elif case == "bad_shape":
        write_h5(bad, 2, data=ok_data[..., :2])
    elif case == "float_label":
        write_h5(bad, 2, label=np.zeros((2, 1), np.float32))
    elif case == "count":
        write_h5(bad, 2, label=np.zeros((3, 1), np.int32))
    elif case == "range":
        write_h5(bad, 2, label=np.array([[0], [40]], np.int32))
    elif case == "nan":
        ok_data[0, 0, 0] = np.nan
        write_h5(bad, 2, data=ok_data)
    elif case == "points":
        write_h5(bad, 2)
        write_h5(tmp_path / "ply_data_test1.h5", 2, points=8)
    with pytest.raises(EdgecompError, match=message) as info:
        load_dataset("modelnet40", data_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_modelnet40_missing_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGECOMP_DATA", raising=False)
    with pytest.raises(EdgecompError, match="no ModelNet40 HDF5 files"):
        load_dataset("modelnet40", data_dir=tmp_path)
    with pytest.raises(EdgecompError, match="neither --data-dir nor EDGECOMP_DATA"):
        load_dataset("modelnet40")


def test_augmentation_rotates_about_up_and_jitters_within_clip():
    x = RNG.normal(size=(64, 50, 3)).astype(np.float32)
    only_rotate = augment_point_clouds(x, np.random.default_rng(0), rotate_p=1.0, jitter_p=0.0)
    np.testing.assert_allclose(only_rotate[..., 1], x[..., 1], atol=1e-6)           # y is the up axis
    np.testing.assert_allclose(np.linalg.norm(only_rotate[..., [0, 2]], axis=-1),
                               np.linalg.norm(x[..., [0, 2]], axis=-1), rtol=1e-5)  # a rotation
    only_jitter = augment_point_clouds(x, np.random.default_rng(0), rotate_p=0.0, jitter_p=1.0)
    diff = np.abs(only_jitter - x)
    assert 0 < diff.max() <= 0.05 + 1e-6 and 0.005 < diff.mean() < 0.01
    mixed = augment_point_clouds(x, np.random.default_rng(1))
    changed = np.any(mixed != x, axis=(1, 2))
    assert 0.5 < changed.mean() < 0.95                       # 3/4 of the clouds are changed on average
    np.testing.assert_array_equal(mixed, augment_point_clouds(x, np.random.default_rng(1)))
    assert mixed is not x and np.array_equal(x, x)           # the input is not changed in place
    with pytest.raises(EdgecompError, match=r"must be \(N, points, 3\)"):
        augment_point_clouds(x[..., :2], np.random.default_rng(0))


def test_augmented_batches_cover_the_data_each_epoch():
    x = RNG.normal(size=(10, 8, 3)).astype(np.float32)
    y = np.arange(10)
    batches = augmented_batches(x, y, batch_size=4, seed=3)
    assert len(batches) == 3
    labels = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(labels.tolist()) == list(range(10))
    first = batches[0][0]
    batches.on_epoch_end()
    assert sorted(np.concatenate([batches[i][1] for i in range(3)]).tolist()) == list(range(10))
    assert not np.array_equal(first, batches[0][0])          # reshuffled / re-augmented
    with pytest.raises(EdgecompError, match="matching non-empty"):
        augmented_batches(x, y[:3])


# ---------------------------------------------------------------- person segmentation

def write_seg(root: Path, shapes, mask_mode: str = "L", mask_values=(0, 1), fmt: str = "png") -> list[str]:
    """Images and masks under ``root`` and seed-layout list files in ``root/data``; returns the lines."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    lines = []
    for i, (h, w) in enumerate(shapes):
        img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.full((h, w), mask_values[0], np.uint8)
        mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = mask_values[1]
        Image.fromarray(img).save(root / "images" / f"{i}.{fmt}")
        m = Image.fromarray(mask)
        if mask_mode == "RGB":
            m = Image.fromarray(np.stack([np.zeros_like(mask), np.zeros_like(mask), mask], axis=-1))
        elif mask_mode == "P":
            m = m.convert("P")
        m.save(root / "masks" / f"{i}.png")
        lines.append(f"images/{i}.{fmt} masks/{i}.png")
    return lines


def write_lists(root: Path, train: list[str], test: list[str]) -> None:
    (root / "data" / "seg_train.txt").write_text("\n".join(train) + "\n\n")
    (root / "data" / "seg_test.txt").write_text("\n".join(test) + "\n")


def test_letterbox_geometry_as_the_seed():
    img = np.full((10, 20, 3), 200, np.uint8)                # landscape: padded top and bottom
    mask = np.ones((10, 20), np.uint8)
    im, m = letterbox(img, mask, 8)
    assert im.shape == (8, 8, 3) and m.shape == (8, 8)
    assert (im[:2] == 128).all() and (im[6:] == 128).all() and (im[2:6] == 200).all()
    assert (m[:2] == 0).all() and (m[2:6] == 1).all() and (m[6:] == 0).all()
    im, m = letterbox(np.full((30, 9, 3), 7, np.uint8), np.ones((30, 9), np.uint8), 10)  # portrait: 3 wide
    assert (m.sum(axis=0) > 0).tolist() == [False] * 3 + [True] * 3 + [False] * 4
    assert (im[:, :3] == 128).all() and (im[:, 3:6] == 7).all()
    with pytest.raises(EdgecompError, match="mask is 4x4 but its image is 20x10"):
        letterbox(img, np.zeros((4, 4), np.uint8), 8)


@pytest.mark.parametrize("mask_mode, values, fmt", [("L", (0, 1), "png"), ("L", (0, 255), "jpg"),
                                                    ("RGB", (0, 1), "png"), ("P", (0, 1), "png")])
def test_person_seg_reads_seed_layout(tmp_path, mask_mode, values, fmt):
    lines = write_seg(tmp_path, [(40, 20), (20, 40), (32, 32)], mask_mode, values, fmt)
    write_lists(tmp_path, lines[:2], lines[2:])
    ds = load_dataset("person_seg", data_dir=tmp_path, size=16)
    assert ds.task == "segmentation" and ds.num_classes == 2
    assert ds.x_train.shape == (2, 16, 16, 3) and ds.y_train.shape == (2, 16, 16) and ds.y_train.dtype == np.int64
    assert ds.x_train.min() >= -1.0 and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_train).tolist()) == {0, 1}
    # The square test image fills the frame; its mask's middle half is the person.
    assert ds.y_test[0, 8, 8] == 1 and ds.y_test[0, 0, 0] == 0 and 0.2 < ds.y_test.mean() < 0.3
    # Portrait: grey (128 -> 0.0039) columns left and right of the 8-wide image.
    np.testing.assert_allclose(ds.x_train[0, :, 0], 128 / 127.5 - 1, atol=1e-6)
    part = load_dataset("seg", data_dir=tmp_path, size=16, n_train=1, n_test=1)
    assert len(part.x_train) == 1


def test_person_seg_explicit_lists_and_absolute_paths(tmp_path):
    lines = write_seg(tmp_path / "root", [(24, 24), (24, 24)])
    absolute = [" ".join(str(tmp_path / "root" / f) for f in line.split()) for line in lines]
    (tmp_path / "train.txt").write_text(absolute[0] + "\n")
    (tmp_path / "test.txt").write_text(lines[1] + "\n")
    ds = load_dataset("person_seg", data_dir=tmp_path / "root", train_list=tmp_path / "train.txt",
                      test_list=tmp_path / "test.txt", size=8)
    assert len(ds.x_train) == 1 and len(ds.x_test) == 1
    assert read_list(tmp_path / "test.txt", "R")[0] == (Path("R/images/1.png"), Path("R/masks/1.png"))


@pytest.mark.parametrize("case, message", [
    ("no_lists", "no seg_train.txt in"),
    ("short_line", "seg_train.txt line 1: expected 'image_path mask_path'"),
    ("empty_list", "has no samples"),
    ("missing_image", "image .*9.png does not exist"),
    ("truncated_image", "cannot read image"),
    ("mask_values", "holds value 7, not a class id in"),
    ("mask_size", "mask is 5x5 but its image is 24x24"),
])
def test_person_seg_malformed(tmp_path, case, message):
    lines = write_seg(tmp_path, [(24, 24), (24, 24)])
    write_lists(tmp_path, lines[:1], lines[1:])
    train_list = tmp_path / "data" / "seg_train.txt"
    if case == "no_lists":
        for f in (tmp_path / "data").iterdir():
            f.unlink()
    elif case == "short_line":
        train_list.write_text("images/0.png\n")
    elif case == "empty_list":
        train_list.write_text("\n  \n")
    elif case == "missing_image":
        train_list.write_text("images/9.png masks/0.png\n")
    elif case == "truncated_image":
        data = (tmp_path / "images" / "0.png").read_bytes()
        (tmp_path / "images" / "0.png").write_bytes(data[: len(data) // 2])
    elif case == "mask_values":
        Image.fromarray(np.full((24, 24), 7, np.uint8)).save(tmp_path / "masks" / "0.png")
    elif case == "mask_size":
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "0.png")
    with pytest.raises(EdgecompError, match=message) as info:
        load_dataset("person_seg", data_dir=tmp_path, size=8)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- synthetic stand-ins

def test_synthetic_segmentation_is_deterministic_and_balanced_enough():
    a = load_dataset("synthetic_segmentation", n_train=12, n_test=4, size=32, seed=3)
    b = load_dataset("synthetic_seg", n_train=12, n_test=4, size=32, seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.task == "segmentation" and a.y_train.shape == (12, 32, 32) and a.source == "synthetic"
    assert 0.05 < a.y_train.mean() < 0.6 and a.x_train.min() >= -1 and a.x_train.max() <= 1
    # Shapes are brighter than the background: a threshold nearly separates them.
    bright = a.x_train.mean(axis=-1) > 0.0
    assert np.mean(bright == (a.y_train == 1)) > 0.95
    four = load_dataset("synthetic_segmentation", n_train=24, n_test=2, size=32, num_classes=4)
    assert four.num_classes == 4 and set(np.unique(four.y_train).tolist()) == {0, 1, 2, 3}
    for bad in ({"num_classes": 3}, {"size": 4}, {"n_train": 0}):
        with pytest.raises(EdgecompError, match="synthetic_segmentation option"):
            load_dataset("synthetic_segmentation", **bad)


def test_synthetic_pointclouds_solids():
    ds = load_dataset("synthetic_pointclouds", n_train=16, n_test=8, num_points=128)
    assert ds.x_train.shape == (16, 128, 3) and ds.num_classes == len(SOLIDS) == 8
    assert sorted(set(ds.y_train.tolist())) == list(range(8))
    norms = np.linalg.norm(ds.x_train, axis=-1)
    assert np.allclose(norms.max(axis=1), 1.0, atol=1e-5)  # each cloud scaled into the unit sphere
    np.testing.assert_allclose(ds.x_train.mean(axis=1), 0.0, atol=1e-5)
    rng = np.random.default_rng(0)
    sphere = sample_solid("sphere", 500, rng)
    r = np.linalg.norm(sphere, axis=1)
    assert r.min() > 0.7                                  # on the surface, not inside
    disc = sample_solid("disc", 500, rng)
    assert np.abs(disc[:, 1]).max() < 0.1                 # flat
    small = load_dataset("synthetic_pc", n_train=4, n_test=2, num_points=16, num_classes=3)
    assert small.num_classes == 3 and set(small.y_train.tolist()) <= {0, 1, 2}
    with pytest.raises(EdgecompError, match="num_classes=9 is invalid"):
        load_dataset("synthetic_pointclouds", num_classes=9)
    with pytest.raises(EdgecompError, match="unknown solid"):
        sample_solid("klein_bottle", 10, rng)


def test_synthetic_patterns_are_position_free_classes():
    ds = load_dataset("synthetic_patterns", n_train=40, n_test=10, seed=2)
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10 and ds.source == "synthetic"
    assert sorted(set(ds.y_train.tolist())) == list(range(10))
    assert ds.x_train.min() >= -1 and ds.x_train.max() <= 1
    # The class sets the grating's wavelength: 4 px (even classes) or 8 px (odd), seen in the spectrum.
    spectrum = np.abs(np.fft.rfft2(ds.x_train.mean(axis=-1) - ds.x_train.mean(axis=(1, 2, 3))[:, None, None]))
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(32), np.fft.rfftfreq(32), indexing="ij"))
    peak = radius.ravel()[spectrum.reshape(len(spectrum), -1).argmax(axis=1)]
    assert np.all(np.where(ds.y_train % 2 == 0, peak > 0.18, peak < 0.18))
    with pytest.raises(EdgecompError, match="synthetic_patterns option num_classes=1"):
        load_dataset("synthetic_patterns", num_classes=1)
