"""Easy / hard, difficulty over seeds, the cross-generalization splits (W&S §4); E5 and E6 rows."""
import numpy as np
import pandas as pd
import pytest
import torch

from cglib import config
from cglib.data import make_synthetic
from cglib.difficulty import (PoolsTooSmall, ThresholdNotReached, classify_easy_hard, cross_splits,
                              histogram, merge_seeds)
from conftest import run_stage, tiny_params, write_params


def synthetic_with_flips(n_flip=20):
    """Well-separated clusters; the first n_flip examples get the label of the class whose
    centre lies farthest from them (so no honest decision boundary can get them right)."""
    raw = make_synthetic(seed=0, dim=10, classes=4, separation=8.0, n_train_total=200, n_test_total=50)
    x, y = torch.from_numpy(raw["x_train"]), torch.from_numpy(raw["y_train"]).clone()
    centres = torch.stack([x[y == k].mean(0) for k in range(4)])
    y[:n_flip] = torch.cdist(x[:n_flip], centres).argmax(1)
    return dict(x_train=x, y_train=y, input_shape=(10,), num_classes=4)


def easyhard_params(**d):
    p = config.validate(tiny_params())
    p["difficulty"].update(dict(lr=0.01, batch_size=20, threshold=0.87, max_steps=500), **d)
    return p


def test_flipped_labels_are_hard_in_every_seed_and_difficulty_counts_them():
    data = synthetic_with_flips(20)
    params = easyhard_params()
    tables = {}
    for seed in range(4):
        r = classify_easy_hard(params, data, seed, log=lambda *_: None, progress=False)
        assert r["accuracy"] >= 0.87 and r["step"] > 0
        # the split is made at the first step that reaches the threshold, on these very predictions
        assert abs((~r["hard"]).double().mean().item() - r["accuracy"]) < 1e-12
        assert ((r["p_true"] > 0) & (r["p_true"] <= 1)).all()
        tables[seed] = pd.DataFrame({"example": np.arange(200), "hard": r["hard"].numpy()})
    diff = merge_seeds(tables)
    assert (diff.loc[:19, "difficulty"] == 4).all()  # flipped: hard in every seed
    assert (diff.loc[20:, "difficulty"] == 0).mean() > 0.7  # most clean examples easy in every seed
    hard = np.stack([tables[s]["hard"].to_numpy() for s in range(4)], axis=1)
    assert (diff["difficulty"].to_numpy() == hard.sum(axis=1)).all()
    assert [c for c in diff.columns] == ["example", "difficulty", "hard_seed0", "hard_seed1", "hard_seed2", "hard_seed3"]


def test_seeds_differ_and_repeat():
    data = synthetic_with_flips(0)
    params = easyhard_params(threshold=0.6, lr=0.01)
    a = classify_easy_hard(params, data, 0, log=lambda *_: None, progress=False)
    b = classify_easy_hard(params, data, 0, log=lambda *_: None, progress=False)
    c = classify_easy_hard(params, data, 1, log=lambda *_: None, progress=False)
    assert torch.equal(a["hard"], b["hard"]) and a["step"] == b["step"]
    assert not torch.equal(a["hard"], c["hard"])


def test_threshold_never_reached_names_the_key():
    params = easyhard_params(threshold=1.0, max_steps=3)
    with pytest.raises(ThresholdNotReached, match=r"^difficulty\.max_steps: .*difficulty\.threshold = 1\.0"):
        classify_easy_hard(params, synthetic_with_flips(20), 0, log=lambda *_: None, progress=False)


def diff_table(difficulty, k):
    """A difficulty table with the given levels; seed columns consistent with them."""
    d = np.asarray(difficulty)
    cols = {f"hard_seed{s}": d > s for s in range(k)}
    return pd.DataFrame({"example": np.arange(len(d)), "difficulty": d, **cols})


def split_params(**kw):
    d = dict(seeds=[0, 1, 2], pools="single", pool_size=0, split_ratio=5, split_seed=0)
    d.update(kw)
    return d


def test_splits_disjoint_sizes_equal_and_seeded():
    rng = np.random.default_rng(1)
    diff = diff_table(rng.integers(0, 4, size=600), 3)
    s = cross_splits(diff, split_params())
    assert list(s.columns) == ["example", "subset"]
    assert s["example"].is_unique  # disjoint
    sizes = s["subset"].value_counts()
    easy, hard = (diff["hard_seed0"] == 0).sum(), (diff["hard_seed0"] == 1).sum()
    m = min(easy, hard)
    assert sizes["e-test"] == sizes["h-test"] == m // 6 and sizes["e-train"] == sizes["h-train"] == m - m // 6
    # pools as asked: single = the first seed's easy / hard
    by = diff.set_index("example")
    assert not by.loc[s[s["subset"].str.startswith("e")]["example"], "hard_seed0"].any()
    assert by.loc[s[s["subset"].str.startswith("h")]["example"], "hard_seed0"].all()
    assert s.equals(cross_splits(diff, split_params()))
    assert not s.equals(cross_splits(diff, split_params(split_seed=1)))
    # a given pool size and ratio
    s2 = cross_splits(diff, split_params(pool_size=120, split_ratio=3))
    assert s2["subset"].value_counts().to_dict() == {"e-train": 90, "e-test": 30, "h-train": 90, "h-test": 30}


def test_consensus_pools_take_only_difficulty_0_and_k():
    diff = diff_table([0] * 50 + [1] * 30 + [2] * 30 + [3] * 40, 3)
    s = cross_splits(diff, split_params(pools="consensus"))
    levels = diff.set_index("example").loc[s["example"], "difficulty"].to_numpy()
    is_easy = s["subset"].str.startswith("e").to_numpy()
    assert (levels[is_easy] == 0).all() and (levels[~is_easy] == 3).all()
    assert len(s) == 2 * 40


def test_pools_too_small_name_the_key():
    diff = diff_table([0] * 50 + [3] * 4, 3)
    with pytest.raises(PoolsTooSmall, match=r"^difficulty\.pools: "):
        cross_splits(diff, split_params(pools="consensus"), min_train=10)
    with pytest.raises(PoolsTooSmall, match=r"^difficulty\.pool_size: 30 "):
        cross_splits(diff, split_params(pools="consensus", pool_size=30))


def test_histogram_includes_empty_levels():
    h = histogram(diff_table([0, 0, 3, 3, 3], 3), 3)
    assert h.to_dict("list") == {"difficulty": [0, 1, 2, 3], "count": [2, 0, 0, 3]}


@pytest.mark.parametrize("section,key", [
    ({"threshold": 0}, "difficulty.threshold"), ({"threshold": 1.5}, "difficulty.threshold"),
    ({"seeds": []}, "difficulty.seeds"), ({"pool_size": 150}, "difficulty.pool_size"),
    ({"el2n_epoch": 99}, "difficulty.el2n_epoch"), ({"batch_size": 999}, "difficulty.batch_size"),
    ({"pools": "majority"}, "difficulty.pools"), ({"subsets": ["x-train"]}, "difficulty.subsets[0]"),
])
def test_bad_difficulty_section_names_the_key(section, key):
    p = tiny_params()
    p["difficulty"].update(section)
    with pytest.raises(config.ParamsError) as err:
        config.validate(p)
    assert str(err.value).startswith(f"{key}:") and "\n" not in str(err.value)


def test_bad_difficulty_section_stops_the_stage_with_exit_2(tmp_path):
    p = tiny_params()
    p["difficulty"]["threshold"] = 0
    params = write_params(tmp_path / "p.yaml", p)
    out = tmp_path / "e.parquet"
    proc = run_stage("easyhard", "--params", params, "--data", tmp_path / "d.pt", "--seed", "0", "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("params error: difficulty.threshold")
    assert not out.exists()


# ---------------------------------------------------------------------------- stages, E5, E6

@pytest.fixture
def difficulty_outputs(tmp_path):
    """The tiny study through prepare, corrupt (ε = 0.5), easyhard × 3 seeds, difficulty."""
    params = write_params(tmp_path / "p.yaml", tiny_params())
    run_stage("prepare", "--params", params, "--out", tmp_path / "d.pt", check=True)
    run_stage("corrupt", "--params", params, "--data", tmp_path / "d.pt", "--noise", "0.5",
              "--out", tmp_path / "c.parquet", check=True)
    for s in (0, 1, 2):
        run_stage("easyhard", "--params", params, "--data", tmp_path / "d.pt", "--seed", s,
                  "--out", tmp_path / "eh" / f"seed={s}.parquet", check=True)
    proc = run_stage("difficulty", "--params", params, "--easyhard", tmp_path / "eh", "--out", tmp_path,
                     check=True)
    assert "difficulty histogram" in proc.stderr
    return params, tmp_path


def test_easyhard_and_difficulty_stages_write_their_tables(difficulty_outputs):
    _, tmp = difficulty_outputs
    eh = pd.read_parquet(tmp / "eh" / "seed=0.parquet")
    assert list(eh.columns) == ["example", "hard", "step", "accuracy", "p_true"] and len(eh) == 200
    assert eh["step"].nunique() == 1 and eh["accuracy"].iloc[0] >= 0.5
    assert abs((~eh["hard"]).mean() - eh["accuracy"].iloc[0]) < 1e-9
    diff = pd.read_parquet(tmp / "difficulty.parquet")
    assert list(diff.columns) == ["example", "difficulty", "hard_seed0", "hard_seed1", "hard_seed2"]
    assert diff["example"].tolist() == list(range(200)) and diff["difficulty"].between(0, 3).all()
    seeds = pd.read_csv(tmp / "difficulty_seeds.csv")
    assert list(seeds.columns) == ["seed", "step", "epoch", "accuracy", "easy", "hard"]
    assert seeds["seed"].tolist() == [0, 1, 2] and ((seeds["easy"] + seeds["hard"]) == 200).all()
    splits = pd.read_parquet(tmp / "difficulty_splits.parquet")
    assert set(splits["subset"]) == {"e-train", "e-test", "h-train", "h-test"}


def train_on(params, tmp, out, *args):
    run_stage("train", "--params", params, "--data", tmp / "d.pt", "--difficulty", tmp / "difficulty.parquet",
              "--optimizer", "sgd", "--seed", "0", "--out", tmp / out, *args, check=True)


def test_accuracy_by_difficulty_weighted_by_counts_is_train_accuracy(difficulty_outputs):
    params, tmp = difficulty_outputs
    train_on(params, tmp, "run", "--labels", tmp / "c.parquet", "--noise", "0.5")
    m = pd.read_parquet(tmp / "run" / "metrics.parquet")
    e5 = m[m["experiment"] == "E5"]
    assert set(e5["metric"]) == {"accuracy", "count"}
    assert set(e5["step"]) == set(m.loc[m["experiment"] == "E1", "step"])
    diff = pd.read_parquet(tmp / "difficulty.parquet")
    for step, g in e5.groupby("step"):
        w = g.pivot_table(index="split", columns="metric", values="value")
        assert w["count"].sum() == 200
        counts = diff["difficulty"].value_counts()
        assert all(w.loc[f"difficulty={k}", "count"] == c for k, c in counts.items())
        train = m[(m["step"] == step) & (m["split"] == "train") & (m["metric"] == "accuracy")]["value"].item()
        assert abs((w["accuracy"] * w["count"]).sum() / 200 - train) < 1e-6  # float32 means
    ex = pd.read_parquet(tmp / "run" / "examples.parquet")
    assert (ex["difficulty"].to_numpy() == diff["difficulty"].to_numpy()).all()
    e8 = m[m["experiment"] == "E8"]
    assert {"spearman_difficulty_forgetting_events", "auroc_corrupt_aum"} <= set(e8["metric"])


def test_subset_run_trains_on_its_part_and_evaluates_on_both_tests(difficulty_outputs):
    params, tmp = difficulty_outputs
    train_on(params, tmp, "h", "--splits", tmp / "difficulty_splits.parquet", "--subset", "h-train")
    m = pd.read_parquet(tmp / "h" / "metrics.parquet")
    assert m["run"].iloc[0] == "sgd_c0_h-train_seed0" and set(m["subset"]) == {"h-train"}
    e6 = m[m["experiment"] == "E6"]
    assert set(e6["split"]) == {"train", "test", "e-test", "h-test"}  # clean labels: no pristine/corrupt
    assert (m["noise"] == 0).all()
    splits = pd.read_parquet(tmp / "difficulty_splits.parquet")
    ex = pd.read_parquet(tmp / "h" / "examples.parquet")
    assert sorted(ex["example"]) == sorted(splits.loc[splits["subset"] == "h-train", "example"])
    assert (ex["label"] == ex["label_clean"]).all() and not ex["corrupt"].any()
    e5 = m[(m["experiment"] == "E5") & (m["metric"] == "count") & (m["step"] == 0)]
    assert e5["value"].sum() == len(ex)


def test_train_needs_labels_or_a_subset(difficulty_outputs):
    params, tmp = difficulty_outputs
    proc = run_stage("train", "--params", params, "--data", tmp / "d.pt", "--subset", "e-train",
                     "--optimizer", "sgd", "--seed", "0", "--out", tmp / "x")
    assert proc.returncode == 2 and "--splits" in proc.stderr
