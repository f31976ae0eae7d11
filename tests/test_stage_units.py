"""The prepare, corrupt, easyhard, difficulty and aggregate stages called in-process on tiny
inputs (their subprocess runs are in test_data.py, test_difficulty.py, test_pipeline.py): each
output file against the library functions the stage glues together, the log lines, the exits."""
import importlib.util
import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from cglib import config, data, tables
from cglib.corruption import corrupt_labels, proper_accuracy
from cglib.difficulty import classify_easy_hard, cross_splits, easyhard_frame, merge_seeds, seed_summary
from conftest import ROOT, tiny_params, write_params


def stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(autouse=True)
def keep_excepthook():
    hook = sys.excepthook
    yield
    sys.excepthook = hook


def log_lines(capsys):
    return capsys.readouterr().err.splitlines()


@pytest.fixture
def study(tmp_path):
    p = tiny_params()
    p["data"]["n_train"], p["data"]["n_test"] = 40, 10
    params = write_params(tmp_path / "p.yaml", p)
    prepared = data.prepare(config.validate(p)["data"])
    torch.save(prepared, tmp_path / "d.pt")
    return params, config.validate(p), tmp_path


def test_prepare_stage_writes_the_prepared_file(study, capsys):
    params, p, tmp = study
    store = tmp / "store"
    stage("prepare")(["--params", str(params), "--out", str(tmp / "a" / "out.pt"), "--store", str(store)])
    got, want = torch.load(tmp / "a" / "out.pt", weights_only=True), data.prepare(p["data"])
    assert set(got) == set(want) and all(
        torch.equal(got[k], want[k]) if torch.is_tensor(want[k]) else got[k] == want[k] for k in want)
    key = data.prepared_key(p["data"], (ROOT / "stages" / "prepare.py").read_bytes())
    shared = store / f"synthetic-{key[:16]}.pt"
    assert [f.name for f in store.iterdir()] == [shared.name]
    assert (tmp / "a" / "out.pt").stat().st_ino == shared.stat().st_ino  # a link, not a copy
    table = [f"{'dataset':<14} {'classes':>7} {'train':>7} {'test':>7}  input",
             f"{'synthetic':<14} {4:>7} {40:>7} {10:>7}  (10,)"]
    assert log_lines(capsys)[-3:] == [f"prepared into {shared}", *table]
    # a second study with the same data section: the same file, not prepared again
    stage("prepare")(["--params", str(params), "--out", str(tmp / "b" / "out.pt"), "--store", str(store)])
    assert (tmp / "b" / "out.pt").stat().st_ino == shared.stat().st_ino and len(list(store.iterdir())) == 1
    assert log_lines(capsys)[-3:] == [f"shared: {shared}, prepared earlier for an equal data section", *table]
    # a damaged shared file is made again, not handed on
    shared.write_bytes(shared.read_bytes()[:50])
    stage("prepare")(["--params", str(params), "--out", str(tmp / "c" / "out.pt"), "--store", str(store)])
    assert log_lines(capsys)[-3] == f"prepared into {shared}"
    assert data.read_prepared(tmp / "c" / "out.pt")["y_train"].tolist() == want["y_train"].tolist()
    # another data section: another file
    p3 = tiny_params()
    p3["data"].update(n_train=30, n_test=10)
    stage("prepare")(["--params", str(write_params(tmp / "r.yaml", p3)), "--out", str(tmp / "d" / "out.pt"),
                      "--store", str(store)])
    assert len(list(store.iterdir())) == 2 and len(data.read_prepared(tmp / "d" / "out.pt")["y_train"]) == 30
    assert not list(tmp.rglob("*.tmp"))
    p2 = tiny_params()
    p2["data"] = {"dataset": "mnist", "raw_dir": str(tmp / "raw"), "n_train": 100}
    with pytest.raises(SystemExit) as err:
        stage("prepare")(["--params", str(write_params(tmp / "q.yaml", p2)), "--out", str(tmp / "no.pt"),
                          "--store", str(store)])
    assert err.value.code == 1 and not (tmp / "no.pt").exists() and len(list(store.iterdir())) == 2
    assert log_lines(capsys)[-1].startswith(f"error: train-images-idx3-ubyte: not found (looked for {tmp}/raw/")


@pytest.mark.parametrize("noise", [0.0, 0.5, 1.0])
def test_corrupt_stage_writes_the_label_table(study, capsys, noise):
    params, p, tmp = study
    stage("corrupt")(["--params", str(params), "--data", str(tmp / "d.pt"), "--noise", str(noise),
                      "--out", str(tmp / "c.parquet")])
    df = pd.read_parquet(tmp / "c.parquet")
    clean = data.prepare(p["data"])["y_train"].numpy()
    noisy, corrupt = corrupt_labels(clean, noise, p["corrupt"]["seed"], 4)
    assert list(df.columns) == ["example", "label_clean", "label", "corrupt"]
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "int64", "bool"]
    assert df["example"].tolist() == list(range(40)) and np.array_equal(df["label_clean"], clean)
    assert np.array_equal(df["label"], noisy) and np.array_equal(df["corrupt"], corrupt)
    assert log_lines(capsys)[-1] == (f"{noise:>6g} {40:>7} {int(corrupt.sum()):>8} {1 - corrupt.mean():>14.4f} "
                                     f"{proper_accuracy(noise, 4):>9.4f}")


def test_corrupt_stage_refuses_noise_outside_0_1_and_missing_data(study, capsys):
    params, _, tmp = study
    for noise in ("-0.01", "1.01"):
        with pytest.raises(SystemExit) as err:
            stage("corrupt")(["--params", str(params), "--data", str(tmp / "d.pt"), "--noise", noise,
                              "--out", str(tmp / "c.parquet")])
        assert err.value.code == 2 and log_lines(capsys)[-1] == f"error: --noise {float(noise)} is outside [0, 1]"
    with pytest.raises(SystemExit) as err:
        stage("corrupt")(["--params", str(params), "--data", str(tmp / "none.pt"), "--noise", "0.5",
                          "--out", str(tmp / "c.parquet")])
    assert err.value.code == 1 and "none.pt: prepared data not found" in log_lines(capsys)[-1]
    assert not (tmp / "c.parquet").exists()


def test_easyhard_stage_writes_one_seeds_table(study, capsys):
    params, p, tmp = study
    stage("easyhard")(["--params", str(params), "--data", str(tmp / "d.pt"), "--seed", "1",
                       "--out", str(tmp / "eh.parquet")])
    got = pd.read_parquet(tmp / "eh.parquet")
    r = classify_easy_hard(p, data.load_prepared(tmp / "d.pt"), 1, log=lambda *_: None, progress=False)
    pd.testing.assert_frame_equal(got, easyhard_frame(r))
    easy, hard = int((~r["hard"]).sum()), int(r["hard"].sum())
    assert log_lines(capsys)[-2:] == [
        f"{'seed':>4} {'step':>6} {'epoch':>6} {'accuracy':>8} {'easy':>6} {'hard':>6}",
        f"{1:>4} {r['step']:>6} {r['step'] * 20 / 40:>6.2f} {r['accuracy']:>8.4f} {easy:>6} {hard:>6}"]
    assert r["step"] > 0 and easy > 0 and hard > 0
    p2 = tiny_params()
    p2["data"]["n_train"], p2["data"]["n_test"] = 40, 10
    p2["difficulty"].update(threshold=1.0, max_steps=1)
    with pytest.raises(SystemExit) as err:
        stage("easyhard")(["--params", str(write_params(tmp / "q.yaml", p2)), "--data", str(tmp / "d.pt"),
                           "--seed", "0", "--out", str(tmp / "no.parquet")])
    assert err.value.code == 2 and not (tmp / "no.parquet").exists()
    assert log_lines(capsys)[-1].startswith("error: difficulty.max_steps: ")


def _easyhard_tables(folder, n=120):
    rng = np.random.default_rng(0)
    found = {}
    for s in (0, 1, 2):
        hard = rng.random(n) < 0.4
        found[s] = pd.DataFrame({"example": np.arange(n), "hard": hard, "step": 3 + s, "accuracy": 1 - hard.mean(),
                                 "p_true": rng.random(n)})
        tables.write_parquet(found[s], folder / f"seed={s}.parquet")
    return found


def test_difficulty_stage_writes_difficulty_splits_and_seeds(study, capsys):
    params, p, tmp = study
    found = _easyhard_tables(tmp)
    stage("difficulty")(["--params", str(params), "--easyhard", str(tmp), "--out", str(tmp / "out")])
    diff = merge_seeds(found)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp / "out" / "difficulty.parquet"), diff)
    splits = pd.read_parquet(tmp / "out" / "difficulty_splits.parquet")
    pd.testing.assert_frame_equal(splits, cross_splits(diff, p["difficulty"], min_train=20))
    seeds = pd.read_csv(tmp / "out" / "difficulty_seeds.csv")
    want = seed_summary(found, n_per_epoch=120 / 20)
    assert list(seeds.columns) == list(want.columns)
    assert seeds["epoch"].tolist() == pytest.approx([3 / 6, 4 / 6, 5 / 6], rel=1e-5)  # step / (n / batch)
    np.testing.assert_allclose(seeds.to_numpy(float), want.to_numpy(float), rtol=1e-5)
    lines = log_lines(capsys)
    counts = splits["subset"].value_counts(sort=False)
    assert lines[-1] == "splits: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    hist = tables.histogram(diff, 3)
    assert "\n".join(lines).endswith("difficulty histogram:\n" + hist.to_string(index=False) + "\n" + lines[-1])


def test_difficulty_stage_exits(study, capsys):
    params, p, tmp = study
    _easyhard_tables(tmp)
    (tmp / "seed=2.parquet").unlink()
    with pytest.raises(SystemExit) as err:
        stage("difficulty")(["--params", str(params), "--easyhard", str(tmp), "--out", str(tmp / "out")])
    assert err.value.code == 1 and log_lines(capsys)[-1] == (f"error: {tmp}/seed=2.parquet: missing; run the "
                                                             f"easyhard stage for seed 2")
    _easyhard_tables(tmp, n=8)  # pools of a few examples cannot give 20 training examples
    with pytest.raises(SystemExit) as err:
        stage("difficulty")(["--params", str(params), "--easyhard", str(tmp), "--out", str(tmp / "out")])
    assert err.value.code == 2 and log_lines(capsys)[-1].startswith("error: difficulty.pools: ")
    assert not (tmp / "out").exists()


def _run_folder(folder, params, spec, k):
    """One run's metrics.parquet, examples.parquet and run.json, small and hand-made."""
    folder.mkdir(parents=True)
    rows = []
    for step in (0, 10):
        splits = ["train", "test"] + (["pristine", "corrupt"] if spec["noise"] else []) + (
            ["e-test", "h-test"] if spec["subset"] != "full" else [])
        for j, split in enumerate(splits):
            rows += [dict(experiment="E1" if spec["subset"] == "full" else "E6", step=step, epoch=step / 2,
                          split=split, metric=m, value=(k + 1) * 0.01 * (step + j + (m == "loss")))
                     for m in ("accuracy", "loss")]
        for d in range(4):
            rows += [dict(experiment="E5", step=step, epoch=step / 2, split=f"difficulty={d}", metric="accuracy",
                          value=0.1 * d + 0.01 * k + step / 100),
                     dict(experiment="E5", step=step, epoch=step / 2, split=f"difficulty={d}", metric="count",
                          value=d + 1)]
        rows += [dict(experiment="E2", step=step, epoch=step / 2, split="train", metric="f_pristine", value=0.9 - step / 20),
                 dict(experiment="E7", step=step, epoch=step / 2, split="train", metric="m_coherence", value=1 + k + step)]
    rows += [dict(experiment="E8", step=10, epoch=5.0, split="train", metric="auroc_corrupt_aum", value=0.6 + k / 10),
             dict(experiment="E8", step=10, epoch=5.0, split="train", metric="spearman_difficulty_aum", value=0.1 * k)]
    df = tables.metrics_frame(rows, tables.run_constants(config.params_for(params, spec), spec))
    tables.write_parquet(df, folder / "metrics.parquet")
    ex = tables.examples_frame(pd.DataFrame({"example": range(4), "label_clean": [0, 1, 2, 3], "label": [0, 1, 2, 3],
                                             "corrupt": [k % 2 == 1, False, False, False], "aum": [k, 1.0, 2.0, 3.0]}),
                               spec["run"])
    tables.write_parquet(ex, folder / "examples.parquet")
    (folder / "run.json").write_text(json.dumps({"status": "done" if k else "interrupted", "steps_done": 10 + k}))
    return df, ex


def test_aggregate_stage_gathers_every_run_and_digest(study, capsys):
    params, p, tmp = study
    grid = config.run_grid(p)
    frames, runs, examples = [], [], []
    for k, spec in enumerate(grid):
        df, ex = _run_folder(tmp / "runs" / spec["run"], p, spec, k)
        meta = json.loads((tmp / "runs" / spec["run"] / "run.json").read_text())
        frames.append(df)
        examples.append(ex)
        runs.append({**tables.run_row(config.params_for(p, spec), spec, meta["status"], meta["steps_done"],
                                      tables.final_values(df)), **tables.designation_sizes(ex)})
    diff = pd.DataFrame({"example": range(4), "difficulty": [0, 3, 3, 1]})
    tables.write_parquet(diff, tmp / "difficulty.parquet")
    seeds = pd.DataFrame({"seed": [0, 1, 2], "step": [3, 4, 5], "epoch": [0.5, 0.75, 1.0], "accuracy": [0.5, 0.6, 0.7],
                          "easy": [2, 3, 2], "hard": [2, 1, 2]})
    seeds.to_csv(tmp / "seeds.csv", index=False)
    out = tmp / "results"
    stage("aggregate")(["--params", str(params), "--runs", str(tmp / "runs"), "--out", str(out),
                        "--difficulty", str(tmp / "difficulty.parquet"), "--difficulty-seeds", str(tmp / "seeds.csv")])
    written = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert written == sorted(tables.AGGREGATE_OUTPUTS)  # what both engines declare, nothing else
    metrics = pd.concat(frames, ignore_index=True).astype(tables.METRIC_COLUMNS)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), metrics)
    runs_df = pd.DataFrame(runs)
    got_runs = pd.read_parquet(out / "runs.parquet")
    pd.testing.assert_frame_equal(got_runs, runs_df)
    assert got_runs["n_corrupt"].tolist() == [0, 1, 0, 1] and got_runs["status"].tolist()[:2] == ["interrupted", "done"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "examples.parquet"),
                                  pd.concat(examples, ignore_index=True).astype(tables.EXAMPLE_COLUMNS))
    hist = tables.histogram(diff, 3)
    e5, e6, e8 = (tables.accuracy_by_difficulty(metrics), tables.cross_generalization(metrics),
                  tables.score_correlations(metrics))
    assert len(e5) == 8 and len(e6) == 8 and len(e8) == 4  # the digests have something to check
    summary = {**tables.summary(p, runs_df, metrics), **tables.difficulty_summary(seeds, hist, e5, e6, e8)}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(tables._strict(summary)))
    assert set(summary) >= {"m_coherence_peaks", "share_crossings", "easyhard", "cross_generalization"}
    plots = {**tables.plot_tables(metrics), "accuracy_by_difficulty": tables.difficulty_plot_table(e5, hist),
             "cross_generalization": e6, "score_correlations": e8}
    assert sorted(f.name for f in (out / "plots").iterdir()) == sorted(f"{n}.csv" for n in plots)
    for name, df in plots.items():
        assert (out / "plots" / f"{name}.csv").read_text() == df.to_csv(index=False, float_format="%.6g"), name
    lines = log_lines(capsys)
    assert f"4 runs, {len(metrics)} metric rows → {out}/metrics.parquet" in lines
    assert "cross-generalization (E6, W&S §4.4):" in lines


def test_stages_default_to_the_study_s_folder(study, capsys, monkeypatch):
    """Without folders given, difficulty, aggregate and report read and write results/<study>/
    (tiny here), each input where the stage before it wrote it; with --out only, under it."""
    params, p, tmp = study
    monkeypatch.chdir(tmp)
    home = tmp / "results" / "tiny"
    (home / "easyhard").mkdir(parents=True)
    _easyhard_tables(home / "easyhard")
    stage("difficulty")(["--params", str(params)])
    assert {f.name for f in home.iterdir()} == {"easyhard", "difficulty.parquet", "difficulty_splits.parquet",
                                                "difficulty_seeds.csv"}
    for k, spec in enumerate(config.run_grid(p)):
        _run_folder(home / "runs" / spec["run"], p, spec, k)
    stage("aggregate")(["--params", str(params)])
    assert all((home / name).is_file() for name in tables.AGGREGATE_OUTPUTS)
    assert pd.read_parquet(home / "runs.parquet")["run"].tolist() == [s["run"] for s in config.run_grid(p)]
    other = tmp / "elsewhere"
    shutil.copytree(home, other)
    for name in tables.AGGREGATE_OUTPUTS:
        (other / name).unlink()
    (other / "difficulty_seeds.csv").unlink()  # read from <out>, not from results/tiny
    with pytest.raises(SystemExit) as err:
        stage("aggregate")(["--params", str(params), "--out", str(other)])
    assert err.value.code == 1 and log_lines(capsys)[-1] == (
        f"error: {other}/difficulty_seeds.csv: missing; run the difficulty stage")
    shutil.copy(home / "difficulty_seeds.csv", other)
    stage("aggregate")(["--params", str(params), "--out", str(other)])
    assert all((other / name).read_bytes() == (home / name).read_bytes() for name in tables.AGGREGATE_OUTPUTS)
    capsys.readouterr()


def test_aggregate_stage_names_a_missing_or_damaged_run_file(study, capsys):
    params, p, tmp = study
    for k, spec in enumerate(config.run_grid(p)):
        _run_folder(tmp / "runs" / spec["run"], p, spec, k)
    run = config.run_grid(p)[1]["run"]
    args = ["--params", str(params), "--runs", str(tmp / "runs"), "--out", str(tmp / "results"),
            "--difficulty", str(tmp / "none.parquet"), "--difficulty-seeds", str(tmp / "none.csv")]
    (tmp / "runs" / run / "run.json").write_text("{not json")
    with pytest.raises(SystemExit) as err:
        stage("aggregate")(args)
    assert err.value.code == 1
    assert log_lines(capsys)[-1].startswith(f"error: {tmp}/runs/{run}/run.json: damaged (")
    for name in ("run.json", "examples.parquet", "metrics.parquet"):
        (tmp / "runs" / run / name).unlink()
        with pytest.raises(SystemExit) as err:
            stage("aggregate")(args)
        assert err.value.code == 1 and log_lines(capsys)[-1] == (
            f"error: {tmp}/runs/{run}/{name}: missing; run the train stage for {run}")
    assert not (tmp / "results").exists()


def _requires(name, argv, capsys):
    """Leaving out any one of the stage's required flags is argparse's usage error (exit 2)."""
    flags = [a for a in argv if a.startswith("--")]
    for flag in flags:
        i = argv.index(flag)
        with pytest.raises(SystemExit) as err:
            stage(name)(argv[:i] + argv[i + 2:])
        assert err.value.code == 2 and f"the following arguments are required: {flag}" in capsys.readouterr().err


def test_corrupt_stage_requires_data_noise_and_out(capsys):
    _requires("corrupt", ["--data", "d.pt", "--noise", "0.5", "--out", "c.parquet"], capsys)


def test_prepare_stage_requires_out(capsys):
    _requires("prepare", ["--out", "d.pt"], capsys)


def test_easyhard_stage_requires_data_seed_and_out(capsys):
    _requires("easyhard", ["--data", "d.pt", "--seed", "0", "--out", "e.parquet"], capsys)
