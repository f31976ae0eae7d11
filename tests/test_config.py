"""Params validation: one line naming the key, exit code 2, nothing written."""
import copy
import re
import subprocess

import pytest
import yaml

from cglib import config
from conftest import ROOT, run_stage, tiny_params, tool, venv_env, write_params

BAD = [  # (mutation of the default params, key the message must name)
    (lambda p: p["corrupt"].update(noise=[0, 1.5]), "corrupt.noise[1]"),
    (lambda p: p["corrupt"].update(noise=[-0.1]), "corrupt.noise[0]"),
    (lambda p: p["train"].update(steps=0), "train.steps"),
    (lambda p: p["train"].update(lrr=0.1), "train.lrr"),
    (lambda p: p.update(trian={}), "trian"),
    (lambda p: p["data"].update(dataset="imagenet"), "data.dataset"),
    (lambda p: p["train"].update(optimizers=[{"name": "adamw", "clip": 0}]), "train.optimizers[0].name"),
    # clip is required: dvc.yaml interpolates it into run names, a schema default would not reach DVC
    (lambda p: p["train"].update(optimizers=[{"name": "sgd"}]), "train.optimizers[0]: 'clip'"),
    (lambda p: p["model"].update(name="vgg"), "model.name"),
    (lambda p: p["train"].update(optimizers=[{"name": "winsorized", "clip": 50}]), "train.optimizers[0].clip"),
    (lambda p: p["train"].update(seeds=[1.5]), "train.seeds[0]"),
    (lambda p: p["train"].update(batch_size=100, optimizers=[{"name": "m3", "clip": 0}]), "train.batch_size"),
    (lambda p: (p["model"].update(name="resnet18"), p["train"].update(optimizers=[{"name": "winsorized", "clip": 2}])),
     "train.optimizers"),
    (lambda p: p["train"].update(optimizers=[{"name": "rm3", "clip": 2}]), "train.optimizers[0].clip"),
    (lambda p: p["train"].update(lr="fast"), "train.lr"),
    (lambda p: p["train"].update(winsorize_reading="percentile", optimizers=[{"name": "winsorized", "clip": 51}]),
     "train.optimizers[0].clip"),
    (lambda p: p["train"].update(rolling_warmup="none"), "train.rolling_warmup"),
    (lambda p: p["data"].update(n_train=-5), "data.n_train"),
]


def default_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_and_studies_are_valid():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "studies").glob("*.yaml"))]:
        p = config.load_params(path)
        assert p["train"]["optimizers"], path


def test_defaults_are_filled():
    p = config.validate({})
    assert p["data"]["dataset"] == "fashion_mnist"
    assert p["corrupt"]["noise"] == [0, 0.25, 0.5, 0.75, 1]
    assert p["train"]["optimizers"] == [{"name": "sgd", "clip": 0}]


def test_winsorization_level_is_checked_in_its_reading():
    """At batch 99, c = 50 is a percentage the percentile reading accepts, but 50 values per
    side are more than the order-statistic reading can clip."""
    p = default_params()
    p["train"]["optimizers"] = [{"name": "winsorized", "clip": 50}]
    p["replicates"]["cells"] = []  # the default study's winsorized cell has clip 2 at batch 99
    with pytest.raises(config.ParamsError, match="must be < batch_size/2"):
        config.validate(copy.deepcopy(p))
    p["train"]["winsorize_reading"] = "percentile"
    assert config.validate(p)["train"]["optimizers"][0]["clip"] == 50


def test_every_schema_property_has_description_and_default():
    def walk(node, where):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{where}.{name}"
            assert "default" in sub, f"{where}.{name}"
            walk(sub, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], where + "[]")
    walk(config.schema(), "params")


@pytest.mark.parametrize("mutate,key", BAD, ids=[k for _, k in BAD])
def test_bad_params_one_line_through_stage(tmp_path, mutate, key):
    p = default_params()
    mutate(p)
    with pytest.raises(config.ParamsError) as err:
        config.validate(p)
    assert str(err.value).startswith(key)
    out = tmp_path / "prepared.pt"
    proc = run_stage("prepare", "--params", write_params(tmp_path / "bad.yaml", p), "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("mutate,key", BAD[:9], ids=[k for _, k in BAD[:9]])
def test_bad_params_through_snakemake_dry_run(workdir, mutate, key):
    p = default_params()
    mutate(p)
    write_params(workdir / "bad.yaml", p)
    env = venv_env()
    proc = subprocess.run([tool("snakemake"), "-n", "--configfile", "bad.yaml"],
                          cwd=workdir, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"params error: {key}" in proc.stderr
    assert not (workdir / "results").exists() and not (workdir / "data").exists()


def test_bad_params_through_train_stage_flags(tmp_path):
    params = write_params(tmp_path / "p.yaml", tiny_params())
    proc = run_stage("train", "--params", params, "--data", "x", "--labels", "y", "--noise", "0",
                     "--optimizer", "winsorized", "--clip", "10", "--seed", "0", "--out", tmp_path / "run")
    assert proc.returncode == 2 and "clip" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_run_grid_names_and_stage_params():
    p = config.validate({"corrupt": {"noise": [0, 0.5]},
                         "train": {"optimizers": [{"name": "sgd", "clip": 0}, {"name": "winsorized", "clip": 2}],
                                   "seeds": [0, 1]}})
    grid = config.run_grid(p)
    names = [r["run"] for r in grid]
    assert len(names) == len(set(names)) == 8 + 4  # noise × optimizer × seed, then subset × seed (E6)
    assert "winsorized_c2_noise0.5_seed1" in names and "sgd_c0_noise0_seed0" in names
    assert [r["run"] for r in grid if r["subset"] != "full"] == [
        "sgd_c0_e-train_seed0", "sgd_c0_e-train_seed1", "sgd_c0_h-train_seed0", "sgd_c0_h-train_seed1"]
    assert [r["run"] for r in config.run_grid(p, subsets=False)] == names[:8]
    r = config.validate({**p, "replicates": {"cells": [{"name": "winsorized", "clip": 2, "noise": 0.5}],
                                             "seeds": [3]},
                         "mc": {"noise": [0], "seeds": [0, 1]}})
    more = [x["run"] for x in config.run_grid(r)]
    assert more[:9] == names[:8] + ["winsorized_c2_noise0.5_seed3"]  # the replicate: a grid run's name
    assert more[9:13] == names[8:] and more[13:] == ["mc_sgd_c0_noise0_seed0", "mc_sgd_c0_noise0_seed1"]
    assert [x.get("conditions") for x in config.run_grid(r)][-3:] == [None, "mc", "mc"]
    q = copy.deepcopy(p)
    q["train"]["seeds"] = [0, 1, 2]  # growing the grid changes no stage's params
    assert all(config.stage_params(p, s) == config.stage_params(q, s) for s in config.STAGE_KEYS)
    q["train"]["lr"] = 0.05
    assert config.stage_params(p, "train") != config.stage_params(q, "train")
    q["difficulty"]["el2n_epoch"] = 3  # recorded in every training run
    q["difficulty"]["lr"] = 0.5
    assert config.stage_params(q, "train")["difficulty.el2n_epoch"] == 3
    assert config.stage_params(q, "easyhard")["difficulty.lr"] == 0.5


SPELLINGS = {  # text appended to the tiny study's params → the message, or None = accepted
    "lr 1e-3 (a number in YAML 1.2, DVC's reading)": ("train:\n  lr: 1e-3\n", None),
    "integer written as a float": ("train:\n  steps: 60.0\n", "train.steps: 60.0 must be a whole number"),
    "seed list of floats": ("train:\n  seeds: [0.0]\n", "train.seeds[0]: 0.0 must be a whole number"),
    "noise level 1 written 1.0": ("corrupt:\n  noise: [0.5, 1.0]\n", "corrupt.noise[1]: write 1.0 as 1"),
    "duplicated key": ("train:\n  lr: 0.1\n  lr: 0.2\n", "key 'lr' given twice"),
    "empty file": ("", "the params file is empty"),
    "YAML syntax error": ("train:\n  lr: [0.1\n", "not valid YAML"),
}


def spelled(tmp_path, text):
    """The tiny study, every key spelled out (as DVC needs), with the section `text` spells
    (train or corrupt) replaced by it, merged key by key."""
    base = config.validate(tiny_params())
    if not text:
        path = tmp_path / "p.yaml"
        path.write_text("")
        return path
    section = text.split(":")[0]  # the section `text` spells (train, or corrupt)
    path = write_params(tmp_path / "p.yaml", {k: v for k, v in base.items() if k != section})
    extra = "\n".join(f"  {k}: {v}" for k, v in base[section].items() if f"  {k}:" not in text)
    path.write_text(path.read_text() + text + extra.replace("'", '"') + "\n")
    return path


@pytest.mark.parametrize("case", sorted(SPELLINGS))
def test_params_spellings_same_verdict_in_stages_snakemake_and_dvc(tmp_path, workdir, case):
    text, message = SPELLINGS[case]
    params = spelled(tmp_path, text)
    stage = run_stage("validate", "--params", params, "--out", tmp_path / "ok")
    import shutil
    shutil.copy(params, workdir / "params.yaml")
    sm = subprocess.run([tool("snakemake"), "-n"], cwd=workdir, capture_output=True, text=True,
                        env=venv_env(), timeout=300)
    if message is None:
        assert stage.returncode == 0, stage.stderr
        assert sm.returncode == 0, sm.stderr[-2000:]
        assert (tmp_path / "ok").is_file()
    else:
        last = stage.stderr.strip().splitlines()[-1]
        assert stage.returncode == 2 and message in last
        if case in ("duplicated key", "YAML syntax error"):  # file and line
            line = int(re.search(r"p\.yaml:(\d+): ", last).group(1))
            lines = params.read_text().splitlines()  # YAML reports where it noticed: that line or the next
            assert any(lines[i].startswith("  lr: ") for i in (line - 2, line - 1))
        assert not (tmp_path / "ok").exists()
        assert sm.returncode == 2 and message in sm.stderr, sm.stderr[-2000:]
    # DVC: its own YAML 1.2 reader first, then the validate stage, first in the DAG
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    subprocess.run([tool("dvc"), "init", "-q"], cwd=workdir, check=True)
    dvc = subprocess.run([tool("dvc"), "repro", "validate"], cwd=workdir, capture_output=True,
                         text=True, env=venv_env(),
                         timeout=300)
    said = dvc.stdout + dvc.stderr
    if message is None:
        assert dvc.returncode == 0 and list((workdir / "results").glob("*/params.ok")), said[-2000:]
        return
    assert dvc.returncode != 0 and not list(workdir.glob("results/*/params.ok")), said[-2000:]
    assert not (workdir / "dvc.lock").exists()
    if case in ("duplicated key", "YAML syntax error"):  # DVC's reader: file and line
        assert "params.yaml" in said and re.search(r"line \d+", said), said[-2000:]
    elif case == "empty file":  # DVC cannot expand its stages from an empty file
        assert "Could not find" in said, said[-2000:]
    else:
        assert f"params error: {message}" in said, said[-2000:]


@pytest.mark.parametrize("section, bad, message", [
    ("replicates", {"cells": [{"name": "sgd", "clip": 0, "noise": 0.3}], "seeds": [1]},
     "replicates.cells[0].noise: 0.3 is not one of corrupt.noise"),
    ("replicates", {"cells": [{"name": "rm3", "clip": 0, "noise": 0.5}, {"name": "sgd", "clip": 0, "noise": 0.5}],
                    "seeds": [2, 0]},  # rm3 is no grid optimizer: its seed 0 is new; sgd's is not
     "replicates.cells[1]: sgd with clip 0 at noise 0.5 seed 0 is already in the train grid"),
    ("replicates", {"cells": [{"name": "rm3", "clip": 0, "noise": 0.5}, {"name": "rm3", "clip": 0, "noise": 0.5}],
                    "seeds": [1]}, "replicates.cells[1]: duplicate cell rm3 with clip 0 at noise 0.5"),
    ("replicates", {"cells": [{"name": "winsorized", "clip": 50, "noise": 0}], "seeds": [1]},
     "replicates.cells[0].clip: 50 must be < batch_size/2 = 50"),
    ("replicates", {"cells": [{"name": "rm3", "clip": 1, "noise": 0}], "seeds": [1]},
     "replicates.cells[0].clip: only winsorized clips"),
    ("replicates", {"cells": [{"name": "m3", "clip": 0, "noise": 0}], "seeds": [1]},
     "train.batch_size: 100 must be divisible by 3 for m3"),
    ("mc", {"noise": [0, 0.25]}, "mc.noise[1]: 0.25 is not one of corrupt.noise"),
    ("mc", {"noise": [0], "steps": 10}, "mc.steps: 10 steps end before difficulty.el2n_epoch"),
    ("mc", {"noise": [0], "n_train": 1001}, "mc.n_train: 1001 exceeds data.n_train = 1000"),
    ("mc", {"noise": [0], "n_train": 99}, "mc.n_train: 99 is less than train.batch_size = 100"),
])
def test_replicates_and_mc_cross_checks(section, bad, message):
    base = {"corrupt": {"noise": [0, 0.5]}, "data": {"n_train": 1000}, "difficulty": {"el2n_epoch": 2},
            "train": {"optimizers": [{"name": "sgd", "clip": 0}], "seeds": [0], "batch_size": 100}}
    config.validate(base)
    with pytest.raises(config.ParamsError) as err:
        config.validate({**base, section: bad})
    assert str(err.value).startswith(message)


def test_mc_params_keep_the_study_and_change_only_what_mc_names():
    p = config.validate({"train": {"lr": 0.3, "momentum": 0.5, "weight_decay": 0.1, "steps": 5000, "base": "adam",
                                   "shares": {"steps": 10, "optimizers": ["sgd"]}, "batch_size": 50},
                         "mc": {"noise": [0], "lr": 0.02, "steps": 1400}})
    q = config.params_for(p, {"run": "mc_sgd_c0_noise0_seed0", "subset": "full", "conditions": "mc"})
    t = q["train"]
    assert q["model"] == p["mc"]["model"] and q["model"]["name"] == "cnn"
    assert (t["lr"], t["momentum"], t["steps"], t["base"], t["weight_decay"]) == (0.02, 0.9, 1400, "sgd", 0.0)
    assert t["optimizers"] == [{"name": "sgd", "clip": 0}] and t["shares"]["optimizers"] == []
    assert p["train"]["coherence"]["label_part"] is True  # the study measures the label part...
    assert t["coherence"] == {**p["train"]["coherence"], "label_part": False}  # ...MC's runs MC's m-coherence alone
    assert t["batch_size"] == 50  # the rest is the study's
    assert p["train"]["lr"] == 0.3 and p["model"]["name"] == "mlp"  # the study's own params untouched
    plain = config.params_for(p, {"run": "sgd_c0_noise0_seed0", "subset": "full"})
    assert plain["train"] == p["train"] and plain["model"] == p["model"]


def test_mc_n_train_is_the_data_an_mc_run_trains_on():
    """mc.n_train reaches the mc run's params as data.n_train (its checkpoint fingerprint and
    check_run see it): 10 steps of batch 100 are 10 epochs of 100 examples but 1 of 1,000."""
    base = {"corrupt": {"noise": [0]}, "data": {"n_train": 1000}, "difficulty": {"el2n_epoch": 2},
            "train": {"batch_size": 100}, "mc": {"noise": [0], "steps": 10}}
    with pytest.raises(config.ParamsError, match="mc.steps: 10 steps end before"):
        config.validate(base)
    p = config.validate({**base, "mc": {"noise": [0], "steps": 10, "n_train": 100}})
    spec = {"run": "mc_sgd_c0_noise0_seed0", "subset": "full", "conditions": "mc"}
    q = config.params_for(p, spec)
    assert q["data"]["n_train"] == 100 and p["data"]["n_train"] == 1000
    config.check_run(q, {"name": "sgd", "clip": 0})  # the run's own view: 10 epochs, EL2N at 2
    every = config.params_for(config.validate({**base, "mc": {"noise": [0], "steps": 100}}), spec)
    assert every["data"]["n_train"] == 1000  # 0 = all of data.n_train
    assert "mc.n_train" in config.STAGE_KEYS["train_mc"]
