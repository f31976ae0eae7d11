"""cglib.plots on small hand-made tables (no smoke study): what each figure draws (the data of
every line, band, error bar, bar and image; the titles, labels, scales and keys that name it).
Expected values are worked out by hand or with plain pandas / numpy from the same rows."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cglib import plots
from cglib import tables as cgtables

DEFAULTS = dict(experiment="E1", dataset="synthetic", model="mlp-8", optimizer="sgd", clip=None, noise=0.0, seed=0,
                subset="full", step=0, epoch=0.0, split="train", metric="accuracy", layer="all", null=-1, value=0.0)


def row(**kw) -> dict:
    r = {**DEFAULTS, **kw}
    if "run" not in kw:
        clip = r["clip"] or 0
        r["run"] = f"{r['experiment']}_{r['model']}_{r['subset']}_{r['optimizer']}_c{clip}_n{r['noise']:g}_s{r['seed']}"
    return r


def frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(cgtables.METRIC_COLUMNS))
    return df.astype(cgtables.METRIC_COLUMNS)


def curve_rows(values: dict, steps=(0, 10, 100), **kw) -> list:
    """One row per step for each seed: values = {seed: [value per step]}."""
    return [row(seed=s, step=st, value=v, **kw) for s, vs in values.items() for st, v in zip(steps, vs)]


def lines(ax, **match):
    """The axes' lines whose properties match (e.g. color="C2", linestyle="--")."""
    got = []
    for ln in ax.lines:
        props = dict(color=ln.get_color(), linestyle=ln.get_linestyle(), label=ln.get_label(), gid=ln.get_gid())
        if all(props[k] == v for k, v in match.items()):
            got.append(ln)
    return got


def xy(ln):
    return list(map(float, ln.get_xdata())), list(map(float, ln.get_ydata()))


def band(coll) -> dict:
    """x → (low, high) of a fill_between band."""
    v = coll.get_paths()[0].vertices
    out = {}
    for x in np.unique(v[:, 0]):
        ys = v[v[:, 0] == x, 1]
        out[float(x)] = (float(ys.min()), float(ys.max()))
    return out


def legend(ax):
    leg = ax.get_legend()
    return [(h.get_label(), h.get_color(), h.get_linestyle()) for h in leg.legend_handles]


def grid(fig, rows, cols):
    """fig.axes as rows × cols (subplots' order: row by row)."""
    assert len(fig.axes) == rows * cols
    return [fig.axes[i * cols:(i + 1) * cols] for i in range(rows)]


@pytest.fixture(autouse=True)
def close_figures(monkeypatch):
    # the layout pass moves axes, not data, and is most of a figure's cost: skipped here
    monkeypatch.setattr(plt.Figure, "tight_layout", lambda self, *a, **k: None)
    yield
    plt.close("all")


# ---------------------------------------------------------------------------- plots: helpers

def test_variant_adds_the_level_of_winsorized_runs():
    df = frame([row(optimizer="sgd"), row(optimizer="winsorized", clip=2), row(optimizer="rm3", clip=None)])
    assert list(plots.variant(df)) == ["sgd", "winsorized c=2", "rm3"]


def test_ordered_sgd_then_ws_then_cg_levels_ascending_unknown_last():
    names = ["zz", "winsorized c=10", "m3", "aa", "sgd", "winsorized c=2", "ra3", "rm3"]
    assert plots.ordered(names) == ["sgd", "rm3", "ra3", "m3", "winsorized c=2", "winsorized c=10", "aa", "zz"]
    assert plots.ordered(["winsorized c=1", "winsorized"]) == ["winsorized", "winsorized c=1"]  # no level = 0
    assert plots.ordered(["winsorized c=0", "winsorized"]) == ["winsorized c=0", "winsorized"]  # equal: kept


def test_prefer_sgd_else_the_first_variant_by_name():
    df = frame([row(optimizer="rm3"), row(optimizer="sgd"), row(optimizer="m3")])
    assert list(plots.prefer_sgd(df)["optimizer"]) == ["sgd"]
    assert list(plots.prefer_sgd(df[df["optimizer"] != "sgd"])["optimizer"]) == ["m3"]


def test_curve_is_the_seed_mean_with_a_one_sd_band():
    df = frame(curve_rows({0: [0.1, 0.5, 0.9], 1: [0.3, 0.5, 0.6]}))
    fig, ax = plt.subplots()
    plots._curve(ax, df, color="C3", linestyle="--")
    (ln,) = ax.lines
    assert xy(ln) == ([0, 10, 100], pytest.approx([0.2, 0.5, 0.75]))
    assert ln.get_color() == "C3" and ln.get_linestyle() == "--"
    (coll,) = ax.collections
    sd = np.array([np.std([0.1, 0.3], ddof=1), 0.0, np.std([0.9, 0.6], ddof=1)])
    b = band(coll)
    assert [b[x] for x in (0.0, 10.0, 100.0)] == [pytest.approx((m - s, m + s)) for m, s in zip([0.2, 0.5, 0.75], sd)]
    # one seed, or band=False: the line alone
    fig, ax = plt.subplots()
    plots._curve(ax, df[df["seed"] == 0])
    assert len(ax.lines) == 1 and not ax.collections
    fig, ax = plt.subplots()
    plots._curve(ax, df, band=False)
    assert len(ax.lines) == 1 and not ax.collections
    # one seed at one step only still has a band (any step with several seeds)
    fig, ax = plt.subplots()
    plots._curve(ax, frame(curve_rows({0: [0.1, 0.5], 1: [0.3]})))
    assert len(ax.collections) == 1
    fig, ax = plt.subplots()
    plots._curve(ax, df.iloc[:0])
    assert not ax.lines and not ax.collections


def test_steps_axis_is_symlog_linear_below_ten():
    fig, ax = plt.subplots()
    plots._steps(ax)
    assert ax.get_xscale() == "symlog" and ax.xaxis.get_transform().linthresh == 10


def test_keys_name_styles_and_colours():
    fig, ax = plt.subplots()
    plots._key(ax, plots._color_key(["a", "b"]) + plots._style_key({"train": "-", "test": "--"}))
    assert [(lab, col) for lab, col, _ in legend(ax)][:2] == [("a", "C0"), ("b", "C1")]
    assert [(lab, st) for lab, _, st in legend(ax)][2:] == [("train", "-"), ("test", "--")]


def test_curves_keeps_whole_model_real_designation_full_set():
    df = frame([row(metric="accuracy"), row(metric="loss"), row(metric="accuracy", layer="fc1"),
                row(metric="accuracy", null=0), row(metric="accuracy", subset="e-train"), row(metric="overfit")])
    got = plots._curves(df, ["accuracy", "loss"])
    assert list(got.index) == [0, 1]


def test_layer_order_is_network_order():
    names = ["features.10", "fc", "10", "3", "features.2", "1"]
    assert sorted(names, key=plots._layer_order) == ["1", "3", "10", "fc", "features.2", "features.10"]


def test_placeholder_names_what_is_not_measured(tmp_path):
    fig = plots.placeholder("E9 things")
    (ax,) = fig.axes
    assert not ax.axison and [t.get_text() for t in ax.texts] == ["this study does not measure E9 things"]
    png = plots.save(fig, tmp_path / "x")
    assert (tmp_path / "x.png").read_bytes() == png and png[:4] == b"\x89PNG"
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")
    assert not plt.fignum_exists(fig.number)


# ---------------------------------------------------------------------------- plots: CG


def learning_rows():
    rows = []
    for noise in (0.0, 0.5):
        for k, split in enumerate(plots.SPLIT_STYLE):
            for metric in ("accuracy", "loss"):
                base = 0.1 * k + (0.01 if metric == "loss" else 0) + noise
                rows += curve_rows({0: [base, base + 0.2, base + 0.4], 1: [base + 0.1, base + 0.2, base + 0.3]},
                                   noise=noise, split=split, metric=metric)
    rows += curve_rows({0: [9, 9, 9]}, optimizer="rm3", split="train")  # SGD is preferred
    rows += curve_rows({0: [8, 8, 8]}, split="e-test")  # not a split of the figure
    rows += curve_rows({0: [7, 7, 7]}, layer="fc1") + curve_rows({0: [7, 7, 7]}, null=0)
    rows += curve_rows({0: [7, 7, 7]}, metric="overfit")
    return frame(rows)


def test_learning_curves_fig_every_split_per_noise_level():
    df = learning_rows()
    fig = plots.learning_curves_fig(df)
    (top0, top1), (bot0, bot1) = grid(fig, 2, 2)
    assert [a.get_title() for a in (top0, top1)] == ["noise 0", "noise 0.5"]
    assert top0.get_ylabel() == "sgd: accuracy" and bot0.get_ylabel() == "sgd: training loss"
    assert bot0.get_xlabel() == bot1.get_xlabel() == "step" and bot0.get_yscale() == "log"
    assert top1.get_ylim() == pytest.approx((0, 1.02)) and top0.get_ylim() == pytest.approx((0, 1.02))
    for j, noise in enumerate((0.0, 0.5)):
        for ax, metric, splits in ((grid(fig, 2, 2)[0][j], "accuracy", list(plots.SPLIT_STYLE)),
                                   (grid(fig, 2, 2)[1][j], "loss", ["train", "pristine", "corrupt"])):
            assert [ln.get_label() for ln in ax.lines] == splits, (metric, noise)
            assert ax.get_xscale() == "symlog"
            for ln, coll in zip(ax.lines, ax.collections):
                color, style = plots.SPLIT_STYLE[ln.get_label()]
                assert ln.get_color() == color and ln.get_linestyle() == style
                sel = df[(df["metric"] == metric) & (df["split"] == ln.get_label()) & (df["noise"] == noise)
                         & (df["optimizer"] == "sgd") & (df["layer"] == "all") & (df["null"] == -1)]
                mean = sel.groupby("step")["value"].mean()
                assert xy(ln) == (list(mean.index), pytest.approx(list(mean)))
                assert band(coll)[100.0] == pytest.approx((mean[100] - np.std([0.4, 0.3], ddof=1) + 0.0,
                                                           mean[100] + np.std([0.4, 0.3], ddof=1)))
    assert legend(top1) == [(k, c, s) for k, (c, s) in plots.SPLIT_STYLE.items()]
    # without SGD, the first variant names the rows
    fig = plots.learning_curves_fig(frame(curve_rows({0: [1, 1, 1]}, optimizer="rm3")))
    assert fig.axes[0].get_ylabel() == "rm3: accuracy"
    assert plots.learning_curves_fig(df[df["split"] == "e-test"]) is None


def shares_rows(noises=(0.25, 0.5), steps=12, nulls=(0, 1), seed=0):
    """E2 runs (SGD, one per noise level) with the real designation (null −1) and null worlds:
    per-step shares f and running per-example sums i; and the runs table with the sizes."""
    rng = np.random.default_rng(seed)
    rows, runs = [], []
    for noise in noises:
        run = f"E2_{noise:g}"
        for null in (-1, *nulls):
            d_p, d_c = rng.uniform(0.1, 1.0, steps), rng.uniform(0.1, 1.0, steps)
            per = {"f_pristine": d_p / (d_p + d_c), "f_corrupt": d_c / (d_p + d_c),
                   "i_pristine": np.cumsum(d_p) / 20, "i_corrupt": np.cumsum(d_c) / 10}
            for metric, values in per.items():
                rows += [row(run=run, experiment="E2", noise=noise, metric=metric, null=null, step=st, value=float(v))
                         for st, v in enumerate(values)]
        runs.append(dict(run=run, status="ok", n_pristine=20, n_corrupt=10))
    return frame(rows), pd.DataFrame(runs)


def test_loss_shares_fig_columns_windows_nulls_and_scale():
    metrics, runs = shares_rows(noises=(0.0, 0.25, 0.5, 1.0))
    other = metrics[metrics["noise"] == 0.5].assign(optimizer="rm3", run="E2_rm3")  # SGD is preferred
    metrics = frame(pd.concat([metrics, other]).to_dict("records"))
    fig = plots.loss_shares_fig(metrics, runs, 5)
    (t0, t1), (b0, b1) = grid(fig, 2, 2)  # noise 0 and 1 have no pristine/corrupt pair to compare
    assert len(fig.axes) == 4 and [a.get_title() for a in (t0, t1)] == ["noise 0.25", "noise 0.5"]
    assert t0.get_ylabel() == "share of loss reduction $f$\n(windows of 5 steps)"
    assert b0.get_ylabel() == "cumulative per example $i$" and b0.get_xlabel() == b1.get_xlabel() == "step"
    assert [a.get_xscale() for a in (t0, t1, b0, b1)] == ["symlog"] * 4
    sgd = metrics[metrics["optimizer"] == "sgd"]
    windows = cgtables.windowed_shares(sgd, runs, 5)
    for noise, top, bottom in ((0.25, t0, b0), (0.5, t1, b1)):
        run = f"E2_{noise:g}"
        w = windows[windows["run"] == run]
        (even,) = [ln for ln in top.lines if ln.get_gid() is None]  # f^p = f^c, thin
        assert xy(even)[1] == [0.5, 0.5] and even.get_linewidth() == 0.6
        for kind, color in (("pristine", "C2"), ("corrupt", "C3")):
            nulls = lines(top, gid="windowed-null", color=color)
            assert [xy(ln) for ln in nulls] == [
                (list((g["step_first"] + g["step_last"]) / 2), pytest.approx(list(g[f"f_{kind}"])))
                for _, g in w[w["null"] >= 0].groupby("null")]
            (real,) = lines(top, gid="windowed", color=color)
            assert (real.get_linewidth(), real.get_markersize()) == (1.8, 2.5)
            r = w[w["null"] == -1]
            assert xy(real) == (list((r["step_first"] + r["step_last"]) / 2), pytest.approx(list(r[f"f_{kind}"])))
            (faint,) = lines(top, gid="per-step", color=color)
            assert (faint.get_linewidth(), faint.get_alpha()) == (0.5, 0.3)  # faint and thin under the windows
            f = sgd[(sgd["run"] == run) & (sgd["metric"] == f"f_{kind}") & (sgd["null"] == -1)]
            assert xy(faint) == (list(f["step"]), pytest.approx(list(f["value"])))
            # bottom: i per null world, then the real designation
            cum = sgd[(sgd["run"] == run) & (sgd["metric"] == f"i_{kind}")]
            got = [xy(ln) for ln in lines(bottom, color=color)]
            assert lines(bottom, color=color)[-1].get_linewidth() == 1.8  # the real designation bold
            assert got == [(list(g["step"]), pytest.approx(list(g["value"]))) for _, g in cum.groupby("null")][1:] + \
                [(list(cum[cum["null"] == -1]["step"]), pytest.approx(list(cum[cum["null"] == -1]["value"])))]
        lo, hi = w[["f_pristine", "f_corrupt"]].min().min(), w[["f_pristine", "f_corrupt"]].max().max()
        pad = 0.25 * (hi - lo) + 0.05
        assert top.get_ylim() == pytest.approx((lo - pad, hi + pad))
    assert [lab for lab, _, _ in legend(t1)] == ["pristine (real)", "corrupt (real)", "null worlds", "per step (real)"]
    assert tuple(fig.get_size_inches()) == pytest.approx((6.4, 5.7))  # 3.2 × 2.6 in a panel
    assert [col for _, col, _ in legend(t1)] == ["C2", "C3", "0.4", "0.4"]


def test_loss_shares_fig_without_windows_and_without_e2():
    metrics, runs = shares_rows(noises=(0.0, 1.0), nulls=(0,))
    two = frame(pd.concat([metrics, metrics.assign(seed=1, value=metrics["value"] + 0.1)]).to_dict("records"))
    fig = plots.loss_shares_fig(two, runs[["run", "status"]], 5)
    (t0, t1), _ = grid(fig, 2, 2)  # no level strictly between 0 and 1: every level
    assert [a.get_title() for a in (t0, t1)] == ["noise 0", "noise 1"]
    assert t0.get_ylabel() == "share of loss reduction $f$"
    assert [lab for lab, _, _ in legend(t1)] == ["pristine (real)", "corrupt (real)", "null worlds"]
    for kind, color in (("pristine", "C2"), ("corrupt", "C3")):
        null, real = lines(t0, color=color)
        sel = two[(two["noise"] == 0) & (two["metric"] == f"f_{kind}")]
        for ln, n in ((null, 0), (real, -1)):
            mean = sel[sel["null"] == n].groupby("step")["value"].mean()
            assert xy(ln) == (list(mean.index), pytest.approx(list(mean)))
        assert real.get_linewidth() == 1.8
    assert len(t0.collections) == 2  # the real designation's bands (two seeds)
    assert plots.loss_shares_fig(metrics[metrics["experiment"] != "E2"], runs, 5) is None


def test_null_lines_one_seed_mean_per_null_world():
    df = frame([row(null=n, seed=s, step=st, value=10 * n + s + st) for n in (-1, 0, 2) for s in (0, 1)
                for st in (0, 5)])
    fig, ax = plt.subplots()
    plots._null_lines(ax, df, color="C5")
    assert [xy(ln) for ln in ax.lines] == [([0, 5], [0.5, 5.5]), ([0, 5], [20.5, 25.5])]


def winsor_rows():
    rows = []
    for noise in (0.0, 0.5):
        for opt, clip, base in (("sgd", None, 0.5), ("winsorized", 1, 0.3), ("winsorized", 3, 0.1)):
            for seed, shift in ((0, 0.0), (1, 0.1)):
                for split, off in (("train", 0.2), ("test", 0.0)):
                    v = base + off + shift + noise / 10
                    rows += curve_rows({seed: [v - 0.2, v - 0.1, v]}, optimizer=opt, clip=clip, noise=noise,
                                       split=split, experiment="E3")
                rows += [row(optimizer=opt, clip=clip, noise=noise, seed=seed, step=100, metric="overfit",
                             value=base / 2 + shift + 0.2, experiment="E3")]
    rows += curve_rows({0: [9, 9, 9]}, optimizer="rm3", split="train")  # not a winsorization level
    rows += curve_rows({0: [9, 9, 9]}, optimizer="winsorized", clip=1, split="pristine")
    return frame(rows)


def test_winsorization_fig_final_values_by_level_and_curves_per_level():
    df = winsor_rows()
    fig = plots.winsorization_fig(df)
    (t0, t1), (b0, b1) = grid(fig, 2, 2)
    assert [a.get_title() for a in (t0, t1, b0, b1)] == ["noise 0: at the last step", "noise 0.5: at the last step",
                                                         "noise 0: over training", "noise 0.5: over training"]
    assert t0.get_xlabel() == "winsorization level c" and b0.get_xlabel() == "step"
    assert t0.get_ylabel() == "accuracy / overfit" and b0.get_ylabel() == "accuracy"
    assert list(t1.get_xticks()) == [0, 1, 3] and b1.get_ylim() == pytest.approx((0, 1.02))
    assert b0.get_xscale() == "symlog" and t0.get_ylim() == pytest.approx((0, 1.02))  # data above 0: from 0
    df = df.assign(c=df["clip"].fillna(0).astype(int))
    for noise, top, bottom in ((0.0, t0, b0), (0.5, t1, b1)):
        bars = [c for c in top.containers]
        assert len(bars) == 3
        for cont, (metric, split), color in zip(bars, [("accuracy", "train"), ("accuracy", "test"),
                                                       ("overfit", "train")], ("C0", "C1", "C4")):
            line, _, (segs,) = cont
            sel = df[(df["noise"] == noise) & (df["metric"] == metric) & (df["split"] == split) & (df["step"] == 100)
                     & df["optimizer"].isin(["sgd", "winsorized"])]
            g = sel.groupby("c")["value"]
            assert xy(line) == ([0, 1, 3], pytest.approx(list(g.mean())))
            assert line.get_color() == color
            lows = [s[0][1] for s in segs.get_segments()]
            assert lows == pytest.approx(list(g.mean() - g.std(ddof=1)))
        for i, c in enumerate((0, 1, 3)):
            got = lines(bottom, color=f"C{i}")
            assert [ln.get_linestyle() for ln in got] == ["-", "--"]
            for ln, split in zip(got, ("train", "test")):
                sel = df[(df["noise"] == noise) & (df["metric"] == "accuracy") & (df["split"] == split)
                         & (df["c"] == c) & df["optimizer"].isin(["sgd", "winsorized"])]
                mean = sel.groupby("step")["value"].mean()
                assert xy(ln) == (list(mean.index), pytest.approx(list(mean)))
    assert [lab for lab, _, _ in legend(t1)] == ["train", "test", "overfit"]
    assert tuple(fig.get_size_inches()) == pytest.approx((6.0, 5.9))  # 3.0 × 2.7 in a panel
    assert [(lab, col) for lab, col, _ in legend(b1)] == [("c = 0", "C0"), ("c = 1", "C1"), ("c = 3", "C2"),
                                                          ("train", "0.3"), ("test", "0.3")]
    # one seed: no error bar length (sd 0, not nan)
    fig = plots.winsorization_fig(df[df["seed"] == 0].drop(columns="c"))
    line, _, (segs,) = fig.axes[0].containers[0]
    assert [s[0][1] for s in segs.get_segments()] == pytest.approx(list(line.get_ydata()))
    # overfit below 0 widens the axis
    neg = df.drop(columns="c")
    neg.loc[neg["metric"] == "overfit", "value"] = -0.4
    assert plots.winsorization_fig(frame(neg.to_dict("records"))).axes[0].get_ylim()[0] < -0.4
    assert plots.winsorization_fig(df[df["optimizer"] == "sgd"].drop(columns="c")) is None


def test_robust_optimizers_fig_one_line_per_variant_per_split():
    rows = []
    for noise in (0.0, 0.5):
        for k, opt in enumerate(("m3", "sgd", "rm3", "winsorized")):
            for split in plots.SPLIT_STYLE:
                if noise == 0 and split == "corrupt":
                    continue
                rows += curve_rows({0: [0.1 * k, 0.2, 0.3], 1: [0.1 * k + 0.1, 0.2, 0.5]}, optimizer=opt, noise=noise,
                                   split=split, experiment="E4")
    df = frame(rows)
    fig = plots.robust_optimizers_fig(df)
    axes = grid(fig, 4, 2)
    assert [a.get_title() for a in axes[0]] == ["noise 0", "noise 0.5"]
    assert [a[0].get_ylabel() for a in axes] == [f"{s} accuracy" for s in plots.SPLIT_STYLE]
    assert axes[0][1].get_ylabel() == "" and [a.get_xlabel() for a in axes[-1]] == ["step", "step"]
    assert axes[0][0].get_xlabel() == ""
    assert [t.get_text() for t in axes[3][0].texts] == ["no corrupt examples"] and not axes[3][1].texts
    for i, split in enumerate(plots.SPLIT_STYLE):
        for j, noise in enumerate((0.0, 0.5)):
            ax = axes[i][j]
            assert ax.get_ylim() == pytest.approx((0, 1.02)) and ax.get_xscale() == "symlog"
            for k, opt in enumerate(("sgd", "rm3", "m3")):
                sel = df[(df["noise"] == noise) & (df["split"] == split) & (df["optimizer"] == opt)]
                got = lines(ax, color=f"C{k}", label=opt)
                if sel.empty:
                    assert not got
                    continue
                mean = sel.groupby("step")["value"].mean()
                assert [xy(ln) for ln in got] == [(list(mean.index), pytest.approx(list(mean)))]
    assert legend(axes[0][1]) == [("sgd", "C0", "-"), ("rm3", "C1", "-"), ("m3", "C2", "-")]
    assert plots.robust_optimizers_fig(df[df["optimizer"].isin(["sgd", "winsorized"])]) is None
    assert plots.robust_optimizers_fig(df[df["optimizer"] == "rm3"]) is None
    assert plots.robust_optimizers_fig(df[df["optimizer"].isin(["rm3", "m3"])]) is not None


def test_easy_hard_fig_each_training_subset_on_each_evaluation_set():
    rows = []
    for i, subset in enumerate(("h-train", "e-train")):
        for split in ("train", "e-test", "h-test", "test"):
            for metric in ("loss", "accuracy"):
                rows += curve_rows({0: [0.1 + i, 0.2, 0.3], 1: [0.2 + i, 0.2, 0.4]}, experiment="E6", subset=subset,
                                   split=split, metric=metric)
    for split in ("train", "test", "pristine"):
        rows += curve_rows({0: [0.5, 0.6, 0.7]}, experiment="E1", split=split)
        rows += curve_rows({0: [0.5, 0.6, 0.8]}, experiment="E1", split=split, metric="loss")
    rows += curve_rows({0: [9, 9, 9]}, experiment="E1", noise=0.5)  # noise 0 only
    rows += curve_rows({0: [9, 9, 9]}, experiment="E4", optimizer="rm3")  # SGD only
    rows += curve_rows({0: [9, 9, 9]}, experiment="E6", subset="e-train", layer="fc1")
    rows += curve_rows({0: [9, 9, 9]}, experiment="E6", subset="e-train", null=0)
    rows += curve_rows({0: [9, 9, 9]}, experiment="E6", subset="e-train", metric="overfit")
    df = frame(rows)
    fig = plots.easy_hard_fig(df)
    loss_ax, acc_ax = fig.axes
    assert tuple(fig.get_size_inches()) == pytest.approx((10, 3.6))
    assert loss_ax.get_ylabel() == "loss" and acc_ax.get_ylabel() == "accuracy"
    assert loss_ax.get_yscale() == "log" and acc_ax.get_ylim() == pytest.approx((0, 1.02))
    assert loss_ax.get_xscale() == "symlog" and acc_ax.get_xlabel() == "step"
    styles = {"train": "-", "e-test": "--", "h-test": ":", "test": "-."}
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for i, subset in enumerate(("e-train", "h-train", "full")):
            got = lines(ax, color=f"C{i}")
            splits = list(styles) if subset != "full" else ["train", "test"]
            assert [ln.get_linestyle() for ln in got] == [styles[s] for s in splits], (metric, subset)
            for ln, split in zip(got, splits):
                sel = df[(df["metric"] == metric) & (df["subset"] == subset) & (df["split"] == split)
                         & (df["layer"] == "all") & (df["null"] == -1) & (df["noise"] == 0)
                         & (df["optimizer"] == "sgd")]
                mean = sel.groupby("step")["value"].mean()
                assert xy(ln) == (list(mean.index), pytest.approx(list(mean)))
    labels = [lab for lab, _, _ in legend(acc_ax)]
    assert labels == ["trained on e-train", "trained on h-train", "trained on full", "on train", "on e-test",
                      "on h-test", "on test"]
    assert plots.easy_hard_fig(df[df["experiment"] != "E6"]) is None


def e5_table(noises=(0.0, 0.5)):
    rows = []
    for noise in noises:
        for opt, clip, base in (("rm3", None, 0.6), ("winsorized", 2, 0.5), ("sgd", None, 0.9)):
            for seed, shift in ((0, 0.0), (1, 0.04)):
                for d in (0, 1, 2):
                    rows.append(dict(run=f"{opt}{noise}{seed}", optimizer=opt, clip=clip, noise=noise, seed=seed,
                                     difficulty=d, accuracy=base - 0.1 * d + shift - noise / 10, count=5))
    return pd.DataFrame(rows).astype({"clip": "Int64"})


def test_accuracy_by_difficulty_fig_histogram_then_a_panel_per_noise_level():
    table, hist = e5_table(), pd.DataFrame({"difficulty": [0, 1, 2], "count": [7, 3, 1]})
    fig = plots.accuracy_by_difficulty_fig(table, hist)
    first, p0, p1 = fig.axes
    assert [(p.get_x() + p.get_width() / 2, p.get_height()) for p in first.patches] == [(0, 7), (1, 3), (2, 1)]
    assert first.get_title() == "examples per difficulty" and first.get_ylabel() == "examples"
    low = table["accuracy"].min()
    for ax, noise in ((p0, 0.0), (p1, 0.5)):
        assert ax.get_title() == f"noise {noise:g}: final training accuracy" and ax.get_ylabel() == "accuracy"
        assert ax.get_ylim() == pytest.approx((low - 0.05, 1.01))
        for cont, (i, var) in zip(ax.containers, enumerate(["sgd", "rm3", "winsorized c=2"])):
            line, _, (segs,) = cont
            opt = var.split()[0]
            g = table[(table["noise"] == noise) & (table["optimizer"] == opt)].groupby("difficulty")["accuracy"]
            assert xy(line) == ([0, 1, 2], pytest.approx(list(g.mean()))) and line.get_color() == f"C{i}"
            assert [s[1][1] for s in segs.get_segments()] == pytest.approx(list(g.mean() + g.std(ddof=1)))
        assert len(ax.containers) == 3
    for ax in fig.axes:
        assert ax.get_xlabel() == "difficulty" and list(ax.get_xticks()) == [0, 1, 2]
    assert legend(p1) == [("sgd", "C0", "-"), ("rm3", "C1", "-"), ("winsorized c=2", "C2", "-")]
    # four noise levels: 5 panels in rows of 3, the sixth switched off, the key on the first row's last
    fig = plots.accuracy_by_difficulty_fig(e5_table((0.0, 0.2, 0.4, 0.6)), hist)
    assert len(fig.axes) == 6 and [a.axison for a in fig.axes] == [True] * 5 + [False]
    assert fig.axes[2].get_legend() is not None and fig.axes[5].get_xlabel() == ""
    # one seed: bars of length 0; accuracy near 0: the axis stops at 0
    one = table[table["seed"] == 0].assign(accuracy=lambda d: d["accuracy"] - 0.55)
    fig = plots.accuracy_by_difficulty_fig(one, hist)
    line, _, (segs,) = fig.axes[1].containers[0]
    assert [s[1][1] for s in segs.get_segments()] == pytest.approx(list(line.get_ydata()))
    assert fig.axes[1].get_ylim() == pytest.approx((0, 1.01))
    assert plots.accuracy_by_difficulty_fig(table.iloc[:0], hist) is None
    # a variant missing at one noise level gets no bars there
    fig = plots.accuracy_by_difficulty_fig(table[~((table["optimizer"] == "rm3") & (table["noise"] == 0))], hist)
    assert len(fig.axes[1].containers) == 2 and len(fig.axes[2].containers) == 3


def coherence_metrics():
    rows = []
    for model, noises in (("mlp-8", (0.0, 0.5)), ("cnn-4", (0.5,))):
        for noise in noises:
            for opt in ("rm3", "sgd"):
                for split in ("train", "test"):
                    base = 10.0 if opt == "sgd" else 99.0
                    kw = dict(experiment="E7", model=model, optimizer=opt, noise=noise, split=split)
                    rows += curve_rows({0: [base, base * 2, base], 1: [base + 2, base * 2, base + 4]},
                                       metric="m_coherence", **kw)
                    rows += curve_rows({0: [base / 2, base, 3.0]}, metric="m_coherence", layer="1", **kw)
                    rows += curve_rows({0: [base / 4, base, 3.0]}, metric="m_coherence", layer="10", **kw)
                    rows += curve_rows({0: [base / 3, base, 3.0]}, metric="m_coherence", layer="3", **kw)
                    if model == "mlp-8":
                        rows += curve_rows({0: [2.0, 3.0, 4.0]}, metric="m_coherence_label", **kw)
                    rows += curve_rows({0: [0.2, 0.5, 0.9 if split == "train" else 0.7]}, metric="accuracy",
                                       **{**kw, "experiment": "E1"})
    rows += curve_rows({0: [7.0, 7.0, 7.0]}, metric="m_coherence", experiment="E1")  # not E7
    rows += curve_rows({0: [7.0, 7.0, 7.0]}, metric="m_coherence", experiment="E7", subset="e-train")
    return frame(rows)


def test_coherence_rows_sgd_per_model_and_models_main_first():
    df = coherence_metrics()
    coh = plots.coherence_rows(df)
    assert set(coh["optimizer"]) == {"sgd"} and set(coh["experiment"]) == {"E7"} and set(coh["subset"]) == {"full"}
    assert set(coh["model"]) == {"mlp-8", "cnn-4"} and set(coh["metric"]) == {"m_coherence", "m_coherence_label"}
    assert len(coh) == len(df[(df["experiment"] == "E7") & (df["optimizer"] == "sgd") & (df["subset"] == "full")
                              & df["metric"].str.startswith("m_coh")])
    assert plots.coherence_rows(df[df["metric"] != "m_coherence"]).empty  # the label part alone is not enough
    assert plots._models(coh, "mlp-8") == ["mlp-8", "cnn-4"] and plots._models(coh, None) == ["cnn-4", "mlp-8"]
    assert plots._models(coh, "zzz") == ["cnn-4", "mlp-8"]


def test_m_coherence_fig_rows_per_model_and_what():
    df = coherence_metrics()
    fig = plots.m_coherence_fig(df, m=100, main="mlp-8")
    axes = grid(fig, 5, 2)
    assert [a[0].get_ylabel() for a in axes] == ["mlp-8 sgd\naccuracy", "mlp-8 sgd\nm-coherence",
                                                 "mlp-8 sgd\nm-coh., label part", "cnn-4 sgd\naccuracy",
                                                 "cnn-4 sgd\nm-coherence"]
    assert [a.get_title() for a in axes[0]] == ["noise 0", "noise 0.5"] and axes[1][1].get_title() == ""
    assert axes[0][1].get_ylabel() == "" and [a.get_xlabel() for a in axes[-1]] == ["step", "step"]
    assert [t.get_text() for t in axes[3][0].texts] == ["not measured"] and not axes[3][0].lines
    expect = {("mlp-8", "accuracy"): "accuracy", ("mlp-8", "m_coherence"): "m_coherence",
              ("mlp-8", "m_coherence_label"): "m_coherence_label", ("cnn-4", "accuracy"): "accuracy",
              ("cnn-4", "m_coherence"): "m_coherence"}
    for i, (model, what) in enumerate(expect):
        for j, noise in enumerate((0.0, 0.5)):
            ax = axes[i][j]
            sel = df[(df["model"] == model) & (df["optimizer"] == "sgd") & (df["noise"] == noise)
                     & (df["metric"] == what) & (df["layer"] == "all") & (df["subset"] == "full")
                     & (df["experiment"] == ("E1" if what == "accuracy" else "E7"))]
            if sel.empty:
                continue
            color = "C0" if what == "accuracy" else "C4"
            got = lines(ax, color=color)
            assert [ln.get_linestyle() for ln in got] == ["-", "--"]
            for ln, split in zip(got, ("train", "test")):
                mean = sel[sel["split"] == split].groupby("step")["value"].mean()
                assert xy(ln) == (list(mean.index), pytest.approx(list(mean))), (model, what, noise)
            refs = [xy(ln)[1][0] for ln in lines(ax, color="0.6")]
            if what == "accuracy":
                assert ax.get_ylim() == pytest.approx((0, 1.02)) and not refs and ax.get_yscale() == "linear"
            else:
                assert ax.get_yscale() == "log" and refs == [1, 100]
            assert ax.get_xscale() == "symlog"
    assert [lab for lab, _, _ in legend(axes[0][1])] == ["train", "test"]
    fig = plots.m_coherence_fig(df, main="cnn-4")  # no m: the orthogonal limit alone
    axes = grid(fig, 5, 2)
    assert axes[0][0].get_ylabel() == "cnn-4 sgd\naccuracy"
    assert [xy(ln)[1][0] for ln in lines(axes[1][1], color="0.6")] == [1]
    assert plots.m_coherence_fig(df[df["experiment"] != "E7"]) is None


def test_m_coherence_layers_fig_layers_in_network_order_per_model():
    df = coherence_metrics()
    fig = plots.m_coherence_layers_fig(df, "cnn-4")
    axes = grid(fig, 2, 4)
    assert [a.get_title() for a in axes[0]] == ["cnn-4: whole model", "cnn-4: layer 1", "cnn-4: layer 3",
                                                "cnn-4: layer 10"]
    assert [a.get_title() for a in axes[1]][:4] == ["mlp-8: whole model", "mlp-8: layer 1", "mlp-8: layer 3",
                                                    "mlp-8: layer 10"]
    assert [a[0].get_ylabel() for a in axes] == ["m-coherence", "m-coherence"] and axes[0][1].get_ylabel() == ""
    coh = df[(df["experiment"] == "E7") & (df["optimizer"] == "sgd") & (df["metric"] == "m_coherence")
             & (df["subset"] == "full")]
    for i, model in enumerate(("cnn-4", "mlp-8")):
        noises = [0.0, 0.5]
        for j, layer in enumerate(("all", "1", "3", "10")):
            ax = axes[i][j]
            assert ax.get_yscale() == "log" and ax.get_xscale() == "symlog" and ax.get_xlabel() == "step"
            for k, noise in enumerate(noises):
                got = lines(ax, color=f"C{k}")
                sel = coh[(coh["model"] == model) & (coh["layer"] == layer) & (coh["noise"] == noise)]
                if sel.empty:
                    assert not got
                    continue
                assert [ln.get_linestyle() for ln in got] == ["-", "--"]
                for ln, split in zip(got, ("train", "test")):
                    mean = sel[sel["split"] == split].groupby("step")["value"].mean()
                    assert xy(ln) == (list(mean.index), pytest.approx(list(mean)))
    assert [lab for lab, _, _ in legend(axes[0][3])] == ["noise 0", "noise 0.5", "train sample", "test sample"]
    # a model with fewer layers: its row's extra panels are switched off
    fewer = df[~((df["model"] == "mlp-8") & df["layer"].isin(["3", "10"]))]
    axes = grid(plots.m_coherence_layers_fig(fewer, "mlp-8"), 2, 4)
    assert [a.axison for a in axes[0]] == [True, True, False, False] and all(a.axison for a in axes[1])
    assert axes[0][1].get_legend() is not None
    assert plots.m_coherence_layers_fig(df[df["metric"] != "m_coherence"]) is None


def test_difficulty_scores_fig_rows_in_order_values_per_score():
    rows = []
    for subset, opt, clip, noise in (("full", "winsorized", 2, 0.5), ("full", "sgd", None, 0.5),
                                     ("e-train", "sgd", None, 0.0), ("full", "sgd", None, 0.0),
                                     ("full", "zz", None, 0.0), ("full", "rm3", None, 0.0)):
        for seed in (0, 1):
            for k, score in enumerate(("el2n", "aum")):
                rows.append(dict(run=f"{subset}{opt}{noise}{seed}", subset=subset, optimizer=opt, clip=clip,
                                 noise=noise, seed=seed, score=score, spearman_difficulty=0.1 * k + 0.2 * seed - noise,
                                 auroc_corrupt=0.5 + 0.1 * k + 0.1 * seed))
    t = pd.DataFrame(rows).astype({"clip": "Int64"})
    fig = plots.difficulty_scores_fig(t)
    left, right = fig.axes[:2]
    assert tuple(fig.get_size_inches()) == pytest.approx((11, 0.2 * 6 + 2.4))  # grows with the rows
    assert {(tk.get_rotation(), tk.get_fontsize()) for tk in left.get_xticklabels()} == {(35, 7)}
    assert {tk.get_fontsize() for tk in right.get_yticklabels()} == {7}
    order = ["sgd, noise 0", "rm3, noise 0", "zz, noise 0", "sgd, noise 0.5", "winsorized c=2, noise 0.5",
             "sgd on e-train"]
    for ax, col, title in ((left, "spearman_difficulty", "Spearman ρ with difficulty"),
                           (right, "auroc_corrupt", "AUROC for corrupt labels (blank: none)")):
        assert [tk.get_text() for tk in ax.get_yticklabels()] == order and ax.get_title() == title
        assert [tk.get_text() for tk in ax.get_xticklabels()] == ["aum", "el2n"]
        (im,) = ax.images
        label = {r: r for r in order}
        want = np.array([[t[(t["score"] == s) & (t.assign(r=0)["r"] == 0)
                           & (plots.variant(t).where(t["subset"] == "full", "sgd on " + t["subset"])
                              + np.where(t["subset"] == "full", t["noise"].map(lambda n: f", noise {n:g}"), "")
                              == label[r])][col].mean() for s in ("aum", "el2n")] for r in order])
        assert np.allclose(im.get_array(), want)
    assert left.images[0].get_clim() == (-1, 1) and right.images[0].get_clim() == (0, 1)
    assert left.images[0].get_cmap().name == "RdBu_r"
    # a score without an AUROC anywhere (no corrupt labels) keeps its blank column
    blank = plots.difficulty_scores_fig(t.assign(auroc_corrupt=t["auroc_corrupt"].where(t["score"] == "el2n")))
    right = blank.axes[1]
    assert [tk.get_text() for tk in right.get_xticklabels()] == ["aum", "el2n"]
    assert np.isnan(np.asarray(right.images[0].get_array().filled(np.nan))[:, 0]).all()
    assert plots.difficulty_scores_fig(t.iloc[:0]) is None


def test_figures_of_a_single_row():
    """One measured value is a figure too (the optimizer read from that row)."""
    fig = plots.learning_curves_fig(frame([row(value=0.5)]))
    assert fig.axes[0].get_ylabel() == "sgd: accuracy" and xy(fig.axes[0].lines[0]) == ([0], [0.5])
    fig = plots.m_coherence_fig(frame([row(experiment="E7", metric="m_coherence", value=3.0)]), main="mlp-8")
    acc, coh = fig.axes
    assert coh.get_ylabel() == "mlp-8 sgd\nm-coherence" and xy(lines(coh, color="C4")[0]) == ([0], [3.0])
    assert [t.get_text() for t in acc.texts] == ["not measured"]
