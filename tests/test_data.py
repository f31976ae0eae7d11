import gzip
import shutil

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from cglib import data
from conftest import run_stage, tiny_params, write_params

FASHION = data.DEBIAN_FASHION


def test_idx_reader_matches_torchvision_on_fashion_mnist(tmp_path):
    for stem, tv_read in (("t10k-images-idx3-ubyte", read_image_file), ("t10k-labels-idx1-ubyte", read_label_file)):
        plain = tmp_path / stem
        with gzip.open(FASHION / f"{stem}.gz", "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        ours_gz = data.read_idx(FASHION / f"{stem}.gz")
        ours_plain = data.read_idx(plain)
        theirs = tv_read(str(plain)).numpy()
        assert np.array_equal(ours_gz, theirs) and np.array_equal(ours_plain, theirs)


def test_fashion_mnist_loads_whole_sets():
    raw = data.load_raw("fashion_mnist")
    assert raw["x_train"].shape == (60000, 1, 28, 28) and raw["x_test"].shape == (10000, 1, 28, 28)
    assert raw["x_train"].dtype == np.uint8 and set(np.unique(raw["y_train"])) == set(range(10))


def _copy_fashion(dst, truncate=None, drop=None):
    dst.mkdir()
    for f in FASHION.glob("*.gz"):
        if drop and f.name.startswith(drop):
            continue
        with gzip.open(f, "rb") as src:
            raw = src.read()
        if truncate and f.name.startswith(truncate):
            raw = raw[: len(raw) // 2]
        (dst / f.name[:-3]).write_bytes(raw)


def test_truncated_file_is_a_clear_error(tmp_path):
    raw_dir = tmp_path / "raw"
    _copy_fashion(raw_dir, truncate="train-images")
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.*truncated.*apt-get install"):
        data.load_raw("fashion_mnist", str(raw_dir))
    # a truncated gzip stream, too
    gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes((FASHION / gz.name).read_bytes()[:100])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.read_idx(gz)


def test_missing_file_through_the_stage(tmp_path):
    raw_dir = tmp_path / "raw"
    _copy_fashion(raw_dir, drop="t10k-images")
    p = tiny_params()
    p["data"] = {"dataset": "fashion_mnist", "raw_dir": str(raw_dir), "n_train": 100}
    out = tmp_path / "prep.pt"
    proc = run_stage("prepare", "--params", write_params(tmp_path / "p.yaml", p), "--out", out)
    assert proc.returncode == 1 and not out.exists()
    assert "t10k-images-idx3-ubyte" in proc.stderr and "not found" in proc.stderr


def test_prepare_subsets_are_seeded_and_normalised(tmp_path):
    p = {"dataset": "fashion_mnist", "raw_dir": "", "n_train": 500, "n_test": 300, "seed": 0}
    a, b = data.prepare(p), data.prepare(p)
    c = data.prepare({**p, "seed": 1})
    assert len(a["y_train"]) == 500 and len(a["y_test"]) == 300
    assert torch.equal(a["source_train"], b["source_train"]) and not torch.equal(a["source_train"], c["source_train"])
    torch.save(a, tmp_path / "d.pt")
    loaded = data.load_prepared(tmp_path / "d.pt")
    x = loaded["x_train"]
    assert x.dtype == torch.float32 and x.shape == (500, 1, 28, 28)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2


def test_synthetic_is_deterministic_and_learnable():
    a = data.make_synthetic(seed=0, dim=5, classes=3, n_train_total=300, n_test_total=100)
    b = data.make_synthetic(seed=0, dim=5, classes=3, n_train_total=300, n_test_total=100)
    assert np.array_equal(a["x_train"], b["x_train"]) and a["num_classes"] == 3
    # nearest class mean classifies well above chance: the clusters carry signal
    means = np.stack([a["x_train"][a["y_train"] == k].mean(0) for k in range(3)])
    pred = ((a["x_test"][:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == a["y_test"]).mean() > 0.6


def test_subset_larger_than_set_is_an_error():
    with pytest.raises(data.DataError, match="only"):
        data.prepare({"dataset": "synthetic", "raw_dir": "", "n_train": 10**6, "n_test": 0, "seed": 0,
                      "synthetic": {"n_train_total": 100, "n_test_total": 50}})


def test_missing_raw_names_the_folder_and_how_to_get_the_files(tmp_path):
    assert data.missing_raw("fashion_mnist") is None  # Debian's package
    assert data.missing_raw("synthetic") is None
    mnist = data.missing_raw("mnist", str(tmp_path / "mnist"))
    assert mnist.startswith(f"train-images-idx3-ubyte: not found (looked for {tmp_path}/mnist/")
    assert mnist.endswith("to get it: " + data.HOW_TO_GET["mnist"])
    root = tmp_path / "c10"
    assert data.missing_raw("cifar10", str(root)) == (
        f"{root}/cifar-10-batches-py/: not found; to get it: {data.HOW_TO_GET['cifar10']}")
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_5", "test_batch"):
        (batches / name).write_bytes(b"x")
    assert data.missing_raw("cifar10", str(root)).startswith(f"{batches}/: lacks data_batch_4; to get it")
    (batches / "data_batch_4").write_bytes(b"x")
    assert data.missing_raw("cifar10", str(root)) is None


def own_study(workdir, **d) -> str:
    """A study of one of the new sources whose files are not there (default roots, in workdir)."""
    p = tiny_params()
    p["study"], p["data"] = f"own-{d['dataset']}", {"n_train": 100, **d}
    write_params(workdir / "own.yaml", p)
    return "own.yaml"


DRY_RUNS = {  # study → the line Snakemake says before its plan (after "warning: ")
    "ws-cifar10": (lambda w: "studies/ws-cifar10.yaml",
                   "data/raw/cifar10/cifar-10-batches-py/: not found; to get it: " + data.HOW_TO_GET["cifar10"]),
    "kmnist": (lambda w: own_study(w, dataset="kmnist"),
               "data/raw/kmnist/: not found (data.dataset: kmnist); to get it: put the four Kuzushiji-MNIST IDX "
               "files, gunzipped, in data/raw/kmnist/KMNIST/raw/"),
    "cifar100": (lambda w: own_study(w, dataset="cifar100"),
                 "data/raw/cifar100/: not found (data.dataset: cifar100); to get it: unpack cifar-100-python.tar.gz "
                 "into data/raw/cifar100/ (cifar-100-python/train, test, meta)"),
    "svhn": (lambda w: own_study(w, dataset="svhn"),
             "data/raw/svhn/: not found (data.dataset: svhn); to get it: put SVHN's cropped digits, train_32x32.mat "
             "and test_32x32.mat, in data/raw/svhn/"),
    "npz": (lambda w: own_study(w, dataset="npz", path="mine/own.npz"),
            "data.path: mine/own.npz not found; save x_train, y_train, x_test, y_test into it with numpy.savez"),
    "imagefolder": (lambda w: own_study(w, dataset="imagefolder"),
                    "data/raw/imagefolder/train/: not found (data.dataset: imagefolder); to get it: put one folder of "
                    "images per class in data/raw/imagefolder/train/<class>/ and data/raw/imagefolder/val/<class>/ "
                    "(ImageNet's layout)"),
}


@pytest.mark.parametrize("case", list(DRY_RUNS))
def test_a_dry_run_without_the_raw_files_says_so_in_one_line_and_writes_nothing(workdir, case):
    """Snakemake still plans a study whose raw data are absent (exit 0: a plan on a login node is
    useful) and says so in one line naming the folder and how to get the files; nothing is
    built. With the prepared file present the raw files are not needed: no line."""
    import subprocess

    from conftest import tool, venv_env

    configfile, line = DRY_RUNS[case][0](workdir), DRY_RUNS[case][1]

    def dry():
        return subprocess.run([tool("snakemake"), "-n", "--configfile", configfile], cwd=workdir,
                              capture_output=True, text=True, env=venv_env(), timeout=300)
    proc = dry()
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [s for s in proc.stderr.splitlines() if s.startswith("warning: ")]
    assert said == [f"warning: {line} (the prepare job fails until then)"]
    assert "rule prepare:" in proc.stdout + proc.stderr  # planned all the same
    assert not (workdir / "results").exists() and not (workdir / "data").exists()
    if case != "ws-cifar10":  # one check of what follows is enough: it is the same line of common.smk
        return
    (workdir / "results" / "ws-cifar10").mkdir(parents=True)
    torch.save({}, workdir / "results" / "ws-cifar10" / "prepared.pt")  # complete as a file (planning checks that)
    again = dry()
    assert again.returncode == 0 and "cifar-10-batches-py" not in again.stderr
