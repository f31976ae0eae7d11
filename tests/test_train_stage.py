"""stages/train.py in-process (its main(argv)), on a tiny synthetic study of 6 steps: what it
hands to the training loop, the three files it writes, and its one-line refusals."""
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cglib import data as cgdata, tables
from conftest import ROOT, tiny_params, write_params

N = 200  # tiny_params' data.n_train


def _stage():
    spec = importlib.util.spec_from_file_location("stage_train_under_test", ROOT / "stages" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """params (6 steps of 50), the prepared data, a label table (every 4th example corrupt), a
    difficulty table and E6 splits."""
    d = tmp_path_factory.mktemp("study")
    p = tiny_params(steps=6, batch_size=50, checkpoint_every=3)
    p["difficulty"]["el2n_epoch"] = 1
    params = write_params(d / "p.yaml", p)
    prepared = cgdata.prepare(cgdata_params(p))
    tables.save_torch(prepared, d / "d.pt")
    clean = prepared["y_train"].numpy()
    corrupt = pd.Series(range(N)) % 4 == 0
    lab = pd.DataFrame({"example": range(N), "label_clean": clean,
                        "label": [(c + 1) % 4 if k else c for c, k in zip(clean, corrupt)], "corrupt": corrupt})
    lab.to_parquet(d / "c.parquet")
    pd.DataFrame({"example": range(N), "difficulty": [k % 4 for k in range(N)]}).to_parquet(d / "diff.parquet")
    subsets = ["e-train", "h-train", "e-test", "h-test"]
    pd.DataFrame({"example": range(N), "subset": [subsets[k % 4] for k in range(N)]}).to_parquet(d / "splits.parquet")
    return dict(dir=d, params=params, clean=clean, lab=lab)


def cgdata_params(p):
    from cglib import config
    return config.validate(p)["data"]


def _main(study, *args, out="out", record=None):
    """Run the stage; returns (run folder, log text). `record`: a list that gets the arguments
    the stage hands to train_run."""
    mod = _stage()
    if record is not None:
        real = mod.train_run
        mod.train_run = lambda *a, **k: record.append((a, k)) or real(*a, **k)
    d = study["dir"]
    log = d / f"{out}.log"
    mod.main(["--params", str(study["params"]), "--data", str(d / "d.pt"), "--seed", "0", "--out", str(d / out),
              "--log", str(log), *map(str, args)])
    return d / out, log.read_text()


def _fails(study, capsys, *args, code):
    with pytest.raises(SystemExit) as err:
        _main(study, *args)
    assert err.value.code == code
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_full_run_writes_its_three_files(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing lands in the working folder: the checkpoint goes beside the runs
    d = study["dir"]
    calls = []
    out, log = _main(study, "--labels", d / "c.parquet", "--noise", "0.5", "--optimizer", "sgd", record=calls,
                     out="runs/sgd_c0_noise0.5_seed0")
    (params, data, labels, corrupt, spec), kw = calls[0]
    assert spec == dict(noise=0.5, optimizer="sgd", clip=0, seed=0, subset="full", run="sgd_c0_noise0.5_seed0")
    assert labels.tolist() == study["lab"]["label"].tolist() and corrupt.tolist() == study["lab"]["corrupt"].tolist()
    assert kw["checkpoint"] == d / "checkpoints" / "sgd_c0_noise0.5_seed0.pt"
    assert (d / "checkpoints").is_dir() and not list(tmp_path.iterdir())
    assert kw["difficulty"] is None and kw["tests"] == {}
    assert kw["inputs"] == {"data": tables.file_digest(d / "d.pt"), "labels": tables.file_digest(d / "c.parquet")}

    m = pd.read_parquet(out / "metrics.parquet")
    assert m["step"].max() == 6 and set(m["run"]) == {"sgd_c0_noise0.5_seed0"}
    e8 = m[m["experiment"] == "E8"]
    assert len(e8) > 0 and set(e8["step"]) == {6} and set(e8["epoch"]) == {1.5}  # 6 steps of 50 of 200 examples
    assert not any(e8["metric"].str.startswith("spearman"))  # no difficulty given
    ex = pd.read_parquet(out / "examples.parquet")
    assert ex["example"].tolist() == list(range(N)) and ex["label_clean"].tolist() == study["clean"].tolist()
    assert ex["label"].tolist() == study["lab"]["label"].tolist()
    assert ex["corrupt"].tolist() == study["lab"]["corrupt"].tolist()
    meta = json.loads((out / "run.json").read_text())
    final = tables.final_values(m)
    assert set(final) >= {"train_accuracy", "test_accuracy", "pristine_accuracy", "corrupt_accuracy", "train_overfit"}
    assert meta == dict(spec, status="ok", steps_done=6, final=final,
                        device={"type": "cpu", "amp": "none", "channels_last": False, "tf32": False})
    assert "run sgd_c0_noise0.5_seed0 on cpu: 200 examples, 6 steps, batch 50, lr 0.1" in log
    assert "done: ok on cpu" in log and f"train_accuracy {final['train_accuracy']:.3f}" in log
    assert "train_loss" not in log.splitlines()[-1]  # the done line names accuracies only


def test_difficulty_reaches_the_run_and_its_tables(study):
    d = study["dir"]
    calls = []
    out, _ = _main(study, "--labels", d / "c.parquet", "--noise", "0.5", "--optimizer", "sgd",
                   "--difficulty", d / "diff.parquet", "--checkpoint", d / "diff.ckpt", out="diff", record=calls)
    kw = calls[0][1]
    assert kw["difficulty"].tolist() == [k % 4 for k in range(N)]
    assert kw["inputs"]["difficulty"] == tables.file_digest(d / "diff.parquet")
    assert kw["checkpoint"] == d / "diff.ckpt"
    m = pd.read_parquet(out / "metrics.parquet")
    assert set(m.loc[m["experiment"] == "E5", "split"]) == {f"difficulty={k}" for k in range(4)}
    assert m["metric"].str.startswith("spearman_difficulty").any()
    assert pd.read_parquet(out / "examples.parquet")["difficulty"].tolist() == [k % 4 for k in range(N)]


def test_subset_run_trains_on_its_part_with_clean_labels(study):
    d = study["dir"]
    calls = []
    out, _ = _main(study, "--subset", "e-train", "--splits", d / "splits.parquet", "--optimizer", "sgd",
                   "--checkpoint", d / "sub.ckpt", out="sub", record=calls)
    (params, data, labels, corrupt, spec), kw = calls[0]
    part = list(range(0, N, 4))
    assert spec["run"] == "sgd_c0_e-train_seed0" and spec["subset"] == "e-train" and corrupt is None
    assert labels.tolist() == study["clean"][part].tolist() and len(data["x_train"]) == len(part)
    assert sorted(kw["tests"]) == ["e-test", "h-test"]
    x, y = kw["tests"]["h-test"]
    assert y.tolist() == study["clean"][3::4].tolist() and len(x) == len(y)
    assert kw["inputs"]["splits"] == tables.file_digest(d / "splits.parquet") and "labels" not in kw["inputs"]
    ex = pd.read_parquet(out / "examples.parquet")
    assert ex["example"].tolist() == part and not ex["corrupt"].any()
    assert ex["label"].tolist() == ex["label_clean"].tolist() == study["clean"][part].tolist()
    m = pd.read_parquet(out / "metrics.parquet")
    assert {"e-test", "h-test"} <= set(m["split"]) and set(m["experiment"]) - {"E8"} == {"E6"}


def test_mc_run_and_its_first_examples(study):
    d = study["dir"]
    calls = []
    p = tiny_params(steps=6, batch_size=50, checkpoint_every=3)
    p["difficulty"]["el2n_epoch"] = 1
    p["mc"] = {"model": {"name": "mlp", "hidden": [5]}, "noise": [0.5], "seeds": [0], "steps": 4, "n_train": N}
    study = dict(study, params=write_params(d / "mc.yaml", p))
    out, _ = _main(study, "--labels", d / "c.parquet", "--noise", "0.5", "--optimizer", "sgd", "--mc",
                   "--checkpoint", d / "mc.ckpt", out="mc", record=calls)
    (params, data, labels, corrupt, spec), _ = calls[0]
    assert spec["run"] == "mc_sgd_c0_noise0.5_seed0" and spec["conditions"] == "mc" and params["train"]["steps"] == 4
    assert len(labels) == len(data["x_train"]) == N  # n_train = all of them is allowed
    p["mc"]["n_train"] = 100
    study = dict(study, params=write_params(d / "mc.yaml", p))
    calls.clear()
    out, _ = _main(study, "--labels", d / "c.parquet", "--noise", "0.5", "--optimizer", "sgd", "--mc",
                   "--checkpoint", d / "mc.ckpt", out="mc", record=calls)
    (params, data, labels, corrupt, spec), _ = calls[0]
    lab = study["lab"].iloc[:100]
    assert labels.tolist() == lab["label"].tolist() and corrupt.tolist() == lab["corrupt"].tolist()
    assert torch.equal(data["x_train"], cgdata.load_prepared(d / "d.pt")["x_train"][:100])
    assert pd.read_parquet(out / "examples.parquet")["example"].tolist() == list(range(100))
    calls.clear()  # the study's own runs train on every example, whatever mc.n_train says
    _main(study, "--labels", d / "c.parquet", "--noise", "0.5", "--optimizer", "sgd", "--checkpoint", d / "p.ckpt",
          out="plain", record=calls)
    (params, data, labels, corrupt, spec), _ = calls[0]
    assert len(labels) == len(data["x_train"]) == N and spec["run"] == "sgd_c0_noise0.5_seed0"


def test_mc_n_train_beyond_the_prepared_examples(study, capsys, tmp_path):
    """The params allow mc.n_train up to data.n_train; a prepared file of fewer examples is refused."""
    d = study["dir"]
    p = tiny_params(steps=6, batch_size=50)
    p["difficulty"]["el2n_epoch"] = 1
    p["mc"] = {"model": {"name": "mlp", "hidden": [5]}, "noise": [0.5], "seeds": [0], "steps": 4, "n_train": 150}
    small = torch.load(d / "d.pt", weights_only=False)
    small = dict(small, x_train=small["x_train"][:100], y_train=small["y_train"][:100])
    tables.save_torch(small, tmp_path / "small.pt")
    pd.read_parquet(d / "c.parquet").iloc[:100].to_parquet(tmp_path / "c.parquet")
    study = dict(study, params=write_params(tmp_path / "p.yaml", p))
    with pytest.raises(SystemExit) as err:
        _stage().main(["--params", str(study["params"]), "--data", str(tmp_path / "small.pt"), "--seed", "0",
                       "--out", str(tmp_path / "o"), "--labels", str(tmp_path / "c.parquet"), "--noise", "0.5",
                       "--optimizer", "sgd", "--mc"])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: mc.n_train: 150 exceeds the 100 training examples of {tmp_path / 'small.pt'}"


def test_refusals(study, capsys, tmp_path):
    d = study["dir"]
    full = ["--labels", d / "c.parquet", "--noise", "0.5"]
    mc = "error: --mc runs are plain SGD on the full training set (no --subset, --optimizer sgd --clip 0)"
    for extra in (["--optimizer", "rm3"], ["--optimizer", "sgd", "--clip", "1"],
                  ["--optimizer", "sgd", "--subset", "e-train", "--splits", d / "splits.parquet"]):
        assert _fails(study, capsys, *full, "--mc", *extra, code=2) == mc, extra
    which = "error: give --labels for a full run, or --subset with --splits for an E6 run"
    for args in (["--noise", "0.5"], [*full, "--splits", d / "splits.parquet"], ["--subset", "e-train"],
                 ["--subset", "h-train", "--splits", d / "splits.parquet", *full]):
        assert _fails(study, capsys, "--optimizer", "sgd", *args, code=2) == which, args
    assert _fails(study, capsys, *full, "--optimizer", "winsorized", "--clip", "25", code=2).startswith(
        "error: --optimizer/--clip: ")
    pd.read_parquet(d / "c.parquet").iloc[1:].to_parquet(tmp_path / "short.parquet")
    assert _fails(study, capsys, "--labels", tmp_path / "short.parquet", "--optimizer", "sgd", code=1) == \
        f"error: {tmp_path / 'short.parquet'}: 199 labels for 200 training examples"
    bad = f"error: {{}}: does not list the 200 training examples of {d / 'd.pt'}"
    diff = pd.read_parquet(d / "diff.parquet")
    diff.iloc[1:].to_parquet(tmp_path / "d1.parquet")
    diff.assign(example=diff["example"][::-1].to_numpy()).to_parquet(tmp_path / "d2.parquet")
    for name in ("d1.parquet", "d2.parquet"):
        assert _fails(study, capsys, *full, "--optimizer", "sgd", "--difficulty", tmp_path / name,
                      code=1) == bad.format(tmp_path / name)
    splits = pd.read_parquet(d / "splits.parquet")
    splits[splits["subset"] != "h-train"].to_parquet(tmp_path / "s.parquet")
    assert _fails(study, capsys, "--optimizer", "sgd", "--subset", "h-train", "--splits", tmp_path / "s.parquet",
                  code=1) == f"error: {tmp_path / 's.parquet'}: no example in subset h-train"


def test_required_flags(study, capsys):
    d = study["dir"]
    argv = {"--params": study["params"], "--data": d / "d.pt", "--optimizer": "sgd", "--seed": "0", "--out": d / "x"}
    for flag in ("--data", "--optimizer", "--seed", "--out"):
        with pytest.raises(SystemExit) as err:
            _stage().main([str(a) for k, v in argv.items() if k != flag for a in (k, v)])
        assert err.value.code == 2
        assert f"the following arguments are required: {flag}" in capsys.readouterr().err
