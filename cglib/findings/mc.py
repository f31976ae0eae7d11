"""Claims of MC (Chatterjee & Zielinski, 2022): m-coherence over training, §5 and appendix B,
§6. Judged per model; a BatchNorm model decides when the study measured it (MC trained
BatchNorm ResNets), else the main model. Each function returns the claim's tests."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cglib.config import BATCHNORM_MODELS
from cglib.findings import common as c
from cglib.findings.verdict import test

# MC §6: peak ≈10^4 with real labels vs ≈10^2 with random ones; app. B, fully connected layer:
# random "quite low reaching 10 at the peak", real "even exceeds 100". The smallest contrast the
# paper calls "much higher" is one order of magnitude. Peaks are compared as (m-coherence − 1),
# the part above the orthogonal limit, whose ratio does not depend on the sample size m (MC §3).
PEAK_RATIO = 10.0
# "starts small, increases to a peak, then goes back down", "much faster", "below ... above":
# a factor 2 is the least change that is not a flat curve with noise (on (m-coherence − 1))
RATIO = 2.0
# an m-coherence within 0.01 of the orthogonal limit counts as at it (m-coherence − 1 is floored
# there, so a start at the limit is a finite ratio)
EXCESS_FLOOR = 0.01
# MC §5: "with random labels, the coherence in the first few epochs is low (between 1 and 10)"
START_EPOCHS, START_RANGE = 3.0, (1.0, 10.0)
# MC §5: the fall comes with memorisation ("as examples get fitted, coherence decreases"); MC's
# random-label run reached ≈80 % training accuracy. A run below that has not memorised.
MEMORISED = 0.8
# "the broad trajectory observed for the coherence of the entire model holds for each layer"
LAYER_RHO = 0.5


def excess(v):
    return np.maximum(np.asarray(v, float) - 1.0, EXCESS_FLOOR)


def _e7(m: pd.DataFrame, split: str = "train", layers: bool = False) -> pd.DataFrame:
    sel = (m["experiment"] == "E7") & (m["metric"] == "m_coherence") & (m["split"] == split) \
        & (m["optimizer"] == "sgd") & (m["subset"] == "full") & (m["null"] == -1)
    return m[sel & ((m["layer"] != "all") if layers else (m["layer"] == "all"))]


def is_bn(label: str) -> bool:
    return label.split("-")[0] in BATCHNORM_MODELS  # labels: cnn-8x16, resnet18


def decider(ctx) -> str | None:
    """The model whose E7 rows decide the MC claims: a BatchNorm model, else the main model."""
    models = sorted(_e7(ctx["real"])["model"].unique())
    bn = [x for x in models if is_bn(x)]
    main = [x for x in models if x in ctx["main_names"]]
    return (bn or main or [None])[0]


def _runs(ctx) -> tuple[str | None, dict]:
    """(model, {(noise, seed): {"train": rows, "test": rows, "layers": rows, "final_train": acc}})."""
    model = decider(ctx)
    if model is None:
        return None, {}
    m = ctx["real"][ctx["real"]["model"] == model]
    e1 = m[(m["split"] == "train") & (m["metric"] == "accuracy") & (m["layer"] == "all")
           & m["experiment"].isin(c.CURVE_EXPERIMENTS)]
    final = {r: c.last_value(g) for r, g in e1.groupby("run")}
    out = {}
    for part, rows in (("train", _e7(m)), ("test", _e7(m, "test")), ("layers", _e7(m, layers=True))):
        for run, g in rows.groupby("run", sort=True):
            k = (float(g["noise"].iloc[0]), int(g["seed"].iloc[0]))
            out.setdefault(k, {"final_train": final.get(run, math.nan)})[part] = g
    return model, {k: v for k, v in out.items() if "train" in v}


def _unmet(runs: dict, keys) -> str | None:
    low = [(n, s, runs[n, s]["final_train"]) for n, s in keys
           if not runs[n, s]["final_train"] >= MEMORISED]
    if not low:
        return None
    return "not memorised: " + ", ".join(f"ε={n:g} seed {s} ends at {a:.3f} training accuracy" for n, s, a in low) \
        + f" (< {MEMORISED:g}; MC §5's fall comes with memorisation)"


def _peak(g) -> tuple[float, int]:
    x, y = c.curve(g)
    i = int(np.argmax(y))
    return float(y[i]), int(x[i])


def _group(model, text):
    return f"{model}: {text}"


def real_vs_random(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    seeds = sorted(s for n, s in runs if n == 0.0 and (1.0, s) in runs)
    if not seeds:
        return []
    vals = {s: float(excess(_peak(runs[0.0, s]["train"])[0]) / excess(_peak(runs[1.0, s]["train"])[0]))
            for s in seeds}
    return [test(_group(model, "peak (m-coherence − 1), ε=0 / ε=1"), vals, ">", PEAK_RATIO, log=True,
                 unmet=_unmet(runs, [(1.0, s) for s in seeds]))]


def rise_and_fall(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    out = []
    for noise in sorted({n for n, _ in runs}):
        keys = [(n, s) for n, s in sorted(runs) if n == noise]
        rise, fall = {}, {}
        for n, s in keys:
            _, y = c.curve(runs[n, s]["train"])
            if len(y) < 3:
                continue
            peak = excess(y.max())
            rise[s], fall[s] = float(peak / excess(y[0])), float(peak / excess(y[-1]))
        unmet = _unmet(runs, keys)
        out += [test(_group(model, f"{c.eps(noise)} peak / first (m-coherence − 1)"), rise, ">", RATIO, log=True,
                     unmet=unmet),
                test(_group(model, f"{c.eps(noise)} peak / last (m-coherence − 1)"), fall, ">", RATIO, log=True,
                     unmet=unmet)]
    return out


def random_start(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    med = {s: float(v["train"].loc[v["train"]["epoch"] <= START_EPOCHS, "value"].median())
           for (n, s), v in sorted(runs.items()) if n == 1.0}
    if not med:
        return []
    lo, hi = START_RANGE
    return [test(_group(model, f"ε=1 median m-coherence, epochs ≤ {START_EPOCHS:g}, above"), med, ">", lo, log=True),
            test(_group(model, f"ε=1 median m-coherence, epochs ≤ {START_EPOCHS:g}, below"), med, "<", hi, log=True)]


def real_peak_first(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    seeds = sorted(s for n, s in runs if n == 0.0 and (1.0, s) in runs)
    if not seeds:
        return []
    # steps + 1: a peak at step 0 is a finite ratio
    vals = {s: (_peak(runs[1.0, s]["train"])[1] + 1) / (_peak(runs[0.0, s]["train"])[1] + 1) for s in seeds}
    return [test(_group(model, "peak step ε=1 / ε=0 (steps + 1)"), vals, ">", RATIO, log=True,
                 unmet=_unmet(runs, [(1.0, s) for s in seeds]))]


def rise_slower_with_noise(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    first = {}
    for (n, s), v in runs.items():
        g = v["train"]
        early = g[g["epoch"] <= 1.0]
        if len(early):
            first[n, s] = float(excess(early["value"].max()))  # the highest point reached in the first epoch
    levels = sorted({n for n, _ in first})
    out = []
    for lo, hi in zip(levels, levels[1:]):
        seeds = sorted(s for n, s in first if n == lo and (hi, s) in first)
        out.append(test(_group(model, f"ε={lo:g}→{hi:g}: first-epoch rise of (m-coherence − 1), lower / higher noise"),
                        {s: first[lo, s] / first[hi, s] for s in seeds}, ">", RATIO, log=True))
    return out


def layers_follow(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    out = {}
    for (n, s), v in sorted(runs.items()):
        if "layers" not in v:
            continue
        whole = v["train"].set_index("step")["value"]
        rhos = []
        for _, g in v["layers"].groupby("layer"):
            both = pd.concat([whole, g.set_index("step")["value"]], axis=1, join="inner").dropna()
            if len(both) >= 3:
                rhos.append(both.iloc[:, 0].corr(both.iloc[:, 1], method="spearman"))
        if rhos:
            out.setdefault(n, {})[s] = float(np.nanmin(rhos)) if not all(np.isnan(rhos)) else math.nan
    return [test(_group(model, f"{c.eps(n)} lowest Spearman ρ(layer, whole model) over the steps"), v, ">", LAYER_RHO)
            for n, v in sorted(out.items())]


def test_vs_train(ctx) -> list[dict]:
    model, runs = _runs(ctx)
    early, late = {}, {}
    for (n, s), v in sorted(runs.items()):
        if n != 0.0 or "test" not in v:
            continue  # MC app. B, Fig. 4 columns 1-2: real labels
        both = pd.concat([v["train"].set_index("step")[["value", "epoch"]],
                          v["test"].set_index("step")["value"].rename("test")], axis=1, join="inner").dropna()
        both = both[both["epoch"] > 1.0]  # "the rest of training" after the first epoch
        if len(both) < 2:
            continue
        mid = (both.index.min() + both.index.max()) / 2  # early and later part: halves of the rest in steps
        ratio = np.log10(excess(both["test"]) / excess(both["value"]))
        early[s] = float(10 ** ratio[both.index <= mid].mean())
        late[s] = float(10 ** ratio[both.index > mid].mean())
    if not early:
        return []
    return [test(_group(model, "ε=0 test / train (m-coherence − 1), early half after epoch 1"), early, "<",
                 1 / RATIO, log=True),
            test(_group(model, "ε=0 test / train (m-coherence − 1), later half"), late, ">", RATIO, log=True)]
