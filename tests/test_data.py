"""Dataset loaders, on tiny files in the real formats written here (no network, no real data)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgecomp.data import dataset_names, load_dataset
from edgecomp.data import cifar, fashion_mnist
from edgecomp.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, normalise
from edgecomp.data.fashion_mnist import read_idx
from edgecomp.data.safe_unpickle import safe_load, safe_loads
from edgecomp.errors import EdgecompError

RNG = np.random.default_rng(1234)
FM_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ---------------------------------------------------------------- helpers: writing the real formats

def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(dtype).tobytes()


def write_fmnist(folder: Path, gz: bool, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # the top of the range
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def py2_string(raw: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw


def py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)


def py2_cifar_pickle(data: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    """A batch dict exactly as Python 2's cPickle writes CIFAR files (protocol 2, str = bytes)."""
    shape = b"".join(py2_int(d) for d in data.shape) + b"\x86"
    array = (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03"
             b"(K\x01" + shape + b"cnumpy\ndtype\nq\x04U\x02u1K\x00K\x01\x87Rq\x05"
             b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + py2_string(data.tobytes()) + b"tb")
    label_list = b"]q\x06(" + b"".join(py2_int(v) for v in labels) + b"e"
    return (b"\x80\x02}q\x00(" + py2_string(b"data") + array + py2_string(label_key) + label_list
            + py2_string(b"batch_label") + py2_string(b"training batch 1 of 5") + b"u.")


def cifar_images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 3072), dtype=np.uint8)


def expected_nhwc(rows: np.ndarray, mean, std) -> np.ndarray:
    """The documented normalisation, written out the slow obvious way."""
    out = np.zeros((len(rows), 32, 32, 3), np.float64)
    for c in range(3):
        out[..., c] = (rows[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32) - mean[c]) / std[c]
    return out


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """No EDGECOMP_DATA, no Debian folder: only the (patched) downloader is left."""
    monkeypatch.delenv("EDGECOMP_DATA", raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "no-such-dir"))


def patch_get_file(monkeypatch, fake) -> None:
    """Replace ``keras.utils.get_file`` (the loaders call it as ``keras.utils.get_file``).

    When Keras is not imported yet, a stand-in ``keras`` module takes its place for the
    test: importing TensorFlow would cost seconds and the loaders only use this one function.
    """
    if "keras" in sys.modules:
        monkeypatch.setattr(sys.modules["keras"].utils, "get_file", fake)
    else:
        monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(utils=types.SimpleNamespace(get_file=fake)))


def offline(monkeypatch) -> list:
    """Make the downloader fail the way Keras does without a network; returns the calls made."""
    calls = []

    def fail(*args, **kwargs):
        calls.append((args, kwargs))
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    patch_get_file(monkeypatch, fail)
    return calls


# ---------------------------------------------------------------- Fashion-MNIST / IDX

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    arrays = write_fmnist(tmp_path, gz)
    ds = load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.max() == 1.0 and ds.x_train.min() >= 0.0
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.num_classes == 10 and ds.source == str(tmp_path) and ds.input_shape == (28, 28, 1)


def test_fashion_mnist_alias_and_subfolder(tmp_path):
    arrays = write_fmnist(tmp_path / "fashion-mnist", gz=True)
    ds = load_dataset("fmnist", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    assert ds.source == str(tmp_path / "fashion-mnist")


@pytest.mark.parametrize("sub", ["", "fashion-mnist"])
def test_fashion_mnist_from_env(tmp_path, monkeypatch, no_system_data, sub):
    arrays = write_fmnist(tmp_path / "env" / sub, gz=False)
    monkeypatch.setenv("EDGECOMP_DATA", str(tmp_path / "env"))
    ds = load_dataset("fashion_mnist")
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    assert Path(ds.source) == tmp_path / "env" / sub


def test_fashion_mnist_system_folder(tmp_path, monkeypatch, no_system_data):
    write_fmnist(tmp_path / "debian", gz=True)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "debian"))
    assert load_dataset("fashion_mnist").source == str(tmp_path / "debian")


def test_fashion_mnist_missing_and_offline_is_one_clear_error(monkeypatch, no_system_data):
    calls = offline(monkeypatch)
    with pytest.raises(EdgecompError) as err:
        load_dataset("fashion_mnist")
    assert "download failed" in err.value.problem and "name resolution" in err.value.problem
    assert "dataset-fashion-mnist" in err.value.fix and "EDGECOMP_DATA" in err.value.fix
    assert "--data-dir" in err.value.fix
    assert calls and calls[0][1]["origin"].startswith("https://storage.googleapis.com/tensorflow/tf-keras-datasets/")


def test_fashion_mnist_downloader_used_last(tmp_path, monkeypatch, no_system_data):
    cache = tmp_path / "keras-cache"
    write_fmnist(cache, gz=True)
    origins = []

    def fake_get_file(fname, origin, cache_subdir, **_):
        origins.append(origin)
        assert cache_subdir == os.path.join("datasets", "fashion-mnist")
        return str(cache / fname)

    patch_get_file(monkeypatch, fake_get_file)
    ds = load_dataset("fashion_mnist")
    assert ds.source == str(cache)
    base = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
    assert sorted(origins) == sorted(base + stem + ".gz" for stem in FM_STEMS)


def test_fashion_mnist_explicit_dir_without_files(tmp_path):
    with pytest.raises(EdgecompError, match="no Fashion-MNIST IDX files"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_fashion_mnist_partial_folder_names_missing_file(tmp_path):
    write_fmnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(EdgecompError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_fashion_mnist_rejects_wrong_image_size(tmp_path):
    write_fmnist(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((6, 10, 10), np.uint8)))
    with pytest.raises(EdgecompError, match="not 28x28"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_read_idx_general_types_and_gzip(tmp_path):
    ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(ints, 0x0C))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(np.array([0.5, -2.0], np.float32), 0x0D)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), ints)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), [0.5, -2.0])


@pytest.mark.parametrize("corrupt, message", [
    (lambda raw: b"\x01\x00" + raw[2:], "bad magic"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "bad magic"),          # unknown type code
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: raw + b"\x00", "trailing bytes"),
    (lambda raw: raw[:9], "file ends after 9 bytes"),                 # header cut inside the dims
    (lambda raw: raw[:3], "no 4-byte header"),
])
def test_read_idx_malformed(tmp_path, corrupt, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(idx_bytes(np.zeros((2, 28, 28), np.uint8))))
    with pytest.raises(EdgecompError, match=message) as err:
        read_idx(path)
    assert str(path) in err.value.problem


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(EdgecompError, match=str(path)):
        read_idx(path)


def test_truncated_idx_through_the_loader(tmp_path):
    write_fmnist(tmp_path, gz=True)
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(EdgecompError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


# ---------------------------------------------------------------- CIFAR

def write_cifar10_py(root: Path, protocol: int | str, per_batch: int = 3) -> tuple[np.ndarray, ...]:
    """CIFAR-10 python folder; protocol "py2" writes the batches as Python 2 cPickle did."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = cifar_images(per_batch), [int(v) for v in RNG.integers(0, 10, per_batch)]
        if protocol == "py2":
            blob = py2_cifar_pickle(x, y, b"labels")
            pickletools.dis(blob, out=io.StringIO())  # the hand-written stream is well-formed pickle
        else:
            blob = pickle.dumps({"batch_label": name, "labels": y, "data": x,
                                 "filenames": [f"img_{i}.png" for i in range(per_batch)]}, protocol=protocol)
        (folder / name).write_bytes(blob)
        xs.append(x), ys.append(y)
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], np.array(ys[5])


@pytest.mark.parametrize("protocol", ["py2", 2, 3, 4, 5])
def test_cifar10_python_version(tmp_path, protocol):
    x_train, y_train, x_test, y_test = write_cifar10_py(tmp_path, protocol)
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    np.testing.assert_allclose(ds.x_train, expected_nhwc(x_train, CIFAR10_MEAN, CIFAR10_STD), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, expected_nhwc(x_test, CIFAR10_MEAN, CIFAR10_STD), rtol=1e-5, atol=1e-5)
    assert ds.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar10_from_env_and_alias(tmp_path, monkeypatch):
    _, y_train, _, _ = write_cifar10_py(tmp_path, 2, per_batch=1)
    monkeypatch.setenv("EDGECOMP_DATA", str(tmp_path))
    np.testing.assert_array_equal(load_dataset("c10").y_train, y_train)


def write_cifar100_py(folder: Path, py2: bool) -> dict:
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", 5), ("test", 2)):
        x = cifar_images(n)
        fine, coarse = [int(v) for v in RNG.integers(20, 100, n)], [int(v) for v in RNG.integers(0, 20, n)]
        if py2:
            blob = py2_cifar_pickle(x, fine, b"fine_labels")
        else:
            blob = pickle.dumps({"data": x, "fine_labels": fine, "coarse_labels": coarse}, protocol=2)
        (folder / name).write_bytes(blob)
        out[name] = (x, np.array(fine))
    return out


@pytest.mark.parametrize("py2", [True, False])
def test_cifar100_python_version_uses_fine_labels(tmp_path, py2):
    written = write_cifar100_py(tmp_path / "cifar-100-python", py2)
    ds = load_dataset("c100", data_dir=tmp_path)
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.x_train.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, written["train"][1])
    np.testing.assert_allclose(ds.x_test, expected_nhwc(written["test"][0], CIFAR100_MEAN, CIFAR100_STD),
                               rtol=1e-5, atol=1e-5)


def test_cifar10_binary_version(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rows, labels = {}, {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows[name], labels[name] = cifar_images(2), RNG.integers(0, 10, 2, dtype=np.uint8)
        (folder / name).write_bytes(np.hstack([labels[name][:, None], rows[name]]).tobytes())
    ds = load_dataset("cifar10", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.y_train, np.concatenate([labels[f"data_batch_{i}.bin"] for i in range(1, 6)]))
    np.testing.assert_allclose(ds.x_test, expected_nhwc(rows["test_batch.bin"], CIFAR10_MEAN, CIFAR10_STD),
                               rtol=1e-5, atol=1e-5)
    assert ds.source == str(folder)


def test_cifar100_binary_version_reads_the_fine_byte(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    fine = {"train.bin": np.array([55, 99, 0], np.uint8), "test.bin": np.array([42], np.uint8)}
    for name, labels in fine.items():
        coarse = np.full(len(labels), 7, np.uint8)
        (folder / name).write_bytes(np.hstack([coarse[:, None], labels[:, None], cifar_images(len(labels))]).tobytes())
    ds = load_dataset("cifar100", data_dir=str(folder))  # the folder itself works too
    np.testing.assert_array_equal(ds.y_train, [55, 99, 0])
    np.testing.assert_array_equal(ds.y_test, [42])


def test_cifar_binary_truncated(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(bytes(3074 * 2 - 1))
    (folder / "test.bin").write_bytes(bytes(3074))
    with pytest.raises(EdgecompError, match=r"train\.bin has 6147 bytes.*3074-byte records"):
        load_dataset("cifar100", data_dir=str(tmp_path))


def test_cifar_label_out_of_range(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(EdgecompError, match="label 12 out of range"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_missing_and_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMP_DATA", str(tmp_path))  # set, but empty: the downloader is next
    calls = offline(monkeypatch)
    with pytest.raises(EdgecompError) as err:
        load_dataset("cifar10")
    assert "download failed" in err.value.problem
    assert "cifar-10-batches-py" in err.value.fix and "EDGECOMP_DATA" in err.value.fix
    assert calls[0][1]["origin"] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert calls[0][1]["extract"] is True


def test_cifar_downloaded_archive_is_read_safely(tmp_path, monkeypatch):
    _, y_train, _, _ = write_cifar10_py(tmp_path / "cache" / "cifar-10-batches-py-target", 2, per_batch=1)
    monkeypatch.delenv("EDGECOMP_DATA", raising=False)
    patch_get_file(monkeypatch, lambda **kw: str(tmp_path / "cache" / kw["fname"]))
    ds = load_dataset("cifar10")
    np.testing.assert_array_equal(ds.y_train, y_train)
    assert ds.source.endswith(os.path.join("cifar-10-batches-py-target", "cifar-10-batches-py"))


def test_cifar_explicit_dir_without_data(tmp_path):
    with pytest.raises(EdgecompError, match="no cifar100 data in"):
        load_dataset("cifar100", data_dir=str(tmp_path))


def test_cifar_python_batch_missing_key(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({"data": cifar_images(1), "coarse_labels": [1]}, protocol=2))
    with pytest.raises(EdgecompError, match="no 'fine_labels' entry"):
        load_dataset("cifar100", data_dir=str(tmp_path))


def test_normalise_values():
    pixels = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1).repeat(3, axis=3)
    out = normalise(pixels, CIFAR10_MEAN, CIFAR10_STD)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [-125.3 / 63.0, -123.0 / 62.1, -113.9 / 66.7], rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 2], [(255 - 125.3) / 63.0, (255 - 123.0) / 62.1, (255 - 113.9) / 66.7],
                               rtol=1e-6)
    np.testing.assert_allclose(normalise(pixels, CIFAR100_MEAN, CIFAR100_STD)[0, 0, 1],
                               [(128 - 129.3) / 68.2, (128 - 124.1) / 65.4, (128 - 112.4) / 70.4], rtol=1e-5)


# ---------------------------------------------------------------- the safe pickle reader

class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_global_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = pickle.dumps({"data": cifar_images(1), "labels": [0]}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(good)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _RunsShell(marker), "labels": [0]}, protocol=2))
    with pytest.raises(EdgecompError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "unsupported pickle content in" in err.value.problem and "test_batch" in err.value.problem
    assert "global posix.system" in err.value.problem or "global nt.system" in err.value.problem
    assert not marker.exists()


@pytest.mark.parametrize("payload, what", [
    (pickle.dumps(eval, protocol=2), "global __builtin__.eval"),
    (pickle.dumps(eval, protocol=4), "global builtins.eval"),
    (pickle.dumps({1, 2}, protocol=4), "opcode 0x8f"),                               # EMPTY_SET
    (pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "dtype 'O8'"),
    (pickle.dumps(np.zeros(2, dtype=[("a", "u1")]), protocol=2), "dtype"),
    (b"\x80\x02cnumpy\nndarray\nq\x00.", "unfinished Global"),                         # a bare global
])
def test_safe_loads_refuses_non_data(payload, what):
    with pytest.raises(EdgecompError, match="unsupported pickle content in <bytes>") as err:
        safe_loads(payload)
    assert what in err.value.problem


def test_safe_loads_plain_data_and_shared_arrays():
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    value = {"a": [array, array], b"k": (1.5, None, True, -7, 2 ** 70, "héllo", b"\xff"),
             "e": np.zeros((0, 4), np.int16)}
    for protocol in (2, 3, 4, 5):
        got = safe_loads(pickle.dumps(value, protocol=protocol))
        assert got[b"k"] == value[b"k"] and got["e"].shape == (0, 4) and got["e"].dtype == np.int16
        np.testing.assert_array_equal(got["a"][0], array)
        assert got["a"][0] is got["a"][1]  # the memo keeps shared references shared
    looped = [1]
    looped.append(looped)
    got = safe_loads(pickle.dumps(looped, protocol=2))
    assert got[1] is got


def test_safe_load_truncated_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": cifar_images(2), "labels": [1, 2]}, protocol=2)[:-40])
    with pytest.raises(EdgecompError, match=f"{path}.*truncated"):
        safe_load(path)


def test_data_package_never_uses_pickle_or_eval():
    root = Path(__file__).resolve().parents[1] / "edgecomp" / "data"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "import pickle" not in text and "eval(" not in text, path


# ---------------------------------------------------------------- synthetic images and the registry

def test_synthetic_shapes_and_determinism():
    ds = load_dataset("synthetic_images")
    assert ds.x_train.shape == (512, 28, 28, 1) and ds.x_test.shape == (256, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.source == "synthetic"
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.num_classes == 10
    assert np.bincount(ds.y_train).tolist() == [52] * 2 + [51] * 8  # balanced
    again = load_dataset("synthetic_images")
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    other = load_dataset("synthetic_images", seed=1)
    assert not np.array_equal(ds.x_train, other.x_train)


def test_synthetic_is_learnable_and_configurable():
    ds = load_dataset("synthetic_images", n_train=200, n_test=100, shape=(16, 20, 3), num_classes=4, seed=3)
    assert ds.input_shape == (16, 20, 3) and set(ds.y_test.tolist()) == {0, 1, 2, 3}
    # A nearest-centroid classifier already separates the classes, so a tiny CNN will too.
    flat_train, flat_test = ds.x_train.reshape(200, -1), ds.x_test.reshape(100, -1)
    centroids = np.stack([flat_train[ds.y_train == k].mean(0) for k in range(4)])
    predicted = ((flat_test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == ds.y_test).mean() > 0.95


@pytest.mark.parametrize("options", [{"n_train": 0}, {"num_classes": 1}, {"shape": (28, 28)},
                                     {"seed": 1.5}, {"shape": (5, 5, 1), "num_classes": 10}])
def test_synthetic_bad_options(options):
    with pytest.raises(EdgecompError, match="synthetic_images"):
        load_dataset("synthetic_images", **options)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(EdgecompError) as err:
        load_dataset("imagenet-21k")
    assert "unknown dataset 'imagenet-21k'" in err.value.problem
    for name in ("cifar10", "cifar100", "fashion_mnist", "synthetic_images"):
        assert name in dataset_names() and name in err.value.fix
