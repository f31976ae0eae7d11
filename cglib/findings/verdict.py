"""The verdict model (DESIGN.md §5 "Verdicts"): one claim = one or more tests; a test = one
statistic computed per seed (paired by seed where two variants are compared), its mean and 95 %
interval over seeds, n, and a practical margin on the claimed side.

Outcomes of a test, fixed before looking at any study's numbers:
- holds: the whole interval lies on the claimed side of the margin;
- does not hold: the whole interval lies on the other side;
- inconclusive: the interval touches or straddles the margin, or fewer than MIN_SEEDS seeds;
- not measurable: a stated precondition failed (the reason names it and its number);
- not measured: no data.
A claim holds only if every test holds. Its verdict is the worst test's by VERDICT_ORDER: one
test on the wrong side refutes a claim of the form "at every noise level"; an unmet
precondition beats an inconclusive interval (a reader should know the claim could not be
tested rather than that more seeds would settle it).

The interval is scipy.stats' one-sample t interval (`ttest_1samp(...).confidence_interval`),
which also gives the zero-width interval of identical values. Ratios are judged on log10 with
`log=True` (their spread is multiplicative); mean, low and high are then back on the ratio scale
(the mean is the geometric mean).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
UNMEASURABLE, UNMEASURED = "not measurable", "not measured"
VERDICT_ORDER = (FAILS, UNMEASURABLE, INCONCLUSIVE, HOLDS)  # the first one present decides a claim
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, UNMEASURABLE, UNMEASURED)
CONFIDENCE = 0.95
MIN_SEEDS = 3


def interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values: scipy's t interval over seeds. n < 2: no
    interval (nan); identical values: the zero-width interval."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, 0
    if len(v) < 2:
        return float(v[0]), math.nan, math.nan, 1
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # "catastrophic cancellation" on identical values
        ci = stats.ttest_1samp(v, 0.0).confidence_interval(confidence)
    return float(v.mean()), float(ci.low), float(ci.high), len(v)


def test(group: str, values: dict, side: str, threshold: float, *, log: bool = False,
         unmet: str | None = None, **extra) -> dict:
    """One test: `values` {seed: statistic}; the claim says statistic `side` (">" or "<")
    `threshold`. `unmet`: the reason a precondition failed (the test is then not measurable
    whatever its values). `extra`: per-seed side numbers {name: {seed: value}} shown as means."""
    if side not in (">", "<"):
        raise ValueError(f"side must be '>' or '<', got {side!r}")
    seeds = sorted(values)
    raw = [float(values[s]) for s in seeds]
    if log:
        x = [math.log10(v) if v > 0 else (-math.inf if v == 0 else math.nan) for v in raw]
        x = [v if np.isfinite(v) else math.nan for v in x]  # a zero or negative ratio has no log: dropped
        mean, low, high, n = interval(x)
        thr = math.log10(threshold)
    else:
        mean, low, high, n = interval(raw)
        thr = threshold
    if unmet:
        outcome, reason = UNMEASURABLE, unmet
    elif n == 0:
        outcome, reason = UNMEASURED, "no seed gives a finite value"
    elif n < MIN_SEEDS:
        outcome, reason = INCONCLUSIVE, f"{n} seed{'s' if n > 1 else ''}, fewer than {MIN_SEEDS}"
    else:
        above, below = low > thr, high < thr
        claimed, other = (above, below) if side == ">" else (below, above)
        outcome = HOLDS if claimed else FAILS if other else INCONCLUSIVE
        wrong = "below" if side == ">" else "above"
        reason = {HOLDS: "", FAILS: f"the interval lies wholly {wrong} {threshold:g}",
                  INCONCLUSIVE: f"the interval reaches across {threshold:g}"}[outcome]
    back = (lambda v: 10 ** v if np.isfinite(v) else v) if log else (lambda v: v)
    ex = {k: float(np.nanmean([v[s] for s in seeds if s in v])) if any(s in v for s in seeds) else math.nan
          for k, v in extra.items()}
    return dict(group=group, mean=back(mean), low=back(low), high=back(high), n=n, side=side,
                threshold=float(threshold), log=log, outcome=outcome, reason=reason, seeds=seeds,
                values=raw, extra=ex)


def unmeasured(reason: str = "no data for this claim in the study") -> dict:
    """A claim's result when the study has no data for it."""
    return dict(verdict=UNMEASURED, value=math.nan, low=math.nan, high=math.nan, n=0, reason=reason,
                detail=reason, tests=[])


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 1e5 or (v != 0 and abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"  # a step count reads as one: 2333, not 2.33e+03


def describe(t: dict) -> str:
    """One test as text: 'ε=0.5: 0.12 [0.08, 0.16] n=3 > 0.01 → holds (reason)'."""
    text = f"{t['group']}: {_fmt(t['mean'])}"
    if t["n"] >= 2:
        text += f" [{_fmt(t['low'])}, {_fmt(t['high'])}]"
    text += f" n={t['n']}, claimed {t['side']} {t['threshold']:g} → {t['outcome']}"
    if t["reason"] and t["outcome"] != HOLDS:
        text += f" ({t['reason']})"
    if t["extra"]:
        text += "; " + ", ".join(f"{k} {_fmt(v)}" for k, v in t["extra"].items())
    return text


def judge(tests: list[dict], no_data: str = "no data for this claim in the study") -> dict:
    """A claim's verdict from its tests: the worst outcome by VERDICT_ORDER decides, and the
    deciding test gives value (mean), low, high, n and the reason. With no test: not measured."""
    tests = [t for t in tests if t["outcome"] != UNMEASURED]
    if not tests:
        return unmeasured(no_data)
    verdict = next(v for v in VERDICT_ORDER if any(t["outcome"] == v for t in tests))
    pool = [t for t in tests if t["outcome"] == verdict]
    if verdict == HOLDS:  # the test that holds by the smallest margin speaks for the claim
        def margin(t):
            thr = math.log10(t["threshold"]) if t["log"] else t["threshold"]
            lo, hi = (math.log10(t["low"]), math.log10(t["high"])) if t["log"] else (t["low"], t["high"])
            return lo - thr if t["side"] == ">" else thr - hi
        decider = min(pool, key=margin)
    else:
        decider = pool[0]
    reason = "" if verdict == HOLDS else f"{decider['group']}: {decider['reason']}"
    return dict(verdict=verdict, value=decider["mean"], low=decider["low"], high=decider["high"],
                n=decider["n"], reason=reason, detail="; ".join(describe(t) for t in tests), tests=tests)
