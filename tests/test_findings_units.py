"""Small exact tests of cglib.findings' pieces (common, cg, ws, mc, the scorecard module) on
hand-made rows: each boundary on both sides, each selection against one row per field that
must be left out, values worked out by hand. Fast: these run first for every mutant."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from cglib import findings, tables
from cglib.findings import cg, common, mc, ws
from cglib.findings.verdict import FAILS, HOLDS, INCONCLUSIVE, UNMEASURABLE

MAIN = "mlp-8"
PARAMS = {"model": {"name": "mlp", "hidden": [8]}}


def curve_rows(steps, values, **fields):
    """One curve: a row per (step, value), in the order given."""
    return pd.DataFrame([dict(fields, step=s, value=v) for s, v in zip(steps, values)])


def row(**kw):
    base = dict(run="r", dataset="synthetic", model=MAIN, optimizer="sgd", clip=None, noise=0.0, seed=0,
                subset="full", layer="all", null=-1, experiment="E1", split="train", metric="accuracy", step=0,
                epoch=0.0, value=0.0)
    base.update(kw)
    return base


def frame(rows):
    return pd.DataFrame(rows).reindex(columns=list(tables.METRIC_COLUMNS)).astype(tables.METRIC_COLUMNS)


# ---------------------------------------------------------------------------- common

def test_common_key_reads_clip_nan_as_0_and_types_each_field():
    assert common.key(dict(optimizer="sgd", clip=math.nan, noise="0.5", seed=2.0)) == ("sgd", 0, 0.5, 2)
    assert common.key(dict(optimizer="winsorized", clip=3.0, noise=1, seed=1)) == ("winsorized", 3, 1.0, 1)
    k = common.key(dict(optimizer="w", clip=2.0, noise=1, seed=1.0))
    assert type(k[1]) is int and type(k[2]) is float and type(k[3]) is int


def test_common_per_run_keys_each_run_by_its_first_row():
    rows = pd.DataFrame([dict(run="b", optimizer="sgd", clip=None, noise=.5, seed=1, v=1.0),
                         dict(run="a", optimizer="winsorized", clip=2.0, noise=0.0, seed=0, v=2.0),
                         dict(run="b", optimizer="sgd", clip=None, noise=.5, seed=1, v=3.0)])
    got = common.per_run(rows, lambda g: float(g["v"].sum()))
    assert got == {("winsorized", 2, 0.0, 0): 2.0, ("sgd", 0, 0.5, 1): 4.0}


def test_common_curve_sorts_by_step_and_drops_nan():
    x, y = common.curve(curve_rows([10, 0, 3, 5], [1.0, 0.0, math.nan, 0.5]))
    assert x.tolist() == [0.0, 5.0, 10.0] and y.tolist() == [0.0, 0.5, 1.0]
    assert x.dtype == float and y.dtype == float


def test_common_step_mean_is_the_trapezoid_area_over_the_length():
    # unsorted, one NaN dropped: steps 0, 1, 10 with values 0, 1, 1: area 0.5 + 9 = 9.5 over 10 steps
    assert common.step_mean(curve_rows([10, 0, 1, 4], [1.0, 0.0, 1.0, math.nan])) == pytest.approx(0.95)
    # steps 2, 4, 8: area (1+3)/2·2 + (3+2)/2·4 = 4 + 10 = 14 over 6 steps
    assert common.step_mean(curve_rows([2, 4, 8], [1.0, 3.0, 2.0])) == pytest.approx(14 / 6)
    assert common.step_mean(curve_rows([7], [0.3])) == 0.3  # one step: its value
    assert math.isnan(common.step_mean(curve_rows([1, 2], [math.nan, math.nan])))
    assert math.isnan(common.step_mean(curve_rows([], [], x=1).reindex(columns=["step", "value"])))


def test_common_early_mean_includes_the_step_until():
    g = curve_rows([0, 5, 10, 20], [0.0, 1.0, 0.0, 9.0])
    assert common.early_mean(g, 10) == pytest.approx((2.5 + 2.5) / 10)  # steps 0, 5, 10
    assert common.early_mean(g, 9) == pytest.approx(0.5)  # steps 0, 5: area 2.5 over 5
    assert common.early_mean(g, 20) == pytest.approx((2.5 + 2.5 + 45) / 20)


def test_common_last_value_is_the_value_at_the_last_step():
    assert common.last_value(curve_rows([10, 0, 5, 20], [0.3, 0.1, 0.2, math.nan])) == 0.3
    assert common.last_value(curve_rows([1, 2, 3], [0.1, 0.2, 0.7])) == 0.7
    assert math.isnan(common.last_value(curve_rows([1], [math.nan])))


def test_common_steps_to_interpolates_between_the_steps_around_the_crossing():
    g = curve_rows([0, 10, 30], [0.3, 0.4, 0.8])
    assert common.steps_to(g, 0.5) == pytest.approx(10 + 0.1 / 0.4 * 20)  # 15
    assert common.steps_to(g, 0.35) == pytest.approx(0 + 0.05 / 0.1 * 10)  # crossing at the first pair
    assert common.steps_to(g, 0.3) == 0.0 and common.steps_to(g, 0.1) == 0.0  # at or above from the start
    assert math.isnan(common.steps_to(g, 0.81))
    assert common.steps_to(g, 0.8) == pytest.approx(30.0)
    # reaching the level exactly and staying flat: the first step at it, not where it is passed
    flat = curve_rows([1, 3, 7, 9], [0.2, 0.5, 0.5, 1.0])
    assert common.steps_to(flat, 0.5) == pytest.approx(3.0)
    # several steps past the level: the first crossing
    assert common.steps_to(curve_rows([2, 4, 8, 16], [0.0, 0.6, 0.9, 1.0]), 0.3) == pytest.approx(3.0)


def test_common_first_step_at_is_the_first_measured_step_at_the_level():
    g = curve_rows([0, 10, 30, 100], [0.5, 0.99, 0.98, 1.0])
    assert common.first_step_at(g, 0.99) == 10 and type(common.first_step_at(g, 0.99)) is int
    assert common.first_step_at(g, 0.995) == 100
    assert common.first_step_at(g, 0.5) == 0
    assert common.first_step_at(g, 1.01) is None


def test_common_select_keeps_only_the_main_models_full_curve_rows():
    keep = [row(run="k1", experiment="E1", value=1.0), row(run="k3", experiment="E3", value=3.0),
            row(run="k4", experiment="E4", value=4.0)]
    leave = [row(run="x", experiment="E2"), row(run="x", subset="e-train"), row(run="x", split="test"),
             row(run="x", metric="loss"), row(run="x", layer="0"), row(run="x", null=0), row(run="x", null=1),
             row(run="x", null=-2)]
    m = frame(keep + leave)
    assert sorted(common.select(m, "train")["run"]) == ["k1", "k3", "k4"]
    assert common.select(m, "test")["run"].tolist() == ["x"]
    assert common.select(m, "train", "loss")["run"].tolist() == ["x"]
    assert common.select(m, "train", experiments=("E3",))["run"].tolist() == ["k3"]


def test_common_curves_are_cached_per_split_metric_and_function():
    m = frame([row(run="a", step=0, value=0.2), row(run="a", step=10, value=0.6),
               row(run="a", split="test", step=0, value=0.1), row(run="a", split="test", step=10, value=0.3)])
    ctx = dict(main=m, curves={})
    train = common.curves(ctx, "train")
    assert train == {("sgd", 0, 0.0, 0): pytest.approx(0.4)}
    assert common.curves(ctx, "train") is train
    assert common.curves(ctx, "test", fn=common.last_value) == {("sgd", 0, 0.0, 0): 0.3}
    assert common.curves(ctx, "train", fn=common.last_value) == {("sgd", 0, 0.0, 0): 0.6}
    assert set(ctx["curves"]) == {("train", "accuracy", common.step_mean), ("test", "accuracy", common.last_value),
                                  ("train", "accuracy", common.last_value)}


def test_common_by_seed_paired_and_noise_levels():
    d = {("sgd", 0, 0.5, 0): 1.0, ("sgd", 0, 0.5, 2): 3.0, ("sgd", 0, 0.25, 1): 9.0, ("sgd", 1, 0.5, 1): 7.0,
         ("m3", 0, 0.5, 1): 8.0, ("sgd", 0, 0.0, 4): 5.0}
    assert common.by_seed(d, "sgd", 0, 0.5) == {0: 1.0, 2: 3.0}
    assert common.by_seed(d, "sgd", 1, 0.5) == {1: 7.0}
    assert common.paired({0: 5.0, 1: 2.0, 3: 1.0}, {3: 4.0, 0: 1.0, 2: 8.0}, lambda a, b: a - b) == {0: 4.0, 3: -3.0}
    assert list(common.paired({2: 1.0, 1: 1.0}, {1: 0.0, 2: 0.0}, lambda a, b: a)) == [1, 2]
    assert common.noise_levels(d, "sgd") == [0.0, 0.25, 0.5]
    assert common.noise_levels(d, "sgd", 1) == [0.5]
    assert common.noise_levels(d, "m3") == [0.5] and common.noise_levels(d, "ra3") == []


def test_common_log_ratio_safe_is_nan_unless_both_are_positive_and_finite():
    assert common.log_ratio_safe(3.0, 2.0) == 1.5
    assert common.log_ratio_safe(0.5, 0.25) == 2.0 and common.log_ratio_safe(0.25, 0.5) == 0.5  # below 1: positive
    for a, b in ((0.0, 2.0), (2.0, 0.0), (-1.0, 2.0), (2.0, -1.0), (math.inf, 2.0), (2.0, math.inf),
                 (math.nan, 2.0), (2.0, math.nan), (-1.0, -2.0)):
        assert math.isnan(common.log_ratio_safe(a, b)), (a, b)


def test_common_eps_writes_the_level():
    assert common.eps(0.25) == "ε=0.25" and common.eps(1.0) == "ε=1"


# ---------------------------------------------------------------------------- the scorecard module

def test_context_leaves_out_runs_not_ok_and_keeps_the_main_model():
    m = frame([row(run="ok", value=1.0), row(run="bad", value=2.0), row(run="other", model="resnet18", value=3.0),
               row(run="named", model="mlp", value=4.0)])
    runs = pd.DataFrame([dict(run="ok", status="ok"), dict(run="bad", status="diverged"),
                         dict(run="other", status="ok"), dict(run="named", status="ok")])
    ctx = findings.context(m, runs, PARAMS)
    assert ctx["bad"] == ["bad"]
    assert sorted(ctx["real"]["run"]) == ["named", "ok", "other"]
    assert sorted(ctx["main"]["run"]) == ["named", "ok"]
    assert ctx["main_names"] == {MAIN, "mlp"} and ctx["curves"] == {} and ctx["runs"] is runs
    # the schema's default window when the params leave it out; the params' own otherwise
    schema = yaml.safe_load(open("schemas/params.schema.yaml"))
    assert ctx["window"] == schema["properties"]["findings"]["properties"]["share_window"]["default"] == 10
    assert findings.context(m, runs, dict(PARAMS, findings={"share_window": 3}))["window"] == 3
    # no status column: nothing left out
    ctx = findings.context(m, runs[["run"]], PARAMS)
    assert ctx["bad"] == [] and len(ctx["real"]) == 4
    ctx = findings.context(m, pd.DataFrame({"status": ["diverged"]}), PARAMS)  # no run column: nothing named
    assert ctx["bad"] == [] and len(ctx["real"]) == 4


def test_scorecard_names_the_runs_left_out_in_every_reason(monkeypatch):
    monkeypatch.setattr(findings, "CLAIMS", [
        ("a", "CG", "§1", "f", "claim a", "stat a", lambda ctx: [cg.test("g", {0: 1.0, 1: 1.1, 2: 0.9}, ">", 0.5)]),
        ("b", "MC", "§2", "f", "claim b", "stat b", lambda ctx: [])])
    m = frame([row(run="ok"), row(run="bad")])
    runs = pd.DataFrame([dict(run="ok", status="ok"), dict(run="bad", status="nan")])
    card = findings.scorecard(m, runs, PARAMS)
    assert list(card.columns) == ["id", "paper", "section", "figure", "claim", "statistic", "value", "low", "high", "n",
                                  "verdict", "reason", "detail"]  # findings.csv's columns
    assert card.iloc[0, :6].tolist() == ["a", "CG", "§1", "f", "claim a", "stat a"]
    assert card.iloc[1, :6].tolist() == ["b", "MC", "§2", "f", "claim b", "stat b"]
    lo, hi = stats.ttest_1samp([1.0, 1.1, 0.9], 0.0).confidence_interval(0.95)
    assert card.at[0, "low"] == pytest.approx(lo) and card.at[0, "high"] == pytest.approx(hi)
    assert card.at[0, "detail"] == f"g: 1 [{lo:.3g}, {hi:.3g}] n=3, claimed > 0.5 → holds"
    assert card.at[1, "detail"] == "no data for this claim in the study" and math.isnan(card.at[1, "low"])
    assert card["id"].tolist() == ["a", "b"] and card["verdict"].tolist() == [HOLDS, "not measured"]
    assert card["reason"].tolist() == ["runs left out (not ok): bad",
                                       "no data for this claim in the study; runs left out (not ok): bad"]
    assert card.at[0, "value"] == pytest.approx(1.0) and card.at[0, "n"] == 3
    assert card.dtypes["n"] == "int64" and card.dtypes["value"] == "float64"
    card = findings.scorecard(m, runs.assign(status="ok"), PARAMS)
    assert card["reason"].tolist() == ["", "no data for this claim in the study"]
    # no claim at all: the columns still have their types
    monkeypatch.setattr(findings, "CLAIMS", [])
    empty = findings.scorecard(m, runs, PARAMS)
    assert empty.empty and dict(empty.dtypes[["value", "low", "high", "n"]]) == {
        "value": "float64", "low": "float64", "high": "float64", "n": "int64"}


# ---------------------------------------------------------------------------- cg

def curve_of(run, values, steps=(0, 10, 100), optimizer="sgd", clip=None, noise=0.0, seed=0, **kw):
    """The rows of one curve of one run (E1 unless told), one per step."""
    return [row(run=run, optimizer=optimizer, clip=clip, noise=noise, seed=seed, step=s, epoch=s / 100,
                value=float(v), **kw) for s, v in zip(steps, values)]


def ctx_of(rows, runs=None, window=10):
    m = frame(rows)
    runs = runs if runs is not None else pd.DataFrame({"run": sorted(set(m["run"])), "status": "ok"})
    return dict(real=m, main=m, main_names={MAIN, "mlp"}, curves={}, runs=runs, window=window, bad=[])


def groups(tests):
    return [t["group"] for t in tests]


def test_cg_memorization_needs_a_noisy_level_and_judges_each_level_against_0_99():
    clean = ctx_of([r for s in range(3) for r in curve_of(f"s{s}", [.5, 1, 1], seed=s)])
    assert cg.memorization(clean) == []
    ends = {0: (.995, .996, .994), .5: (.985, .986, .984)}
    rows = [r for e, v in ends.items() for s in range(3) for r in curve_of(f"{e}-{s}", [.1, 1, v[s]], noise=e, seed=s)]
    rows += curve_of("w", [.1, .1, .1], optimizer="winsorized", clip=2.0, noise=.5, seed=0)  # not SGD
    tests = cg.memorization(ctx_of(rows))
    assert groups(tests) == ["ε=0", "ε=0.5"]
    assert tests[0]["values"] == [.995, .996, .994] and tests[1]["values"] == [.985, .986, .984]
    assert [t["outcome"] for t in tests] == [HOLDS, FAILS]
    assert tests[0]["side"] == ">" and tests[0]["threshold"] == 0.99 and not tests[0]["log"]


def test_cg_noise_hurts_test_pairs_consecutive_levels_by_seed():
    test_acc = {0.0: .8, .25: .7, .5: .695}
    rows = [r for e, a in test_acc.items() for s in range(3)
            for r in curve_of(f"{e}-{s}", [a + .01 * s] * 3, noise=e, seed=s, split="test")]
    tests = cg.noise_hurts_test(ctx_of(rows))
    assert groups(tests) == ["ε=0→0.25", "ε=0.25→0.5"]
    assert tests[0]["values"] == pytest.approx([.1] * 3) and tests[1]["values"] == pytest.approx([.005] * 3)
    assert [t["side"] for t in tests] == [">", ">"] and tests[0]["threshold"] == 0.01 and not tests[0]["log"]
    assert [t["outcome"] for t in tests] == [HOLDS, FAILS]


def test_cg_slower_with_noise_censors_a_run_that_never_reaches_the_level_at_its_length():
    steps = (0, 10, 20, 40, 80)
    rows = []
    for s in range(3):
        rows += curve_of(f"a{s}", [0, .5, .6, .7, .8], steps, noise=0.0, seed=s)  # at 0.5 at step 10
        rows += curve_of(f"b{s}", [0, .3, .5, .9, 1], steps, noise=.5, seed=s)  # step 20
        rows += curve_of(f"c{s}", [0, .1, .2, .3, .4], steps, noise=1.0, seed=s)  # never: censored at 80
    tests = cg.slower_with_noise(ctx_of(rows))
    assert groups(tests) == ["ε=0→0.5", "ε=0.5→1"]
    assert tests[0]["values"] == pytest.approx([2.0] * 3) and tests[1]["values"] == pytest.approx([4.0] * 3)
    assert tests[0]["log"] is True and tests[0]["threshold"] == 1.2 and tests[0]["side"] == ">"
    assert tests[0]["outcome"] == HOLDS


def test_cg_steps_ratio_and_level_are_a_fifth_more_steps_to_half_accuracy():
    steps = (0, 100, 1000)
    for later, outcome in ((119, FAILS), (121, HOLDS)):
        rows = []
        for s in range(3):
            rows += curve_of(f"a{s}", [0, .5, 1], steps, noise=0.0, seed=s)
            rows += curve_of(f"b{s}", [0, 1, 1], (0, 2 * later, 1000), noise=.5, seed=s)  # .5 at `later`
        t, = cg.slower_with_noise(ctx_of(rows))
        assert t["values"] == pytest.approx([later / 100] * 3) and t["outcome"] == outcome


def pri_cor(e, s, pri, cor, steps=(0, 10, 100), **kw):
    rows = curve_of(f"{e}-{s}", pri, steps, noise=e, seed=s, split="pristine", **kw)
    if cor is not None:
        rows += curve_of(f"{e}-{s}", cor, steps, noise=e, seed=s, split="corrupt", **kw)
    return rows


def test_cg_pristine_first_at_each_level_strictly_between_0_and_1():
    rows = []
    for s in range(3):
        rows += pri_cor(0.0, s, [1, 1, 1], None)
        rows += pri_cor(.5, s, [.5, .5, .5 + .01 * s], [.2, .2, .2])
        rows += pri_cor(1.0, s, [.1, .1, .1], [.1, .1, .1])
    tests = cg.pristine_first(ctx_of(rows))
    assert groups(tests) == ["ε=0.5"]
    assert tests[0]["values"] == pytest.approx([.3, .3 + .01 * .45, .3 + .02 * .45])
    assert tests[0]["threshold"] == 0.01 and tests[0]["side"] == ">" and tests[0]["outcome"] == HOLDS


def test_cg_pristine_slower_with_noise_reads_steps_up_to_10_below_random_labels():
    steps = (0, 5, 10, 11, 100)
    rows = []
    for s in range(3):
        rows += pri_cor(0.0, s, [0, 1, 1, 0, 0], None, steps)  # steps 0–10: area 0.5·5 + 5 = 7.5 → 0.75
        rows += pri_cor(.5, s, [0, 0, 1, 1, 1], [0] * 5, steps)  # area 2.5 → 0.25
        rows += pri_cor(1.0, s, [1, 1, 1, 1, 1], [0] * 5, steps)  # chance matches: left out
    tests = cg.pristine_slower_with_noise(ctx_of(rows))
    assert groups(tests) == ["ε=0→0.5"]
    assert tests[0]["values"] == pytest.approx([.5] * 3) and tests[0]["threshold"] == 0.01
    assert tests[0]["side"] == ">" and not tests[0]["log"]


def e2_run(run, noise, seed, i_by_null, steps, optimizer="sgd", subset="full"):
    """E2 i^p, i^c rows: i_by_null {null: [(i^p, i^c) per step]}."""
    rows = []
    for null, pairs in i_by_null.items():
        for s, (ip, ic) in zip(steps, pairs):
            for metric, v in (("i_pristine", ip), ("i_corrupt", ic)):
                rows.append(row(run=run, experiment="E2", optimizer=optimizer, subset=subset, noise=noise, seed=seed,
                                null=null, metric=metric, step=s, value=v))
    return rows


def test_cg_shares_early_compares_the_real_ratio_at_the_last_step_before_10_with_the_largest_nulls():
    steps = (0, 9, 10)  # step 10 is not among the first 10 steps
    rows = []
    for s in range(3):
        rows += e2_run(f"x{s}", .5, s, {-1: [(1, 1), (6, 2), (100, 1)], 0: [(1, 1), (2, 2), (1, 100)],
                                        1: [(1, 1), (3, 2), (1, 100)]}, steps)
        rows += e2_run(f"z{s}", 0.0, s, {-1: [(1, 1)] * 3, 0: [(1, 2)] * 3}, steps)  # ε = 0: left out
        rows += e2_run(f"o{s}", 1.0, s, {-1: [(1, 1)] * 3, 0: [(1, 2)] * 3}, steps)  # ε = 1: left out
        rows += e2_run(f"n{s}", .25, s, {-1: [(1, 1)] * 3}, steps)  # no null world: left out
        rows += e2_run(f"q{s}", .75, s, {0: [(1, 1)] * 3, 1: [(1, 2)] * 3}, steps)  # no real designation: left out
        only_c = e2_run(f"c{s}", .25, s, {-1: [(1, 1)] * 3, 0: [(1, 2)] * 3}, steps)
        rows += [r for r in only_c if r["metric"] == "i_corrupt"]  # no i^p: left out
        rows += [r for r in e2_run(f"p{s}", .25, s, {-1: [(1, 1)] * 3, 0: [(1, 2)] * 3}, steps)
                 if r["metric"] == "i_pristine"]  # no i^c: left out
        rows += e2_run(f"r{s}", .75, s, {-1: [(1, 1)] * 3, 0: [(1, 2)] * 3}, steps, optimizer="rm3")  # not SGD
        rows += e2_run(f"e{s}", .75, s, {-1: [(1, 1)] * 3, 0: [(1, 2)] * 3}, steps, subset="e-train")
    t, = cg.shares_early(ctx_of(rows))
    assert t["group"] == "ε=0.5" and t["values"] == pytest.approx([3 - 1.5] * 3)
    assert t["extra"] == {"real_ratio": pytest.approx(3.0), "max_null_ratio": pytest.approx(1.5)}
    assert t["threshold"] == 0.1 and t["side"] == ">"


def test_cg_shares_early_with_one_null_world():
    rows = []
    for s in range(3):
        rows += e2_run(f"a{s}", .25, s, {-1: [(2, 1)], 3: [(1, 1)]}, (4,))
    t, = cg.shares_early(ctx_of(rows))
    assert t["values"] == pytest.approx([1.0] * 3) and t["outcome"] == HOLDS


def windows(real, nulls=(), run="r", order=None):
    """A windowed shares table: f^p − f^c per window for the real designation (null −1) and each null."""
    rows = []
    for null, diffs in [(-1, real)] + list(enumerate(nulls)):
        for k, d in enumerate(diffs):
            rows.append(dict(run=run, null=null, window=k, step_first=10 * k, step_last=10 * k + 9,
                             f_pristine=(1 + d) / 2, f_corrupt=(1 - d) / 2))
    w = pd.DataFrame(rows)
    return w.iloc[::-1] if order == "reversed" else w


def test_cg_shares_crossover_reads_the_first_window_the_lowest_later_one_and_the_lowest_null():
    w = {(.5, s): windows([.3, -.2 - .01 * s, .1], [[.1, .2, .0], [.4, -.02, .3]], order="reversed")
         for s in range(3)}
    w[.25, 0] = windows([.5, -.5], [[0.0, 0.0]])
    w[.75, 0] = windows([.5, -.5], [[0.0, 0.0]])  # above 0.5: not this claim's
    w[0.0, 0] = windows([.5, -.5], [[0.0, 0.0]])
    w[.25, 1] = windows([.5], [[0.0]])  # one window: no crossing to see
    w[.25, 2] = windows([.5, -.5])  # no null world
    tests = cg.shares_crossover({"windowed": w})
    assert groups(tests) == ["ε=0.25 real f^p − f^c, first window", "ε=0.25 real, lowest later window",
                             "ε=0.25 nulls, lowest window", "ε=0.5 real f^p − f^c, first window",
                             "ε=0.5 real, lowest later window", "ε=0.5 nulls, lowest window"]
    assert [t["values"] for t in tests[:3]] == [pytest.approx([.5]), pytest.approx([-.5]), pytest.approx([0.0])]
    assert tests[3]["values"] == pytest.approx([.3] * 3)
    assert tests[4]["values"] == pytest.approx([-.2, -.21, -.22])
    assert tests[5]["values"] == pytest.approx([-.02] * 3)
    assert [(t["side"], t["threshold"]) for t in tests[3:]] == [(">", .05), ("<", -.05), (">", -.05)]
    assert [t["outcome"] for t in tests[3:]] == [HOLDS, HOLDS, HOLDS]


def test_cg_shares_crossover_counts_null_world_0_and_needs_a_later_real_window():
    w = {(.75, 0): windows([.3, -.3], [[.2, .1]]), (.5, 1): windows([.3], [[.2, .1]]),
         (.5, 0): windows([.3, -.3], [[.2, .1]])}  # the left-out ones first: each is skipped, not the end
    t = cg.shares_crossover({"windowed": w})
    assert groups(t) == ["ε=0.5 real f^p − f^c, first window", "ε=0.5 real, lowest later window",
                         "ε=0.5 nulls, lowest window"]
    assert [x["values"] for x in t] == [pytest.approx([.3]), pytest.approx([-.3]), pytest.approx([.1])]
    # the first window is not a later one, even when it is the lowest
    low_start = cg.shares_crossover({"windowed": {(.5, 0): windows([-.4, -.1], [[.2, .1]])}})
    assert [x["values"] for x in low_start] == [pytest.approx([-.4]), pytest.approx([-.1]), pytest.approx([.1])]


def test_cg_no_crossover_and_null_above_read_their_one_noise_level():
    w = {(.75, s): windows([-.1, -.2 - .01 * s, -.3], [[.9, .9, .9]], order="reversed") for s in range(3)}
    w.update({(.25, s): windows([-.9, -.9], [[.2, .3 + .01 * s], [.4, .25]]) for s in range(3)})
    w[.5, 0] = windows([.9, .9], [[-.9, -.9]])
    t, = cg.no_crossover_high_noise({"windowed": w})
    assert t["group"] == "ε=0.75 real, highest window" and t["values"] == pytest.approx([-.1] * 3)
    assert (t["side"], t["threshold"], t["outcome"]) == ("<", -.05, HOLDS)
    t, = cg.null_pristine_above({"windowed": w})
    assert t["group"] == "ε=0.25 nulls, lowest window" and t["values"] == pytest.approx([.2] * 3)
    assert (t["side"], t["threshold"], t["outcome"]) == (">", .05, HOLDS)
    only_real = {(.25, 0): windows([.2, .2])}
    assert cg.null_pristine_above({"windowed": only_real}) == []
    only_null0 = {(.25, 0): windows([.2, .2], [[.3, .4]])}
    assert cg.null_pristine_above({"windowed": only_null0})[0]["values"] == pytest.approx([.3])
    assert cg.no_crossover_high_noise({"windowed": {(.5, 0): windows([.2, .2])}}) == []


def test_cg_windowed_reads_sgd_e2_rows_of_the_main_model_once():
    rows = []
    for s, noise in ((0, .5), (1, .25)):
        rows += e2_run(f"a{s}", noise, s, {-1: [(2, 1), (3, 3)], 0: [(1, 1), (2, 2)]}, (0, 1))
        rows += e2_run(f"r{s}", noise, s, {-1: [(1, 1), (1, 9)]}, (0, 1), optimizer="rm3")
    runs = pd.DataFrame({"run": ["a0", "a1", "r0", "r1"], "status": "ok", "n_pristine": 1, "n_corrupt": 1})
    ctx = ctx_of(rows, runs, window=1)
    w = cg.windowed(ctx)
    assert sorted(w) == [(.25, 1), (.5, 0)]
    real = w[.5, 0][w[.5, 0]["null"] == -1].sort_values("window")
    assert real["f_pristine"].tolist() == pytest.approx([2 / 3, 1 / 3])  # per-step shares: (2, 1), then (1, 2)
    assert cg.windowed(ctx) is w


def test_cg_winsorized_steps_from_sgd_through_each_clip_at_each_noisy_level():
    rows = []
    for s in range(3):
        for opt, clip, over, cor in (("sgd", None, .3, .9), ("winsorized", 1.0, .2, .5), ("winsorized", 2.0, .15, .1)):
            for e in (0.0, .5):
                rows += curve_of(f"{opt}{clip}-{e}-{s}", [over + .01 * s] * 3, optimizer=opt, clip=clip, noise=e,
                                 seed=s, metric="overfit")
                rows += curve_of(f"{opt}{clip}-{e}-{s}", [cor] * 3, optimizer=opt, clip=clip, noise=e, seed=s,
                                 split="corrupt")
        rows += curve_of(f"w3-{s}", [1] * 3, optimizer="winsorized", clip=3.0, noise=.25, seed=s, metric="overfit")
    tests = cg.winsorized(ctx_of(rows))
    assert groups(tests) == ["ε=0.5 c=0→1 overfit", "ε=0.5 c=0→1 corrupt accuracy", "ε=0.5 c=1→2 overfit",
                             "ε=0.5 c=1→2 corrupt accuracy"]
    assert [t["values"] for t in tests] == [pytest.approx([-.1] * 3), pytest.approx([-.4] * 3),
                                            pytest.approx([-.05] * 3), pytest.approx([-.4] * 3)]
    assert all(t["side"] == "<" and t["threshold"] == -.01 for t in tests)


def test_cg_winsorized_proper_is_the_peak_over_the_pristine_fraction_for_c_above_1_at_noise():
    rows, runs = [], []
    for s in range(3):
        # more corrupt than pristine examples, and one example in all, are sizes like any other
        for clip, e, n_p, n_c in ((2.0, .5, 40, 60), (1.0, .5, 60, 40), (2.0, 0.0, 100, 0), (3.0, .25, 0, 0),
                                  (4.0, .5, 1, 0)):
            run = f"w{clip}-{e}-{s}"
            rows += curve_of(run, [.2, .7 + .01 * s, .6], optimizer="winsorized", clip=clip, noise=e, seed=s)
            runs.append(dict(run=run, status="ok", n_pristine=n_p, n_corrupt=n_c))
    rows += curve_of("nosize", [.9] * 3, optimizer="winsorized", clip=2.0, noise=.5, seed=5)
    tests = cg.winsorized_proper(ctx_of(rows, pd.DataFrame(runs)))
    assert groups(tests) == ["ε=0.5 c=2", "ε=0.25 c=3", "ε=0.5 c=4"]
    assert tests[1]["values"] == [] and tests[1]["outcome"] == "not measured"  # no sizes to compare with
    assert tests[0]["values"] == pytest.approx([.3, .31, .32]) and tests[0]["extra"] == {"proper": pytest.approx(.4)}
    assert tests[2]["values"] == pytest.approx([-.3, -.29, -.28]) and tests[2]["extra"] == {"proper": 1.0}
    assert (tests[0]["side"], tests[0]["threshold"]) == ("<", .01)
    no_sizes = cg.winsorized_proper(ctx_of(rows))
    assert [t["values"] for t in no_sizes] == [[], [], []]


# ---------------------------------------------------------------------------- ws

def test_ws_malignant_overfitting_benign_at_0_malignant_between_random_labels_left_out():
    rows = []
    for s in range(3):
        for e, c in ((0.0, [.1, .8, .795]), (.5, [.1, .6, .5 - .01 * s]), (1.0, [.1, .2, .1])):
            rows += curve_of(f"{e}-{s}", c, noise=e, seed=s, split="test")
        rows += curve_of(f"x{s}", [.1, .9, .1], optimizer="rm3", noise=.5, seed=s, split="test")
    tests = ws.malignant_overfitting(ctx_of(rows))
    assert groups(tests) == ["ε=0 benign: peak − final test accuracy", "ε=0.5 malignant: peak − final test accuracy"]
    assert tests[0]["values"] == pytest.approx([.005] * 3) and tests[1]["values"] == pytest.approx([.1, .11, .12])
    assert [(t["side"], t["threshold"], t["outcome"]) for t in tests] == [("<", .01, HOLDS), (">", .01, HOLDS)]


def gap_rows(opt, e, s, train, test_, cor=None, clip=None):
    rows = curve_of(f"{opt}-{e}-{s}", train, optimizer=opt, noise=e, seed=s, clip=clip)
    rows += curve_of(f"{opt}-{e}-{s}", test_, optimizer=opt, noise=e, seed=s, clip=clip, split="test")
    if cor is not None:
        rows += curve_of(f"{opt}-{e}-{s}", cor, optimizer=opt, noise=e, seed=s, clip=clip, split="corrupt")
    return rows


def test_ws_median_memorization_gap_and_corrupt_accuracy_against_sgd_last_step_and_whole_run():
    rows = []
    for s in range(3):
        # steps 0, 10, 100; whole-run mean of (a, b, c) = (5a + 50b + 45c) / 100
        rows += gap_rows("sgd", 0.0, s, [0, 1, 1], [0, .5, .5])
        rows += gap_rows("sgd", .5, s, [0, 1, 1], [0, .4, .4], [0, .2, 1])
        rows += gap_rows("rm3", 0.0, s, [0, .8, .9], [0, .5, .6])
        rows += gap_rows("rm3", .5, s, [0, .8, .8 + .01 * s], [0, .5, .5], [0, .1, .2])
        rows += gap_rows("m3", .5, s, [0, .6, .6], [0, .4, .4], [0, 0, .1])
        rows += gap_rows("m3", .25, s, [0, .6, .6], [0, .4, .4], [0, 0, .1])  # no SGD at 0.25: left out
    tests = ws.median_memorization(ctx_of(rows))
    assert groups(tests) == [
        "rm3 ε=0 gap − SGD's, last step", "rm3 ε=0.5 gap − SGD's, last step",
        "rm3 ε=0.5 corrupt accuracy − SGD's, last step", "m3 ε=0.5 gap − SGD's, last step",
        "m3 ε=0.5 corrupt accuracy − SGD's, last step",
        "rm3 ε=0 gap − SGD's, whole-run mean", "rm3 ε=0.5 gap − SGD's, whole-run mean",
        "rm3 ε=0.5 corrupt accuracy − SGD's, whole-run mean", "m3 ε=0.5 gap − SGD's, whole-run mean",
        "m3 ε=0.5 corrupt accuracy − SGD's, whole-run mean"]
    v = [t["values"] for t in tests]
    assert v[0] == pytest.approx([.3 - .5] * 3)
    assert v[1] == pytest.approx([.3 - .6, .31 - .6, .32 - .6]) and v[2] == pytest.approx([.2 - 1] * 3)
    assert v[3] == pytest.approx([.2 - .6] * 3) and v[4] == pytest.approx([.1 - 1] * 3)
    mean = lambda a, b, c: (5 * a + 50 * b + 45 * c) / 100  # noqa: E731
    assert v[5] == pytest.approx([mean(0, .3, .3) - mean(0, .5, .5)] * 3)
    assert v[7] == pytest.approx([mean(0, .1, .2) - mean(0, .2, 1)] * 3)
    assert all(t["side"] == "<" and t["threshold"] == -.01 for t in tests)


def test_ws_ra3_ablation_is_ra3s_distance_from_sgd_against_half_rm3s():
    rows = []
    for s in range(3):
        for e in (0.0, .5):
            rows += gap_rows("sgd", e, s, [.9] * 3, [.5] * 3, [.8] * 3)
            rows += gap_rows("ra3", e, s, [.85] * 3, [.5] * 3, [.9 + .01 * s] * 3)
            rows += gap_rows("rm3", e, s, [.5] * 3, [.4] * 3, [.2] * 3)
    tests = ws.ra3_ablation(ctx_of(rows))
    assert groups(tests) == ["ε=0 gap: |RA3−SGD| − ½|RM3−SGD|", "ε=0.5 gap: |RA3−SGD| − ½|RM3−SGD|",
                             "ε=0.5 corrupt accuracy: |RA3−SGD| − ½|RM3−SGD|"]
    assert tests[0]["values"] == pytest.approx([.05 - .5 * .3] * 3)  # gaps .4, .35, .1
    assert tests[2]["values"] == pytest.approx([.1 - .3, .11 - .3, .12 - .3])  # corrupt .8, .9+, .2
    assert tests[2]["extra"] == {"ra3_minus_sgd": pytest.approx(.11), "rm3_minus_sgd": pytest.approx(-.6)}
    assert tests[0]["extra"] == {"ra3_minus_sgd": pytest.approx(-.05), "rm3_minus_sgd": pytest.approx(-.3)}
    assert all(t["side"] == "<" and t["threshold"] == 0 for t in tests)
    only_ra3 = [r for r in rows if r["optimizer"] == "ra3"]
    assert ws.ra3_ablation(ctx_of(only_ra3)) == []
    # seeds that not all three variants have are left out (not a KeyError)
    extra = gap_rows("sgd", .5, 8, [.9] * 3, [.5] * 3, [.8] * 3) + gap_rows("ra3", .5, 9, [.9] * 3, [.5] * 3, [.8] * 3)
    assert [t["values"] for t in ws.ra3_ablation(ctx_of(rows + extra))] == [t["values"] for t in tests]


def test_ws_e6_runs_are_keyed_by_subset_and_seed_even_with_one_row():
    rows = e6_rows("e-train", 3, [0, .5, 1], [0] * 3, [0] * 3)
    one = [r for r in e6_rows("h-train", 4, [0, .5, 1], [0] * 3, [0] * 3)
           if r["split"] == "train" and r["step"] == 0 and r["metric"] == "accuracy" and r["layer"] == "all"]
    runs = ws._e6(ctx_of(rows + one))
    assert sorted(runs) == [("e-train", 3), ("h-train", 4)] and len(runs["h-train", 4]) == 1


def test_ws_m3_below_rm3_at_each_level_with_both():
    rows = []
    for s in range(3):
        for e in (0.0, .5):
            rows += gap_rows("m3", e, s, [.7] * 3, [.5] * 3)
            rows += gap_rows("rm3", e, s, [.75 + .01 * s] * 3, [.5] * 3)
        rows += gap_rows("m3", .25, s, [.7] * 3, [.5] * 3)  # no RM3 at 0.25
    tests = ws.m3_below_rm3(ctx_of(rows))
    assert groups(tests) == ["ε=0 gap M3 − RM3", "ε=0.5 gap M3 − RM3"]
    assert tests[0]["values"] == pytest.approx([-.05, -.06, -.07])
    assert (tests[0]["side"], tests[0]["threshold"], tests[0]["outcome"]) == ("<", -.01, HOLDS)


def e6_rows(subset, s, train, e_test, h_test, steps=(0, 10, 100)):
    rows = []
    for split, v in (("train", train), ("e-test", e_test), ("h-test", h_test)):
        rows += curve_of(f"{subset}-{s}", v, steps, seed=s, subset=subset, experiment="E6", split=split)
        rows += curve_of(f"{subset}-{s}", [9, 9, 9], steps, seed=s, subset=subset, experiment="E6", split=split,
                         metric="loss")
        rows += curve_of(f"{subset}-{s}", [0, 0, 0], steps, seed=s, subset=subset, experiment="E6", split=split,
                         layer="0")
    return rows


def test_ws_easy_faster_steps_and_gap_of_h_train_over_e_train():
    rows = []
    for s in range(3):
        rows += e6_rows("e-train", s, [0, .5, 1], [0, .5, .8], [0, .2, .3])  # 0.5 at step 10; gap 1 − .8
        rows += e6_rows("h-train", s, [0, .25, .75], [0, .1, .4], [0, .1, .5 - .01 * s])  # 0.5 at 55; gap .75 − h-test
    rows += e6_rows("h-train", 7, [0, .1, .2], [0, 0, 0], [0, 0, 0])  # no e-train of seed 7
    tests = ws.easy_faster(ctx_of(rows))
    assert groups(tests) == ["steps to 50 % training accuracy, h-train / e-train",
                             "generalization gap h-train − e-train (own pool), last step"]
    assert tests[0]["values"] == pytest.approx([5.5] * 3) and tests[0]["log"] is True
    assert (tests[0]["side"], tests[0]["threshold"]) == (">", 1.2)
    assert tests[1]["values"] == pytest.approx([.25 - .2, .26 - .2, .27 - .2])
    assert (tests[1]["side"], tests[1]["threshold"]) == (">", .01)
    # h-train never reaching 0.5: censored at its last step
    rows = e6_rows("e-train", 0, [0, .5, 1], [0, 0, 0], [0, 0, 0]) + e6_rows("h-train", 0, [0, .2, .4], [0] * 3, [0] * 3)
    assert ws.easy_faster(ctx_of(rows))[0]["values"] == pytest.approx([10.0])
    assert ws.easy_faster(ctx_of(e6_rows("e-train", 0, [0, .5, 1], [0] * 3, [0] * 3))) == []


def test_ws_cross_generalization_last_step_cells():
    rows = []
    for s in range(3):
        rows += e6_rows("e-train", s, [1] * 3, [.1, .9, .85], [.9, .1, .17 + .01 * s])
        rows += e6_rows("h-train", s, [1] * 3, [.9, .1, .44], [.1, .9, .2])
    rows += e6_rows("e-train", 5, [1] * 3, [.1, .9, .85], [.9, .1, math.nan])  # e→h missing at the end? no: nan dropped
    tests = ws.cross_generalization(ctx_of(rows))
    assert groups(tests) == ["e→e − e→h", "e→e − h→e"]
    assert tests[0]["values"] == pytest.approx([.68, .67, .66]) and tests[1]["values"] == pytest.approx([.41] * 3)
    assert all((t["side"], t["threshold"]) == (">", .05) for t in tests)
    assert ws.cross_generalization(ctx_of(e6_rows("e-train", 0, [1] * 3, [.1, .9, .85], [.9, .1, .17]))) == []


def e5_rows(seed, opt, step, acc, count=None, noise=0.0, **kw):
    out = []
    for k, a in enumerate(acc):
        out.append(row(run=f"{opt}-{seed}", optimizer=opt, seed=seed, noise=noise, experiment="E5",
                       split=f"difficulty={k}", step=step, value=a, **kw))
        if count is not None:
            out.append(row(run=f"{opt}-{seed}", optimizer=opt, seed=seed, noise=noise, experiment="E5",
                           split=f"difficulty={k}", metric="count", step=step, value=count[k], **kw))
    return out


def budget_study():
    rows = []
    sgd_at_10 = [.5, .99, 1.0]  # SGD first at 0.99 at step 10
    for seed in range(7):
        rows += curve_of(f"sgd-{seed}", sgd_at_10, seed=seed)
    # seed 0: levels 0–3 at step 10, level 3 without examples; noisy and other rows that must be left out
    rows += e5_rows(0, "sgd", 10, [1, 1, .99, .2], [5, 4, 3, 0]) + e5_rows(0, "rm3", 10, [1, .9, .5, .1], [5, 4, 3, 0])
    rows += e5_rows(0, "rm3", 100, [0, 0, 0, 0], [5, 4, 3, 0]) + e5_rows(0, "rm3", 10, [0, 0, 0, 0], noise=.5)
    rows += e5_rows(0, "rm3", 10, [0, 0, 0, 0], layer="0") + e5_rows(0, "m3", 10, [0, 0, 0, 0])
    rows += e5_rows(0, "rm3", 10, [0, 0, 0, 0], subset="e-train")
    # level 4 with accuracies but no count row: kept (only a count of 0 leaves a level out)
    rows += [r for r in e5_rows(0, "sgd", 10, [0, 0, 0, 0, .97]) + e5_rows(0, "rm3", 10, [0, 0, 0, 0, .4])
             if r["split"] == "difficulty=4"]
    rows += e5_rows(1, "sgd", 10, [1, 1], [5, 5]) + e5_rows(1, "rm3", 10, [.99, 1], [5, 5])  # RM3 at ceiling
    rows += e5_rows(2, "sgd", 10, [1, 1], [5, 0]) + e5_rows(2, "rm3", 10, [.5, .5], [5, 0])  # one level with examples
    rows += e5_rows(3, "rm3", 10, [.5, .5], [5, 5])  # no SGD E5 rows: left out
    rows += e5_rows(4, "sgd", 100, [1, 1], [5, 5]) + e5_rows(4, "rm3", 100, [.5, .5], [5, 5])  # nothing at step 10
    rows += e5_rows(5, "sgd", 10, [1, 1, 1], None) + e5_rows(5, "rm3", 10, [.98, .8, .6], None)  # no counts
    rows += e5_rows(6, "sgd", 10, [1, 1], [5, 5])  # no RM3 E5 rows: left out
    return ctx_of(rows)


def test_ws_matched_budget_tables_and_reasons():
    mb = ws.matched_budget(budget_study())
    assert sorted(mb) == [0, 1, 2, 4, 5]
    step, tab = mb[0]
    assert step == 10 and list(tab.index) == [0, 1, 2, 4] and list(tab.columns) == ["sgd", "rm3"]
    assert tab["rm3"].tolist() == [1, .9, .5, .4] and tab["sgd"].tolist() == [1, 1, .99, .97]
    assert mb[1] == ("RM3 at ceiling: ≥ 0.99 training accuracy at every difficulty level at step 10, where SGD first "
                     "reaches 0.99 (seed 1: lowest 0.990)")
    assert mb[2] == "fewer than 2 difficulty levels with examples at step 10 (seed 2)"
    assert mb[4] == "no E5 accuracy of both SGD and RM3 at step 10, where SGD first reaches 0.99 (seed 4)"
    assert mb[5][1]["rm3"].tolist() == [.98, .8, .6]


def test_ws_difficulty_accuracy_and_rm3_hardest_on_the_matched_tables():
    ctx = budget_study()
    ctx["matched"] = {s: (10 * (s + 1), pd.DataFrame({"sgd": [1, 1, .99 - .01 * s], "rm3": [.95, .9, .5 - .01 * s]},
                                                      index=pd.Index([0, 1, 2], name="difficulty")))
                      for s in range(3)}
    rho, span = ws.difficulty_accuracy(ctx)
    assert rho["values"] == pytest.approx([-1.0] * 3) and (rho["side"], rho["threshold"]) == ("<", -.5)
    assert span["values"] == pytest.approx([-.45, -.46, -.47]) and (span["side"], span["threshold"]) == ("<", -.01)
    assert rho["extra"] == {"matched_step": 20.0} and rho["reason"] == ""
    hard, spread = ws.rm3_hardest(ctx)
    assert hard["values"] == pytest.approx([.49] * 3) and (hard["side"], hard["threshold"]) == (">", .01)
    assert spread["values"] == pytest.approx([.44] * 3) and (spread["side"], spread["threshold"]) == (">", .01)
    # a seed whose precondition failed: every test not measurable, with its reason
    ctx["matched"][3] = "SGD never reaches 0.99"
    ctx["matched"][4] = "RM3 at ceiling"
    for t, want in zip(ws.rm3_hardest(ctx), (.49, .44)):
        assert t["outcome"] == UNMEASURABLE and t["reason"] == "SGD never reaches 0.99; RM3 at ceiling"
        assert t["values"] == pytest.approx([want] * 3)
    # two levels: a rank correlation of −1
    ctx["matched"] = {s: (10, pd.DataFrame({"sgd": [1, 1], "rm3": [.9, .5]},
                                                index=pd.Index([0, 1], name="difficulty"))) for s in range(3)}
    assert ws.difficulty_accuracy(ctx)[0]["values"] == pytest.approx([-1.0] * 3)
    # flat RM3 accuracy has no rank correlation
    ctx["matched"] = {s: (10, pd.DataFrame({"sgd": [1, 1], "rm3": [.7, .7]}, index=[0, 1])) for s in range(3)}
    assert all(math.isnan(v) for v in ws.difficulty_accuracy(ctx)[0]["values"])
    ctx["matched"] = {}
    assert ws.rm3_hardest(ctx) == [] and ws.difficulty_accuracy(ctx) == []


# ---------------------------------------------------------------------------- mc

E7_STEPS = (0, 50, 100, 200, 400)  # epochs 0, 0.5, 1, 2, 4


def e7_rows(model, noise, seed, values, split="train", layer="all", steps=E7_STEPS, final=1.0, **kw):
    """One E7 m-coherence curve (values: m-coherence) and, with final, the run's E1 training accuracy."""
    run = f"{model}-{noise}-{seed}"
    rows = curve_of(run, values, steps, model=model, noise=noise, seed=seed, experiment="E7", split=split,
                    layer=layer, metric="m_coherence", **kw)
    if final is not None:
        rows += curve_of(run, [.1, final], (0, 400), model=model, noise=noise, seed=seed)
    return rows


def test_mc_excess_is_above_the_orthogonal_limit_floored_at_0_01():
    assert mc.excess([1.0, 1.005, 1.02, 3.0, 0.5]).tolist() == pytest.approx([.01, .01, .02, 2.0, .01])
    assert mc.excess(11.0) == pytest.approx(10.0)


def test_mc_e7_rows_and_the_deciding_model():
    rows = e7_rows(MAIN, 0.0, 0, [2] * 5) + e7_rows(MAIN, 0.0, 0, [3] * 5, layer="0", final=None)
    rows += e7_rows(MAIN, 0.0, 0, [4] * 5, split="test", final=None)
    leave = [dict(experiment="E1"), dict(metric="alpha"), dict(optimizer="rm3"), dict(subset="e-train"), dict(null=0)]
    for k, kw in enumerate(leave):
        rows += curve_of(f"x{k}", [9] * 5, E7_STEPS, **dict(dict(experiment="E7", metric="m_coherence"), **kw))
    m = frame(rows)
    assert set(mc._e7(m)["value"]) == {2.0} and len(mc._e7(m)) == 5
    assert set(mc._e7(m, "test")["value"]) == {4.0}
    assert set(mc._e7(m, layers=True)["value"]) == {3.0}
    assert mc.is_bn("resnet18") and mc.is_bn("cnn-8x16") and mc.is_bn("cnn-8x16-flat")
    assert not mc.is_bn(MAIN) and not mc.is_bn("mlp-8x8")
    ctx = ctx_of(rows)
    assert mc.decider(ctx) == MAIN
    assert mc.decider(ctx_of(rows + e7_rows("resnet18", 0.0, 0, [2] * 5) + e7_rows("cnn-8", 0.0, 0, [2] * 5))) == "cnn-8"
    assert mc.decider(ctx_of(rows + e7_rows("other", 0.0, 0, [2] * 5))) == MAIN  # neither BatchNorm nor main
    assert mc.decider(ctx_of(e7_rows("other", 0.0, 0, [2] * 5))) is None
    assert mc.real_vs_random(ctx_of(e7_rows("other", 0.0, 0, [2] * 5))) == []


def test_mc_runs_collect_each_runs_curves_and_final_training_accuracy():
    rows = e7_rows(MAIN, .5, 1, [2] * 5, final=.7) + e7_rows(MAIN, .5, 1, [3] * 5, layer="0", final=None)
    rows += e7_rows(MAIN, 0.0, 2, [2] * 5, final=None)  # no training accuracy: nan
    rows += e7_rows(MAIN, 1.0, 0, [4] * 5, split="test")  # test sample only: left out
    rows += e7_rows(MAIN, .25, 3, [5], steps=(7,), final=.9)  # a curve of one step
    rows += e7_rows("other", .5, 1, [2] * 5)  # another model's
    rows += curve_of(f"{MAIN}-0.5-1", [.1, .2], (0, 400), noise=.5, seed=1, experiment="E2")  # not a curve experiment
    model, runs = mc._runs(ctx_of(rows))
    assert model == MAIN and sorted(runs) == [(0.0, 2), (.25, 3), (.5, 1)]
    assert runs[.25, 3]["train"]["value"].tolist() == [5.0] and runs[.25, 3]["final_train"] == .9
    assert runs[.5, 1]["final_train"] == .7 and math.isnan(runs[0.0, 2]["final_train"])
    assert sorted(runs[.5, 1]) == ["final_train", "layers", "train"]
    assert runs[.5, 1]["layers"]["value"].tolist() == [3.0] * 5
    assert mc._unmet(runs, [(.5, 1), (0.0, 2)]) == (
        "not memorised: ε=0.5 seed 1 ends at 0.700 training accuracy, ε=0 seed 2 ends at nan training accuracy "
        "(< 0.8; MC §5's fall comes with memorisation)")
    runs[.5, 1]["final_train"] = .8
    assert mc._unmet(runs, [(.5, 1)]) is None
    runs[.5, 1]["final_train"] = .799
    assert mc._unmet(runs, [(.5, 1)]).startswith("not memorised: ε=0.5 seed 1 ends at 0.799")


def test_mc_peak_is_the_first_highest_value_and_its_step():
    assert mc._peak(curve_rows([0, 10, 20, 30], [1.0, 5.0, 2.0, 5.0])) == (5.0, 10)
    assert mc._peak(curve_rows([30, 20, 0], [1.0, 3.0, 2.0])) == (3.0, 20)


def test_mc_real_vs_random_and_real_peak_first():
    rows = []
    for s in range(3):
        rows += e7_rows(MAIN, 0.0, s, [1.5, 103 + 10 * s, 51, 11, 3])  # peak excess 102 + 10 s at step 50
        rows += e7_rows(MAIN, 1.0, s, [1.5, 2, 3, 6, 2], final=.8 + .1 * (s == 2))  # peak excess 5 at step 200
        rows += e7_rows(MAIN, .5, s, [1, 1000, 1, 1, 1])
    rows += e7_rows(MAIN, 0.0, 7, [1, 1000, 1, 1, 1])  # no random-label run of seed 7
    rows += e7_rows(MAIN, 1.0, 9, [1, 1000, 1, 1, 1]) + e7_rows(MAIN, .5, 9, [1, 2, 1, 1, 1])  # no real-label run
    ctx = ctx_of(rows)
    t, = mc.real_vs_random(ctx)
    assert t["group"] == f"{MAIN}: peak (m-coherence − 1), ε=0 / ε=1"
    assert t["values"] == pytest.approx([20.4, 22.4, 24.4]) and t["log"] is True  # a ratio, not a floor
    assert (t["side"], t["threshold"], t["outcome"], t["reason"]) == (">", 10, HOLDS, "")
    t, = mc.real_peak_first(ctx)
    assert t["group"] == f"{MAIN}: peak step ε=1 / ε=0 (steps + 1)"
    assert t["values"] == pytest.approx([201 / 51] * 3) and t["log"] is True
    assert (t["side"], t["threshold"], t["outcome"]) == (">", 2, HOLDS)
    low = ctx_of([r for r in rows if not (r["noise"] == 1.0 and r["experiment"] == "E1" and r["seed"] == 1)])
    assert mc.real_vs_random(low)[0]["outcome"] == UNMEASURABLE
    assert mc.real_peak_first(low)[0]["reason"].startswith("not memorised: ε=1 seed 1 ends at nan")
    assert mc.real_vs_random(ctx_of([r for r in rows if r["noise"] != 1.0])) == []
    assert mc.real_peak_first(ctx_of([r for r in rows if r["noise"] != 1.0])) == []


def test_mc_rise_and_fall_peak_over_first_and_last():
    rows = []
    for s in range(3):
        rows += e7_rows(MAIN, 0.0, s, [2, 21, 11, 6, 3 + s])  # excess 1, 20, 10, 5, 2 + s
        rows += e7_rows(MAIN, .5, s, [1.005, 5, 3, 2, 2], final=.5)  # starts at the limit: floored
    rows += e7_rows(MAIN, .25, 0, [2, 3], steps=(0, 10))  # two points: no rise and fall to read
    rows += e7_rows(MAIN, .25, 1, [2, 5, 3], steps=(0, 10, 20))  # three points: excess 1, 4, 2
    tests = mc.rise_and_fall(ctx_of(rows))
    assert groups(tests) == [f"{MAIN}: ε=0 peak / first (m-coherence − 1)", f"{MAIN}: ε=0 peak / last (m-coherence − 1)",
                             f"{MAIN}: ε=0.25 peak / first (m-coherence − 1)",
                             f"{MAIN}: ε=0.25 peak / last (m-coherence − 1)",
                             f"{MAIN}: ε=0.5 peak / first (m-coherence − 1)", f"{MAIN}: ε=0.5 peak / last (m-coherence − 1)"]
    v = [t["values"] for t in tests]
    assert v[0] == pytest.approx([20] * 3) and v[1] == pytest.approx([10, 20 / 3, 5])
    assert v[2] == pytest.approx([4]) and v[3] == pytest.approx([2]) and tests[2]["seeds"] == [1]
    assert v[4] == pytest.approx([400] * 3) and v[5] == pytest.approx([4] * 3)
    assert all((t["side"], t["threshold"], t["log"]) == (">", 2, True) for t in tests)
    assert tests[0]["reason"] == "" and tests[4]["outcome"] == UNMEASURABLE


def test_mc_random_start_median_over_the_first_3_epochs():
    steps = (0, 100, 200, 300, 301, 1000)
    rows = []
    for s in range(3):
        rows += e7_rows(MAIN, 1.0, s, [2, 4, 6 + s, 8, 1000, 1000], steps=steps)  # epochs ≤ 3: median (4 + 6 + s) / 2
        rows += e7_rows(MAIN, 0.0, s, [100] * 6, steps=steps)
    lo, hi = mc.random_start(ctx_of(rows))
    assert lo["group"] == f"{MAIN}: ε=1 median m-coherence, epochs ≤ 3, above"
    assert hi["group"] == f"{MAIN}: ε=1 median m-coherence, epochs ≤ 3, below"
    assert lo["values"] == pytest.approx([5, 5.5, 6]) and hi["values"] == lo["values"]
    assert (lo["side"], lo["threshold"], lo["log"]) == (">", 1, True)
    assert (hi["side"], hi["threshold"], hi["log"]) == ("<", 10, True)
    assert mc.random_start(ctx_of([r for r in rows if r["noise"] == 0.0])) == []


def test_mc_rise_slower_with_noise_highest_excess_in_the_first_epoch():
    rows = []
    for s in range(3):
        rows += e7_rows(MAIN, 0.0, s, [1, 41 + s, 61, 1000, 1000])  # epochs ≤ 1: highest excess 60
        rows += e7_rows(MAIN, .5, s, [1, 21, 11, 1000, 1000])  # 20
        rows += e7_rows(MAIN, 1.0, s, [1.001, 1.002, 1.003, 1000, 1000])  # at the limit: 0.01
    rows += e7_rows(MAIN, .25, 5, [1, 2, 2, 2, 2])  # a level with no seed shared with the next one
    tests = mc.rise_slower_with_noise(ctx_of(rows))
    assert groups(tests) == [f"{MAIN}: ε={a}→{b}: first-epoch rise of (m-coherence − 1), lower / higher noise"
                             for a, b in (("0", "0.25"), ("0.25", "0.5"), ("0.5", "1"))]
    assert [t["values"] for t in tests] == [[], [], pytest.approx([2000] * 3)]
    two = mc.rise_slower_with_noise(ctx_of([r for r in rows if r["noise"] in (0.0, .5)]))
    assert two[0]["values"] == pytest.approx([3] * 3) and (two[0]["side"], two[0]["threshold"]) == (">", 2)
    assert two[0]["log"] is True


def test_mc_layers_follow_lowest_rank_correlation_over_the_layers():
    rows = []
    for s in range(3):
        rows += e7_rows(MAIN, 0.0, s, [1, 3, 5, 4, 2])
        rows += e7_rows(MAIN, 0.0, s, [1, 30, 50, 40, 20], layer="0", final=None)  # ρ = 1
        rows += e7_rows(MAIN, 0.0, s, [1, 5, 3, 4, 2], layer="1", final=None)  # ranks 1 4 2 3... ρ = 0.6
        rows += e7_rows(MAIN, .5, s, [1, 3, 5, 4, 2])
        rows += e7_rows(MAIN, .5, s, [1, 2], layer="0", steps=(0, 50), final=None)  # two common steps: no ρ
    rows += e7_rows(MAIN, 0.0, 5, [1, 3, 5, 4, 2])  # no layer rows: left out
    rows += e7_rows(MAIN, 1.0, 0, [1, 3, 5, 4, 2]) + e7_rows(MAIN, 1.0, 0, [2, 2, 2], layer="0", steps=(0, 50, 100),
                                                            final=None)  # constant layer: ρ is nan
    rows += e7_rows(MAIN, .25, 0, [1, 3, 5, 4, 2]) + e7_rows(MAIN, .25, 0, [1, 3, 5], layer="0", steps=(0, 50, 100),
                                                            final=None)  # exactly 3 common steps: ρ = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the constant layer's ρ
        tests = mc.layers_follow(ctx_of(rows))
    rho = stats_spearman([1, 3, 5, 4, 2], [1, 5, 3, 4, 2])
    assert rho == pytest.approx(.6)
    assert groups(tests) == [f"{MAIN}: ε={e} lowest Spearman ρ(layer, whole model) over the steps" for e in ("0", "0.25", "1")]
    assert tests[0]["values"] == pytest.approx([rho] * 3) and tests[1]["values"] == pytest.approx([1.0])
    assert len(tests[2]["values"]) == 1 and math.isnan(tests[2]["values"][0]) and tests[2]["n"] == 0
    assert (tests[0]["side"], tests[0]["threshold"], tests[0]["log"]) == (">", .5, False)


def stats_spearman(a, b):
    from scipy import stats
    return float(stats.spearmanr(a, b).statistic)


def test_mc_test_vs_train_geometric_mean_of_the_ratio_in_each_half_after_epoch_1():
    steps = (0, 100, 101, 200, 300, 301)  # after epoch 1: 101–301, mid 201: 101, 200 early; 300, 301 later
    rows = []
    for s in range(3):
        rows += e7_rows(MAIN, 0.0, s, [11] * 6, steps=steps)  # excess 10
        rows += e7_rows(MAIN, 0.0, s, [1000, 1000, 2, 5, 41, 161 + s], split="test", steps=steps, final=None)
        rows += e7_rows(MAIN, .5, s, [11] * 6, steps=steps)
        rows += e7_rows(MAIN, .5, s, [1] * 6, split="test", steps=steps, final=None)  # real labels only
    rows += e7_rows(MAIN, 0.0, 5, [11] * 6, steps=steps)  # no test sample
    rows += e7_rows(MAIN, 0.0, 6, [11, 11, 11], steps=(0, 100, 101)) + e7_rows(
        MAIN, 0.0, 6, [2, 2, 2], split="test", steps=(0, 100, 101), final=None)  # one step after epoch 1
    rows += e7_rows(MAIN, 0.0, 8, [11] * 4, steps=(0, 100, 150, 250)) + e7_rows(
        MAIN, 0.0, 8, [1000, 1000, 2, 41], split="test", steps=(0, 100, 150, 250), final=None)  # two: one a half
    rows += e7_rows(MAIN, 0.0, 10, [11] * 5, steps=(0, 100, 150, 200, 250)) + e7_rows(
        MAIN, 0.0, 10, [1000, 1000, 2, 11, 161], split="test", steps=(0, 100, 150, 200, 250),
        final=None)  # mid 200: step 200 is in the early half
    early, late = mc.test_vs_train(ctx_of(rows))
    assert early["group"] == f"{MAIN}: ε=0 test / train (m-coherence − 1), early half after epoch 1"
    assert late["group"] == f"{MAIN}: ε=0 test / train (m-coherence − 1), later half"
    assert early["seeds"] == [0, 1, 2, 8, 10]
    assert early["values"] == pytest.approx([math.sqrt(.1 * .4)] * 3 + [.1, math.sqrt(.1 * 1)])
    assert late["values"] == pytest.approx([math.sqrt(4 * (16 + .1 * s)) for s in range(3)] + [4, 16])
    assert (early["side"], early["threshold"], early["log"]) == ("<", .5, True)
    assert (late["side"], late["threshold"], late["log"]) == (">", 2, True)
    assert mc.test_vs_train(ctx_of([r for r in rows if r["split"] != "test"])) == []


def test_scorecard_statistics_state_the_papers_range():
    stat = {c[0]: c[5] for c in findings.CLAIMS}
    assert "over the evaluation steps of the first 3 epochs (log10); holds if within (1, 10)" in stat["mc-random-start"]
