"""Datasets: raw files → a small prepared tensor file → tensors on the training device.

Nothing here touches the network: a missing or damaged raw file is a `DataError` naming the
file and how to get it. Fashion-MNIST comes from Debian's dataset-fashion-mnist package
(gzipped IDX files); MNIST likewise from IDX files placed under data/raw/mnist/; CIFAR-10 through
torchvision's CIFAR10 class from data/raw/cifar10/; `synthetic` is generated (Gaussian class
clusters) for tests. The sources a researcher brings (kmnist, cifar100, svhn, npz, imagefolder)
are read by cglib.sources, to which the public functions here dispatch. torch is imported inside
the functions that use it: the Snakefile asks `missing_raw` at planning time, and a plan should
not pay torch's ~2 s import.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from cglib import sources
from cglib.sources import DataError, raw_root

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
HOW_TO_GET = {
    "fashion_mnist": "install Debian's package (apt-get install dataset-fashion-mnist) "
                     "or put the four IDX files in data/raw/fashion_mnist/",
    "mnist": "put the four MNIST IDX files (.gz or not) in data/raw/mnist/",
    "cifar10": "unpack cifar-10-python.tar.gz into data/raw/cifar10/ (cifar-10-batches-py/)",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------------------- IDX reader

def read_idx(path: Path, how_to_get: str = "") -> np.ndarray:
    """Read an IDX file (optionally gzipped), checking its header against its length."""
    hint = f"; to get it: {how_to_get}" if how_to_get else ""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found{hint}") from None
    except (OSError, EOFError) as err:  # truncated or corrupt gzip stream
        raise DataError(f"{path}: cannot be read ({err}){hint}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number){hint}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: truncated or damaged ({len(raw)} bytes, header says {expected}){hint}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(dataset: str, raw_dir: str) -> dict[str, Path]:
    dirs = [raw_root(dataset, raw_dir)]
    if dataset == "fashion_mnist" and not raw_dir:
        dirs.append(DEBIAN_FASHION)
    found = {}
    for key, stem in IDX_FILES.items():
        for d in dirs:
            for name in (stem, stem + ".gz"):
                if (d / name).is_file():
                    found[key] = d / name
                    break
            if key in found:
                break
        else:
            looked = ", ".join(str(d / (stem + "[.gz]")) for d in dirs)
            raise DataError(f"{stem}: not found (looked for {looked}); to get it: {HOW_TO_GET[dataset]}")
    return found


def missing_raw(dataset: str, raw_dir: str = "", path: str = "") -> str | None:
    """What a study's raw files lack, in one line naming the folder and how to get them, or None.
    Looks for the files without reading them (an .npz file's headers at most): a planning-time
    check (rules/common.smk), so a dry run of a study whose data are absent says so before any
    job is planned."""
    if dataset in sources.NAMES:
        return sources.missing({"dataset": dataset, "raw_dir": raw_dir, "path": path})
    if dataset in ("fashion_mnist", "mnist"):
        try:
            _find_idx(dataset, raw_dir)
        except DataError as err:
            return str(err)
    elif dataset == "cifar10":
        root = raw_root("cifar10", raw_dir) / "cifar-10-batches-py"
        lacking = [n for n in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch") if not (root / n).is_file()]
        if lacking:
            what = "not found" if not root.is_dir() else "lacks " + ", ".join(lacking)
            return f"{root}/: {what}; to get it: {HOW_TO_GET['cifar10']}"
    return None


def raw_files(dataset: str, raw_dir: str = "", path: str = "") -> list[Path]:
    """The raw files a study's data are read from (none for the generated `synthetic`)."""
    if dataset in sources.NAMES:
        return sources.files({"dataset": dataset, "raw_dir": raw_dir, "path": path})
    if dataset in ("fashion_mnist", "mnist"):
        return sorted(_find_idx(dataset, raw_dir).values())
    if dataset == "cifar10":
        root = raw_root("cifar10", raw_dir) / "cifar-10-batches-py"
        return [root / n for n in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")]
    return []


def prepared_key(data_params: dict, code: bytes = b"") -> str:
    """sha256 of what a prepared file is made of: the data section (the keys its dataset reads),
    each raw file's path, size and modification time, this module's and cglib.sources' source,
    the caller's `code` and torch's version. Studies with equal keys may share one prepared file;
    any change of these gives another key, so a shared file is never stale (a touched raw file
    costs one more preparation, never a wrong one)."""
    import torch

    h = hashlib.sha256(json.dumps(sources.used(data_params), sort_keys=True).encode())
    for path in raw_files(data_params["dataset"], data_params["raw_dir"], data_params.get("path", "")):
        st = path.stat() if path.exists() else None
        h.update(f"\0{path.resolve()}\0{st and st.st_size}\0{st and st.st_mtime_ns}".encode())
    for part in (Path(__file__).read_bytes(), Path(sources.__file__).read_bytes(), code, torch.__version__.encode()):
        h.update(b"\0" + hashlib.sha256(part).digest())
    return h.hexdigest()


# ---------------------------------------------------------------------------- raw datasets

def load_raw(dataset: str, raw_dir: str = "", synthetic: dict | None = None, seed: int = 0,
             path: str = "", resize: int = 256, image_size: int = 224) -> dict:
    """Whole train and test sets as numpy arrays: x (N, C, H, W) uint8 (or float32), y int64 (an
    image folder's x decodes the images it is indexed with: sources._Decoded)."""
    if dataset in sources.NAMES:
        return sources.load({"dataset": dataset, "raw_dir": raw_dir, "path": path, "resize": resize,
                             "image_size": image_size})
    if dataset in ("fashion_mnist", "mnist"):
        files = _find_idx(dataset, raw_dir)
        arr = {k: read_idx(p, HOW_TO_GET[dataset]) for k, p in files.items()}
        for split in ("train", "test"):
            if len(arr[f"{split}_x"]) != len(arr[f"{split}_y"]):
                raise DataError(f"{files[split + '_y']}: {len(arr[split + '_y'])} labels for "
                                f"{len(arr[split + '_x'])} images")
        return dict(x_train=arr["train_x"][:, None], y_train=arr["train_y"].astype(np.int64),
                    x_test=arr["test_x"][:, None], y_test=arr["test_y"].astype(np.int64), num_classes=10)
    if dataset == "cifar10":
        return _load_cifar10(str(raw_root("cifar10", raw_dir)))
    if dataset == "synthetic":
        return make_synthetic(seed=seed, **(synthetic or {}))
    raise DataError(f"unknown dataset {dataset!r}")


def _load_cifar10(root: str) -> dict:
    import torchvision  # imported lazily: only this dataset needs it here

    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = torchvision.datasets.CIFAR10(root=root, train=train, download=False)
        except RuntimeError as err:
            raise DataError(f"{root}/cifar-10-batches-py: {err}; to get it: {HOW_TO_GET['cifar10']}") from None
        out[f"x_{split}"] = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        out[f"y_{split}"] = np.asarray(ds.targets, dtype=np.int64)
    out["num_classes"] = 10
    return out


def make_synthetic(seed: int = 0, dim: int = 20, classes: int = 4, separation: float = 3.0,
                   n_train_total: int = 2000, n_test_total: int = 1000) -> dict:
    """Gaussian class clusters: centres ~ N(0, (separation/2)² I), unit-variance noise around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, separation / 2, size=(classes, dim))

    def draw(n):
        y = rng.integers(0, classes, size=n)
        x = centres[y] + rng.normal(size=(n, dim))
        return x.astype(np.float32), y.astype(np.int64)

    x_tr, y_tr = draw(n_train_total)
    x_te, y_te = draw(n_test_total)
    return dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, num_classes=classes)


# ---------------------------------------------------------------------------- prepare / load

def _subset(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if n == 0 or n == n_total:
        return np.arange(n_total)
    if n > n_total:
        raise DataError(f"asked for {n} examples but the set has only {n_total}")
    return np.sort(rng.choice(n_total, size=n, replace=False))


def prepare(data_params: dict) -> dict:
    """The study's fixed training and test subsets, with normalisation statistics."""
    import torch

    p = data_params
    own = {k: p[k] for k in sources.OWN_KEYS if k in p}  # path, resize, image_size
    raw = load_raw(p["dataset"], p["raw_dir"], p.get("synthetic"), p["seed"], **own)
    rng = np.random.default_rng(p["seed"])
    train_idx = _subset(len(raw["y_train"]), p["n_train"], rng)
    test_idx = _subset(len(raw["y_test"]), p["n_test"], rng)
    x_train = raw["x_train"][train_idx]
    if x_train.dtype == np.uint8:  # images: per-channel statistics of the training subset
        xs = x_train.astype(np.float64) / 255.0
        axes = (0, 2, 3)
        mean, std = xs.mean(axis=axes), xs.std(axis=axes)
    else:
        mean, std = np.zeros(1), np.ones(1)
    return dict(
        dataset=p["dataset"], num_classes=int(raw["num_classes"]),
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(raw["y_train"][train_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(raw["x_test"][test_idx])),
        y_test=torch.from_numpy(raw["y_test"][test_idx]),
        source_train=torch.from_numpy(train_idx), source_test=torch.from_numpy(test_idx),
        mean=torch.tensor(mean, dtype=torch.float32), std=torch.tensor(std, dtype=torch.float32),
    )


def fixed_sample(n: int, size: int, seed: int, device="cpu") -> torch.Tensor:
    """Sorted indices of a seeded random subset of range(n) of `size` (all of it if size ≥ n):
    the same examples in every run of a study, whatever the run's own seed."""
    import torch

    if size >= n:
        return torch.arange(n, device=device)
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same examples on any device
    return torch.randperm(n, generator=gen)[:size].sort().values.to(device)


def to_float(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images → normalised float32; float features pass through."""
    import torch

    if x.dtype != torch.uint8:
        return x.float()
    shape = (1, -1, 1, 1)
    return (x.float() / 255.0 - mean.view(shape)) / std.view(shape)


def read_prepared(path: str | Path) -> dict:
    """The prepared file as written by the prepare stage; DataError naming it if it is damaged."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared data not found; run the prepare stage first")
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: prepared data damaged ({first}); delete it and rerun the prepare stage") from None


def load_prepared(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Prepared file → dict with float x_train/x_test and int64 labels on `device`."""
    import torch

    d = read_prepared(path)
    out = dict(d)
    mean, std = d["mean"].to(device), d["std"].to(device)
    for split in ("train", "test"):
        # images cross to the device as uint8 (a quarter of the float bytes) and are normalised
        # there (on CUDA the last bit may differ from the CPU's: a division by a scalar is a
        # multiplication by its reciprocal)
        out[f"x_{split}"] = to_float(d[f"x_{split}"].to(device), mean, std)
        out[f"y_{split}"] = d[f"y_{split}"].to(device)
    out["input_shape"] = tuple(out["x_train"].shape[1:])
    return out
