"""Claims of W&S (Zielinski et al., 2020): §2 benign and malignant overfitting, §3 RM3 / M3 /
RA3, §4 easy and hard examples. Each function returns the claim's tests."""
from __future__ import annotations

import math

from cglib.findings import common as c
from cglib.findings.cg import ACCURACY_MARGIN, LEVEL, STEPS_RATIO
from cglib.findings.verdict import test

# W&S §4.4: e→e 85 % against e→h 17 % and h→e 44 %: "far better" is taken as at least 5 points
CROSS_MARGIN = 0.05
# W&S §4.3: "Recall that all examples are correctly learned by SGD after 90 epochs": RM3 is
# compared with SGD at the first evaluation step where SGD, same seed and labels, reaches 99 %
# training accuracy (the paper's budget); RM3 at ≥ 99 % on every level there is a ceiling
MATCHED_LEVEL = 0.99
# "training accuracy falls with difficulty": a clearly monotone trend over the levels
RHO_MARGIN = -0.5


def malignant_overfitting(ctx) -> list[dict]:
    drop = c.curves(ctx, "test", fn=lambda g: float(g["value"].max()) - c.last_value(g))
    out = []
    for e in c.noise_levels(drop, "sgd"):
        if e >= 1:
            continue  # random labels: test accuracy stays at chance, there is no generalization to lose
        vals = c.by_seed(drop, "sgd", 0, e)
        if e == 0:  # benign: "the test accuracy rises and then stays flat"
            out.append(test(f"{c.eps(e)} benign: peak − final test accuracy", vals, "<", ACCURACY_MARGIN))
        else:  # malignant: "reaches a maximum and then starts falling"
            out.append(test(f"{c.eps(e)} malignant: peak − final test accuracy", vals, ">", ACCURACY_MARGIN))
    return out


def _gaps(ctx, fn) -> dict:
    train, test_ = c.curves(ctx, "train", fn=fn), c.curves(ctx, "test", fn=fn)
    return {k: train[k] - test_[k] for k in train if k in test_}


def median_memorization(ctx) -> list[dict]:
    out = []
    for when, fn in (("last step", c.last_value), ("whole-run mean", c.step_mean)):
        gap, cor = _gaps(ctx, fn), c.curves(ctx, "corrupt", fn=fn)
        for opt in ("rm3", "m3"):
            for e in c.noise_levels(gap, opt):
                sgd = c.by_seed(gap, "sgd", 0, e)
                if not sgd:
                    continue
                # W&S §3.3: "a lower generalization gap than SGD" at every noise level (0 % included)
                out.append(test(f"{opt} {c.eps(e)} gap − SGD's, {when}",
                                c.paired(c.by_seed(gap, opt, 0, e), sgd, lambda a, b: a - b), "<", -ACCURACY_MARGIN))
                if e > 0:  # "does not learn the corrupt examples" (there are some only at ε > 0)
                    out.append(test(f"{opt} {c.eps(e)} corrupt accuracy − SGD's, {when}",
                                    c.paired(c.by_seed(cor, opt, 0, e), c.by_seed(cor, "sgd", 0, e), lambda a, b: a - b),
                                    "<", -ACCURACY_MARGIN))
    return out


def ra3_ablation(ctx) -> list[dict]:
    gap, cor = _gaps(ctx, c.step_mean), c.curves(ctx, "corrupt")
    out = []
    for what, d in (("gap", gap), ("corrupt accuracy", cor)):
        for e in c.noise_levels(d, "ra3"):
            ra3, rm3, sgd = (c.by_seed(d, o, 0, e) for o in ("ra3", "rm3", "sgd"))
            seeds = sorted(set(ra3) & set(rm3) & set(sgd))
            if not seeds or (what == "corrupt accuracy" and e == 0):
                continue
            # W&S eq. (1): SGD ≈ RA3 ≪ RM3, read as |RA3 − SGD| ≤ ½ |RM3 − SGD|
            vals = {s: abs(ra3[s] - sgd[s]) - 0.5 * abs(rm3[s] - sgd[s]) for s in seeds}
            out.append(test(f"{c.eps(e)} {what}: |RA3−SGD| − ½|RM3−SGD|", vals, "<", 0.0,
                            ra3_minus_sgd={s: ra3[s] - sgd[s] for s in seeds},
                            rm3_minus_sgd={s: rm3[s] - sgd[s] for s in seeds}))
    return out


def m3_below_rm3(ctx) -> list[dict]:
    gap = _gaps(ctx, c.step_mean)
    return [test(f"{c.eps(e)} gap M3 − RM3", c.paired(c.by_seed(gap, "m3", 0, e), c.by_seed(gap, "rm3", 0, e),
                                                      lambda a, b: a - b), "<", -ACCURACY_MARGIN)
            for e in c.noise_levels(gap, "m3") if c.by_seed(gap, "rm3", 0, e)]


def _e6(ctx) -> dict:
    """{(subset, seed): rows of that E6 run}."""
    e6 = ctx["main"][(ctx["main"]["experiment"] == "E6") & (ctx["main"]["layer"] == "all")
                     & (ctx["main"]["metric"] == "accuracy")]
    return {(g["subset"].iloc[0], int(g["seed"].iloc[0])): g for _, g in e6.groupby("run", sort=True)}


def easy_faster(ctx) -> list[dict]:
    runs = _e6(ctx)
    reach, gap = {}, {}
    for (subset, seed), g in runs.items():
        own = g[g["split"] == "train"]
        pool = g[g["split"] == ("e-test" if subset == "e-train" else "h-test")]
        steps = c.steps_to(own, LEVEL)
        reach[subset, seed] = steps if math.isfinite(steps) else float(own["step"].max())  # censored
        gap[subset, seed] = c.last_value(own) - c.last_value(pool)
    seeds = sorted({s for sub, s in runs if ("e-train", s) in runs and ("h-train", s) in runs})
    if not seeds:
        return []
    return [test("steps to 50 % training accuracy, h-train / e-train",
                 {s: c.log_ratio_safe(reach["h-train", s], reach["e-train", s]) for s in seeds}, ">", STEPS_RATIO,
                 log=True),
            test("generalization gap h-train − e-train (own pool), last step",
                 {s: gap["h-train", s] - gap["e-train", s] for s in seeds}, ">", ACCURACY_MARGIN)]


def cross_generalization(ctx) -> list[dict]:
    cells = {}
    for (subset, seed), g in _e6(ctx).items():
        for split in ("e-test", "h-test"):
            v = c.last_value(g[g["split"] == split])
            if math.isfinite(v):
                cells.setdefault(seed, {})[subset, split] = v
    need = [("e-train", "e-test"), ("e-train", "h-test"), ("h-train", "e-test")]
    full = {s: d for s, d in cells.items() if all(k in d for k in need)}
    if not full:
        return []
    ee = {s: d["e-train", "e-test"] for s, d in full.items()}
    return [test("e→e − e→h", {s: ee[s] - d["e-train", "h-test"] for s, d in full.items()}, ">", CROSS_MARGIN),
            test("e→e − h→e", {s: ee[s] - d["h-train", "e-test"] for s, d in full.items()}, ">", CROSS_MARGIN)]


def matched_budget(ctx) -> dict:
    """Per seed at noise 0: {seed: (step, table of difficulty × optimizer accuracy) or reason}.
    The step is the first evaluation step at which SGD's training accuracy is ≥ MATCHED_LEVEL."""
    if "matched" in ctx:
        return ctx["matched"]
    m = ctx["main"]
    e5 = m[(m["experiment"] == "E5") & (m["subset"] == "full") & (m["noise"] == 0) & (m["layer"] == "all")]
    train = c.curves(ctx, "train", fn=lambda g: g)
    out = {}
    for seed in sorted(set(e5.loc[e5["optimizer"] == "rm3", "seed"].astype(int))):
        sgd = train.get(("sgd", 0, 0.0, seed))
        if sgd is None or not (e5["seed"].eq(seed) & e5["optimizer"].eq("sgd")).any():
            continue
        step = c.first_step_at(sgd, MATCHED_LEVEL)
        if step is None:
            out[seed] = f"SGD never reaches {MATCHED_LEVEL:g} training accuracy (seed {seed}: at most " \
                        f"{float(sgd['value'].max()):.3f})"
            continue
        at = e5[(e5["seed"] == seed) & (e5["step"] == step) & e5["optimizer"].isin(["sgd", "rm3"])]
        acc = at[at["metric"] == "accuracy"].assign(
            difficulty=lambda d: d["split"].str.removeprefix("difficulty=").astype(int))
        cnt = at[at["metric"] == "count"].assign(
            difficulty=lambda d: d["split"].str.removeprefix("difficulty=").astype(int))
        tab = acc.pivot_table(index="difficulty", columns="optimizer", values="value")
        counts = cnt.pivot_table(index="difficulty", columns="optimizer", values="value")
        tab = tab.reindex(columns=["sgd", "rm3"]).dropna()
        if not counts.empty:  # a level without examples has no accuracy to compare
            tab = tab[counts.reindex(tab.index).max(axis=1).fillna(1) > 0]
        if tab.empty:
            out[seed] = f"no E5 accuracy of both SGD and RM3 at step {step}, where SGD first reaches " \
                        f"{MATCHED_LEVEL:g} (seed {seed})"
        elif len(tab) < 2:
            out[seed] = f"fewer than 2 difficulty levels with examples at step {step} (seed {seed})"
        elif (tab["rm3"] >= MATCHED_LEVEL).all():
            out[seed] = (f"RM3 at ceiling: ≥ {MATCHED_LEVEL:g} training accuracy at every difficulty level at "
                         f"step {step}, where SGD first reaches {MATCHED_LEVEL:g} (seed {seed}: lowest "
                         f"{float(tab['rm3'].min()):.3f})")
        else:
            out[seed] = (step, tab)
    ctx["matched"] = out
    return out


def _matched_tests(ctx, stats: dict) -> list[dict]:
    """stats: name → (fn(table) -> float, side, threshold); a seed whose precondition failed
    makes every test not measurable, with its reason."""
    mb = matched_budget(ctx)
    if not mb:
        return []
    unmet = "; ".join(v for v in mb.values() if isinstance(v, str)) or None
    ok = {s: v for s, v in mb.items() if not isinstance(v, str)}
    steps = {s: float(v[0]) for s, v in ok.items()}
    return [test(name, {s: fn(v[1]) for s, v in ok.items()}, side, thr, unmet=unmet, matched_step=steps)
            for name, (fn, side, thr) in stats.items()]


def difficulty_accuracy(ctx) -> list[dict]:
    def rho(t):
        return t.reset_index()["difficulty"].corr(t["rm3"].reset_index(drop=True), method="spearman") \
            if t["rm3"].nunique() > 1 else math.nan
    return _matched_tests(ctx, {
        "RM3: Spearman ρ(difficulty, accuracy)": (rho, "<", RHO_MARGIN),
        "RM3: hardest − easiest level accuracy": (lambda t: float(t["rm3"].iloc[-1] - t["rm3"].iloc[0]),
                                                 "<", -ACCURACY_MARGIN)})


def rm3_hardest(ctx) -> list[dict]:
    def deficit(t):
        return t["sgd"] - t["rm3"]
    return _matched_tests(ctx, {
        "RM3 deficit against SGD at the hardest level": (lambda t: float(deficit(t).iloc[-1]), ">", ACCURACY_MARGIN),
        "deficit hardest − deficit easiest": (lambda t: float(deficit(t).iloc[-1] - deficit(t).iloc[0]),
                                              ">", ACCURACY_MARGIN)})
