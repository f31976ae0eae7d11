"""The verdict model (cglib.findings.verdict): scipy's t interval over seeds, the strict margins,
MIN_SEEDS, ratios on log10, and how a claim's tests combine into its verdict."""
import math

import numpy as np
import pytest
from scipy import stats

from cglib.findings import verdict as v
from cglib.findings.verdict import FAILS, HOLDS, INCONCLUSIVE, UNMEASURABLE, UNMEASURED


def scipy_interval(values):
    x = np.asarray(values, float)
    return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))


@pytest.mark.parametrize("values", [[0.1, 0.3], [1.0, 2.0, 4.0], [0.5, 0.51, 0.49, 0.7, 0.2], [-3.0, 7.0, 1.5],
                                    list(np.linspace(0, 1, 12))])
def test_interval_is_scipys_t_interval_with_the_standard_error(values):
    mean, low, high, n = v.interval(values)
    assert n == len(values) and mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx(scipy_interval(values), rel=1e-12)
    assert low < mean < high


def test_interval_edge_cases():
    assert v.interval([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3, 3))  # identical: zero width, not nan
    mean, low, high, n = v.interval([0.2])
    assert (mean, n) == (0.2, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = v.interval([])
    assert n == 0 and all(math.isnan(x) for x in (mean, low, high))
    # non-finite values are not seeds
    assert v.interval([0.1, math.nan, 0.3, math.inf, None]) == pytest.approx(v.interval([0.1, 0.3]))
    # 90 %: narrower than 95 %
    assert v.interval([1.0, 2.0, 4.0], 0.9)[2] < v.interval([1.0, 2.0, 4.0])[2]


def test_holds_needs_the_whole_interval_strictly_past_the_margin():
    vals = {0: 0.10, 1: 0.12, 2: 0.14}
    _, low, high, _ = v.interval(vals.values())
    assert v.test("g", vals, ">", low - 1e-9)["outcome"] == HOLDS
    at = v.test("g", vals, ">", low)  # low bound exactly at the margin: not holds
    assert at["outcome"] == INCONCLUSIVE and "reaches across" in at["reason"]
    assert v.test("g", vals, "<", high + 1e-9)["outcome"] == HOLDS
    assert v.test("g", vals, "<", high)["outcome"] == INCONCLUSIVE
    # the other side, likewise strict
    assert v.test("g", vals, "<", low - 1e-9)["outcome"] == FAILS
    assert v.test("g", vals, "<", low)["outcome"] == INCONCLUSIVE
    assert v.test("g", vals, ">", high + 1e-9)["outcome"] == FAILS
    assert v.test("g", vals, ">", high)["outcome"] == INCONCLUSIVE
    # identical values exactly at the margin: a zero-width interval touching it
    assert v.test("g", {0: 0.5, 1: 0.5, 2: 0.5}, ">", 0.5)["outcome"] == INCONCLUSIVE
    assert v.test("g", {0: 0.5, 1: 0.5, 2: 0.5}, ">", 0.4)["outcome"] == HOLDS


def test_the_side_decides_which_way_holds():
    vals = {0: 0.10, 1: 0.12, 2: 0.14}
    up, down = v.test("g", vals, ">", 0.05), v.test("g", vals, "<", 0.05)
    assert (up["outcome"], down["outcome"]) == (HOLDS, FAILS)
    assert down["reason"] == "the interval lies wholly above 0.05" and up["reason"] == ""
    assert v.test("g", vals, ">", 0.5)["reason"] == "the interval lies wholly below 0.5"
    with pytest.raises(ValueError, match="side"):
        v.test("g", vals, ">=", 0.05)


def test_fewer_than_three_seeds_are_inconclusive_however_clean():
    two = v.test("g", {0: 0.500, 1: 0.501}, ">", 0.01)
    assert two["outcome"] == INCONCLUSIVE and two["reason"] == "2 seeds, fewer than 3" and two["n"] == 2
    assert two["low"] > 0.01  # the interval alone would say holds
    one = v.test("g", {0: 0.5}, ">", 0.01)
    assert one["outcome"] == INCONCLUSIVE and one["reason"] == "1 seed, fewer than 3" and math.isnan(one["low"])
    three = v.test("g", {0: 0.500, 1: 0.501, 2: 0.502}, ">", 0.01)
    assert three["outcome"] == HOLDS and three["n"] == 3 == v.MIN_SEEDS
    # a nan seed does not count
    assert v.test("g", {0: 0.500, 1: 0.501, 2: math.nan}, ">", 0.01)["outcome"] == INCONCLUSIVE


def test_one_seed_on_the_wrong_side_is_not_holds():
    t = v.test("g", {0: 0.2, 1: 0.2, 2: -0.1}, ">", 0.01)
    assert t["outcome"] == INCONCLUSIVE and t["mean"] > 0.01


def test_log_judges_ratios_on_log10_and_reports_them_back_on_the_ratio_scale():
    ratios = {0: 10.0, 1: 100.0, 2: 1000.0}
    t = v.test("g", ratios, ">", 5, log=True)
    lo, hi = scipy_interval([1.0, 2.0, 3.0])
    assert t["mean"] == pytest.approx(100.0)  # geometric mean, not 370
    assert (t["low"], t["high"]) == pytest.approx((10 ** lo, 10 ** hi))
    assert t["low"] * t["high"] == pytest.approx(t["mean"] ** 2)  # symmetric on the log scale
    assert t["outcome"] == INCONCLUSIVE  # 10^(2 − 2.48) < 5
    assert t["values"] == [10.0, 100.0, 1000.0] and t["threshold"] == 5 and t["log"]
    assert v.test("g", {0: 20, 1: 25, 2: 32}, ">", 10, log=True)["outcome"] == HOLDS
    assert v.test("g", {0: 0.05, 1: 0.06, 2: 0.07}, "<", 0.5, log=True)["outcome"] == HOLDS
    # ratios 2, 4, 8: on the ratio scale the interval reaches below 0 (no ratio does), on log10 it is
    # 0.71…8^1.5
    assert v.test("g", {0: 2, 1: 4, 2: 8}, ">", 0.5)["outcome"] == INCONCLUSIVE
    t = v.test("g", {0: 2, 1: 4, 2: 8}, ">", 0.5, log=True)
    assert t["outcome"] == HOLDS and t["mean"] == pytest.approx(4) and 0.5 < t["low"] < 1
    # ratios that are zero or negative have no log: dropped
    t = v.test("g", {0: 20.0, 1: 0.0, 2: -3.0, 3: 40.0}, ">", 10, log=True)
    assert t["n"] == 2 and t["outcome"] == INCONCLUSIVE and t["mean"] == pytest.approx(math.sqrt(800))


def test_unmet_and_no_data():
    good = {0: 0.5, 1: 0.6, 2: 0.7}
    t = v.test("g", good, ">", 0.01, unmet="SGD never reaches 0.99")
    assert t["outcome"] == UNMEASURABLE and t["reason"] == "SGD never reaches 0.99"
    assert v.test("g", {}, ">", 0.01, unmet="why")["outcome"] == UNMEASURABLE
    t = v.test("g", {0: math.nan}, ">", 0.01)
    assert t["outcome"] == UNMEASURED and t["n"] == 0
    assert v.test("g", {}, ">", 0.01)["outcome"] == UNMEASURED


def test_extra_numbers_are_means_over_the_tests_seeds():
    t = v.test("g", {0: 1.0, 1: 2.0, 2: 3.0}, ">", 0, step={0: 10, 1: 30, 2: 50, 7: 1000}, none={9: 1.0})
    assert t["extra"]["step"] == 30 and math.isnan(t["extra"]["none"]) and t["seeds"] == [0, 1, 2]
    assert "step 30" in v.describe(t)


def _t(outcome, group="x", mean=0.0, low=-1.0, high=1.0, n=3, side=">", threshold=0.0, log=False):
    return dict(group=group, mean=mean, low=low, high=high, n=n, side=side, threshold=threshold, log=log,
                outcome=outcome, reason=f"{outcome} reason", seeds=[0, 1, 2], values=[], extra={})


@pytest.mark.parametrize("outcomes,expected", [
    ((HOLDS, HOLDS), HOLDS),
    ((HOLDS, INCONCLUSIVE), INCONCLUSIVE),
    ((INCONCLUSIVE, UNMEASURABLE, HOLDS), UNMEASURABLE),
    ((UNMEASURABLE, FAILS, INCONCLUSIVE), FAILS),
    ((HOLDS, FAILS), FAILS),
    ((UNMEASURED, HOLDS), HOLDS),  # a test without data does not count
    ((UNMEASURED, INCONCLUSIVE), INCONCLUSIVE),
])
def test_the_worst_test_decides_a_claim(outcomes, expected):
    tests = [_t(o, group=f"t{i}", mean=i) for i, o in enumerate(outcomes)]
    res = v.judge(tests)
    assert res["verdict"] == expected
    decider = next(t for t in tests if t["outcome"] == expected)
    assert res["value"] == decider["mean"]
    assert res["reason"] == ("" if expected == HOLDS else f"{decider['group']}: {expected} reason")
    assert len(res["tests"]) == sum(o != UNMEASURED for o in outcomes)
    assert v.VERDICT_ORDER == (FAILS, UNMEASURABLE, INCONCLUSIVE, HOLDS)


def test_the_deciding_test_gives_value_interval_and_n():
    tests = [_t(INCONCLUSIVE, "a", 0.1, -0.1, 0.3, 3), _t(FAILS, "b", -0.5, -0.7, -0.3, 4),
             _t(FAILS, "c", -0.2, -0.3, -0.1, 5)]
    res = v.judge(tests)
    assert (res["value"], res["low"], res["high"], res["n"]) == (-0.5, -0.7, -0.3, 4)  # the first failing
    assert res["reason"] == "b: does not hold reason"
    assert res["detail"].count(";") >= 2 and "b: -0.5 [-0.7, -0.3] n=4" in res["detail"]


def test_a_holding_claim_is_reported_by_its_narrowest_test():
    tests = [_t(HOLDS, "wide", 0.5, 0.4, 0.6, threshold=0.1),  # 0.3 past its margin
             _t(HOLDS, "narrow", 0.3, 0.12, 0.5, threshold=0.1),  # 0.02 past
             _t(HOLDS, "below", -0.5, -0.6, -0.15, side="<", threshold=-0.1),  # 0.05 past
             _t(HOLDS, "ratio", 100, 20, 500, threshold=10, log=True)]  # log10(2) = 0.3 past
    assert v.judge(tests)["value"] == 0.3
    tests[1]["low"] = 0.5  # now "below" holds by the smallest margin
    assert v.judge(tests)["value"] == -0.5
    tests[3]["low"] = 10.5  # log10(1.05) = 0.02 past: smaller than 0.05
    assert v.judge(tests)["value"] == 100


def test_no_tests_is_not_measured():
    res = v.judge([])
    assert res["verdict"] == UNMEASURED and res["n"] == 0 and math.isnan(res["value"]) and res["tests"] == []
    assert v.judge([_t(UNMEASURED)], no_data="no E7")["reason"] == "no E7"


def test_interval_of_one_and_of_two_values():
    mean, low, high, n = v.interval([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = v.interval([1.0, 3.0, None, math.nan])
    assert (mean, n) == (2.0, 2) and low < 2.0 < high  # two values: a finite interval


def test_fmt_at_each_boundary_of_its_formats():
    assert v._fmt(None) == v._fmt(math.nan) == "—"
    assert v._fmt(0.0) == "0" and v._fmt(0.5) == "0.5" and v._fmt(99.5) == "99.5"
    assert v._fmt(1e-3) == "0.001" and v._fmt(9.99e-4) == "9.99e-04" and v._fmt(-2e-4) == "-2.00e-04"
    assert v._fmt(99999.0) == "99999" and v._fmt(1e5) == "1.00e+05" and v._fmt(2e5) == "2.00e+05"
    assert v._fmt(2333.0) == "2333"


def test_describe_shows_the_interval_from_two_seeds_and_the_reason_unless_it_holds():
    one = v.test("a", {0: 1.0}, ">", 0.0)
    assert v.describe(one) == "a: 1 n=1, claimed > 0 → inconclusive (1 seed, fewer than 3)"
    two = v.test("a", {0: 1.0, 1: 3.0}, ">", 0.0)
    assert v.describe(two).startswith("a: 2 [") and "n=2" in v.describe(two)
    holds = v.test("b", {0: 1.0, 1: 1.0, 2: 1.0}, ">", 0.0)
    assert v.describe(dict(holds, reason="kept")) == "b: 1 [1, 1] n=3, claimed > 0 → holds"
    fails = v.test("b", {0: 1.0, 1: 1.0, 2: 1.0}, "<", 0.0)
    assert v.describe(fails).endswith("→ does not hold (the interval lies wholly above 0)")
    assert v.describe(dict(fails, reason="")).endswith("→ does not hold")


def test_an_unmeasured_claim_has_every_field_of_a_judged_one_each_empty():
    judged = v.judge([v.test("g", {0: 0.1, 1: 0.2, 2: 0.3}, ">", 0.01)])
    empty = v.unmeasured("no runs at noise 0.5")
    assert set(empty) == set(judged)  # the scorecard reads the same keys from both
    assert empty["verdict"] == UNMEASURED and empty["n"] == 0 and empty["tests"] == []
    assert all(math.isnan(empty[k]) for k in ("value", "low", "high"))
    assert empty["reason"] == empty["detail"] == "no runs at noise 0.5"
