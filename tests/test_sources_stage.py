"""The new data sources through the prepare stage (its own process, as the engines run it; the
md5-checked CIFAR-100 and SVHN stand-ins in-process, where torchvision's sums can be pointed at
them), their errors as the stage reports them, and one npz study through Snakemake end to end."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from cglib import data
from conftest import run_stage, tiny_params, tool, venv_env, write_params
from test_sources import md5, trust_md5, write_cifar100, write_folder, write_kmnist, write_npz, write_svhn
from test_stage_units import keep_excepthook, stage  # noqa: F401 (keep_excepthook: an autouse fixture)


def study(tmp_path, **d) -> tuple:
    p = tiny_params()
    p["data"] = {"n_train": 0, "n_test": 0, **d}
    p["train"]["batch_size"] = 2  # the smallest sources have a handful of examples
    p["difficulty"]["batch_size"] = 2
    return write_params(tmp_path / "p.yaml", p), tmp_path / "out" / "prepared.pt"


def prepared(tmp_path, **d) -> dict:
    params, out = study(tmp_path, **d)
    run_stage("prepare", "--params", params, "--out", out, "--store", tmp_path / "store", check=True)
    return data.read_prepared(out)


def test_npz_images_and_features_through_the_stage(tmp_path):
    src = write_npz(tmp_path / "own.npz")
    got = prepared(tmp_path, dataset="npz", path=str(tmp_path / "own.npz"), n_train=5)
    idx = got["source_train"].numpy()
    assert got["dataset"] == "npz" and got["num_classes"] == 7 and len(idx) == 5 and len(got["y_test"]) == 4
    assert np.array_equal(got["x_train"].numpy(), src["x_train"][idx]) and got["x_train"].dtype == torch.uint8
    assert np.array_equal(got["x_test"].numpy(), src["x_test"]) and got["y_test"].tolist() == src["y_test"].tolist()
    f = tmp_path / "f"
    f.mkdir()
    feats = write_npz(f / "own.npz", features=True)
    got = prepared(f, dataset="npz", path=str(f / "own.npz"))
    assert got["x_train"].dtype == torch.float32 and np.array_equal(got["x_train"].numpy(), feats["x_train"])


def test_imagefolder_and_kmnist_through_the_stage(tmp_path):
    write_folder(tmp_path / "in")
    got = prepared(tmp_path, dataset="imagefolder", raw_dir=str(tmp_path / "in"), resize=6, image_size=4, n_test=3)
    assert got["x_train"].shape == (20, 3, 4, 4) and got["x_test"].shape == (3, 3, 4, 4) and got["num_classes"] == 10
    want = data.prepare({"dataset": "imagefolder", "raw_dir": str(tmp_path / "in"), "n_train": 0, "n_test": 3,
                         "seed": 0, "resize": 6, "image_size": 4})
    assert all(torch.equal(got[k], want[k]) for k in ("x_train", "y_train", "x_test", "y_test", "mean", "std"))
    k = tmp_path / "k"
    k.mkdir()
    src = write_kmnist(k / "raw")
    got = prepared(k, dataset="kmnist", raw_dir=str(k / "raw"))
    assert np.array_equal(got["x_train"].numpy(), src["train"][0]) and got["y_test"].tolist() == src["test"][1]


@pytest.mark.parametrize("dataset", ["cifar100", "svhn"])
def test_md5_checked_roots_through_the_stage_in_process(tmp_path, monkeypatch, capsys, dataset):
    root = tmp_path / "raw"
    if dataset == "cifar100":
        src = write_cifar100(root)
        trust_md5(monkeypatch, "CIFAR100", {n: md5(root / "cifar-100-python" / n) for n in ("train", "test", "meta")})
        classes = 100
    else:
        src = write_svhn(root)
        trust_md5(monkeypatch, "SVHN", {s: md5(root / f"{s}_32x32.mat") for s in ("train", "test")})
        classes = 10
    params, out = study(tmp_path, dataset=dataset, raw_dir=str(root))
    stage("prepare")(["--params", str(params), "--out", str(out), "--store", str(tmp_path / "store")])
    got = data.read_prepared(out)
    assert got["num_classes"] == classes
    for split in ("train", "test"):
        assert np.array_equal(got[f"x_{split}"].numpy(), src[split][0])
        assert got[f"y_{split}"].tolist() == list(src[split][1])
    n_train, n_test = len(src["train"][1]), len(src["test"][1])
    assert capsys.readouterr().err.splitlines()[-1] == f"{dataset:<14} {classes:>7} {n_train:>7} {n_test:>7}  (3, 32, 32)"


def folder_with_other_val_classes(tmp_path):
    write_folder(tmp_path / "in", per_class=1)
    (tmp_path / "in" / "val" / "eel").rename(tmp_path / "in" / "val" / "eels")
    return {"dataset": "imagefolder", "raw_dir": str(tmp_path / "in")}


ERRORS = {
    "kmnist root": (lambda t: {"dataset": "kmnist", "raw_dir": str(t / "none")},
                    "{t}/none/: not found (data.dataset: kmnist); to get it: put the four Kuzushiji-MNIST IDX "
                    "files, gunzipped, in {t}/none/KMNIST/raw/"),
    "npz file": (lambda t: {"dataset": "npz", "path": str(t / "none.npz")},
                 "data.path: {t}/none.npz not found; save x_train, y_train, x_test, y_test into it with numpy.savez"),
    "npz array": (lambda t: write_npz(t / "a.npz", y_test=None) and {"dataset": "npz", "path": str(t / "a.npz")},
                  "data.path: {t}/a.npz lacks y_test"),
    "val classes": (folder_with_other_val_classes,
                    "{t}/in/val/: class folders differ from train/'s: lacks eel; has eels, which train/ has not "
                    "(data.dataset: imagefolder); to get it: put one folder of images per class in {t}/in/train/"
                    "<class>/ and {t}/in/val/<class>/ (ImageNet's layout)"),
    "cifar100 md5": (lambda t: write_cifar100(t / "c") and {"dataset": "cifar100", "raw_dir": str(t / "c")},
                     "{t}/c/: CIFAR100 cannot read its train set (Dataset not found or corrupted. You can use "
                     "download=True to download it) (data.dataset: cifar100); to get it: unpack "
                     "cifar-100-python.tar.gz into {t}/c/ (cifar-100-python/train, test, meta)"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_missing_sources_through_the_stage(tmp_path, case):
    """Exit 1 and one line naming the folder or file, as a missing IDX file; nothing written.
    (The generated CIFAR-100 files fail torchvision's md5 check, as a damaged download would.)"""
    make, message = ERRORS[case]
    params, out = study(tmp_path, **make(tmp_path))
    proc = run_stage("prepare", "--params", params, "--out", out, "--store", tmp_path / "store")
    assert proc.returncode == 1 and not out.exists() and not (tmp_path / "store").exists()
    assert proc.stderr.strip().splitlines()[-1] == "error: " + message.format(t=tmp_path)


def test_image_model_on_features_is_a_params_error(tmp_path):
    write_npz(tmp_path / "f.npz", features=True)
    out = tmp_path / "out" / "prepared.pt"
    p = tiny_params()
    p["data"], p["model"] = {"dataset": "npz", "path": str(tmp_path / "f.npz"), "n_train": 0}, {"name": "cnn"}
    proc = run_stage("prepare", "--params", write_params(tmp_path / "cnn.yaml", p), "--out", out)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        f"params error: model.name: cnn needs an image dataset, and data.path {tmp_path}/f.npz holds float features (N, d)"]


def test_an_npz_study_through_snakemake(workdir):
    """prepare → corrupt → train → aggregate on an .npz file of features, the smallest study
    that still makes every table; the prepared data are the file's arrays."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, size=(3, 6))
    y_train, y_test = rng.integers(0, 3, 120), rng.integers(0, 3, 60)
    x_train, x_test = centres[y_train] + rng.normal(size=(120, 6)), centres[y_test] + rng.normal(size=(60, 6))
    np.savez(workdir / "own.npz", x_train=x_train.astype(np.float32), y_train=y_train, x_test=x_test, y_test=y_test)
    p = tiny_params(steps=20, batch_size=20, checkpoint_every=10, coherence={"train_sample": 20, "test_sample": 20},
                    shares={"steps": 0})
    p["data"] = {"dataset": "npz", "path": "own.npz", "n_train": 100, "n_test": 0}
    p["corrupt"]["noise"] = [0.5]
    p["difficulty"].update(seeds=[0], max_steps=30, subset_steps=10, pool_size=0, subsets=["e-train"])
    write_params(workdir / "npz.yaml", p)
    proc = subprocess.run([tool("snakemake"), "--cores", "2", "results/tiny/metrics.parquet", "--configfile", "npz.yaml"],
                          cwd=workdir, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = data.read_prepared(workdir / "results" / "tiny" / "prepared.pt")
    idx = got["source_train"].numpy()
    assert got["dataset"] == "npz" and got["num_classes"] == 3 and len(idx) == 100 and len(got["y_test"]) == 60
    assert np.array_equal(got["x_train"].numpy(), x_train.astype(np.float32)[idx])
    assert got["y_train"].tolist() == y_train[idx].tolist()
    runs = pd.read_parquet(workdir / "results" / "tiny" / "runs.parquet")
    assert set(runs["dataset"]) == {"npz"} and "sgd_c0_noise0.5_seed0" in set(runs["run"])
    metrics = pd.read_parquet(workdir / "results" / "tiny" / "metrics.parquet")
    test_acc = metrics.query("split == 'test' and metric == 'accuracy' and run == 'sgd_c0_noise0.5_seed0'")
    assert len(test_acc) > 1 and test_acc["value"].between(0, 1).all()
