"""The findings scorecard (DESIGN.md §5–6, results/findings.json): each testable claim of the
three papers (CG, W&S, MC), the statistic that tests it per seed, its mean, 95 % interval over
seeds and n, and a verdict (cglib.findings.verdict).

Rules shared by every claim, fixed from the papers' wording before looking at any study's numbers:
- Each claim names its statistic, the practical margin on the claimed side and its source, and
  any precondition (a ceiling, a run that never memorised): an unmet one is "not measurable".
- A claim "at every noise level" is one test per level; it holds only if every test holds.
- E1–E6 use the study's main model only; MC claims are judged on a BatchNorm model when the study
  has one (MC's own conditions), else on the main model.
- Missing data is "not measured", never an exception. Runs not marked "ok" (diverged) are left
  out and named in the reason, since a run that stopped early would look like one that learned
  nothing.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from cglib import tables
from cglib.findings import cg, mc, ws
from cglib.findings.verdict import (FAILS, HOLDS, INCONCLUSIVE, UNMEASURABLE, UNMEASURED,  # noqa: F401
                                    VERDICTS, judge)

COLUMNS = ["id", "paper", "section", "figure", "claim", "statistic", "value", "low", "high", "n", "verdict",
           "reason", "detail"]
SHARE_WINDOW = 10  # default of findings.share_window (schema)

_ACC = f"margin {cg.ACCURACY_MARGIN:g} (one point of accuracy: 2.5× the ≈0.004 seed-to-seed sd of test accuracy)"
_MEM = f"; not measurable unless the run memorised (final training accuracy ≥ {mc.MEMORISED:g}, as MC's random-label run)"
_MC = "; judged on the BatchNorm model when the study has one (MC's conditions), else on the main model"
_EXCESS = f"(m-coherence − 1, floored at {mc.EXCESS_FLOOR:g}: the part above the orthogonal limit, MC §3)"
_MATCH = (f"at the matched budget: the first evaluation step at which SGD (same seed, real labels) reaches "
          f"{ws.MATCHED_LEVEL:g} training accuracy, as W&S compare RM3 with SGD when SGD has learned every example; "
          f"not measurable if SGD never gets there or RM3 is ≥ {ws.MATCHED_LEVEL:g} on every level there (ceiling)")

CLAIMS = [  # id, paper, section, report section, claim, statistic, function
    ("cg-memorization", "CG", "§2.3, Fig. 1a", "cg-fig1",
     "SGD fits every variant: at the end of training, 100 % training accuracy at every noise level, random labels "
     "included", f"SGD training accuracy at the last step, per noise level (needs a level ε > 0); holds if > "
     f"{cg.MEMORIZED:g} (\"100 %\" read off a plot)", cg.memorization),
    ("cg-noise-hurts-test", "CG", "§2.3, Fig. 1b", "cg-fig1",
     "the same training generalizes less as label noise rises (different amounts of generalization)",
     "fall of the step-weighted whole-run mean SGD test accuracy from each noise level to the next, paired by "
     f"seed; holds if > {_ACC}", cg.noise_hurts_test),
    ("cg-slower-with-noise", "CG", "§2.3 (1), Fig. 1a", "cg-fig1",
     "as noise increases, the time taken to reach a given level of accuracy increases",
     f"steps for SGD's training accuracy to reach {cg.LEVEL:g} (interpolated between evaluation steps; a run that "
     f"never does is censored at its length), ratio of each noise level to the next lower one, paired by seed, on "
     f"log10; holds if > {cg.STEPS_RATIO:g} (a fifth more steps)", cg.slower_with_noise),
    ("cg-pristine-first", "CG", "§2.3 (2), Fig. 1d; W&S §2", "cg-fig1",
     "pristine examples are learned faster than corrupt examples",
     "step-weighted whole-run mean of pristine minus corrupt training accuracy (SGD), per noise level 0 < ε < 1; "
     f"holds if > {_ACC}", cg.pristine_first),
    ("cg-pristine-slower-with-noise", "CG", "§2.3 (3); W&S §2", "cg-fig1",
     "with fewer pristine examples, their learning rate reduces, clearest in the first few steps",
     f"step-weighted mean pristine accuracy over steps 0–{cg.EARLY_STEPS} (SGD), its fall from each noise level to "
     f"the next (ε < 1: at ε = 1 \"pristine\" examples are chance matches), paired by seed; holds if > {_ACC}",
     cg.pristine_slower_with_noise),
    ("cg-shares-early", "CG", "§2.4, Fig. 3", "cg-fig23",
     "early in training a pristine example contributes more to the loss reduction than a corrupt one, unlike in the "
     "null worlds", f"real i^p / i^c after the first {cg.EARLY_STEPS} steps minus the largest null world's (SGD, "
     f"E2), per noise level 0 < ε < 1; holds if > {cg.I_MARGIN:g} (a tenth of a corrupt example's contribution); "
     "needs nulls", cg.shares_early),
    ("cg-shares-crossover", "CG", "§2.4, Fig. 2", "cg-fig23",
     "at 25 % and 50 % noise f^p starts above f^c and they cross over after a few steps; in the null worlds they "
     "do not cross", "f^p − f^c on loss reductions summed over windows of findings.share_window tracked steps "
     "(tables.windowed_shares), SGD, at each 0 < ε ≤ 0.5; three tests: the real designation's first window > "
     f"{cg.SHARE_MARGIN:g}, its lowest later window < −{cg.SHARE_MARGIN:g}, every null's lowest window > "
     f"−{cg.SHARE_MARGIN:g} (margin: 5 % of the loss reduction); needs nulls", cg.shares_crossover),
    ("cg-no-crossover-75", "CG", "§2.4, Fig. 2", "cg-fig23",
     "at 75 % noise the cross over does not happen: the sheer number of corrupt examples dominates",
     f"highest windowed f^p − f^c of the real designation at ε = {cg.NO_CROSSING_NOISE:g} (SGD); holds if < "
     f"−{cg.SHARE_MARGIN:g} (f^c above f^p in every window)", cg.no_crossover_high_noise),
    ("cg-null-pristine-above", "CG", "§2.4, Fig. 2", "cg-fig23",
     "in the null worlds at 25 % noise pristine is always above corrupt (the sizes of the two sets)",
     f"lowest windowed f^p − f^c over the null worlds at ε = {cg.NULL_ABOVE_NOISE:g} (SGD); holds if > "
     f"{cg.SHARE_MARGIN:g}", cg.null_pristine_above),
    ("cg-winsorized", "CG", "§3.2–3.3, Fig. 4", "cg-s3",
     "suppressing weak directions by winsorization reduces overfitting and the memorization of corrupt labels, "
     "the more so the larger c", "change of the step-weighted whole-run means of overfit and of corrupt accuracy "
     f"from each winsorization level to the next (SGD as c = 0), paired by seed, at every ε > 0; holds if < "
     f"−{cg.ACCURACY_MARGIN:g}, {_ACC}", cg.winsorized),
    ("cg-winsorized-proper", "CG", "§3.3", "cg-s3",
     "for c > 1, training accuracies do not exceed the proper accuracy of the dataset",
     "highest training accuracy over the run minus the proper accuracy (the pristine fraction of the run's labels), "
     f"winsorized runs with c > 1 at ε > 0; holds if < {_ACC}", cg.winsorized_proper),
    ("ws-malignant-overfitting", "W&S", "§2, Fig. 1", "cg-fig1",
     "with label noise overfitting is malignant (test accuracy reaches a maximum, then falls); with real labels it "
     "is benign (test accuracy stays flat)", "peak minus last-step SGD test accuracy; at ε = 0 holds if < "
     f"{cg.ACCURACY_MARGIN:g}, at each 0 < ε < 1 if > {cg.ACCURACY_MARGIN:g} ({_ACC}; ε = 1 has no generalization "
     "to lose)", ws.malignant_overfitting),
    ("ws-median-memorization", "W&S", "§3.3, Figs. 2–3", "ws-s3",
     "suppressing weak directions (RM3, and M3) gives a lower generalization gap than SGD at every noise level, "
     "real labels included, and does not learn the corrupt examples",
     "generalization gap (train − test accuracy) minus SGD's, and corrupt accuracy minus SGD's (ε > 0), paired by "
     f"seed, each at the last step and as a step-weighted whole-run mean, for RM3 and M3; holds if < "
     f"−{cg.ACCURACY_MARGIN:g}, {_ACC}", ws.median_memorization),
    ("ws-ra3-ablation", "W&S", "§3.3 ablation, eq. (1)", "ws-s3",
     "the median, not the rolling window, suppresses weak directions: SGD ≈ RA3 ≪ RM3",
     "|RA3 − SGD| − ½·|RM3 − SGD| of the whole-run mean gap (every ε) and corrupt accuracy (ε > 0), paired by "
     "seed; holds if < 0 (RA3 at most half as far from SGD as RM3)", ws.ra3_ablation),
    ("ws-m3-below-rm3", "W&S", "§3.3, eq. (1)", "ws-s3",
     "M3 shows an even smaller generalization gap than RM3 (RM3 < M3 in suppressing weak directions)",
     f"whole-run mean gap of M3 minus RM3, paired by seed, per noise level; holds if < −{cg.ACCURACY_MARGIN:g}, "
     f"{_ACC}", ws.m3_below_rm3),
    ("ws-easy-faster", "W&S", "§4.2, Fig. 4", "ws-fig4",
     "e-train is learned faster than h-train, and its generalization gap is smaller",
     f"steps to {cg.LEVEL:g} training accuracy of the h-train run over the e-train run (log10; > {cg.STEPS_RATIO:g}), "
     "and the last-step gap (own training subset − own test pool) of h-train minus e-train (> "
     f"{cg.ACCURACY_MARGIN:g}), paired by seed (E6)", ws.easy_faster),
    ("ws-cross-generalization", "W&S", "§4.2, §4.4 table", "ws-fig4",
     "easy examples generalize to easy ones far better than to hard ones (85 % vs 17 %), and hard ones generalize "
     "poorly even to easy ones (44 %)", "last-step accuracies of the e-train and h-train runs (E6): e→e minus e→h and "
     f"e→e minus h→e, paired by seed; holds if both > {ws.CROSS_MARGIN:g} (\"far better\")", ws.cross_generalization),
    ("ws-difficulty-accuracy", "W&S", "§4.3, Fig. 5a", "ws-fig5",
     "with weak directions suppressed (RM3), training accuracy falls with difficulty (99 % super easy, 61 % super "
     "hard)", f"RM3 training accuracy per difficulty level (E5, real labels) {_MATCH}: Spearman ρ(difficulty, "
     f"accuracy) over the levels holding examples < {ws.RHO_MARGIN:g}, and hardest minus easiest level < "
     f"−{cg.ACCURACY_MARGIN:g}", ws.difficulty_accuracy),
    ("ws-rm3-hardest", "W&S", "§4.3, Fig. 5a", "ws-fig5",
     "suppressing weak gradients disproportionately impairs the learning of the hardest examples (SGD learns all)",
     f"accuracy deficit of RM3 against SGD per difficulty level (E5, real labels) {_MATCH}: the deficit at the "
     f"hardest level > {cg.ACCURACY_MARGIN:g}, and hardest minus easiest deficit > {cg.ACCURACY_MARGIN:g}",
     ws.rm3_hardest),
    ("mc-real-vs-random", "MC", "§5, §6, Fig. 1", "mc",
     "peak m-coherence with real labels is much higher than with random labels (≈10^4 vs ≈10^2)",
     f"peak {_EXCESS} over the run, whole model, training sample (SGD, E7), ε = 0 over ε = 1, paired by seed, on "
     f"log10; holds if > {mc.PEAK_RATIO:g} (one order of magnitude)" + _MEM + _MC, mc.real_vs_random),
    ("mc-rise-and-fall", "MC", "§5 'The Overall Evolution', Fig. 1", "mc",
     "at every noise level m-coherence starts small, rises to a peak, then goes back down",
     f"peak {_EXCESS} over the first and over the last value, whole model, training sample, per noise level, on "
     f"log10; holds if both > {mc.RATIO:g}" + _MEM + _MC, mc.rise_and_fall),
    ("mc-random-start", "MC", "§5 'Random Labels'", "mc",
     "with random labels m-coherence starts near the orthogonal limit: low, between 1 and 10, in the first few epochs",
     f"median m-coherence, whole model, training sample, ε = 1, over the evaluation steps of the first "
     f"{mc.START_EPOCHS:g} epochs (log10); holds if within ({mc.START_RANGE[0]:g}, {mc.START_RANGE[1]:g})" + _MC,
     mc.random_start),
    ("mc-real-peak-first", "MC", "§5, §6, Fig. 1", "mc",
     "the peak with real labels is reached very quickly, with random labels it takes much longer",
     f"step of the peak m-coherence (+1) with random over real labels, paired by seed (log10); holds if > "
     f"{mc.RATIO:g}" + _MEM + _MC, mc.real_peak_first),
    ("mc-rise-slower-with-noise", "MC", "§5 'Coherence in the First Epoch', app. B", "mc",
     "the slope with which coherence increases early depends inversely on the amount of label noise",
     f"highest {_EXCESS} within the first epoch at each noise level over the next higher level's, paired by seed "
     f"(log10); holds if > {mc.RATIO:g}" + _MC, mc.rise_slower_with_noise),
    ("mc-layers-follow", "MC", "§5 'Impact of Layers'", "mc",
     "the broad trajectory of the whole model's coherence holds for each individual layer",
     "lowest Spearman ρ over the layers between a layer's m-coherence and the whole model's across the evaluation "
     f"steps (training sample), per noise level; holds if > {mc.LAYER_RHO:g}" + _MC, mc.layers_follow),
    ("mc-test-vs-train", "MC", "app. B 'Coherence on Test Set', Fig. 4", "mc",
     "after the first epoch, test-sample coherence is below the training one early and above it later",
     f"geometric mean over the evaluation steps of test / train {_EXCESS}, real labels, in the first and the "
     f"second half (in steps) of the run after epoch 1; holds if the first < 1/{mc.RATIO:g} and the second > "
     f"{mc.RATIO:g}" + _MC, mc.test_vs_train),
]


def context(metrics: pd.DataFrame, runs: pd.DataFrame, params: dict) -> dict:
    bad = sorted(runs.loc[runs["status"] != "ok", "run"]) if {"run", "status"} <= set(runs.columns) else []
    real = metrics[~metrics["run"].isin(bad)]
    names = {tables.model_label(params["model"]), params["model"]["name"]}
    window = params.get("findings", {}).get("share_window", SHARE_WINDOW)
    return dict(real=real, main=real[real["model"].isin(names)], main_names=names, curves={}, runs=runs,
                window=window, bad=bad)


def scorecard(metrics: pd.DataFrame, runs: pd.DataFrame, params: dict) -> pd.DataFrame:
    """One row per claim of CLAIMS: COLUMNS (value = the deciding test's mean)."""
    ctx = context(metrics, runs, params)
    rows = []
    for cid, paper, section, figure, claim, statistic, fn in CLAIMS:
        with warnings.catch_warnings():  # a constant curve has no rank correlation: nan, dropped by the test
            warnings.simplefilter("ignore")
            res = judge(fn(ctx))
        if ctx["bad"]:
            res["reason"] = "; ".join(filter(None, [res["reason"], f"runs left out (not ok): {', '.join(ctx['bad'])}"]))
        rows.append(dict(id=cid, paper=paper, section=section, figure=figure, claim=claim, statistic=statistic,
                         **{k: res[k] for k in ("value", "low", "high", "n", "verdict", "reason", "detail")}))
    card = pd.DataFrame(rows, columns=COLUMNS)
    return card.astype({"value": "float64", "low": "float64", "high": "float64", "n": "int64"})


def write(card: pd.DataFrame, out_dir: str | Path) -> None:
    """results/findings.json and findings.csv, both atomically. The JSON maps each claim id to its
    fields plus `holds` (1, 0, or null when inconclusive, not measurable or not measured), so
    `dvc metrics diff` shows every verdict as a number; NaN is written as null."""
    out_dir = Path(out_dir)
    doc = {}
    for r in card.to_dict("records"):
        r = {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        r = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        r["holds"] = {HOLDS: 1, FAILS: 0}.get(r["verdict"])
        doc[r.pop("id")] = r
    tables.write_json(doc, out_dir / "findings.json")
    tables.write_text(card.to_csv(index=False), out_dir / "findings.csv")
