"""cglib.difficulty on small hand-made inputs, in-process and fast (tests/test_difficulty.py runs
the stages): the easy/hard run against a twin that records every step's accuracy, the threshold
and max_steps on both sides, merge_seeds, seed_summary, pools and cross_splits exactly."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cglib import config
from cglib.data import make_synthetic
from cglib.difficulty import (PoolsTooSmall, ThresholdNotReached, classify_easy_hard, cross_splits,
                              easyhard_frame, merge_seeds, pools, seed_summary)
from cglib.models import build_model
from cglib.train import batch_indices, per_example
from conftest import tiny_params


def _data():
    raw = make_synthetic(seed=0, dim=4, classes=3, separation=2.0, n_train_total=30, n_test_total=1)
    return dict(x_train=torch.from_numpy(raw["x_train"]), y_train=torch.from_numpy(raw["y_train"]),
                input_shape=(4,), num_classes=3)


def _params(**d):
    p = config.validate(tiny_params())
    p["model"] = {"name": "mlp", "hidden": [8]}
    p["difficulty"].update(dict(lr=0.5, batch_size=10, threshold=0.5, max_steps=25), **d)
    return p


SEED_OFFSET = 100_000  # the README's: easy/hard seed s starts from torch.manual_seed(100,000 + s)


def _twin(params, data, seed, steps):
    """Every step's (correct, loss) of the easy/hard run, from its definition: weights seeded by
    SEED_OFFSET + seed, minibatches of train.batch_indices under the same seed, plain SGD."""
    d = params["difficulty"]
    x, y = data["x_train"], data["y_train"]
    torch.manual_seed(SEED_OFFSET + seed)
    model = build_model(params["model"], data["input_shape"], data["num_classes"])
    opt = torch.optim.SGD(model.parameters(), lr=d["lr"])
    cache, out = {}, []
    for step in range(steps + 1):
        out.append(per_example(model, x, y))
        idx = batch_indices(step, len(y), d["batch_size"], SEED_OFFSET + seed, cache)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return out


def test_split_falls_at_the_first_step_reaching_the_threshold_and_max_steps_on_both_sides():
    data, seed = _data(), 1
    params = _params()
    record = _twin(params, data, seed, 25)
    accs = [c.double().mean().item() for c, _ in record]
    k = int(np.argmax(accs))  # the first step at the best accuracy: every earlier step is below it
    assert k >= 2 and accs[k] > accs[0]  # the run must train for the test to have teeth
    logs = []
    r = classify_easy_hard(_params(threshold=accs[k]), data, seed, log=logs.append, progress=False)
    correct, loss = record[k]
    assert r["step"] == k and r["accuracy"] == accs[k]  # threshold reached exactly: ≥, not >
    assert torch.equal(r["hard"], ~correct)
    torch.testing.assert_close(r["p_true"], torch.exp(-loss), rtol=0, atol=0)
    assert logs == [f"seed {seed}: training accuracy {accs[k]:.4f} ≥ {accs[k]} at step {k} "
                    f"(epoch {k * 10 / 30:.2f})"]
    # max_steps = k still evaluates after the k-th update; k − 1 does not get there
    assert classify_easy_hard(_params(threshold=accs[k], max_steps=k), data, seed, log=logs.append,
                              progress=False)["step"] == k
    with pytest.raises(ThresholdNotReached) as err:
        classify_easy_hard(_params(threshold=accs[k], max_steps=k - 1), data, seed, log=logs.append, progress=False)
    assert str(err.value) == (f"difficulty.max_steps: training accuracy was {accs[k - 1]:.4f} after {k - 1} "
                              f"steps, below difficulty.threshold = {accs[k]}; raise max_steps or lr, or "
                              f"lower the threshold")


def test_step_zero_split_is_the_initial_weights_of_the_offset_seed():
    data, seed = _data(), 2
    torch.manual_seed(SEED_OFFSET + seed)
    model = build_model(_params()["model"], (4,), 3).eval()
    with torch.no_grad():
        p = model(data["x_train"]).softmax(1).gather(1, data["y_train"][:, None])[:, 0]
    r = classify_easy_hard(_params(threshold=0.0), data, seed, log=lambda *_: None, progress=False)
    assert r["step"] == 0
    torch.testing.assert_close(r["p_true"], p, rtol=1e-5, atol=1e-7)


def test_easyhard_frame_columns_and_values():
    r = dict(hard=torch.tensor([True, False, True]), p_true=torch.tensor([0.25, 0.5, 1.0]), step=7, accuracy=1 / 3)
    df = easyhard_frame(r)
    assert list(df.columns) == ["example", "hard", "step", "accuracy", "p_true"]
    assert [str(t) for t in df.dtypes] == ["int64", "bool", "int64", "float64", "float64"]
    assert df.to_dict("list") == {"example": [0, 1, 2], "hard": [True, False, True], "step": [7, 7, 7],
                                  "accuracy": [1 / 3] * 3, "p_true": [0.25, 0.5, 1.0]}


def _eh(hard, step=3, accuracy=0.5, example=None):
    return pd.DataFrame({"example": example if example is not None else np.arange(len(hard)), "hard": hard,
                         "step": step, "accuracy": accuracy})


def test_merge_seeds_counts_hard_runs_in_the_given_seed_order():
    t = {2: _eh([True, False, True, False]), 0: _eh([True, True, False, False])}
    diff = merge_seeds(t)
    assert list(diff.columns) == ["example", "difficulty", "hard_seed2", "hard_seed0"]
    assert [str(x) for x in diff.dtypes] == ["int64", "int64", "bool", "bool"]
    assert diff.to_dict("list") == {"example": [0, 1, 2, 3], "difficulty": [2, 1, 1, 0],
                                    "hard_seed2": [True, False, True, False],
                                    "hard_seed0": [True, True, False, False]}
    with pytest.raises(ValueError, match="seed 0 lists other examples than seed 2"):
        merge_seeds({2: _eh([True, False]), 0: _eh([True, False], example=[1, 0])})


def test_seed_summary_rows():
    s = seed_summary({4: _eh([True, False, False], step=6, accuracy=2 / 3), 1: _eh([True, True, True], step=0,
                                                                                  accuracy=0.0)}, n_per_epoch=4.0)
    assert s.to_dict("records") == [dict(seed=4, step=6, epoch=1.5, accuracy=2 / 3, easy=2, hard=1),
                                    dict(seed=1, step=0, epoch=0.0, accuracy=0.0, easy=0, hard=3)]


def _diff(levels, k=3, first_hard=None):
    d = np.asarray(levels)
    hard0 = d > 0 if first_hard is None else np.asarray(first_hard)
    cols = {f"hard_seed{s}": (hard0 if s == 0 else d > s) for s in range(k)}
    return pd.DataFrame({"example": np.arange(10, 10 + len(d)), "difficulty": d, **cols})


def test_pools_single_and_consensus():
    diff = _diff([0, 1, 3, 2, 0, 3], first_hard=[False, False, True, True, True, False])
    easy, hard = pools(diff, "single", [0, 1, 2])
    assert easy.tolist() == [10, 11, 15] and hard.tolist() == [12, 13, 14]
    easy, hard = pools(diff, "consensus", [0, 1, 2])
    assert easy.tolist() == [10, 14] and hard.tolist() == [12, 15]


def _split(**kw):
    return {**dict(seeds=[0, 1, 2], pools="consensus", pool_size=0, split_ratio=5, split_seed=4), **kw}


def test_cross_splits_draw_from_each_pool_with_the_split_seed():
    diff = _diff([0] * 9 + [3] * 7 + [1, 2])
    s = cross_splits(diff, _split())
    m, n_test = 7, 1  # the smaller pool; 7 // 6
    rng = np.random.default_rng(4)
    e, h = rng.permutation(np.arange(10, 19))[:m], rng.permutation(np.arange(19, 26))[:m]
    want = (list(zip(sorted(e[:m - n_test]), ["e-train"] * 6)) + [(e[m - 1], "e-test")]
            + list(zip(sorted(h[:m - n_test]), ["h-train"] * 6)) + [(h[m - 1], "h-test")])
    assert list(s.columns) == ["example", "subset"] and [str(t) for t in s.dtypes] == ["int64", "string"]
    assert list(zip(s["example"], s["subset"])) == want
    s3 = cross_splits(diff, _split(pool_size=4, split_ratio=3))
    assert s3["subset"].tolist() == ["e-train"] * 3 + ["e-test"] + ["h-train"] * 3 + ["h-test"]
    assert s3.index.tolist() == list(range(8))  # one table, not the four parts' indices
    narrow = cross_splits(diff.astype({"example": "int32"}), _split())  # whatever the input's ids
    assert [str(t) for t in narrow.dtypes] == ["int64", "string"] and narrow["example"].tolist() == s["example"].tolist()


def test_cross_splits_sizes_on_both_sides_of_each_bound():
    diff = _diff([0] * 9 + [3] * 7)
    assert len(cross_splits(diff, _split(pool_size=7))) == 14
    with pytest.raises(PoolsTooSmall) as err:
        cross_splits(diff, _split(pool_size=8))
    assert str(err.value) == ("difficulty.pool_size: 8 examples asked from each pool, but the consensus pools "
                              "have 9 easy and 7 hard")
    # 6 = 5 train + 1 test; 5 gives no test example
    assert cross_splits(diff, _split(pool_size=6), min_train=5)["subset"].value_counts().to_dict() == {
        "e-train": 5, "e-test": 1, "h-train": 5, "h-test": 1}
    # by default one training example is enough: 1:1 of 2 gives 1 train and 1 test
    assert cross_splits(diff, _split(pool_size=2, split_ratio=1))["subset"].tolist() == [
        "e-train", "e-test", "h-train", "h-test"]
    with pytest.raises(PoolsTooSmall, match="gives 5 train and 0 test"):
        cross_splits(diff, _split(pool_size=5))
    with pytest.raises(PoolsTooSmall) as err:
        cross_splits(diff, _split(pool_size=6), min_train=6)
    assert str(err.value) == ("difficulty.pools: the consensus pools have 9 easy and 7 hard examples; a 5:1 "
                              "split of 6 gives 5 train and 1 test, need ≥ 6 train (batch size) and ≥ 1 test")
