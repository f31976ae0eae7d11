"""Data sources a researcher brings: torchvision dataset classes read from a local root (kmnist,
cifar100, svhn), an array file (npz) and an ImageNet-style folder tree (imagefolder).

cglib.data dispatches here. `missing` and `full_shape` are planning-time (rules/common.smk): they
look at files and headers only and never import torch. `files` is what `data.prepared_key`
fingerprints; `load` gives the arrays `data.prepare` subsets. Nothing downloads (torchvision
classes always get download=False): a missing or malformed source is a `DataError` of one line
naming the file or folder, the params key and what to put where.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(RuntimeError):
    """A dataset file is missing or damaged (cglib.data re-exports it)."""


# ---------------------------------------------------------------------------- planning facts

# input shape, full train and test sizes, classes of the datasets whose size is fixed: the
# Snakefile prices cluster jobs with them before any file is read (sizes as torchvision reads them)
KNOWN_SHAPE = {
    "fashion_mnist": ((1, 28, 28), 60_000, 10_000, 10),
    "mnist": ((1, 28, 28), 60_000, 10_000, 10),
    "cifar10": ((3, 32, 32), 50_000, 10_000, 10),
    "kmnist": ((1, 28, 28), 60_000, 10_000, 10),
    "cifar100": ((3, 32, 32), 50_000, 10_000, 100),
    "svhn": ((3, 32, 32), 73_257, 26_032, 10),
}
# the keys only one source reads: left out of the others' data section where it decides a rerun
# or a shared file's name (a new key must not re-run or re-prepare the studies that ignore it)
OWN_KEYS = {"path": "npz", "resize": "imagefolder", "image_size": "imagefolder"}


def used(d: dict) -> dict:
    """The data section without the keys its dataset does not read."""
    return {k: v for k, v in d.items() if OWN_KEYS.get(k, d["dataset"]) == d["dataset"]}


def full_shape(d: dict) -> tuple | None:
    """(input shape, whole train size, whole test size, classes) of a data section, from headers
    and file lists only; None when the files are not there (yet) or unreadable."""
    if d["dataset"] in KNOWN_SHAPE:
        return KNOWN_SHAPE[d["dataset"]]
    try:
        if d["dataset"] == "npz":
            return _npz_shape(Path(d["path"]))
        if d["dataset"] == "imagefolder":
            root = raw_root("imagefolder", d["raw_dir"])
            classes = folder_classes(root)
            n_train, n_test = (len(image_files(root / s, classes)) for s in ("train", "val"))
            return (3, d["image_size"], d["image_size"]), n_train, n_test, len(classes)
    except (DataError, OSError, ValueError, zipfile.BadZipFile):  # the prepare job says what is wrong
        return None
    return None


def raw_root(dataset: str, raw_dir: str) -> Path:
    """The folder a dataset's raw files are read from: raw_dir, else data/raw/<dataset>/."""
    return Path(raw_dir or f"data/raw/{dataset}")


# ---------------------------------------------------------------------------- torchvision classes

@dataclass(frozen=True)
class Torchvision:
    cls: str                 # the class in torchvision.datasets
    files: tuple[str, ...]   # what it reads under the root
    how: str                 # what to put where ({root}: the root)
    layout: str              # of its .data: NHW, NHWC or NCHW
    labels: str = "targets"  # the attribute holding the labels


TORCHVISION = {
    "kmnist": Torchvision(
        "KMNIST", tuple(f"KMNIST/raw/{s}" for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
        "put the four Kuzushiji-MNIST IDX files, gunzipped, in {root}/KMNIST/raw/", "NHW"),
    # CIFAR-100's fine labels (100 classes): torchvision's CIFAR100 reads fine_labels
    "cifar100": Torchvision(
        "CIFAR100", ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        "unpack cifar-100-python.tar.gz into {root}/ (cifar-100-python/train, test, meta)", "NHWC"),
    "svhn": Torchvision(
        "SVHN", ("train_32x32.mat", "test_32x32.mat"),
        "put SVHN's cropped digits, train_32x32.mat and test_32x32.mat, in {root}/", "NCHW", "labels"),
}


def _where(dataset: str, root: Path) -> str:
    return f"(data.dataset: {dataset}); to get it: {TORCHVISION[dataset].how.format(root=root)}"


def _torchvision_missing(dataset: str, raw_dir: str) -> str | None:
    root = raw_root(dataset, raw_dir)
    if not root.is_dir():
        return f"{root}/: not found {_where(dataset, root)}"
    lacking = [f for f in TORCHVISION[dataset].files if not (root / f).is_file()]
    if lacking:
        return f"{root}/: lacks {', '.join(lacking)} {_where(dataset, root)}"
    return None


def _channels_first(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHW":  # one channel
        return x[:, None]
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def _load_torchvision(dataset: str, raw_dir: str) -> dict:
    import torchvision  # lazily: planning must not pay for torch

    missing = _torchvision_missing(dataset, raw_dir)
    if missing:
        raise DataError(missing)
    spec, root = TORCHVISION[dataset], raw_root(dataset, raw_dir)
    out = {}
    for split in ("train", "test"):
        how = {"split": split} if spec.cls == "SVHN" else {"train": split == "train"}
        try:  # torchvision checks the files (CIFAR-100 and SVHN against their md5 sums)
            ds = getattr(torchvision.datasets, spec.cls)(root=str(root), download=False, **how)
        except Exception as err:  # damaged pickles and .mat files raise their own kinds
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise DataError(f"{root}/: {spec.cls} cannot read its {split} set ({first}) {_where(dataset, root)}") from None
        out[f"x_{split}"] = np.ascontiguousarray(_channels_first(np.asarray(ds.data), spec.layout), dtype=np.uint8)
        out[f"y_{split}"] = np.asarray(getattr(ds, spec.labels), dtype=np.int64)
    out["num_classes"] = KNOWN_SHAPE[dataset][3]
    return out


# ---------------------------------------------------------------------------- npz array file

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_HOW = "save x_train, y_train, x_test, y_test into it with numpy.savez"


def npz_header(path: Path) -> dict:
    """{array name: (shape, dtype)} of an .npz file, from each member's .npy header alone."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                out[info.filename.removesuffix(".npy")] = (shape, dtype)
    except FileNotFoundError:
        raise DataError(f"data.path: {path} not found; {NPZ_HOW}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"data.path: {path} is not a readable .npz file ({err})") from None
    return out


def _images(shape, dtype) -> bool | None:
    """True: uint8 images (N, C, H, W) or (N, H, W); False: float features (N, d); None: neither."""
    if dtype == np.uint8 and len(shape) in (3, 4):
        return True
    if np.issubdtype(dtype, np.floating) and len(shape) == 2:
        return False
    return None


def npz_problem(path: Path, header: dict) -> str | None:
    """What makes an .npz file unusable, judged from its headers (shapes and dtypes), or None."""
    where = f"data.path: {path}"
    lacking = [a for a in NPZ_ARRAYS if a not in header]
    if lacking:
        return f"{where} lacks {', '.join(lacking)}"
    for split in ("train", "test"):
        (xs, xt), (ys, yt) = header[f"x_{split}"], header[f"y_{split}"]
        if _images(xs, xt) is None:
            return (f"{where} has x_{split} of shape {xs} and dtype {xt}; want uint8 images (N, C, H, W) or "
                    f"(N, H, W), or float features (N, d)")
        if len(ys) != 1 or not np.issubdtype(yt, np.integer):
            return f"{where} has y_{split} of shape {ys} and dtype {yt}; want integer labels (N,)"
        if ys[0] != xs[0]:
            return f"{where} has {ys[0]} labels in y_{split} for {xs[0]} examples in x_{split}"
        if xs[0] == 0:
            return f"{where} has no examples in x_{split}"
    (a, at), (b, bt) = header["x_train"], header["x_test"]
    if a[1:] != b[1:] or _images(a, at) != _images(b, bt):  # float32 and float64 features may mix
        return f"{where} has x_test examples of shape {b[1:]} ({bt}) but x_train's are {a[1:]} ({at})"
    return None


def npz_holds_features(path: str) -> bool:
    """Whether an .npz file's x_train is float features, not images; False when it cannot be read
    (its loader then says why): config validation refuses image models on features."""
    try:
        shape, dtype = npz_header(Path(path))["x_train"]
    except (DataError, KeyError):
        return False
    return _images(shape, dtype) is False


def _example_shape(shape, dtype) -> tuple:
    return (1, *shape[1:]) if dtype == np.uint8 and len(shape) == 3 else tuple(shape[1:])


def _npz_shape(path: Path) -> tuple | None:
    header = npz_header(path)
    if npz_problem(path, header):
        return None
    (xs, xt), n_test = header["x_train"], header["x_test"][0][0]
    with np.load(path, allow_pickle=False) as z:  # the labels only: a few bytes an example
        classes = int(max(z["y_train"].max(), z["y_test"].max())) + 1
    return _example_shape(xs, xt), xs[0], n_test, classes


def _load_npz(path: Path) -> dict:
    problem = npz_problem(path, npz_header(path))
    if problem:
        raise DataError(problem)
    with np.load(path, allow_pickle=False) as z:
        arr = {name: z[name] for name in NPZ_ARRAYS}
    out = {}
    for split in ("train", "test"):
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        if y.min() < 0:
            raise DataError(f"data.path: {path} has a negative label in y_{split} ({y.min()})")
        out[f"x_{split}"] = x.reshape(len(x), *_example_shape(x.shape, x.dtype)) if x.dtype == np.uint8 \
            else x.astype(np.float32)
        out[f"y_{split}"] = y.astype(np.int64)
    out["num_classes"] = int(max(out["y_train"].max(), out["y_test"].max())) + 1
    return out


# ---------------------------------------------------------------------------- image folders

# torchvision.datasets.folder.IMG_EXTENSIONS, copied: planning counts files without importing
# torch (tests check that the two agree)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_HOW = "put one folder of images per class in {root}/train/<class>/ and {root}/val/<class>/ (ImageNet's layout)"


def _folder_error(folder: Path, what: str, root: Path) -> DataError:
    return DataError(f"{folder}/: {what} (data.dataset: imagefolder); to get it: {FOLDER_HOW.format(root=root)}")


def folder_classes(root: Path) -> list[str]:
    """The sorted class folders of train/ (torchvision's find_classes), which val/ must repeat."""
    found = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise _folder_error(root / split, "not found", root)
        found[split] = sorted(e.name for e in os.scandir(root / split) if e.is_dir())
        if not found[split]:
            raise _folder_error(root / split, "holds no class folders", root)
    if found["val"] != found["train"]:
        lack, extra = sorted(set(found["train"]) - set(found["val"])), sorted(set(found["val"]) - set(found["train"]))
        what = ([f"lacks {', '.join(lack)}"] if lack else []) + ([f"has {', '.join(extra)}, which train/ has not"]
                                                                 if extra else [])
        raise _folder_error(root / "val", f"class folders differ from train/'s: {'; '.join(what)}", root)
    return found["train"]


def image_files(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(file, class index) in the order of torchvision's make_dataset: each class folder walked
    (links followed) in sorted order, files kept by extension, case aside."""
    out = []
    for k, name in enumerate(classes):
        found = [(os.path.join(top, f), k) for top, _, names in sorted(os.walk(split_dir / name, followlinks=True))
                 for f in sorted(names) if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise _folder_error(split_dir / name, f"holds no images ({', '.join(IMG_EXTENSIONS)})", split_dir.parent)
        out += found
    return out


class _Decoded:
    """An ImageFolder's images as a lazily decoded (N, 3, S, S) uint8 array: prepare takes its
    subset first, so only the images it keeps are read (an ImageNet whole is ~190 GB at 224)."""

    def __init__(self, folder, size: int):
        self.folder, self.size = folder, size

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, idx) -> np.ndarray:
        from tqdm import tqdm

        out = np.empty((len(idx), 3, self.size, self.size), dtype=np.uint8)
        for row, i in enumerate(tqdm(idx, disable=None, leave=False, desc="images")):
            path = self.folder.samples[i][0]
            try:
                image, _ = self.folder[i]
            except OSError as err:  # PIL's UnidentifiedImageError and truncated files
                raise DataError(f"{path}: cannot be read as an image ({err}) (data.dataset: imagefolder)") from None
            out[row] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        return out


def _load_folder(raw_dir: str, resize: int, image_size: int) -> dict:
    import torchvision
    from torchvision import transforms

    root = raw_root("imagefolder", raw_dir)
    classes = folder_classes(root)
    for split in ("train", "val"):
        image_files(root / split, classes)  # an empty class folder: our one line, not torchvision's
    # ImageNet's evaluation transform without ToTensor: the shorter side to `resize`, then the
    # central `image_size` square; no augmentation (W&S §3, MC §5 turn it off to see memorization)
    keep = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size)])
    out = {"num_classes": len(classes)}
    for split, name in (("train", "train"), ("test", "val")):
        folder = torchvision.datasets.ImageFolder(str(root / name), transform=keep)
        out[f"x_{split}"] = _Decoded(folder, image_size)
        out[f"y_{split}"] = np.asarray(folder.targets, dtype=np.int64)
    return out


# ---------------------------------------------------------------------------- dispatch

NAMES = (*TORCHVISION, "npz", "imagefolder")


def missing(d: dict) -> str | None:
    """What a source lacks, in one line, or None; files and folder names only."""
    if d["dataset"] in TORCHVISION:
        return _torchvision_missing(d["dataset"], d["raw_dir"])
    try:
        if d["dataset"] == "npz":
            return npz_problem(Path(d["path"]), npz_header(Path(d["path"])))
        folder_classes(raw_root("imagefolder", d["raw_dir"]))
    except DataError as err:
        return str(err)
    return None


def files(d: dict) -> list[Path]:
    """The files a source is read from: an image folder's every image (sorted: each one's size and
    time goes into the prepared file's key)."""
    if d["dataset"] in TORCHVISION:
        root = raw_root(d["dataset"], d["raw_dir"])
        return [root / f for f in TORCHVISION[d["dataset"]].files]
    if d["dataset"] == "npz":
        return [Path(d["path"])]
    root = raw_root("imagefolder", d["raw_dir"])
    classes = folder_classes(root)
    return sorted(Path(f) for split in ("train", "val") for f, _ in image_files(root / split, classes))


def load(d: dict) -> dict:
    """Whole train and test sets: x uint8 (N, C, H, W) or float32 (N, d), y int64, num_classes."""
    if d["dataset"] in TORCHVISION:
        return _load_torchvision(d["dataset"], d["raw_dir"])
    if d["dataset"] == "npz":
        return _load_npz(Path(d["path"]))
    return _load_folder(d["raw_dir"], d["resize"], d["image_size"])
