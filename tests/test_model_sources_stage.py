"""Models a researcher brings, through the stages: a torchvision arch and a user function train
on a tiny image study and give E1, E2, E7 and E8 rows (the function also through Snakemake to the
aggregate tables); bad model params stop the validate stage, and what validation cannot judge
stops the train stage, each in one line naming the key, exit 2."""
import contextlib
import subprocess

import numpy as np
import pandas as pd
import pytest

from cglib import config, data as cgdata, tables
from conftest import run_stage, tiny_params, tool, venv_env, write_params

TINY_NET = '''
from torch import nn


def build(input_shape, num_classes, width=8):
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(width * (input_shape[1] // 4) * (input_shape[2] // 4), num_classes))


def meta_shy(input_shape, num_classes):  # reads a value while building: the meta device cannot
    import torch
    width = int(torch.tensor(4).item())
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3), nn.BatchNorm2d(width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
'''


def write_study(root, model, **train):
    """An .npz of 1×28×28 images, 3 classes told apart by a bright band, a package mymodels/ with
    tiny.py, and the params of a tiny study on them (E7 on 20 + 20 examples, E2 for 2 steps)."""
    rng = np.random.default_rng(0)

    def images(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 28, 28))
        for k in range(3):
            x[y == k, 4 + 8 * k:8 + 8 * k, :] += 150
        return x.astype(np.uint8), y
    (x_train, y_train), (x_test, y_test) = images(120), images(30)
    np.savez(root / "own.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    (root / "mymodels").mkdir(exist_ok=True)
    (root / "mymodels" / "__init__.py").write_text("")
    (root / "mymodels" / "tiny.py").write_text(TINY_NET)
    p = tiny_params(steps=20, batch_size=20, checkpoint_every=10, coherence={"train_sample": 20, "test_sample": 20},
                    shares={"steps": 2, "then_eval": False}, **train)
    p["data"] = {"dataset": "npz", "path": "own.npz", "n_train": 100, "n_test": 0}
    p["model"] = model
    p["difficulty"].update(seeds=[0], max_steps=30, subset_steps=10, pool_size=0, subsets=["e-train"], el2n_epoch=1)
    return write_params(root / "p.yaml", p)


def prepared_run_inputs(root, params_path):
    """The prepare and corrupt stages' outputs, made in-process (the stage tests train only)."""
    with contextlib.chdir(root):  # data.path and the model's package are the study folder's
        p = config.load_params(params_path)
        prepared = cgdata.prepare(p["data"])
    tables.save_torch(prepared, root / "d.pt")
    y = prepared["y_train"].numpy()
    corrupt = np.arange(len(y)) % 4 == 0
    pd.DataFrame({"example": range(len(y)), "label_clean": y, "label": np.where(corrupt, (y + 1) % 3, y),
                  "corrupt": corrupt}).to_parquet(root / "c.parquet")


def train(root, *extra):
    return run_stage("train", "--params", "p.yaml", "--data", "d.pt", "--labels", "c.parquet", "--noise", "0.5",
                     "--seed", "0", "--out", "run", *extra, cwd=root)


def check_rows(m: pd.DataFrame, label: str) -> None:
    assert set(m["model"]) == {label}
    acc = m.query("experiment == 'E1' and metric == 'accuracy' and split == 'test'")["value"]
    assert len(acc) > 3 and acc.between(0, 1).all()
    coh = m.query("experiment == 'E7' and metric == 'm_coherence'")
    assert set(coh["split"]) == {"train", "test"} and coh["value"].between(0, 20).all()  # m·α on m = 20
    assert coh.query("layer == 'all'")["value"].nunique() > 3  # measured at each evaluation, not a constant
    assert len(set(coh["layer"])) > 2  # the whole model and its layers
    assert m.query("experiment == 'E2' and metric == 'f_pristine' and null == -1")["value"].notna().sum() == 2
    e8 = m.query("experiment == 'E8'")
    assert len(e8) and e8["value"].notna().any()


def test_a_torchvision_arch_trains_and_is_measured(tmp_path):
    """mobilenet_v3_small (BatchNorm, Hardswish, squeeze-excite) on one-channel 28×28 images."""
    params = write_study(tmp_path, {"name": "torchvision", "arch": "mobilenet_v3_small",
                                    "kwargs": {"width_mult": 0.25}})
    prepared_run_inputs(tmp_path, params)
    proc = train(tmp_path, "--optimizer", "sgd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    check_rows(m, "torchvision-mobilenet_v3_small-width_mult=0.25")
    assert {"features.0.0", "classifier.3"} <= set(m.query("experiment == 'E7'")["layer"])


def test_the_train_stage_refuses_what_validation_could_not_judge(tmp_path):
    """A model built with a value read (not on the meta device): validation leaves it, the train
    stage builds it on the CPU and refuses winsorized SGD on its BatchNorm, one line, exit 2."""
    params = write_study(tmp_path, {"name": "import", "path": "mymodels.tiny:meta_shy"})
    prepared_run_inputs(tmp_path, params)
    assert run_stage("validate", "--params", "p.yaml", "--out", "ok", cwd=tmp_path).returncode == 0
    proc = train(tmp_path, "--optimizer", "winsorized", "--clip", "2")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: train.optimizers: winsorized (E3) needs per-example gradients in training mode, which "
        "mymodels.tiny:meta_shy's layer '1' (BatchNorm2d) mixes across the batch; use sgd, m3, rm3 or ra3 with "
        "it, or a model without BatchNorm"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model,says", [
    ({"name": "torchvision", "arch": "squeezenet11"}, "model.arch: 'squeezenet11' is not a torchvision.models "
                                                      "classifier (e.g. squeezenet1_1, squeezenet1_0"),
    ({"name": "torchvision", "arch": "resnet18", "kwargs": {"num_classes": 3}}, "model.kwargs.num_classes: "),
    ({"name": "torchvision", "arch": "vgg11"}, "model.arch: torchvision vgg11 cannot take inputs of shape "
                                               "(1, 28, 28): RuntimeError: "),
    ({"name": "import", "path": "mymodels.nothere:build"}, "model.path: no module 'mymodels.nothere' in "),
    ({"name": "import", "path": "mymodels.tiny:biuld"}, "model.path: module mymodels.tiny ("),
])
def test_bad_model_params_stop_the_validate_stage(tmp_path, model, says):
    write_study(tmp_path, model)
    proc = run_stage("validate", "--params", "p.yaml", "--out", "ok", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"params error: {says}"), proc.stderr
    assert not (tmp_path / "ok").exists()


def test_a_user_model_through_snakemake_to_the_tables(workdir):
    """validate → prepare → corrupt → easyhard → difficulty → train → aggregate, the model
    imported from mymodels/ next to the Snakefile."""
    write_study(workdir, {"name": "import", "path": "mymodels.tiny:build", "kwargs": {"width": 6}})
    with contextlib.chdir(workdir):
        p = config.load_params("p.yaml")
    p["corrupt"]["noise"] = [0.5]
    write_params(workdir / "p.yaml", p)
    proc = subprocess.run([tool("snakemake"), "--cores", "2", "results/tiny/metrics.parquet", "--configfile",
                           "p.yaml"], cwd=workdir, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = pd.read_parquet(workdir / "results" / "tiny" / "metrics.parquet")
    main = m[m["run"] == "sgd_c0_noise0.5_seed0"]
    check_rows(main, "tiny.build-width=6")
    assert {"0", "4"} <= set(main.query("experiment == 'E7'")["layer"])  # the conv and the linear head
    runs = pd.read_parquet(workdir / "results" / "tiny" / "runs.parquet")
    assert set(runs["model"]) == {"tiny.build-width=6"} and "sgd_c0_e-train_seed0" in set(runs["run"])


def test_slurm_prices_a_torchvision_arch_by_its_multiply_adds(workdir, tmp_path):
    """The default study on CIFAR-10-sized images with two archs of other cost (squeezenet1_1
    ≈3 M multiply-adds at 32×32, vgg11 ≈150 M): the costlier one's training jobs ask for more time."""
    from test_slurm import dry_run, slurm_env

    env = slurm_env(tmp_path / "state")
    runtime = {}
    for arch in ("squeezenet1_1", "vgg11"):
        p = config.read_yaml(workdir / "params.yaml")
        p["data"].update(dataset="cifar10", n_train=20000)
        p["model"] = {"name": "torchvision", "arch": arch}
        write_params(workdir / f"{arch}.yaml", p)
        plan = dry_run(workdir, f"{arch}.yaml", env)
        runtime[arch] = max(j["resources"]["runtime"] for j in plan if j["rule"] == "train")
    assert runtime["vgg11"] > 2 * runtime["squeezenet1_1"] > 0, runtime
