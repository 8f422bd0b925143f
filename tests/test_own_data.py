import numpy as np
import pytest

from edgecomp.data import load_dataset
from edgecomp.errors import EdgecompError


def test_npz_with_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 255, (20, 4, 4, 3)).astype(np.uint8), y_train=np.arange(20) % 3,
             x_test=np.full((6, 4, 4, 3), 255, np.uint8), y_test=np.arange(6) % 3)
    ds = load_dataset(str(path), scale=1 / 255, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    assert ds.name == "npz" and ds.num_classes == 3 and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_test, 1.0, rtol=1e-6)


def test_npz_refuses_object_arrays_and_missing_keys(tmp_path):
    bad = tmp_path / "obj.npz"
    np.savez(bad, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1),
             y_test=np.zeros(1))
    with pytest.raises(EdgecompError, match="object arrays are refused|cannot read"):
        load_dataset(str(bad))
    part = tmp_path / "part.npz"
    np.savez(part, x_train=np.zeros((2, 2)))
    with pytest.raises(EdgecompError, match="lacks arrays"):
        load_dataset(str(part))


def test_image_folder(tmp_path):
    from PIL import Image
    for c, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        (tmp_path / f"class{c}").mkdir()
        for i in range(5):
            Image.new("RGB", (10 + i, 12), color).save(tmp_path / f"class{c}" / f"{i}.png")
    (tmp_path / "class0" / "notes.txt").write_text("ignored")
    ds = load_dataset("folder", data_dir=str(tmp_path), image_size=(8, 8), test_fraction=0.2)
    assert ds.input_shape == (8, 8, 3) and ds.num_classes == 2
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2
    assert ds.x_train.max() <= 1.0
    red = ds.x_train[ds.y_train == 0]
    assert np.all(red[..., 0] > 0.9) and np.all(red[..., 2] < 0.1)


def test_folder_needs_class_dirs(tmp_path):
    with pytest.raises(EdgecompError, match="class folders"):
        load_dataset("folder", data_dir=str(tmp_path))
