"""The findings scorecard (DESIGN.md §6, results/findings.json): each testable claim of the three
papers (CG, W&S, MC), the statistic computed from the results tables, its value and a verdict.

Rules shared by every claim, fixed from the papers' wording before looking at any study's numbers:
- A trend is judged on the whole curve, never on one evaluation step: the step-weighted mean of a
  curve (trapezoid area over the run / its length in steps). Evaluation steps are log-spaced, so a
  plain mean over them would weight the first 10 steps as much as the last 90 %.
- Several seeds: the rule is applied to each seed separately and the claim holds only if every
  seed (and every noise level the claim names) passes. `value` is the least favourable number
  over them; `detail` gives the mean over seeds per noise level and how many seeds passed.
- E1–E6 use the study's main model only; MC claims are judged per model and decided by a
  BatchNorm model when the study has one (MC's own conditions), else by the main model.
- Missing data is "not measured", never an exception. Runs not marked "ok" (diverged) are left
  out and named in every detail, since a run that stopped early would look like one that learned
  nothing.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cglib import tables
from cglib.config import BATCHNORM_MODELS

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured"
COLUMNS = ["id", "paper", "section", "claim", "statistic", "value", "detail", "n_seeds", "verdict"]
CURVE_EXPERIMENTS = ("E1", "E3", "E4")  # SGD, winsorized, M3/RM3/RA3 curves: same rows, different codes

# CG §2.3: "for all 5 variants, at the end of training, we achieve 100% training accuracy";
# read off a plot, "100%" allows a point: at least 99 %
MEMORIZED = 0.99
# CG §2.4, Fig. 3: i^p and i^c "for the first 10 steps of training where the difference between
# pristine and corrupt is the most pronounced"
EARLY_STEPS = 10
# CG §2.4: "for 25% and 50% label noise, f^p initially starts off higher than f^c and after a few
# steps they cross over ... In the case of 75% noise, we see that the cross over doesn't happen"
CROSSING_MAX_NOISE = 0.5
# tables.share_crossings: f^p must stay below f^c for this many tracked steps in a row ("a single
# noisy dip is not a crossing"); a dip within the last steps of the run cannot start one
CROSSING_HOLD = tables.CROSSING_HOLD
# MC §6: peak ≈10^4 with real labels vs ≈10^2 with random ones; app. B, the fully connected layer:
# random "quite low reaching 10 at the peak", real "usually above 10 ... even exceeds 100". The
# smallest contrast the paper calls "much higher" is one order of magnitude.
MC_PEAK_RATIO = 10.0
# MC §5: "starts small, increases to a peak, and then goes back down": the peak at least double
# each end of the run (the paper's rises and falls span decades on log axes; doubling is the
# least that is not a flat curve with noise)
MC_RISE = 2.0
# MC §5: "with random labels, the coherence in the first few epochs is low (between 1 and 10)"
MC_START_EPOCHS = 3.0
MC_START_RANGE = (1.0, 10.0)


# ---------------------------------------------------------------------------- helpers

def curve_mean(g: pd.DataFrame) -> float:
    """Step-weighted mean of one curve (columns step, value) over the whole run."""
    return _sorted_mean(g.dropna(subset=["value"]).sort_values("step"))


def _sorted_mean(g: pd.DataFrame) -> float:
    x, y = g["step"].to_numpy(float), g["value"].to_numpy(float)
    if len(x) == 0:
        return math.nan
    return float(y[0]) if x[-1] == x[0] else float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _key(row) -> tuple:
    return row["optimizer"], 0 if pd.isna(row["clip"]) else int(row["clip"]), float(row["noise"]), int(row["seed"])


def _per_run(rows: pd.DataFrame, fn) -> dict:
    """{(optimizer, clip, noise, seed): fn(rows of that run)}; clip 0 = not winsorized (SGD is c = 0)."""
    return {_key(g.iloc[0]): fn(g) for _, g in rows.groupby("run", sort=True)}


def _eps(e: float) -> str:
    return f"ε={e:g}"


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _judge(recs: list[dict], worst=min) -> dict:
    """recs: one per (group, seed): value, ok, and optional extras {name: float} for the detail."""
    if not recs:
        return dict(value=math.nan, detail="no data for this claim in the study", n_seeds=0, verdict=UNMEASURED)
    vals = [r["value"] for r in recs]
    value = math.nan if any(math.isnan(v) for v in vals) else float(worst(vals))
    parts = []
    for group in dict.fromkeys(r["group"] for r in recs):
        rs = [r for r in recs if r["group"] == group]
        v = np.array([r["value"] for r in rs], float)
        text = f"{group}: {_fmt(float(v.mean()))}"
        if len(rs) > 1:
            passed = sum(r["ok"] for r in rs)
            text += f" [{_fmt(float(v.min()))}, {_fmt(float(v.max()))}], {passed}/{len(rs)} seeds pass"
        extras = [f"{k} {_fmt(float(np.mean([r['extra'][k] for r in rs])))}" for k in rs[0].get("extra", {})]
        parts.append(text + (f" ({', '.join(extras)})" if extras else ""))
    return dict(value=value, detail="; ".join(parts), n_seeds=len({r["seed"] for r in recs}),
                verdict=HOLDS if all(r["ok"] for r in recs) else FAILS)


def _rec(group: str, seed: int, value: float, ok: bool, **extra) -> dict:
    return dict(group=group, seed=seed, value=float(value), ok=bool(ok), extra=extra)


# ---------------------------------------------------------------------------- CG

def _curves(ctx, split: str, metric: str = "accuracy") -> dict:
    """{(optimizer, clip, noise, seed): step-weighted mean} of the main model's full-data curves."""
    if (split, metric) not in ctx["curves"]:
        m = ctx["main"]
        sel = m[m["experiment"].isin(CURVE_EXPERIMENTS) & (m["subset"] == "full") & (m["split"] == split)
                & (m["metric"] == metric) & (m["layer"] == "all") & (m["null"] == -1)]
        ctx["curves"][split, metric] = _per_run(sel.dropna(subset=["value"]).sort_values("step"), _sorted_mean)
    return ctx["curves"][split, metric]


def cg_memorization(ctx) -> dict:
    m = ctx["main"]
    sel = m[(m["experiment"] == "E1") & (m["optimizer"] == "sgd") & (m["subset"] == "full")
            & (m["split"] == "train") & (m["metric"] == "accuracy") & (m["layer"] == "all")]
    final = _per_run(sel, lambda g: float(g.loc[g["step"].idxmax(), "value"]))  # "at the end of training"
    if not any(noise > 0 for _, _, noise, _ in final):
        return _judge([])  # fitting clean labels alone is not the claim
    by_noise = sorted(final.items(), key=lambda kv: kv[0][2:])
    return _judge([_rec(_eps(e), s, v, v >= MEMORIZED) for (_, _, e, s), v in by_noise])


def cg_noise_hurts_test(ctx) -> dict:
    test = {k: v for k, v in _curves(ctx, "test").items() if k[0] == "sgd"}
    drops = {}
    for seed in {k[3] for k in test}:
        levels = sorted((e, v) for (_, _, e, s), v in test.items() if s == seed)
        drops.update({(lo, hi, seed): a - b for (lo, a), (hi, b) in zip(levels, levels[1:])})
    return _judge([_rec(f"{_eps(lo)}→{hi:g}", s, d, d > 0) for (lo, hi, s), d in sorted(drops.items())])


def cg_pristine_first(ctx) -> dict:
    pri, cor = _curves(ctx, "pristine"), _curves(ctx, "corrupt")
    recs = [_rec(_eps(k[2]), k[3], pri[k] - cor[k], pri[k] - cor[k] > 0, pristine=pri[k], corrupt=cor[k])
            for k in sorted(pri) if k[0] == "sgd" and 0 < k[2] < 1 and k in cor]
    return _judge(recs)


def _shares(ctx) -> pd.DataFrame:
    m = ctx["main"]
    return m[(m["experiment"] == "E2") & (m["optimizer"] == "sgd") & (m["subset"] == "full")]


def cg_shares_early(ctx) -> dict:
    e2, recs = _shares(ctx), []
    for _, g in e2.groupby("run", sort=True):
        _, _, noise, seed = _key(g.iloc[0])
        i = g[g["metric"].isin(["i_pristine", "i_corrupt"]) & (g["step"] < EARLY_STEPS)]
        last = i[i["step"] == i["step"].max()].pivot_table(index="null", columns="metric", values="value")
        if not 0 < noise < 1 or not {"i_pristine", "i_corrupt"} <= set(last.columns) or -1 not in last.index \
                or len(last) < 2:  # no null worlds: nothing to compare the real designation with
            continue
        # same g_t for every designation, so the differences are directly comparable across nulls
        diff, ratio = last["i_pristine"] - last["i_corrupt"], last["i_pristine"] / last["i_corrupt"]
        recs.append(_rec(_eps(noise), seed, ratio[-1], diff[-1] > 0 and diff[-1] > diff.drop(index=-1).max(),
                         max_null=float(ratio.drop(index=-1).max())))
    return _judge(sorted(recs, key=lambda r: r["group"]))


def cg_shares_crossover(ctx) -> dict:
    e2, recs = _shares(ctx), []
    f = e2[e2["metric"] == "f_pristine"]
    crossings = tables.share_crossings(f, hold=CROSSING_HOLD)
    for run, g in f.groupby("run", sort=True):
        _, _, noise, seed = _key(g.iloc[0])
        c = {k: v["crossing_step"] for k, v in crossings.get(run, {}).items()}
        steps = g.loc[g["null"] == -1, "step"]
        nulls = [v for k, v in c.items() if k != "real"]
        if not 0 < noise <= CROSSING_MAX_NOISE or "real" not in c or not nulls:
            continue
        step = c["real"]
        ok = step is not None and step > steps.min() and all(n is None for n in nulls)
        recs.append(_rec(_eps(noise), seed, math.nan if step is None else step, ok,
                         nulls_crossing=sum(n is not None for n in nulls)))
    return _judge(sorted(recs, key=lambda r: r["group"]), worst=max)


def cg_winsorized(ctx) -> dict:
    over, cor = _curves(ctx, "train", "overfit"), _curves(ctx, "corrupt")
    recs = []
    for (opt, _, noise, seed) in sorted(k for k in over if k[0] == "sgd" and k[2] > 0):
        clips = sorted(k[1] for k in over if k[0] == "winsorized" and k[2:] == (noise, seed))
        keys = [("sgd", 0, noise, seed)] + [("winsorized", c, noise, seed) for c in clips]
        if not clips or not all(k in cor for k in keys):
            continue
        d_over = max(over[b] - over[a] for a, b in zip(keys, keys[1:]))  # should fall with every c step
        d_cor = max(cor[b] - cor[a] for a, b in zip(keys, keys[1:]))
        recs.append(_rec(f"{_eps(noise)} c={','.join(map(str, clips))}", seed, d_over, d_over < 0 and d_cor < 0,
                         d_corrupt=d_cor))
    return _judge(recs, worst=max)


# ---------------------------------------------------------------------------- W&S

def ws_median_memorization(ctx) -> dict:
    cor, train, test = _curves(ctx, "corrupt"), _curves(ctx, "train"), _curves(ctx, "test")
    recs = []
    for opt in ("rm3", "m3"):
        for (o, _, noise, seed) in sorted(k for k in train if k[0] == opt):
            sgd, own = ("sgd", 0, noise, seed), (opt, 0, noise, seed)
            if sgd not in train or sgd not in test or own not in test:
                continue
            # W&S §3.3: "a lower generalization gap than SGD" at every noise level (0 % included)
            # and "does not learn the corrupt examples" (there are some only at ε > 0)
            d_gap = (train[own] - test[own]) - (train[sgd] - test[sgd])
            d_cor = cor[own] - cor[sgd] if noise > 0 and own in cor and sgd in cor else math.nan
            ok = d_gap < 0 and (noise == 0 or d_cor < 0)
            recs.append(_rec(f"{opt} {_eps(noise)}", seed, d_gap, ok, d_corrupt=d_cor))
    return _judge(recs, worst=max)


def ws_ra3_ablation(ctx) -> dict:
    cor = _curves(ctx, "corrupt")
    recs = []
    for (_, _, noise, seed) in sorted(k for k in cor if k[0] == "ra3" and k[2] > 0):
        ra3, rm3, sgd = (cor.get((o, 0, noise, seed)) for o in ("ra3", "rm3", "sgd"))
        if rm3 is None or sgd is None:
            continue
        v = abs(ra3 - sgd) - abs(rm3 - sgd)
        recs.append(_rec(_eps(noise), seed, v, v < 0, ra3_minus_sgd=ra3 - sgd, rm3_minus_sgd=rm3 - sgd))
    return _judge(recs, worst=max)


def _by_difficulty(ctx) -> pd.DataFrame:
    if "by_difficulty" not in ctx:  # two claims read it
        abd = tables.accuracy_by_difficulty(ctx["main"])
        ctx["by_difficulty"] = abd[(abd["noise"] == 0) & (abd["count"] > 0)]
    return ctx["by_difficulty"]


def ws_difficulty_accuracy(ctx) -> dict:
    abd, recs = _by_difficulty(ctx), []
    for seed, g in abd[abd["optimizer"] == "rm3"].groupby("seed", sort=True):
        g = g.sort_values("difficulty")
        if len(g) < 2:
            continue
        # a flat curve (every level learned alike) has no rank correlation: nan, and does not hold
        rho = g["difficulty"].corr(g["accuracy"], method="spearman") if g["accuracy"].nunique() > 1 else math.nan
        easy, hard = float(g["accuracy"].iloc[0]), float(g["accuracy"].iloc[-1])
        recs.append(_rec("rm3 ε=0", int(seed), rho, rho < 0 and hard < easy, easiest=easy, hardest=hard))
    return _judge(recs, worst=max)


def ws_rm3_hardest(ctx) -> dict:
    abd, recs = _by_difficulty(ctx), []
    for seed, g in abd.groupby("seed", sort=True):
        acc = g.pivot_table(index="difficulty", columns="optimizer", values="accuracy")
        acc = acc.reindex(columns=["rm3", "sgd"]).dropna()  # levels both runs hold
        if len(acc) < 2:
            continue
        deficit = acc["sgd"] - acc["rm3"]
        hard, easy = float(deficit.iloc[-1]), float(deficit.iloc[0])
        recs.append(_rec(f"difficulty {acc.index[-1]} vs {acc.index[0]}", int(seed), hard,
                         hard > 0 and hard > easy, deficit_easiest=easy))
    return _judge(recs)


def ws_cross_generalization(ctx) -> dict:
    m, recs = ctx["main"], []
    e6 = m[m["experiment"] == "E6"]
    for seed, g in e6.groupby("seed", sort=True):
        t = tables.cross_generalization(g).set_index(["trained_on", "evaluated_on"])["accuracy"]
        cells = [("e-train", "e-test"), ("e-train", "h-test"), ("h-train", "e-test"), ("h-train", "h-test")]
        if not all(c in t.index for c in cells):
            continue
        ee, eh, he, hh = (float(t[c]) for c in cells)
        recs.append(_rec("e→e minus e→h", int(seed), ee - eh, ee > max(eh, he, hh), ee=ee, eh=eh, he=he, hh=hh))
    return _judge(recs)


# ---------------------------------------------------------------------------- MC

def _coherence(ctx) -> pd.DataFrame:
    m = ctx["real"]
    return m[(m["experiment"] == "E7") & (m["metric"] == "m_coherence") & (m["split"] == "train")
             & (m["layer"] == "all") & (m["optimizer"] == "sgd") & (m["subset"] == "full") & (m["null"] == -1)]


def _per_model(ctx, build, worst=min) -> dict:
    """Judge each model's E7 rows; a BatchNorm model decides when it measured the claim (MC trained
    BatchNorm networks), else the main model."""
    e7 = _coherence(ctx)
    is_bn = lambda label: label.split("-")[0] in BATCHNORM_MODELS  # noqa: E731  (labels: cnn-8x16, resnet18)
    models = [x for x in sorted(e7["model"].unique()) if x in ctx["main_names"] or is_bn(x)]
    res = {x: _judge(build(e7[e7["model"] == x]), worst) for x in models}
    measured = [x for x in models if res[x]["verdict"] != UNMEASURED]
    bn = [x for x in measured if is_bn(x)]
    main = [x for x in measured if x in ctx["main_names"]]
    if not (bn or main):
        return _judge([])
    decider = (bn or main)[0]
    out = dict(res[decider])
    others = [f"{x} ({res[x]['verdict']}): {res[x]['detail']}" for x in measured if x != decider]
    out["detail"] = f"{decider} decides: {out['detail']}" + "".join(f" | {o}" for o in others)
    return out


def mc_real_vs_random(ctx) -> dict:
    def build(e7):
        runs = e7.drop_duplicates("run").set_index(["noise", "seed"])["run"]
        peaks = tables.coherence_peaks(e7)
        recs = []
        for seed in sorted({s for _, s in runs.index}):
            if (0.0, seed) in runs.index and (1.0, seed) in runs.index:
                real, rand = (peaks[runs[(e, seed)]]["train"]["all"]["peak"] for e in (0.0, 1.0))
                ratio = real / rand if rand > 0 else math.inf
                recs.append(_rec("peak ε=0 / ε=1", int(seed), ratio, ratio >= MC_PEAK_RATIO, real=real, random=rand))
        return recs
    return _per_model(ctx, build)


def mc_rise_and_fall(ctx) -> dict:
    def build(e7):
        recs = []
        for run, g in e7.groupby("run", sort=True):
            g = g.dropna(subset=["value"]).sort_values("step")
            if len(g) < 3:
                continue
            v = g["value"].to_numpy(float)
            i, ends = int(v.argmax()), max(v[0], v[-1])
            rise = v[i] / ends if ends > 0 else math.inf  # ≥ MC_RISE > 1 puts the peak strictly inside
            recs.append(_rec(_eps(float(g["noise"].iloc[0])), int(g["seed"].iloc[0]), rise, rise >= MC_RISE,
                             peak_step=float(g["step"].iloc[i])))
        return sorted(recs, key=lambda r: r["group"])
    return _per_model(ctx, build)


def mc_random_start(ctx) -> dict:
    def build(e7):
        recs = []
        for run, g in e7[(e7["noise"] == 1.0) & (e7["epoch"] <= MC_START_EPOCHS)].groupby("run", sort=True):
            med = float(g["value"].median())
            recs.append(_rec("ε=1", int(g["seed"].iloc[0]), med, MC_START_RANGE[0] <= med <= MC_START_RANGE[1]))
        return recs
    return _per_model(ctx, build, worst=max)


# ---------------------------------------------------------------------------- the scorecard

ALL_SEEDS = "; holds only if it holds in every seed"
CLAIMS = [  # id, paper, section, claim, statistic, function
    ("cg-memorization", "CG", "§2.3, Fig. 1a",
     "SGD fits every variant: at the end of training, 100 % training accuracy at every noise level, random labels "
     "included",
     f"training accuracy at the last step of each SGD run (needs a level ε > 0); holds if ≥ {MEMORIZED} "
     "at every noise level" + ALL_SEEDS + "; value: the lowest", cg_memorization),
    ("cg-noise-hurts-test", "CG", "§2.3, Fig. 1b",
     "the same training generalizes less as label noise rises (different amounts of generalization)",
     "step-weighted mean of SGD test accuracy over the whole run, per noise level; holds if it falls from each "
     "noise level to the next" + ALL_SEEDS + "; value: the smallest fall", cg_noise_hurts_test),
    ("cg-pristine-first", "CG", "§2.3 (2), Fig. 1d; W&S §2",
     "pristine examples are learned faster than corrupt examples",
     "step-weighted mean over the whole run of pristine minus corrupt training accuracy (SGD); holds if > 0 at "
     "every noise level 0 < ε < 1" + ALL_SEEDS + "; value: the smallest difference", cg_pristine_first),
    ("cg-shares-early", "CG", "§2.4, Fig. 3",
     "early in training a pristine example contributes more to the loss reduction than a corrupt one "
     "(pristine share above the pristine fraction), unlike in the null worlds",
     f"cumulative i^p / i^c after the first {EARLY_STEPS} steps (SGD, E2); holds if i^p > i^c and i^p − i^c of the "
     "real designation exceeds that of every null, at every 0 < ε < 1" + ALL_SEEDS +
     "; needs nulls; value: the smallest real ratio", cg_shares_early),
    ("cg-shares-crossover", "CG", "§2.4, Fig. 2",
     "at 25 % and 50 % noise f^p starts above f^c and they cross over later in training; in the null worlds they "
     "do not cross", f"first step from which f^p < f^c for {CROSSING_HOLD} tracked steps (tables.share_crossings; "
     "a dip in the last steps of the run does not count); holds if the "
     f"real designation crosses after its first step and no null crosses, at every 0 < ε ≤ {CROSSING_MAX_NOISE}"
     + ALL_SEEDS + "; needs nulls; value: the latest real crossing step (nan if one never crosses)",
     cg_shares_crossover),
    ("cg-winsorized", "CG", "§3.2–3.3, Fig. 4",
     "suppressing weak directions by winsorization reduces overfitting and the memorization of corrupt labels, "
     "the more so the larger c", "step-weighted means over the whole run of overfit and of corrupt accuracy, "
     "SGD as c = 0; holds if both fall with every step up in c at every ε > 0" + ALL_SEEDS +
     "; value: the largest change of overfit with c", cg_winsorized),
    ("ws-median-memorization", "W&S", "§3.3, Figs. 2–3",
     "suppressing weak directions (RM3, and M3) gives a lower generalization gap than SGD at every noise level, "
     "real labels included, and does not learn the corrupt examples",
     "step-weighted means over the whole run of the generalization gap (train − test accuracy) and of corrupt "
     "accuracy; holds if the gap minus SGD's < 0 at every ε and corrupt accuracy minus SGD's < 0 at every ε > 0, "
     "for each of RM3 and M3 run" + ALL_SEEDS + "; value: the largest gap difference", ws_median_memorization),
    ("ws-ra3-ablation", "W&S", "§3.3 ablation, eq. (1)",
     "the median, not the rolling window, suppresses weak directions: SGD ≈ RA3 ≪ RM3",
     "step-weighted mean corrupt accuracy; |RA3 − SGD| − |RM3 − SGD|; holds if < 0 at every ε > 0" + ALL_SEEDS +
     "; value: the largest", ws_ra3_ablation),
    ("ws-difficulty-accuracy", "W&S", "§4.3, Fig. 5a",
     "with weak directions suppressed (RM3), training accuracy falls with difficulty (99 % super easy, 61 % super "
     "hard)",
     "final RM3 training accuracy per difficulty level, real labels (E5); Spearman ρ(difficulty, accuracy) over "
     "the levels holding examples; holds if ρ < 0 and the hardest level is below the easiest" + ALL_SEEDS +
     "; value: the largest ρ", ws_difficulty_accuracy),
    ("ws-rm3-hardest", "W&S", "§4.3, Fig. 5a",
     "suppressing weak gradients disproportionately impairs the learning of the hardest examples (SGD learns all)",
     "final accuracy deficit of RM3 against SGD, real labels (E5); holds if the deficit at the hardest level is "
     "> 0 and larger than at the easiest" + ALL_SEEDS + "; value: the smallest deficit at the hardest level",
     ws_rm3_hardest),
    ("ws-cross-generalization", "W&S", "§4.2, §4.4 table",
     "easy examples generalize to easy ones far better than to hard ones (85 % vs 17 %), and hard ones generalize "
     "poorly even to easy ones (44 %)", "final accuracies of the e-train and h-train runs on e-test and h-test (E6); "
     "holds if e-train→e-test is the highest of the four cells" + ALL_SEEDS +
     "; value: the smallest e-train→e-test minus e-train→h-test", ws_cross_generalization),
    ("mc-real-vs-random", "MC", "§5, §6, Fig. 1",
     "peak m-coherence with real labels is much higher than with random labels (≈10^4 vs ≈10^2)",
     f"peak m-coherence over the run, whole model, training sample (SGD, E7), ε = 0 over ε = 1; holds if ≥ "
     f"{MC_PEAK_RATIO:g}" + ALL_SEEDS + "; judged on the BatchNorm model when present, else the main model; "
     "value: the smallest ratio", mc_real_vs_random),
    ("mc-rise-and-fall", "MC", "§5 'The Overall Evolution', Fig. 1",
     "at every noise level m-coherence starts small, rises to a peak, then goes back down",
     f"m-coherence over the run, whole model, training sample (SGD, E7); holds if its peak is ≥ {MC_RISE:g}× "
     "both the first and the last value (so strictly inside the run), at every noise level" + ALL_SEEDS +
     "; judged on the BatchNorm model when present, else the main model; value: the smallest peak / end",
     mc_rise_and_fall),
    ("mc-random-start", "MC", "§5 'Random Labels'",
     "with random labels m-coherence starts near the orthogonal limit: low, between 1 and 10, in the first few epochs",
     f"median m-coherence, whole model, training sample, ε = 1, over the evaluation steps of the first "
     f"{MC_START_EPOCHS:g} epochs; holds if within [{MC_START_RANGE[0]:g}, {MC_START_RANGE[1]:g}]" + ALL_SEEDS +
     "; judged on the BatchNorm model when present, else the main model; value: the largest", mc_random_start),
]


def scorecard(metrics: pd.DataFrame, runs: pd.DataFrame, params: dict) -> pd.DataFrame:
    """One row per claim of CLAIMS: id, paper, section, claim, statistic, value, detail, n_seeds, verdict."""
    bad = sorted(runs.loc[runs["status"] != "ok", "run"]) if {"run", "status"} <= set(runs.columns) else []
    real = metrics[~metrics["run"].isin(bad)]
    names = {tables.model_label(params["model"]), params["model"]["name"]}
    ctx = dict(real=real, main=real[real["model"].isin(names)], main_names=names, curves={})
    rows = []
    for cid, paper, section, claim, statistic, fn in CLAIMS:
        res = fn(ctx)
        if bad:
            res["detail"] += f" | runs left out (not ok): {', '.join(bad)}"
        rows.append(dict(id=cid, paper=paper, section=section, claim=claim, statistic=statistic, **res))
    card = pd.DataFrame(rows, columns=COLUMNS)
    return card.astype({"value": "float64", "n_seeds": "int64"})


def write(card: pd.DataFrame, out_dir: str | Path) -> None:
    """results/findings.json and findings.csv, both atomically. The JSON maps each claim id to its
    fields plus `holds` (1, 0, or null when not measured), so `dvc metrics show` / `dvc metrics
    diff` list every claim's value and verdict as numbers; NaN is written as null."""
    out_dir = Path(out_dir)
    doc = {}
    for r in card.to_dict("records"):
        r = {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        r["holds"] = {HOLDS: 1, FAILS: 0}.get(r["verdict"])
        doc[r.pop("id")] = r
    tables.write_json(doc, out_dir / "findings.json")
    tables.write_text(card.to_csv(index=False), out_dir / "findings.csv")
