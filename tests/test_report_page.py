"""cglib.report and stages/report.py on small hand-made tables (no smoke study, no browser): every
cell of every table the page shows, which sections it has, the provenance block, and the stage's
outputs and log line. Expected values are worked out by hand or with plain pandas from the same rows."""
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from cglib import cli, findings, plots, report
from cglib import tables as cgtables
from conftest import ROOT
from test_plots import curve_rows, e5_table, frame, row, shares_rows

NA = float("nan")


@pytest.fixture(autouse=True)
def close_figures(monkeypatch):
    monkeypatch.setattr(plt.Figure, "tight_layout", lambda self, *a, **k: None)  # layout only: slow
    yield
    plt.close("all")


def params(**kw) -> dict:
    p = yaml.safe_load((ROOT / "studies" / "smoke.yaml").read_text())
    p["model"] = {"name": "mlp", "hidden": [8]}
    p.update(kw)
    return p


# ---------------------------------------------------------------------------- cells

def test_num_and_msd_cells():
    assert report._num(None) == report._num(NA) == "—"
    assert report._num(0.12345) == "0.123" and report._num(2.25, 1) == "2.2" and report._num(0) == "0.000"
    assert report._msd(pd.Series([NA, NA])) == "—"
    assert report._msd(pd.Series([0.5, NA])) == "0.500" and report._msd(pd.Series([0.5]), 1) == "0.5"
    assert report._msd(pd.Series([0.5, 0.7, NA])) == f"0.600 ± {np.std([0.5, 0.7], ddof=1):.3f}"
    assert report._msd(pd.Series([10.0, 14.0]), 1) == "12.0 ± 2.8"


def test_table_and_sig_and_classes():
    t = report._table(pd.DataFrame({"a": [1.0, NA], "b": ["x", None]}), caption="c")
    assert t == {"columns": ["a", "b"], "rows": [[1.0, "x"], ["—", "—"]], "caption": "c"}
    assert [report._sig(v) for v in (None, NA, 0, 0.5, 12345.0, 10000.0, 9999.0, 0.001, 0.00099, -0.00099,
                                     -20000.0)] == \
        ["—", "—", "0", "0.5", "1.23e+04", "1.00e+04", "1e+04", "0.001", "9.90e-04", "-9.90e-04", "-2.00e+04"]
    assert report.verdict_class("does not hold") == "v-does-not-hold"


def test_seeds_note_counts_seeds_per_configuration():
    one = frame([row(seed=0), row(seed=0, step=5), row(seed=1, noise=0.5)])
    assert report._seeds_note(one) == "One seed per configuration: no bands."
    two = frame([row(seed=0), row(seed=1), row(seed=2, optimizer="rm3")])
    assert report._seeds_note(two) == "Curves: mean over 2 seeds, band ± 1 sd; tables: mean ± sd."
    three = frame([row(seed=s, clip=None) for s in range(3)])
    assert report._seeds_note(three.drop(columns=["clip", "subset"])) == \
        "Curves: mean over 3 seeds, band ± 1 sd; tables: mean ± sd."
    assert report._seeds_note(frame([])) == "One seed per configuration: no bands."


def test_finals_last_step_mean_sd_per_key():
    rows = []
    for opt in ("winsorized", "sgd"):
        for seed, v in ((0, 0.5), (1, 0.7)):
            rows += [row(optimizer=opt, seed=seed, noise=0.5, step=st, value=v - 0.1 * (st < 9)) for st in (0, 9)]
            rows += [row(optimizer=opt, seed=seed, noise=0.5, step=9, split="test", value=v / 2)]
            rows += [row(optimizer=opt, seed=seed, noise=0.5, step=9, value=5.0, layer="fc1"),
                     row(optimizer=opt, seed=seed, noise=0.5, step=9, value=5.0, null=0)]
    out = report._finals(frame(rows), ["noise", "optimizer"], {"tr": ("accuracy", "train"), "te": ("accuracy", "test"),
                                                              "x": ("loss", "train")})
    sd = f"{np.std([0.5, 0.7], ddof=1):.3f}"
    assert out.columns.tolist() == ["noise", "optimizer", "tr", "te", "x", "seeds"]
    assert out.astype(str).values.tolist() == [
        ["0.5", "sgd", f"0.600 ± {sd}", f"0.300 ± {np.std([0.25, 0.35], ddof=1):.3f}", "—", "2"],
        ["0.5", "winsorized", f"0.600 ± {sd}", f"0.300 ± {np.std([0.25, 0.35], ddof=1):.3f}", "—", "2"]]
    assert list(report._in_order(pd.Series(["winsorized", "m3", "sgd"])).categories) == ["sgd", "m3", "winsorized"]
    one = report._finals(frame(rows), ["optimizer"], {"tr": ("accuracy", "train")})
    assert one.columns.tolist() == ["optimizer", "tr", "seeds"]


# ---------------------------------------------------------------------------- tables


def test_windows_table_every_column_sorted_by_noise_and_seed():
    metrics, runs = shares_rows(noises=(0.5, 0.25), steps=12, nulls=(0,))
    metrics = frame(pd.concat([metrics, metrics[metrics["noise"] == 0.25].assign(run="E2_b", seed=1),
                               metrics.assign(subset="e-train", run="E2_sub", value=0.0)]).to_dict("records"))
    runs = pd.concat([runs, pd.DataFrame([dict(run="E2_b", status="ok", n_pristine=20, n_corrupt=10),
                                          dict(run="E2_sub", status="ok", n_pristine=20, n_corrupt=10)])])
    table = report._windows_table(metrics, runs, 5)
    assert table["columns"] == ["noise", "optimizer", "seed", "windows", "real, first window", "real, lowest later",
                                "real, highest", "nulls, lowest"]
    w = cgtables.windowed_shares(metrics[metrics["subset"] == "full"], runs, 5)
    w = w.assign(diff=w["f_pristine"] - w["f_corrupt"])
    want = []
    for run, noise, seed in (("E2_0.25", "0.25", 0), ("E2_b", "0.25", 1), ("E2_0.5", "0.5", 0)):
        g = w[w["run"] == run]
        real, nulls = g[g["null"] == -1].sort_values("window"), g[g["null"] == 0]

        def cell(r):
            return f"{r['diff']:+.3f} (steps {r['step_first']}–{r['step_last']})"
        later = real.iloc[1:]
        want.append([noise, "sgd", seed, 3, cell(real.iloc[0]), cell(later.loc[later["diff"].idxmin()]),
                     cell(real.loc[real["diff"].idxmax()]), cell(nulls.loc[nulls["diff"].idxmin()])])
    assert table["rows"] == want
    assert "windows of 5 tracked steps" in table["caption"] and "(> 0.05)" in table["caption"]
    assert "below (< −0.05), the nulls stay above −0.05; at 75 % the real one stays below −0.05" in table["caption"]
    # one window only, no nulls: the other cells are empty
    short, sruns = shares_rows(noises=(0.5,), steps=4, nulls=())
    (only,) = report._windows_table(short, sruns, 5)["rows"]
    assert only[3] == 1 and only[5] == "—" and only[7] == "—" and only[4] == only[6] != "—"
    assert report._windows_table(short.iloc[:0], sruns, 5)["rows"] == []


def test_windows_table_by_hand():
    """Windows of 2 steps with f^p = 0.1, 0.4, 0.7 (f^p − f^c = −0.8, −0.2, +0.4): the lowest later
    window is the second, not the first (lowest of all) nor the last; the null world's shares are equal."""
    d_p, d_c = [0.1, 0.1, 0.4, 0.4, 0.7, 0.7], [0.9, 0.9, 0.6, 0.6, 0.3, 0.3]
    rows = []
    for null, (p, c) in ((-1, (d_p, d_c)), (0, ([0.5] * 6, [0.5] * 6))):
        for metric, values in (("i_pristine", np.cumsum(p)), ("i_corrupt", np.cumsum(c))):
            rows += [row(run="r", experiment="E2", noise=0.5, metric=metric, null=null, step=st, value=float(v))
                     for st, v in enumerate(values)]
    runs = pd.DataFrame([dict(run="r", status="ok", n_pristine=1, n_corrupt=1)])
    t = report._windows_table(frame(rows), runs, 2)
    assert t["rows"] == [["0.5", "sgd", 0, 3, "-0.800 (steps 0–1)", "-0.200 (steps 2–3)", "+0.400 (steps 4–5)",
                          "+0.000 (steps 0–1)"]]


def test_cross_table_ours_with_the_papers_numbers():
    e6 = pd.DataFrame([
        dict(trained_on="h-train", evaluated_on="e-test", accuracy=0.4, accuracy_sd=NA, loss=1.0, seeds=1, paper=0.44),
        dict(trained_on="e-train", evaluated_on="test", accuracy=0.8, accuracy_sd=0.0125, loss=1.0, seeds=2, paper=None),
        dict(trained_on="e-train", evaluated_on="e-test", accuracy=0.9, accuracy_sd=0.05, loss=1.0, seeds=2, paper=0.85),
        dict(trained_on="e-train", evaluated_on="train", accuracy=1.0, accuracy_sd=0.0, loss=1.0, seeds=2, paper=None)])
    t = report._cross_table(e6)
    assert t["columns"] == ["trained on", "on e-test", "on test", "on train"]
    assert t["rows"] == [["e-train", "0.900 ± 0.050 (paper 0.85)", "0.800 ± 0.013", "1.000 ± 0.000"],
                         ["h-train", "0.400 (paper 0.44)", "—", "—"]]
    assert "W&S §4.4" in t["caption"]
    assert report._cross_table(e6.iloc[:0])["rows"] == []


def test_difficulty_table_counts_rows_and_the_papers_rm3():
    e5 = e5_table((0.5, 0.0))
    hist = pd.DataFrame({"difficulty": [0, 1, 2], "count": [7, 3, 1]})
    t = report._difficulty_table(e5, hist)
    assert t["columns"] == ["noise", "variant", "d=0", "d=1", "d=2"]
    assert t["rows"][0] == ["", "examples", 7, 3, 1] and t["rows"][-1] == ["0", "W&S RM3 (ImageNet)", 0.99, "—", 0.61]
    body = t["rows"][1:-1]
    assert [r[:2] for r in body] == [[n, v] for n in ("0", "0.5") for v in ("sgd", "rm3", "winsorized c=2")]
    for r in body:
        opt = r[1].split()[0]
        sel = e5[(e5["noise"] == float(r[0])) & (e5["optimizer"] == opt)]
        assert r[2:] == [report._msd(sel[sel["difficulty"] == d]["accuracy"]) for d in (0, 1, 2)]
    assert "0 = easy" in t["caption"]
    # a variant run at one noise level only: no empty row at the other
    t = report._difficulty_table(e5[~((e5["optimizer"] == "rm3") & (e5["noise"] == 0))], hist)
    assert [r[:2] for r in t["rows"][1:-1]] == [["0", "sgd"], ["0", "winsorized c=2"], ["0.5", "sgd"], ["0.5", "rm3"],
                                                ["0.5", "winsorized c=2"]]


def test_matched_table_sorted_seeds_levels_in_order():
    tab = pd.DataFrame({"sgd": [1.0, 0.9, 0.995], "rm3": [0.9, 0.4, 0.5]}, index=pd.Index([0, 10, 2], name="difficulty"))
    t = report._matched_table({3: (50, tab), 1: (20, tab.iloc[:1])})
    assert t["columns"] == ["seed", "step", "variant", "d=0", "d=2", "d=10"]
    assert t["rows"] == [[1, 20, "sgd", "1.000", "—", "—"], [1, 20, "rm3", "0.900", "—", "—"],
                         [3, 50, "sgd", "1.000", "0.995", "0.900"], [3, 50, "rm3", "0.900", "0.500", "0.400"]]
    assert "reaches 0.99 training accuracy" in t["caption"] and "Not compared" not in t["caption"]
    t = report._matched_table({0: "why 0", 1: "why 1"})
    assert t["rows"] == [] and t["caption"].endswith(". Not compared: why 0; why 1")


def test_peaks_per_model_and_noise_with_the_steps():
    rows = []
    for model in ("mlp-8", "cnn-4"):
        for seed, vals in ((0, [1.0, 9.0, 3.0]), (1, [2.0, 5.0, 11.0])):
            for split, f in (("train", 1.0), ("test", 0.5)):
                rows += curve_rows({seed: [v * f for v in vals]}, experiment="E7", model=model, metric="m_coherence",
                                   noise=0.5, split=split)
                rows += curve_rows({seed: [99.0, 99.0, 99.0]}, experiment="E7", model=model, metric="m_coherence",
                                   noise=0.5, split=split, layer="1")
    rows += curve_rows({0: [NA, NA, NA]}, experiment="E7", metric="m_coherence", noise=0.0)
    rows += curve_rows({0: [1.0, 2.0, 1.0]}, experiment="E7", metric="m_coherence", noise=0.0)
    t = report._peaks(frame(rows))
    assert t["columns"] == ["model", "optimizer", "noise", "train peak", "train step", "test peak", "test step"]
    sd = f"{np.std([9.0, 11.0], ddof=1):.1f}"
    sd2 = f"{np.std([4.5, 5.5], ddof=1):.1f}"
    assert t["rows"] == [["cnn-4", "sgd", "0.5", f"10.0 ± {sd}", "10, 100", f"5.0 ± {sd2}", "10, 100"],
                         ["mlp-8", "sgd", "0", "2.0", "10", "—", "—"],
                         ["mlp-8", "sgd", "0.5", f"10.0 ± {sd}", "10, 100", f"5.0 ± {sd2}", "10, 100"]]


def test_scores_table_per_score():
    e8 = pd.DataFrame([dict(run="a", score="el2n", spearman_difficulty=0.5, auroc_corrupt=NA),
                       dict(run="b", score="el2n", spearman_difficulty=0.7, auroc_corrupt=0.6),
                       dict(run="a", score="aum", spearman_difficulty=-0.2, auroc_corrupt=NA)])
    t = report._scores_table(e8)
    assert t["columns"] == ["score", "Spearman ρ with difficulty", "AUROC corrupt (noisy runs)", "runs"]
    assert t["rows"] == [["aum", "-0.200", "—", 1], ["el2n", f"0.600 ± {np.std([0.5, 0.7], ddof=1):.3f}", "0.600", 2]]


def test_run_table_every_column():
    runs = pd.DataFrame([dict(run="a", model="mlp-8", status="ok", steps_done=10, steps=10, train_accuracy=1.0,
                              test_accuracy=0.5, pristine_accuracy=NA, corrupt_accuracy=0.25),
                         dict(run="b", model="cnn-4", status="failed", steps_done=3, steps=10, train_accuracy=NA,
                              test_accuracy=NA, pristine_accuracy=NA, corrupt_accuracy=NA)])
    t = report.run_table(runs, {"a": ("cpu", 17.84), "c": ("cuda", 1.0)})
    assert t["columns"] == ["run", "model", "status", "steps", "wall (s)", "device", "train", "test", "pristine",
                            "corrupt"]
    assert t["rows"] == [["a", "mlp-8", "ok", "10 / 10", "17.8", "cpu", "1.000", "0.500", "—", "0.250"],
                         ["b", "cnn-4", {"text": "failed", "cls": "verdict v-does-not-hold"}, "3 / 10", "—", "—",
                          "—", "—", "—", "—"]]
    bare = report.run_table(runs[["run", "status", "steps_done"]], {})
    assert bare["rows"][0] == ["a", "—", "ok", "10 / ?", "—", "—", "—", "—", "—", "—"]


def test_scorecard_table_rows_links_counts_and_other_papers():
    card = pd.DataFrame([
        dict(id="x", paper="XY", section="§1", figure="nowhere", claim="cx", statistic="s", value=2.0, low=NA,
             high=3.0, n=2, verdict="inconclusive", reason="r", detail="r"),
        dict(id="a", paper="CG", section="§2", figure="cg-fig1", claim="ca", statistic="s", value=0.5, low=0.25,
             high=NA, n=3, verdict="holds", reason="", detail="d")], columns=findings.COLUMNS)
    t = report.scorecard_table(card)
    assert [(g["paper"], g["title"]) for g in t["groups"]] == [("CG", report.PAPERS["CG"]), ("XY", "XY")]
    (a,), (x,) = (g["rows"] for g in t["groups"])
    assert a == dict(id="a", claim="ca", section="CG §2", statistic="s", value="0.5", interval="—", n=3,
                     verdict="holds", cls="v-holds", reason="", detail="d", href="#cg-fig1", evidence="CG Fig. 1",
                     evidence_title=report.TITLES["cg-fig1"])
    assert x["interval"] == "—" and x["detail"] == "" and x["href"] is None and x["evidence"] is None
    assert x["evidence_title"] == "" and x["reason"] == "r"
    assert t["counts"] == [dict(verdict=v, n=int(v in ("holds", "inconclusive")), label=report.COUNT_LABELS[v],
                                cls=report.verdict_class(v)) for v in findings.VERDICTS]
    assert report.scorecard_table(card, shown=["mc"])["groups"][0]["rows"][0]["href"] is None


# ---------------------------------------------------------------------------- inputs, figures, provenance

def study_metrics():
    """E1 (two seeds), E2 (one), E3, E4, E6 (three seeds), E7, E8 of model mlp-8, and a cnn-4 E7 run."""
    rows = []
    for noise in (0.0, 0.5):
        for split in ("train", "test", "pristine", "corrupt"):
            for metric in ("accuracy", "loss"):
                rows += curve_rows({0: [0.1, 0.5, 0.9], 1: [0.2, 0.6, 0.8]}, noise=noise, split=split, metric=metric)
        rows += curve_rows({0: [0.0, 0.1, 0.2], 1: [0.0, 0.1, 0.3]}, noise=noise, metric="overfit")
    for split in ("train", "test", "pristine", "corrupt"):
        rows += curve_rows({0: [0.1, 0.4, 0.7]}, experiment="E3", optimizer="winsorized", clip=2, noise=0.5, split=split)
        rows += curve_rows({0: [0.1, 0.3, 0.6]}, experiment="E4", optimizer="rm3", noise=0.5, split=split)
    rows += curve_rows({0: [0.0, 0.1, 0.1]}, experiment="E3", optimizer="winsorized", clip=2, noise=0.5,
                       metric="overfit")
    for subset in ("e-train", "h-train"):
        for split in ("train", "e-test", "h-test", "test"):
            rows += curve_rows({s: [0.2, 0.5, 0.7 + 0.01 * s] for s in range(3)}, experiment="E6", subset=subset,
                               split=split)
    for model in ("mlp-8", "cnn-4"):
        for split in ("train", "test"):
            rows += curve_rows({0: [2.0, 9.0, 4.0]}, experiment="E7", model=model, noise=0.5, split=split,
                               metric="m_coherence")
    for score, v in (("el2n", 0.5), ("aum", -0.25)):
        rows += [row(experiment="E8", noise=0.5, step=100, split="train", metric=f"spearman_difficulty_{score}", value=v),
                 row(experiment="E8", noise=0.5, step=100, split="train", metric=f"auroc_corrupt_{score}", value=v + 0.3)]
    e2, runs = shares_rows(noises=(0.5,), nulls=(0,))
    return frame(rows + e2.to_dict("records")), runs


def test_prepare_keeps_the_studys_model_m_and_window():
    metrics, runs = study_metrics()
    p = params()
    t = report.prepare(metrics, runs, pd.DataFrame({"difficulty": [0], "count": [1]}), None, p)
    assert t.model == "mlp-8" and set(t.main["model"]) == {"mlp-8"} and len(t.metrics) == len(metrics)
    assert t.m == 100 and t.window == 10 and t.matched == {} and t.runs is runs and t.seeds is None
    assert set(t.e8["score"]) == {"el2n", "aum"} and set(t.e6["trained_on"]) == {"e-train", "h-train"}
    p = params(model={"name": "mlp", "hidden": [99]}, findings={"share_window": 3})
    p["train"]["coherence"]["test_sample"] = 50
    t = report.prepare(metrics, runs, None, None, p)
    assert len(t.main) == len(metrics) and t.m is None and t.window == 3  # no row of the study's model: all
    del p["findings"]
    assert report.prepare(metrics, runs, None, None, p).window == findings.SHARE_WINDOW
    p["model"] = {"name": "mlp-8x"}
    assert set(report.prepare(metrics.assign(model="mlp-8x"), runs, None, None, p).main["model"]) == {"mlp-8x"}


def test_draw_writes_every_figure_and_returns_the_drawn_ones(tmp_path, monkeypatch):
    t = SimpleNamespace(main="main", metrics="metrics", runs="runs", window=4, e5="e5", e8="e8", hist="hist", m=7,
                        model="mlp-8")
    calls = []
    drawn = plt.figure()
    monkeypatch.setattr(plots, "learning_curves_fig", lambda df: calls.append(("lc", df)) or drawn)
    monkeypatch.setattr(plots, "m_coherence_fig", lambda df, m, main: calls.append(("mc", df, m, main)))
    saved = {}

    def save(fig, stem):
        saved[stem] = fig
        return b"png " + stem.name.encode()
    monkeypatch.setattr(plots, "save", save)
    monkeypatch.setattr(plots, "placeholder", lambda what: f"placeholder: {what}")
    for name in ("loss_shares_fig", "winsorization_fig", "robust_optimizers_fig", "easy_hard_fig",
                 "accuracy_by_difficulty_fig", "m_coherence_layers_fig", "difficulty_scores_fig"):
        monkeypatch.setattr(plots, name, lambda *a, **k: None)
    out = report.draw(t, str(tmp_path))
    assert out == {name: (b"png learning_curves" if name == "learning_curves" else None) for name in report.FIGURES}
    assert list(out) == list(report.FIGURES) and calls == [("lc", "main"), ("mc", "metrics", 7, "mlp-8")]
    assert saved == {tmp_path / name: (drawn if name == "learning_curves" else f"placeholder: {what}")
                     for name, what in report.FIGURES.items()}


def test_run_logs_reads_the_last_done_line(tmp_path):
    (tmp_path / "a.log").write_text("done: ok on cpu, wall 1.5 s\nresumed\ndone: ok on cuda:0, wall 17.8 s; final\n")
    (tmp_path / "b.log").write_text("nothing\n")
    assert report.run_logs(tmp_path, ["a", "b", "c"]) == {"a": ("cuda:0", 17.8)}


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_provenance_commit_versions_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "VERSIONS", ("numpy", "no-such-distribution-xyz"))
    prov = report.provenance({"a": ("cpu", 1.0), "b": ("cuda:0", 2.0), "c": ("cpu", 3.0)}, cwd=tmp_path)
    assert prov["git commit"] == "unknown (not a git checkout)"
    assert prov["numpy"] == np.__version__ and prov["no-such-distribution-xyz"] == "not installed"
    assert prov["device (train logs)"] == "cpu, cuda:0" and prov["python"].count(".") == 2
    assert list(prov) == ["git commit", "numpy", "no-such-distribution-xyz", "python", "platform",
                          "device (train logs)"]
    assert report.provenance({}, cwd=tmp_path)["device (train logs)"] == "unknown (no train logs)"
    git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("1")
    git(tmp_path, "add", "f")
    git(tmp_path, "commit", "-q", "-m", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert report.provenance({}, cwd=tmp_path)["git commit"] == head
    (tmp_path / "f").write_text("2")
    assert report.provenance({}, cwd=tmp_path)["git commit"] == head + " (plus uncommitted changes)"
    (tmp_path / "g").write_text("untracked")
    (tmp_path / "f").write_text("1")
    assert report.provenance({}, cwd=tmp_path)["git commit"] == head  # untracked files do not count
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert report.provenance({}, cwd=tmp_path)["git commit"] == "unknown (not a git checkout)"  # no git at all


# ---------------------------------------------------------------------------- sections and page

def study(seeds=None, matched=None):
    metrics, runs = study_metrics()
    hist = pd.DataFrame({"difficulty": [0, 1, 2], "count": [2, 1, 0]})
    t = report.prepare(metrics, runs, hist, seeds, params(findings={"share_window": 5}))
    t.e5 = e5_table((0.5,))
    t.matched = matched or {}
    return t


ALL = {name: b"\x89PNG " + name.encode() for name in report.FIGURES}


def test_sections_each_with_its_tables_and_notes():
    seeds = pd.DataFrame([dict(seed=0, step=40, epoch=1.23456, accuracy=0.5, easy=3, hard=2)])
    tab = pd.DataFrame({"sgd": [1.0, 0.9], "rm3": [0.9, 0.4]}, index=pd.Index([0, 1], name="difficulty"))
    t = study(seeds=seeds, matched={0: (50, tab)})
    s = report.sections(t, ALL)
    assert list(s) == ["cg-fig1", "cg-fig23", "cg-s3", "ws-s3", "ws-fig4", "ws-fig5", "mc", "e8"]
    two, one = ("Curves: mean over 2 seeds, band ± 1 sd; tables: mean ± sd.", "One seed per configuration: no bands.")
    (fig1,) = s["cg-fig1"]["tables"]
    assert s["cg-fig1"]["note"] == two and fig1["caption"] == "sgd, last step"
    assert fig1["columns"] == ["noise", *report.FINAL, "seeds"] and [r[0] for r in fig1["rows"]] == ["0", "0.5"]
    assert fig1["rows"][1][1] == f"0.850 ± {np.std([0.9, 0.8], ddof=1):.3f}" and fig1["rows"][1][5] == \
        f"0.250 ± {np.std([0.2, 0.3], ddof=1):.3f}"
    assert s["cg-fig23"]["note"] == one and s["cg-fig23"]["window"] == 5
    (win,) = s["cg-fig23"]["tables"]
    assert win["columns"][:4] == ["noise", "optimizer", "seed", "windows"] and len(win["rows"]) == 1
    (s3,) = s["cg-s3"]["tables"]
    assert s3["columns"] == ["noise", "c", "train acc.", "test acc.", "overfit", "seeds"]
    assert [r[:2] for r in s3["rows"]] == [["0", 0], ["0.5", 0], ["0.5", 2]] and s["cg-s3"]["note"] == two
    assert s3["rows"][2][2:] == ["0.700", "0.700", "0.100", 1] and s3["caption"] == "last step; c = 0 is plain SGD"
    (ws3,) = s["ws-s3"]["tables"]
    assert ws3["columns"] == ["noise", "optimizer", "pristine acc.", "corrupt acc.", "test acc.", "train acc.",
                              "overfit", "seeds"]
    assert [r[:2] for r in ws3["rows"]] == [["0", "sgd"], ["0.5", "sgd"], ["0.5", "rm3"]]
    assert ws3["rows"][2][2:] == ["0.600", "0.600", "0.600", "0.600", "—", 1]
    cross, seed_tab = s["ws-fig4"]["tables"]
    assert s["ws-fig4"]["note"] == "Curves: mean over 3 seeds, band ± 1 sd; tables: mean ± sd."
    assert cross["columns"] == ["trained on", "on e-test", "on h-test", "on test", "on train"]
    assert seed_tab["rows"] == [[0, 40, "1.235", "0.500", 3, 2]] and "one per difficulty seed" in seed_tab["caption"]
    diff, matched = s["ws-fig5"]["tables"]
    assert s["ws-fig5"]["side"] is True and s["ws-fig5"]["note"] == two
    assert diff["rows"][0] == ["", "examples", 2, 1, 0] and matched["rows"][0] == [0, 50, "sgd", "1.000", "0.900"]
    assert s["mc"]["m"] == 100 and s["mc"]["layers"] is True and s["mc"]["note"] == one
    (peaks,) = s["mc"]["tables"]
    assert [r[0] for r in peaks["rows"]] == ["cnn-4", "mlp-8"]
    (scores,) = s["e8"]["tables"]
    assert scores["rows"] == [["aum", "-0.250", "0.050", 1], ["el2n", "0.500", "0.800", 1]]
    # no images: no sections; no seeds, no matched budget, no layers: fewer tables
    assert report.sections(t, dict.fromkeys(report.FIGURES)) == {}
    t = study(seeds=seeds.iloc[:0])
    s = report.sections(t, {**ALL, "m_coherence_layers": None})
    assert len(s["ws-fig4"]["tables"]) == 1 and len(s["ws-fig5"]["tables"]) == 1 and s["mc"]["layers"] is False
    assert len(report.sections(study(), ALL)["ws-fig4"]["tables"]) == 1
    t.runs = t.runs[["run", "status"]]  # no designation sizes: no windows
    s = report.sections(t, ALL)
    assert s["cg-fig23"]["window"] is None and s["cg-fig23"]["tables"] == []


def test_render_page_counts_contents_and_images():
    t = study()
    t.runs = t.runs.assign(status=["ok", "failed"][:len(t.runs)] if len(t.runs) == 2 else "ok")
    t.runs = pd.concat([t.runs, pd.DataFrame([dict(run="x", status="failed", n_pristine=1, n_corrupt=1)])])
    t.runs = t.runs.assign(steps_done=5, steps=10)
    images = {**dict.fromkeys(report.FIGURES), "learning_curves": b"\x89PNG lc", "m_coherence": b"\x89PNG mc"}
    card = pd.DataFrame([dict(id="a", paper="CG", section="§2", figure="cg-fig1", claim="c1", statistic="s", value=0.5,
                              low=0.25, high=0.75, n=3, verdict="holds", reason="", detail="d"),
                         dict(id="b", paper="W&S", section="§3", figure="ws-s3", claim="c2", statistic="s", value=1.0,
                              low=0.5, high=2.0, n=3, verdict="holds", reason="", detail="")], columns=findings.COLUMNS)
    html = report.render(card, t, images, params(study="hand"), {}, {"git commit": "abc"})
    assert "<title>coherent-gradients report: hand</title>" in html and "1 of 2 runs finished ok" in html
    assert "fashion_mnist, mlp-8;" in html
    toc = re.findall(r'<li><a href="#([^"]+)">', html)
    assert toc == ["cg-fig1", "mc", "runs", "params", "provenance"]
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="figure (\w+)">', html)
    import base64
    assert imgs == [(base64.b64encode(b"\x89PNG lc").decode(), "learning_curves"),
                    (base64.b64encode(b"\x89PNG mc").decode(), "m_coherence")]
    assert '<a href="#cg-fig1"' in html and '<a href="#ws-s3"' not in html  # no dead link
    assert "<th>git commit</th><td>abc</td>" in html and "study: hand" in html


# ---------------------------------------------------------------------------- the stage

def load_stage():
    import importlib.util
    spec = importlib.util.spec_from_file_location("stage_report", ROOT / "stages" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # importing it must not run it
    return mod


def test_stage_writes_its_outputs_and_logs_what_it_did(tmp_path, monkeypatch):
    stage = load_stage()
    metrics, runs = study_metrics()
    res, out = tmp_path / "res", tmp_path / "out"
    (res / "logs" / "train").mkdir(parents=True)
    runs = runs.assign(model="mlp-8", steps_done=100, steps=100)
    runs = pd.concat([runs, runs.assign(run="bad", status="diverged")], ignore_index=True)
    cgtables.write_parquet(metrics, res / "metrics.parquet")
    cgtables.write_parquet(runs, res / "runs.parquet")
    cgtables.write_parquet(pd.DataFrame({"example": [0, 1, 2], "difficulty": [0, 2, 2]}), res / "difficulty.parquet")
    (res / "logs" / "train" / "E2_0.5.log").write_text("done: ok on cpu, wall 3.0 s\n")
    p = params(study="st")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    seen = {}

    def draw(t, plots_dir):  # the figures themselves are test_plots.py's
        seen["t"], seen["dir"] = t, plots_dir
        return {**dict.fromkeys(report.FIGURES), "learning_curves": b"\x89PNG lc", "easy_hard": b"\x89PNG eh"}
    monkeypatch.setattr(report, "draw", draw)
    args = ["--params", str(tmp_path / "params.yaml"), "--results", str(res), "--out", str(out),
            "--log", str(tmp_path / "report.log")]
    t0 = time.perf_counter()
    stage.main(args)
    took = time.perf_counter() - t0
    assert seen["dir"] == out / "plots" and seen["t"].seeds is None  # no difficulty_seeds.csv
    assert list(seen["t"].hist["count"]) == [1, 0, 2]  # K = 2 difficulty seeds in params: levels 0, 1, 2
    card = pd.read_csv(out / "findings.csv")
    assert len(card) == len(findings.CLAIMS) and (out / "findings.json").is_file()
    doc = yaml.safe_load((out / cli.SCORECARD).read_text())
    assert doc["runs"] == 1 and doc["diverged"] == 1 and sum(doc.values()) == 2 + len(findings.CLAIMS)
    html = (out / "report.html").read_text()
    assert "<title>coherent-gradients report: st</title>" in html and "wall 3.0" not in html
    assert "<td>E2_0.5</td><td>mlp-8</td><td>ok</td><td>100 / 100</td><td>3.0</td><td>cpu</td>" in html
    (line,) = (tmp_path / "report.log").read_text().splitlines()
    counts = ", ".join(f"{int((card['verdict'] == v).sum())} {v}" for v in findings.VERDICTS)
    m = re.fullmatch(rf"{re.escape(str(out))}/report.html: (\d\.\d\d) MB, 2 of 9 figures \(learning_curves, "
                     rf"easy_hard\); {len(card)} findings: {re.escape(counts)}; (\d+\.\d) s", line)
    assert m, line
    assert m.group(1) == f"{len(html) / 1e6:.2f}"
    assert float(m.group(1)) > 0 and float(m.group(2)) <= took + 0.1
    # with the easy/hard seeds table
    pd.DataFrame([dict(seed=0, step=40, epoch=1.5, accuracy=0.5, easy=3, hard=2)]).to_csv(
        res / "difficulty_seeds.csv", index=False)
    stage.main(args)
    assert seen["t"].seeds.to_dict("records") == [dict(seed=0, step=40, epoch=1.5, accuracy=0.5, easy=3, hard=2)]
    # the page's size in MB at two decimals: 5000 and 15000 characters sit on rounding boundaries
    for chars, mb in ((5000, "0.01"), (15000, "0.01")):
        monkeypatch.setattr(report, "render", lambda *a, n=chars, **k: "x" * n)
        stage.main(args)
        assert (out / "report.html").read_text() == "x" * chars
        assert f"/report.html: {mb} MB, 2 of 9 figures" in (tmp_path / "report.log").read_text()
    # without folders: the study's own, results/st/, read and written
    monkeypatch.chdir(tmp_path)
    shutil.copytree(res, tmp_path / "results" / "st")
    stage.main(["--params", "params.yaml", "--log", "default.log"])
    assert seen["dir"] == Path("results/st/plots") and (tmp_path / "results" / "st" / "report.html").is_file()
    # --out alone: the tables read from it too (not from the study's folder, gone now)
    shutil.copytree(res, tmp_path / "third")
    shutil.rmtree(tmp_path / "results")
    stage.main(["--params", "params.yaml", "--out", "third", "--log", "default.log"])
    assert seen["dir"] == Path("third/plots") and (tmp_path / "third" / cli.SCORECARD).is_file()
