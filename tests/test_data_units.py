"""cglib.data on small hand-made files, in-process and fast (tests/test_data.py reads the real
Fashion-MNIST and runs the prepare stage): the IDX header and every element type, where the raw
files are looked for and in which order, prepare's subsets and statistics, to_float, the
prepared file."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from cglib import data


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    dt = np.dtype(data._IDX_DTYPES[code])
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(dt).tobytes()


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_idx_every_element_type_round_trips_in_native_order(tmp_path, code):
    want = np.arange(-3, 9).reshape(2, 3, 2) if code != 0x08 else np.arange(12).reshape(2, 3, 2)
    path = tmp_path / "x-idx"
    path.write_bytes(idx_bytes(want, code))
    got = data.read_idx(path)
    assert got.shape == (2, 3, 2) and got.dtype.isnative and np.array_equal(got, want)
    assert got.dtype == np.dtype(data._IDX_DTYPES[code]).newbyteorder("=")
    gz = tmp_path / "x-idx.gz"
    gz.write_bytes(gzip.compress(idx_bytes(want, code)))
    assert np.array_equal(data.read_idx(gz), want)


def test_idx_header_errors_on_both_sides(tmp_path):
    path = tmp_path / "f"
    good = idx_bytes(np.arange(6, dtype=np.uint8), 0x08)
    for bad in (b"\x01" + good[1:], good[:1] + b"\x01" + good[2:], good[:2] + b"\x0a" + good[3:], good[:3]):
        path.write_bytes(bad)
        with pytest.raises(data.DataError, match=r"^.*/f: not an IDX file \(bad magic number\)$"):
            data.read_idx(path)
    path.write_bytes(bytes([0, 0, 8, 0]))  # 4 bytes: a header, no element
    with pytest.raises(data.DataError, match=r"truncated or damaged \(4 bytes, header says 5\)$"):
        data.read_idx(path)
    for cut, n in ((good[:-1], 13), (good + b"\x00", 15)):  # one byte short, one too many
        path.write_bytes(cut)
        with pytest.raises(data.DataError, match=rf"truncated or damaged \({n} bytes, header says 14\); to get it: ask$"):
            data.read_idx(path, "ask")
    path.write_bytes(good)
    assert data.read_idx(path).tolist() == list(range(6))


def test_idx_unreadable_files_name_the_file_and_the_hint(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.read_idx(tmp_path / "none", "apt-get it")
    assert str(err.value) == f"{tmp_path / 'none'}: file not found; to get it: apt-get it"
    with pytest.raises(data.DataError) as err:
        data.read_idx(tmp_path / "none")
    assert str(err.value) == f"{tmp_path / 'none'}: file not found"
    plain = tmp_path / "p.gz"
    plain.write_bytes(idx_bytes(np.arange(6, dtype=np.uint8), 0x08))  # not gzip: OSError
    with pytest.raises(data.DataError, match=r"p\.gz: cannot be read \(.*\); to get it: x$"):
        data.read_idx(plain, "x")
    cut = tmp_path / "c.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.arange(600, dtype=np.int32), 0x0C))[:-12])  # EOFError
    with pytest.raises(data.DataError, match=r"c\.gz: cannot be read"):
        data.read_idx(cut)


def write_set(folder, n_train=3, n_test=2, gz=(), labels_off=None, hw=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (n_train, hw, hw)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, hw, hw)), "test_y": (np.arange(n_test) + 5) % 10}
    if labels_off:
        arrays[labels_off] = arrays[labels_off][:-1]
    for key, arr in arrays.items():
        name = data.IDX_FILES[key]
        raw = idx_bytes(arr, 0x08)
        if key in gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def test_load_raw_reads_a_folder_of_idx_files(tmp_path):
    want = write_set(tmp_path / "raw", gz=("train_y", "test_x"))
    raw = data.load_raw("mnist", str(tmp_path / "raw"))
    assert set(raw) == {"x_train", "y_train", "x_test", "y_test", "num_classes"} and raw["num_classes"] == 10
    assert raw["x_train"].shape == (3, 1, 2, 2) and raw["x_test"].shape == (2, 1, 2, 2)
    assert np.array_equal(raw["x_train"][:, 0], want["train_x"]) and np.array_equal(raw["x_test"][:, 0], want["test_x"])
    assert raw["y_train"].dtype == np.int64 and raw["y_train"].tolist() == [0, 1, 2]
    assert raw["y_test"].dtype == np.int64 and raw["y_test"].tolist() == [5, 6]


@pytest.mark.parametrize("split", ["train", "test"])
def test_label_count_must_match_the_images(tmp_path, split):
    write_set(tmp_path / "raw", labels_off=f"{split}_y")
    n = 3 if split == "train" else 2
    with pytest.raises(data.DataError) as err:
        data.load_raw("fashion_mnist", str(tmp_path / "raw"))
    assert str(err.value) == f"{tmp_path / 'raw' / data.IDX_FILES[split + '_y']}: {n - 1} labels for {n} images"


def test_raw_files_are_looked_for_plain_first_then_gz_and_the_first_folder_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_set(tmp_path / "data" / "raw" / "fashion_mnist")
    here = Path("data/raw/fashion_mnist")
    write_set(here, n_train=4, gz=tuple(data.IDX_FILES))  # the .gz twins differ: plain wins
    found = data._find_idx("fashion_mnist", "")
    assert found == {k: here / v for k, v in data.IDX_FILES.items()}  # data/raw before Debian's folder
    for f in here.iterdir():
        if not f.name.endswith(".gz"):
            f.unlink()
    assert data._find_idx("fashion_mnist", "")["train_x"] == here / (data.IDX_FILES["train_x"] + ".gz")
    for f in here.iterdir():
        f.unlink()
    assert data._find_idx("fashion_mnist", "")["test_y"] == data.DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(data.DataError) as err:  # mnist: no Debian fallback
        data._find_idx("mnist", "")
    assert str(err.value) == ("train-images-idx3-ubyte: not found (looked for data/raw/mnist/train-images-idx3-ubyte"
                              f"[.gz]); to get it: {data.HOW_TO_GET['mnist']}")
    with pytest.raises(data.DataError) as err:  # a raw_dir of its own: no Debian fallback either
        data._find_idx("fashion_mnist", str(tmp_path / "x"))
    assert str(err.value) == (f"train-images-idx3-ubyte: not found (looked for {tmp_path}/x/train-images-idx3-ubyte"
                              f"[.gz]); to get it: {data.HOW_TO_GET['fashion_mnist']}")


def test_other_datasets(tmp_path):
    with pytest.raises(data.DataError, match=r"^unknown dataset 'emnist'$"):  # svhn is a source now
        data.load_raw("emnist")
    with pytest.raises(data.DataError) as err:
        data.load_raw("cifar10", str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path}/cifar-10-batches-py: ")
    assert str(err.value).endswith(f"; to get it: {data.HOW_TO_GET['cifar10']}")
    s = data.load_raw("synthetic", synthetic={"dim": 3, "classes": 2, "n_train_total": 5, "n_test_total": 4}, seed=7)
    ref = data.make_synthetic(seed=7, dim=3, classes=2, n_train_total=5, n_test_total=4)
    assert all(np.array_equal(s[k], ref[k]) for k in ("x_train", "y_train", "x_test", "y_test"))


def test_synthetic_clusters_from_their_definition():
    s = data.make_synthetic(seed=3, dim=2, classes=3, separation=4.0, n_train_total=6, n_test_total=5)
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 2.0, size=(3, 2))
    for split, n in (("train", 6), ("test", 5)):
        y = rng.integers(0, 3, size=n)
        x = centres[y] + rng.normal(size=(n, 2))
        assert s[f"x_{split}"].dtype == np.float32 and s[f"y_{split}"].dtype == np.int64
        assert np.array_equal(s[f"y_{split}"], y) and np.array_equal(s[f"x_{split}"], x.astype(np.float32))
    assert s["num_classes"] == 3


def test_prepare_subsets_and_image_statistics(tmp_path):
    want = write_set(tmp_path / "raw", n_train=6, n_test=5)
    p = {"dataset": "mnist", "raw_dir": str(tmp_path / "raw"), "n_train": 4, "n_test": 5, "seed": 2}
    d = data.prepare(p)
    rng = np.random.default_rng(2)
    tr = np.sort(rng.choice(6, size=4, replace=False))  # the whole test set draws nothing
    assert d["source_train"].tolist() == tr.tolist() and d["source_test"].tolist() == list(range(5))
    assert d["dataset"] == "mnist" and d["num_classes"] == 10
    assert torch.equal(d["x_train"], torch.from_numpy(want["train_x"][tr][:, None].astype(np.uint8)))
    assert d["y_train"].tolist() == (tr % 10).tolist() and d["y_test"].tolist() == [5, 6, 7, 8, 9]
    xs = want["train_x"][tr] / 255.0
    assert d["mean"].tolist() == pytest.approx([xs.mean()], rel=1e-6)
    assert d["std"].tolist() == pytest.approx([xs.std()], rel=1e-6)
    assert d["mean"].dtype == d["std"].dtype == torch.float32
    # n = 0 means all; a subset of the test set then comes from the fresh generator
    d0 = data.prepare({**p, "n_train": 0, "n_test": 3})
    assert d0["source_train"].tolist() == list(range(6))
    rng = np.random.default_rng(2)
    assert d0["source_test"].tolist() == np.sort(rng.choice(5, size=3, replace=False)).tolist()
    with pytest.raises(data.DataError, match="^asked for 7 examples but the set has only 6$"):
        data.prepare({**p, "n_train": 7})
    f = data.prepare({"dataset": "synthetic", "raw_dir": "", "n_train": 0, "n_test": 0, "seed": 0,
                      "synthetic": {"n_train_total": 4, "n_test_total": 2, "dim": 3}})
    assert f["mean"].tolist() == [0.0] and f["std"].tolist() == [1.0] and f["x_train"].dtype == torch.float32


def test_fixed_sample_is_seeded_sorted_and_whole_when_large():
    assert data.fixed_sample(5, 5, 0).tolist() == [0, 1, 2, 3, 4]
    assert data.fixed_sample(5, 9, 0).tolist() == [0, 1, 2, 3, 4]
    want = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4].sort().values
    assert data.fixed_sample(10, 4, 3).tolist() == want.tolist()
    assert data.fixed_sample(10, 4, 3).tolist() != data.fixed_sample(10, 4, 4).tolist()


def test_to_float_normalises_each_channel_of_images():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    mean, std = torch.tensor([0.5, 0.25]), torch.tensor([0.5, 0.125])
    got = data.to_float(x, mean, std)
    want = torch.tensor([[[[-1.0, 1.0]], [[-0.4, 1.2]]]])
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6)
    f = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    assert data.to_float(f, mean, std).dtype == torch.float32 and data.to_float(f, mean, std).tolist() == [[1.5, -2.0]]


def test_prepared_file_round_trip_and_damage(tmp_path):
    write_set(tmp_path / "raw", n_train=6, n_test=5)
    d = data.prepare({"dataset": "mnist", "raw_dir": str(tmp_path / "raw"), "n_train": 0, "n_test": 0, "seed": 0})
    path = tmp_path / "d.pt"
    torch.save(d, path)
    got = data.load_prepared(path)
    assert got["input_shape"] == (1, 2, 2) and got["dataset"] == "mnist"
    for split in ("train", "test"):
        assert torch.equal(got[f"x_{split}"], data.to_float(d[f"x_{split}"], d["mean"], d["std"]))
        assert torch.equal(got[f"y_{split}"], d[f"y_{split}"])
    with pytest.raises(data.DataError) as err:
        data.read_prepared(tmp_path / "none.pt")
    assert str(err.value) == f"{tmp_path / 'none.pt'}: prepared data not found; run the prepare stage first"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(data.DataError, match=r"d\.pt: prepared data damaged \(.+\); delete it and rerun the prepare stage$"):
        data.read_prepared(path)


def test_cifar10_arrays_are_channels_first(tmp_path, monkeypatch):
    """torchvision's CIFAR10 class stood in for (the real files are not here): its (N, H, W, C)
    uint8 data and list targets become (N, C, H, W) and int64, train and test from their sets."""
    import torchvision
    seen = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            seen.append((root, train, download))
            n = 3 if train else 2
            self.data = np.arange(n * 4 * 5 * 3, dtype=np.uint8).reshape(n, 4, 5, 3) + (0 if train else 100)
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    raw = data.load_raw("cifar10", str(tmp_path))
    assert seen == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    assert raw["num_classes"] == 10 and set(raw) == {"x_train", "y_train", "x_test", "y_test", "num_classes"}
    for split, n, off in (("train", 3, 0), ("test", 2, 100)):
        want = (np.arange(n * 60, dtype=np.uint8).reshape(n, 4, 5, 3) + off).transpose(0, 3, 1, 2)
        assert raw[f"x_{split}"].shape == (n, 3, 4, 5) and np.array_equal(raw[f"x_{split}"], want)
        assert raw[f"x_{split}"].flags["C_CONTIGUOUS"]
        assert raw[f"y_{split}"].dtype == np.int64 and raw[f"y_{split}"].tolist() == list(range(n))
    data.load_raw("cifar10")
    assert seen[-1] == ("data/raw/cifar10", False, False)


def test_prepared_key_changes_with_every_input_of_the_prepared_file(tmp_path, monkeypatch):
    """Equal data sections, raw files and code give one key (so studies share the file); a
    change of any data key, of a raw file's size or time, of the code or of torch gives another
    (so a shared file is never stale)."""
    import os

    write_set(tmp_path / "raw")
    base = {"dataset": "mnist", "raw_dir": str(tmp_path / "raw"), "n_train": 2, "n_test": 0, "seed": 0,
            "synthetic": {"dim": 20}}
    key = data.prepared_key(base, b"stage")
    assert len(key) == 64 and data.prepared_key(dict(reversed(list(base.items()))), b"stage") == key
    others = [data.prepared_key({**base, "n_train": 3}, b"stage"), data.prepared_key({**base, "n_test": 1}, b"stage"),
              data.prepared_key({**base, "seed": 1}, b"stage"),
              data.prepared_key({**base, "synthetic": {"dim": 21}}, b"stage"),
              data.prepared_key(base, b"stage2"), data.prepared_key(base)]
    train_x = tmp_path / "raw" / data.IDX_FILES["train_x"]
    os.utime(train_x, ns=(1, 1))
    others.append(data.prepared_key(base, b"stage"))
    train_x.write_bytes(train_x.read_bytes() + b"\0")
    os.utime(train_x, ns=(1, 1))  # the same time, another size
    others.append(data.prepared_key(base, b"stage"))
    monkeypatch.setattr(torch, "__version__", "0.0")
    others.append(data.prepared_key(base, b"stage"))
    assert len({key, *others}) == len(others) + 1


def test_raw_files_of_each_dataset(tmp_path):
    write_set(tmp_path / "raw", gz=("test_x",))
    assert data.raw_files("mnist", str(tmp_path / "raw")) == sorted(
        tmp_path / "raw" / (v + (".gz" if k == "test_x" else "")) for k, v in data.IDX_FILES.items())
    root = tmp_path / "c" / "cifar-10-batches-py"
    assert data.raw_files("cifar10", str(tmp_path / "c")) == [root / f"data_batch_{i}" for i in range(1, 6)] + [
        root / "test_batch"]
    assert data.raw_files("synthetic") == []
    with pytest.raises(data.DataError):
        data.raw_files("mnist", str(tmp_path / "none"))
