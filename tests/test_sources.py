"""cglib.sources in-process on small hand-made sources: an .npz file (uint8 images, float
features), an ImageFolder tree, and CIFAR-100, SVHN and KMNIST roots in their real on-disk
formats. Values against the source arrays (and, for images, against torchvision's own
transforms); every error one line naming the key or file; the planning-time facts; what the
prepared file's key and Snakemake's rerun values see. The prepare stage's runs: test_sources_stage.py."""
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cglib import config, data, sources
from conftest import tiny_params

# ---------------------------------------------------------------------------- makers


def write_npz(path: Path, features=False, **override) -> dict:
    """Train and test sets of other sizes and values; the largest label (6) only in the test set."""
    rng = np.random.default_rng(1)
    if features:
        arr = {"x_train": rng.normal(size=(9, 5)).astype(np.float32), "x_test": rng.normal(size=(4, 5)).astype(np.float32)}
    else:
        arr = {"x_train": rng.integers(0, 256, (9, 3, 4, 5), dtype=np.uint8),
               "x_test": rng.integers(0, 256, (4, 3, 4, 5), dtype=np.uint8)}
    arr.update(y_train=np.array([0, 1, 2, 3, 4, 0, 1, 2, 3], dtype=np.int32), y_test=np.array([6, 0, 1, 2]))
    arr.update(override)
    np.savez(path, **{k: v for k, v in arr.items() if v is not None})
    return arr


CLASSES = ["zebra", "ant", "moth", "bee", "cat", "dog", "eel", "fox", "gnu", "hen"]  # sorted ≠ written order
SIZES = [(7, 5), (12, 9), (5, 11)]  # (W, H): landscape, landscape, portrait: resize and crop both matter


def write_folder(root: Path, per_class=2) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for k, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class if split == "train" else 1):
                w, h = SIZES[(k + i) % len(SIZES)]
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(root / split / name / f"{i}.png")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar100(root: Path) -> dict:
    """cifar-100-python/train, test, meta as the real archive has them (dicts pickled, rows of
    3072 bytes, channel-major); coarse labels differ from the fine ones."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    want = {}
    for split, n in (("train", 6), ("test", 4)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = [99, 0, 57, 3, 42, 99][:n]
        entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split, "fine_labels": fine,
                 "coarse_labels": [f // 5 for f in fine], "data": x.reshape(n, 3072)}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        want[split] = (x, fine)
    meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return want


def trust_md5(monkeypatch, cls, listing: dict) -> None:
    """torchvision checks CIFAR-100's and SVHN's files against the real ones' md5 sums; these
    stand-ins are checked against their own (the check still runs: a changed byte fails it)."""
    import torchvision

    c = getattr(torchvision.datasets, cls)
    if cls == "CIFAR100":
        monkeypatch.setattr(c, "train_list", [["train", listing["train"]]])
        monkeypatch.setattr(c, "test_list", [["test", listing["test"]]])
        monkeypatch.setattr(c, "meta", {**c.meta, "md5": listing["meta"]})
    else:
        monkeypatch.setattr(c, "split_list", {s: [*v[:2], listing.get(s, v[2])] for s, v in c.split_list.items()})


def write_svhn(root: Path) -> dict:
    """train_32x32.mat, test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True)
    rng = np.random.default_rng(4)
    want = {}
    for split, y in (("train", [10, 1, 9, 3, 10]), ("test", [2, 10, 7])):
        x = rng.integers(0, 256, (len(y), 3, 32, 32), dtype=np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": np.array(y, np.uint8)[:, None]})
        want[split] = (x, [0 if v == 10 else v for v in y])
    return want


def write_kmnist(root: Path) -> dict:
    from test_data_units import idx_bytes

    raw = root / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(5)
    want = {}
    for split, stem, n in (("train", "train", 5), ("test", "t10k", 3)):
        x, y = rng.integers(0, 256, (n, 28, 28)), (np.arange(n) * 3 + (split == "test")) % 10
        (raw / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(x, 0x08))
        (raw / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(y, 0x08))
        want[split] = (x.astype(np.uint8)[:, None], y.tolist())
    return want


def prep(dataset, n_train=0, n_test=0, **d):
    return data.prepare({"dataset": dataset, "raw_dir": "", "n_train": n_train, "n_test": n_test, "seed": 0, **d})


# ---------------------------------------------------------------------------- npz


def test_npz_images_come_back_exactly(tmp_path):
    src = write_npz(tmp_path / "own.npz")
    d = prep("npz", path=str(tmp_path / "own.npz"))
    for split in ("train", "test"):
        assert d[f"x_{split}"].dtype == torch.uint8 and np.array_equal(d[f"x_{split}"].numpy(), src[f"x_{split}"])
        assert d[f"y_{split}"].dtype == torch.int64 and d[f"y_{split}"].tolist() == src[f"y_{split}"].tolist()
    assert d["num_classes"] == 7  # largest label (6, in the test set only) + 1
    xs = src["x_train"] / 255.0
    assert d["mean"].tolist() == pytest.approx(xs.mean(axis=(0, 2, 3)).tolist(), rel=1e-6)
    assert d["std"].tolist() == pytest.approx(xs.std(axis=(0, 2, 3)).tolist(), rel=1e-6)
    sub = prep("npz", n_train=4, n_test=3, path=str(tmp_path / "own.npz"))
    tr, te = sub["source_train"].numpy(), sub["source_test"].numpy()
    assert len(tr) == 4 and len(te) == 3 and sub["num_classes"] == 7  # classes of the whole file
    assert np.array_equal(sub["x_train"].numpy(), src["x_train"][tr]) and np.array_equal(sub["x_test"].numpy(), src["x_test"][te])
    assert sub["y_test"].tolist() == src["y_test"][te].tolist()


def test_npz_one_channel_images_and_float_features(tmp_path):
    gray = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_npz(tmp_path / "g.npz", x_train=gray, y_train=np.array([1, 0]), x_test=gray[:1] + 1, y_test=np.array([0]))
    raw = data.load_raw("npz", path=str(tmp_path / "g.npz"))
    assert raw["x_train"].shape == (2, 1, 3, 4) and np.array_equal(raw["x_train"][:, 0], gray)
    assert raw["x_test"].shape == (1, 1, 3, 4) and raw["num_classes"] == 2
    src = write_npz(tmp_path / "f.npz", features=True, x_test=np.ones((4, 5)))  # float64: becomes float32
    d = prep("npz", path=str(tmp_path / "f.npz"))
    assert d["x_train"].dtype == d["x_test"].dtype == torch.float32
    assert np.array_equal(d["x_train"].numpy(), src["x_train"]) and d["x_test"].tolist() == [[1.0] * 5] * 4
    assert d["mean"].tolist() == [0.0] and d["std"].tolist() == [1.0]


@pytest.mark.parametrize("override, message", [
    ({"y_test": None}, "lacks y_test"),
    ({"x_train": None, "y_test": None}, "lacks x_train, y_test"),
    ({"y_train": np.arange(8)}, "has 8 labels in y_train for 9 examples in x_train"),
    ({"y_test": np.arange(5)}, "has 5 labels in y_test for 4 examples in x_test"),
    ({"y_train": np.zeros(9, np.float32)}, "has y_train of shape (9,) and dtype float32; want integer labels (N,)"),
    ({"y_test": np.zeros((4, 1), np.int64)}, "has y_test of shape (4, 1) and dtype int64; want integer labels (N,)"),
    ({"y_test": np.array([0, -1, 2, 3])}, "has a negative label in y_test (-1)"),
    ({"x_test": np.zeros((4, 3, 4, 5), np.float32)},
     "has x_test of shape (4, 3, 4, 5) and dtype float32; want uint8 images (N, C, H, W) or (N, H, W), or "
     "float features (N, d)"),
    ({"x_test": np.zeros((4, 3, 5, 4), np.uint8)},
     "has x_test examples of shape (3, 5, 4) (uint8) but x_train's are (3, 4, 5) (uint8)"),
    ({"x_train": np.zeros((9, 60), np.uint8)},
     "has x_train of shape (9, 60) and dtype uint8; want uint8 images (N, C, H, W) or (N, H, W), or "
     "float features (N, d)"),
    ({"x_test": np.zeros((4, 60), np.float32)},
     "has x_test examples of shape (60,) (float32) but x_train's are (3, 4, 5) (uint8)"),
    ({"x_train": np.zeros((0, 3, 4, 5), np.uint8), "y_train": np.zeros(0, np.int64)}, "has no examples in x_train"),
])
def test_npz_errors_name_the_file_and_the_array(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    write_npz(path, **override)
    with pytest.raises(data.DataError) as err:
        prep("npz", path=str(path))
    assert str(err.value) == f"data.path: {path} {message}"
    if "negative" not in message:  # what headers show, planning sees too
        assert data.missing_raw("npz", path=str(path)) == str(err.value)


def test_npz_missing_or_not_an_npz_file(tmp_path):
    path = tmp_path / "none.npz"
    want = f"data.path: {path} not found; save x_train, y_train, x_test, y_test into it with numpy.savez"
    assert data.missing_raw("npz", path=str(path)) == want
    with pytest.raises(data.DataError) as err:
        data.load_raw("npz", path=str(path))
    assert str(err.value) == want
    path.write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match=rf"^data\.path: {path} is not a readable \.npz file \(.+\)$"):
        data.load_raw("npz", path=str(path))
    write_npz(path)
    assert data.missing_raw("npz", path=str(path)) is None


# ---------------------------------------------------------------------------- imagefolder


def test_imagefolder_images_are_resized_then_cropped_as_torchvision_does(tmp_path):
    from PIL import Image
    from torchvision import transforms

    write_folder(tmp_path / "in")
    d = prep("imagefolder", raw_dir=str(tmp_path / "in"), resize=6, image_size=4)
    assert d["num_classes"] == 10 and d["x_train"].shape == (20, 3, 4, 4) and d["x_test"].shape == (10, 3, 4, 4)
    assert d["x_train"].dtype == torch.uint8
    order = sorted(CLASSES)
    files = [(tmp_path / "in" / "train" / c / f"{i}.png", k) for k, c in enumerate(order) for i in range(2)]
    assert d["y_train"].tolist() == [k for _, k in files] and d["y_test"].tolist() == list(range(10))
    keep = transforms.Compose([transforms.Resize(6), transforms.CenterCrop(4)])
    for row, (path, _) in enumerate(files):
        want = np.asarray(keep(Image.open(path).convert("RGB"))).transpose(2, 0, 1)
        assert np.array_equal(d["x_train"][row].numpy(), want)
        other = np.asarray(transforms.Resize(6)(transforms.CenterCrop(4)(Image.open(path).convert("RGB"))))
        assert not np.array_equal(d["x_train"][row].numpy(), other[:4, :4].transpose(2, 0, 1))  # order matters
    val0 = np.asarray(keep(Image.open(tmp_path / "in" / "val" / order[0] / "0.png").convert("RGB")))
    assert np.array_equal(d["x_test"][0].numpy(), val0.transpose(2, 0, 1))
    xs = d["x_train"].numpy() / 255.0  # prepare's own statistics, of the stored crops
    assert d["mean"].tolist() == pytest.approx(xs.mean(axis=(0, 2, 3)).tolist(), rel=1e-6)
    sub = prep("imagefolder", n_train=5, raw_dir=str(tmp_path / "in"), resize=6, image_size=4)
    assert torch.equal(sub["x_train"], d["x_train"][sub["source_train"]])  # only the subset decoded


def test_imagefolder_file_list_is_torchvision_s(tmp_path):
    """The torch-free listing (planning counts, the fingerprint) is ImageFolder's: nested
    folders, upper-case extensions, other files skipped; the extensions are torchvision's."""
    import torchvision

    assert sources.IMG_EXTENSIONS == torchvision.datasets.folder.IMG_EXTENSIONS
    write_folder(tmp_path)
    (tmp_path / "train" / "ant" / "deeper").mkdir()
    (tmp_path / "train" / "ant" / "deeper" / "2.PNG").write_bytes((tmp_path / "train" / "ant" / "0.png").read_bytes())
    (tmp_path / "train" / "ant" / "notes.txt").write_text("x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "3.jpg").write_bytes(b"")
    (tmp_path / "train" / "bee" / "linked").symlink_to(tmp_path / "elsewhere")  # followed, as torchvision does
    classes = sources.folder_classes(tmp_path)
    ours = sources.image_files(tmp_path / "train", classes)
    theirs = torchvision.datasets.ImageFolder(str(tmp_path / "train"))
    assert classes == theirs.classes == sorted(CLASSES) and ours == theirs.samples and len(ours) == 22


@pytest.mark.parametrize("breakage, folder, what", [
    (lambda r: os.rename(r / "val", r / "valid"), "val", "not found"),
    (lambda r: os.rename(r / "val" / "moth", r / "val" / "moths"), "val",
     "class folders differ from train/'s: lacks moth; has moths, which train/ has not"),
    (lambda r: (r / "train" / "yak").mkdir(), "val", "class folders differ from train/'s: lacks yak"),
    (lambda r: [shutil.rmtree(p) for p in (r / "train").iterdir()] + [(r / "train" / "a.png").write_bytes(b"")],
     "train", "holds no class folders"),  # a file is not a class
    (lambda r: [p.unlink() for p in (r / "val" / "bee").iterdir()], "val/bee",
     "holds no images (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)"),
    (lambda r: [p.unlink() for p in (r / "train" / "ant").iterdir()], "train/ant",
     "holds no images (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)"),
])
def test_imagefolder_errors_name_the_folder(tmp_path, breakage, folder, what):
    root = tmp_path / "in"
    write_folder(root, per_class=1)
    breakage(root)
    want = (f"{root / folder}/: {what} (data.dataset: imagefolder); to get it: put one folder of images per class "
            f"in {root}/train/<class>/ and {root}/val/<class>/ (ImageNet's layout)")
    with pytest.raises(data.DataError) as err:
        prep("imagefolder", raw_dir=str(root), resize=6, image_size=4)
    assert str(err.value) == want
    if "no images" not in what:
        assert data.missing_raw("imagefolder", str(root)) == want


def test_imagefolder_damaged_image_names_the_file(tmp_path):
    write_folder(tmp_path, per_class=1)
    bad = tmp_path / "train" / "ant" / "0.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(data.DataError, match=rf"^{bad}: cannot be read as an image \(.+\) \(data.dataset: imagefolder\)$"):
        prep("imagefolder", raw_dir=str(tmp_path), resize=6, image_size=4)


# ---------------------------------------------------------------------------- torchvision classes


def test_cifar100_fine_labels_channels_first(tmp_path, monkeypatch):
    want = write_cifar100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    trust_md5(monkeypatch, "CIFAR100", {n: md5(folder / n) for n in ("train", "test", "meta")})
    d = prep("cifar100", raw_dir=str(tmp_path))
    assert d["num_classes"] == 100
    for split in ("train", "test"):
        x, fine = want[split]
        assert d[f"x_{split}"].dtype == torch.uint8 and np.array_equal(d[f"x_{split}"].numpy(), x)
        assert d[f"y_{split}"].tolist() == fine  # fine, not coarse, labels
    (folder / "test").write_bytes((folder / "test").read_bytes()[:-1])  # one byte short: md5 fails
    with pytest.raises(data.DataError) as err:
        prep("cifar100", raw_dir=str(tmp_path))
    assert str(err.value) == (f"{tmp_path}/: CIFAR100 cannot read its train set (Dataset not found or corrupted. "
                              "You can use download=True to download it) (data.dataset: cifar100); to get it: "
                              f"unpack cifar-100-python.tar.gz into {tmp_path}/ (cifar-100-python/train, test, meta)")


def test_svhn_splits_and_the_digit_zero(tmp_path, monkeypatch):
    want = write_svhn(tmp_path / "svhn")
    trust_md5(monkeypatch, "SVHN", {s: md5(tmp_path / "svhn" / f"{s}_32x32.mat") for s in ("train", "test")})
    d = prep("svhn", raw_dir=str(tmp_path / "svhn"))
    assert d["num_classes"] == 10 and d["x_train"].shape == (5, 3, 32, 32) and d["x_test"].shape == (3, 3, 32, 32)
    for split in ("train", "test"):
        assert np.array_equal(d[f"x_{split}"].numpy(), want[split][0]) and d[f"y_{split}"].tolist() == want[split][1]


def test_kmnist_reads_its_raw_folder(tmp_path):
    want = write_kmnist(tmp_path)
    d = prep("kmnist", raw_dir=str(tmp_path))
    assert d["num_classes"] == 10 and d["x_train"].shape == (5, 1, 28, 28)
    for split in ("train", "test"):
        assert np.array_equal(d[f"x_{split}"].numpy(), want[split][0]) and d[f"y_{split}"].tolist() == want[split][1]


ROOT_FILES = {  # what torchvision's classes read under their root (download=False)
    "kmnist": [f"KMNIST/raw/{s}" for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
}


@pytest.mark.parametrize("dataset, how", [
    ("kmnist", "put the four Kuzushiji-MNIST IDX files, gunzipped, in {root}/KMNIST/raw/"),
    ("cifar100", "unpack cifar-100-python.tar.gz into {root}/ (cifar-100-python/train, test, meta)"),
    ("svhn", "put SVHN's cropped digits, train_32x32.mat and test_32x32.mat, in {root}/"),
])
def test_torchvision_roots_missing_or_lacking(tmp_path, monkeypatch, dataset, how):
    monkeypatch.chdir(tmp_path)
    root = Path("data/raw") / dataset  # the default root
    tail = f"(data.dataset: {dataset}); to get it: {how.format(root=root)}"
    assert data.missing_raw(dataset) == f"{root}/: not found {tail}"
    with pytest.raises(data.DataError) as err:
        data.load_raw(dataset)
    assert str(err.value) == f"{root}/: not found {tail}"
    for f in ROOT_FILES[dataset]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")
    assert data.missing_raw(dataset) is None
    assert data.raw_files(dataset) == [root / f for f in ROOT_FILES[dataset]]
    for f in ROOT_FILES[dataset]:  # each one lacking alone is said
        (root / f).rename(root / "aside")
        assert data.missing_raw(dataset) == f"{root}/: lacks {f} {tail}"
        (root / "aside").rename(root / f)


def test_a_reader_s_error_is_its_first_line(tmp_path, monkeypatch):
    import torchvision

    write_kmnist(tmp_path)

    def broken(**_):
        raise ValueError("the first line\nand a traceback's worth more")

    monkeypatch.setattr(torchvision.datasets, "KMNIST", broken)
    with pytest.raises(data.DataError) as err:
        data.load_raw("kmnist", str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path}/: KMNIST cannot read its train set (the first line) (data.dataset")


# ---------------------------------------------------------------------------- planning, keys, params


def test_planning_facts_without_torch(tmp_path):
    write_npz(tmp_path / "i.npz")
    write_npz(tmp_path / "f.npz", features=True)
    write_npz(tmp_path / "g.npz", x_train=np.zeros((9, 6, 7), np.uint8), x_test=np.zeros((4, 6, 7), np.uint8))
    write_folder(tmp_path / "in")
    d = {"raw_dir": "", "path": "", "resize": 256, "image_size": 224}
    assert sources.full_shape({**d, "dataset": "npz", "path": str(tmp_path / "i.npz")}) == ((3, 4, 5), 9, 4, 7)
    assert sources.full_shape({**d, "dataset": "npz", "path": str(tmp_path / "f.npz")}) == ((5,), 9, 4, 7)
    assert sources.full_shape({**d, "dataset": "npz", "path": str(tmp_path / "g.npz")}) == ((1, 6, 7), 9, 4, 7)
    assert sources.full_shape({**d, "dataset": "npz", "path": str(tmp_path / "none.npz")}) is None
    folder = {**d, "dataset": "imagefolder", "raw_dir": str(tmp_path / "in"), "image_size": 5}
    assert sources.full_shape(folder) == ((3, 5, 5), 20, 10, 10)
    assert sources.full_shape({**folder, "raw_dir": str(tmp_path / "none")}) is None
    known = {"fashion_mnist": ((1, 28, 28), 60_000, 10_000, 10), "mnist": ((1, 28, 28), 60_000, 10_000, 10),
             "cifar10": ((3, 32, 32), 50_000, 10_000, 10), "kmnist": ((1, 28, 28), 60_000, 10_000, 10),
             "cifar100": ((3, 32, 32), 50_000, 10_000, 100), "svhn": ((3, 32, 32), 73_257, 26_032, 10)}
    assert {name: sources.full_shape({**d, "dataset": name}) for name in known} == known
    code = ("import sys; from cglib import data, sources; sources.full_shape({'dataset': 'npz', 'path': sys.argv[1]});"
            "data.missing_raw('imagefolder', sys.argv[2]); sources.full_shape({'dataset': 'imagefolder', "
            "'raw_dir': sys.argv[2], 'image_size': 4}); assert 'torch' not in sys.modules")
    import subprocess
    import sys
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "i.npz"), str(tmp_path / "in")], check=True)


def test_prepared_key_sees_the_keys_and_files_a_source_reads(tmp_path, monkeypatch):
    write_folder(tmp_path / "in")
    folder = {"dataset": "imagefolder", "raw_dir": str(tmp_path / "in"), "n_train": 0, "n_test": 0, "seed": 0,
              "path": "", "resize": 256, "image_size": 224}
    key = data.prepared_key(folder)
    others = [data.prepared_key({**folder, "resize": 255}), data.prepared_key({**folder, "image_size": 223})]
    last = sorted((tmp_path / "in" / "val").rglob("*.png"))[-1]  # the last file of the sorted list
    assert data.raw_files("imagefolder", str(tmp_path / "in"))[-1] == last
    assert len(data.raw_files("imagefolder", str(tmp_path / "in"))) == 30
    os.utime(last, ns=(1, 1))
    others.append(data.prepared_key(folder))
    (tmp_path / "in" / "train" / "ant" / "9.jpg").write_bytes(b"")  # a new image
    others.append(data.prepared_key(folder))
    assert data.prepared_key({**folder, "path": "x.npz"}) == others[-1]  # imagefolder does not read path
    write_npz(tmp_path / "a.npz")
    write_npz(tmp_path / "b.npz")
    npz = {**folder, "dataset": "npz", "raw_dir": "", "path": str(tmp_path / "a.npz")}
    others += [data.prepared_key(npz), data.prepared_key({**npz, "path": str(tmp_path / "b.npz")})]
    assert data.prepared_key({**npz, "resize": 1, "image_size": 1}) == others[-2]  # npz does not read them
    copy = tmp_path / "sources.py"  # cglib.sources' code is in the key, as cglib.data's is
    copy.write_text(Path(sources.__file__).read_text() + "\n")
    monkeypatch.setattr(sources, "__file__", str(copy))
    others.append(data.prepared_key(npz))
    assert len({key, *others}) == len(others) + 1
    mnist = {**folder, "dataset": "mnist", "raw_dir": str(tmp_path / "none")}
    assert sources.used(mnist) == {k: mnist[k] for k in ("dataset", "raw_dir", "n_train", "n_test", "seed")}


def test_snakemake_rerun_values_of_prepare_keep_the_old_keys_for_the_old_datasets(tmp_path):
    """A data key a study's dataset does not read is not among prepare's values: the studies of
    the four datasets that came before these keys keep theirs, and are not re-run by them."""
    p = config.validate(tiny_params())
    assert set(config.stage_params(p, "prepare")["data"]) == {"dataset", "raw_dir", "n_train", "n_test", "seed",
                                                              "synthetic"}
    write_npz(tmp_path / "a.npz")
    p["data"].update(dataset="npz", path=str(tmp_path / "a.npz"))
    assert config.stage_params(config.validate(p), "prepare")["data"]["path"] == str(tmp_path / "a.npz")
    p["data"].update(dataset="imagefolder", resize=8, image_size=6)
    got = config.stage_params(config.validate(p), "prepare")["data"]
    assert (got["resize"], got["image_size"]) == (8, 6) and "path" not in got


def test_params_of_the_new_sources(tmp_path):
    write_npz(tmp_path / "f.npz", features=True)
    write_npz(tmp_path / "i.npz")
    p = tiny_params()
    p["data"] = {"dataset": "npz", "n_train": 0}  # all 9: no cross-check of sizes against the file
    with pytest.raises(config.ParamsError) as err:
        config.validate(p)
    assert str(err.value) == "data.path: dataset npz needs the path of a .npz file (x_train, y_train, x_test, y_test)"
    p["data"]["path"] = str(tmp_path / "f.npz")
    assert config.validate(p)["data"]["resize"] == 256  # mlp on features: fine
    p["model"] = {"name": "cnn", "channels": [4]}
    with pytest.raises(config.ParamsError) as err:
        config.validate(p)
    assert str(err.value) == f"model.name: cnn needs an image dataset, and data.path {tmp_path / 'f.npz'} holds " \
                             "float features (N, d)"
    p["model"] = {"name": "mlp", "hidden": [4]}
    p["mc"] = {"noise": [0], "model": {"name": "resnet18"}}
    with pytest.raises(config.ParamsError, match=r"^mc\.model\.name: resnet18 needs an image dataset, and data\.path"):
        config.validate(p)
    p["data"]["path"] = str(tmp_path / "i.npz")
    config.validate(p)  # images: the image models are fine
    p["data"]["path"] = str(tmp_path / "none.npz")
    config.validate(p)  # unreadable: the prepare stage says why
    p["data"] = {"dataset": "imagefolder", "resize": 32, "image_size": 33, "n_train": 0}
    with pytest.raises(config.ParamsError) as err:
        config.validate(p)
    assert str(err.value) == "data.image_size: 33 exceeds data.resize = 32 (the centre crop is cut from the resized image)"
    p["data"]["dataset"] = "cifar1000"
    with pytest.raises(config.ParamsError, match=r"^data\.dataset: 'cifar1000' is not one of .*, kmnist, cifar100, "
                                                 r"svhn, npz, imagefolder$"):
        config.validate(p)
    schema = config.schema()["properties"]["data"]["properties"]
    assert all(schema[k].get("description") and "default" in schema[k] for k in ("path", "resize", "image_size"))
