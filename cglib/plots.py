"""The report's figures (matplotlib, no display needed), one function per paper figure.

Each `*_fig` function takes results tables and returns a Figure, or None when the study did not
measure what it shows (the report then omits the section and `save` writes `placeholder`).
Where a study has several seeds, curves are the seed mean with a ±1 sd band (group by everything
but seed); one seed gives a plain line.

Nine figures of about 40 lines each share the styling helpers at the top, so they stay in one
module (about 500 lines): a change of look is made in one place.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from cglib.tables import _atomic, last_step, windowed_shares  # noqa: E402

# SVG ids are hashes salted by a random value unless fixed, and SVG/PDF carry a date: both would
# make the same tables give different bytes
plt.rcParams.update({"svg.hashsalt": "cglib", "font.size": 9, "axes.titlesize": 9, "legend.fontsize": 7})
SPLIT_STYLE = {"train": ("C0", "-"), "test": ("C1", "-"), "pristine": ("C2", "--"), "corrupt": ("C3", "--")}
DPI = 100


# ---------------------------------------------------------------------------- helpers

def save(fig, stem: str | Path) -> bytes:
    """<stem>.png and <stem>.svg, each written atomically; returns the PNG bytes (the report
    embeds them)."""
    stem = Path(stem)
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    _atomic(stem.with_suffix(".png"), lambda tmp: tmp.write_bytes(png.getvalue()))
    _atomic(stem.with_suffix(".svg"), lambda tmp: tmp.write_bytes(svg.getvalue()))
    return png.getvalue()


def placeholder(what: str):
    """The engines declare every figure up front; a study that does not measure `what` gets a
    figure saying so rather than a missing file."""
    fig, ax = plt.subplots(figsize=(4, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"this study does not measure {what}", ha="center", va="center")
    return fig


def variant(df: pd.DataFrame) -> pd.Series:
    """Gradient variant label: the optimizer, plus the level for winsorized runs."""
    return df["optimizer"].astype(str) + df["clip"].map(lambda c: "" if pd.isna(c) else f" c={c}")


ORDER = ["sgd", "rm3", "ra3", "m3", "winsorized"]  # SGD first, then W&S's order, then CG's


def ordered(names) -> list:
    """Variant labels in ORDER (winsorized levels ascending), unknown ones last."""
    def key(name):
        opt, _, clip = str(name).partition(" c=")
        return (ORDER.index(opt) if opt in ORDER else len(ORDER), opt, int(clip or 0))
    return sorted(names, key=key)


def prefer_sgd(df: pd.DataFrame) -> pd.DataFrame:
    """The SGD runs where there are any (CG Fig. 1, E2, E7 are about plain SGD), else the first variant."""
    names = set(df["optimizer"])
    return df[df["optimizer"] == ("sgd" if "sgd" in names else min(names))]


def _curve(ax, df: pd.DataFrame, x: str = "step", band: bool = True, **style) -> None:
    """Mean of `value` over seeds per `x`, with a ±1 sd band where there are several seeds (and `band`)."""
    g = df.groupby(x)["value"]
    mean, sd, n = g.mean(), g.std(ddof=1), g.count()
    if mean.empty:
        return
    (line,) = ax.plot(mean.index, mean.values, **style)
    if band and (n > 1).any():
        ax.fill_between(mean.index, (mean - sd).values, (mean + sd).values, color=line.get_color(),
                        alpha=0.18, linewidth=0)


def _steps(ax) -> None:
    ax.set_xscale("symlog", linthresh=10)  # dense early steps and the sparse rest alike
    ax.grid(alpha=0.3)


def _grid(rows: int, cols: int, w: float = 2.9, h: float = 2.3, **kw):
    return plt.subplots(rows, cols, figsize=(max(w * cols, 5.5), h * rows + 0.5), squeeze=False, **kw)


def _key(ax, handles, **kw) -> None:
    """A legend of proxy artists (colour = one thing, line style = another) outside the data."""
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kw)


def _style_key(styles: dict) -> list:
    return [Line2D([], [], color="0.3", linestyle=s, label=k) for k, s in styles.items()]


def _color_key(labels) -> list:
    return [Line2D([], [], color=f"C{i}", label=lab) for i, lab in enumerate(labels)]


def _none_here(ax, what: str = "not measured") -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.5")
    # per-axes tick switches: set_xticks([]) would clear the locator the whole shared column uses
    ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def _curves(metrics: pd.DataFrame, metric_names) -> pd.DataFrame:
    return metrics[metrics["metric"].isin(metric_names) & (metrics["layer"] == "all") & (metrics["null"] == -1)
                   & (metrics["subset"] == "full")]


# ---------------------------------------------------------------------------- CG

def learning_curves_fig(metrics: pd.DataFrame):
    """CG Fig. 1 (and W&S Fig. 1): SGD, one column per noise level; top, train / test /
    pristine / corrupt accuracy; bottom, training loss (all, pristine, corrupt) over steps."""
    df = _curves(metrics, ["accuracy", "loss"])
    df = df[df["split"].isin(list(SPLIT_STYLE))]
    if df.empty:
        return None
    df = prefer_sgd(df)
    noises = sorted(df["noise"].unique())
    fig, axes = _grid(2, len(noises), sharex=True, sharey="row")
    for j, noise in enumerate(noises):
        cell = df[df["noise"] == noise]
        for row, metric in enumerate(("accuracy", "loss")):
            ax = axes[row][j]
            for split, (color, style) in SPLIT_STYLE.items():
                if metric == "loss" and split == "test":
                    continue  # the training loss, as CG Fig. 1(c); test is in the row above
                _curve(ax, cell[(cell["metric"] == metric) & (cell["split"] == split)], color=color,
                       linestyle=style, label=split)
            _steps(ax)
        axes[0][j].set_title(f"noise {noise:g}")
        axes[0][j].set_ylim(0, 1.02)
        axes[1][j].set_yscale("log")
        axes[1][j].set_xlabel("step")
    name = df["optimizer"].iloc[0]
    axes[0][0].set_ylabel(f"{name}: accuracy")
    axes[1][0].set_ylabel(f"{name}: training loss")
    _key(axes[0][-1], [Line2D([], [], color=c, linestyle=s, label=k) for k, (c, s) in SPLIT_STYLE.items()])
    fig.tight_layout()
    return fig


def loss_shares_fig(metrics: pd.DataFrame, runs: pd.DataFrame, window: int):
    """CG Figs. 2–3, one column per noise level: top, f^p and f^c on loss reductions summed over
    windows of `window` tracked steps (tables.windowed_shares, what cglib.findings judges), each
    window drawn at its middle step, over the per-step f^p and f^c as a faint layer (per step they
    swing by ±1 where the loss barely moves); bottom, the cumulative per-example contributions i^p
    and i^c. Real designation bold (seed mean ± sd), the K null worlds thin (seed mean). Without
    the designation sizes in `runs` (n_pristine, n_corrupt) there are no windows: the per-step
    curves are drawn as the main layer."""
    e2 = metrics[metrics["experiment"] == "E2"]
    if e2.empty:
        return None
    e2 = prefer_sgd(e2)
    windows = windowed_shares(e2, runs, window).merge(e2.drop_duplicates("run")[["run", "noise"]], on="run")
    faint = not windows.empty
    noises = sorted(n for n in e2["noise"].unique() if 0 < n < 1) or sorted(e2["noise"].unique())
    fig, axes = _grid(2, len(noises), w=3.2, h=2.6, sharex=True)
    color = {"pristine": "C2", "corrupt": "C3"}
    for j, noise in enumerate(noises):
        cell = e2[e2["noise"] == noise]
        ax = axes[0][j]
        ax.axhline(0.5, color="0.5", linewidth=0.6, linestyle=":")  # f^p = f^c
        for kind, c in color.items():
            sel = cell[cell["metric"] == f"f_{kind}"]
            if faint:  # per step: the real designation only, under the windows
                _curve(ax, sel[sel["null"] == -1], band=False, color=c, linewidth=0.5, alpha=0.3, gid="per-step")
            else:
                _null_lines(ax, sel, color=c)
                _curve(ax, sel[sel["null"] == -1], color=c, linewidth=1.8)
            w = windows[windows["noise"] == noise]
            w = w.assign(step=(w["step_first"] + w["step_last"]) / 2, value=w[f"f_{kind}"])
            _null_lines(ax, w, color=c, linewidth=0.8, alpha=0.65, gid="windowed-null")
            _curve(ax, w[w["null"] == -1], color=c, linewidth=1.8, marker="o", markersize=2.5, gid="windowed")
        w = windows[windows["noise"] == noise][["f_pristine", "f_corrupt"]].to_numpy(float)
        if faint and np.isfinite(w).any():  # the windows set the scale; a per-step spike is clipped
            lo, hi = np.nanmin(w), np.nanmax(w)
            pad = 0.25 * (hi - lo) + 0.05
            ax.set_ylim(lo - pad, hi + pad)
        ax = axes[1][j]
        for kind, c in color.items():
            sel = cell[cell["metric"] == f"i_{kind}"]
            _null_lines(ax, sel, color=c)
            _curve(ax, sel[sel["null"] == -1], color=c, linewidth=1.8)
        for ax in (axes[0][j], axes[1][j]):
            _steps(ax)
        axes[1][j].set_xlabel("step")
        axes[0][j].set_title(f"noise {noise:g}")
    axes[0][0].set_ylabel(f"share of loss reduction $f$\n(windows of {window} steps)" if faint
                          else "share of loss reduction $f$")
    axes[1][0].set_ylabel("cumulative per example $i$")
    handles = [Line2D([], [], color="C2", linewidth=1.8, label="pristine (real)"),
               Line2D([], [], color="C3", linewidth=1.8, label="corrupt (real)"),
               Line2D([], [], color="0.4", linewidth=0.8, label="null worlds")]
    if faint:
        handles.append(Line2D([], [], color="0.4", linewidth=0.5, alpha=0.4, label="per step (real)"))
    _key(axes[0][-1], handles)
    fig.tight_layout()
    return fig


def _null_lines(ax, df: pd.DataFrame, linewidth: float = 0.6, alpha: float = 0.55, **style) -> None:
    """One thin line per null world (seed mean of `value` per step)."""
    for _, g in df[df["null"] >= 0].groupby("null"):
        mean = g.groupby("step")["value"].mean()
        ax.plot(mean.index, mean.values, linewidth=linewidth, alpha=alpha, **style)


def winsorization_fig(metrics: pd.DataFrame):
    """CG §3 (Fig. 4), one column per noise level: top, final train / test accuracy and overfit
    against the winsorization level c (SGD is c = 0; mean ± sd over seeds); bottom, train (solid)
    and test (dashed) accuracy over steps, one colour per c."""
    df = _curves(metrics, ["accuracy", "overfit"])
    df = df[df["optimizer"].isin(["sgd", "winsorized"]) & df["split"].isin(["train", "test"])]
    if not (df["optimizer"] == "winsorized").any():
        return None
    df = df.assign(c=df["clip"].fillna(0).astype(int))
    levels, noises = sorted(df["c"].unique()), sorted(df["noise"].unique())
    fig, axes = _grid(2, len(noises), w=3.0, h=2.7, sharey="row")
    final = last_step(df)
    final_style = {("accuracy", "train"): ("C0", "o", "train"), ("accuracy", "test"): ("C1", "s", "test"),
                   ("overfit", "train"): ("C4", "^", "overfit")}
    for j, noise in enumerate(noises):
        ax = axes[0][j]
        cell = final[final["noise"] == noise]
        for (metric, split), (color, marker, label) in final_style.items():
            g = cell[(cell["metric"] == metric) & (cell["split"] == split)].groupby("c")["value"]
            mean, sd = g.mean(), g.std(ddof=1).fillna(0)
            ax.errorbar(mean.index, mean.values, yerr=sd.values, color=color, marker=marker, capsize=3,
                        label=label)
        ax.set_xticks(levels)
        ax.set_xlabel("winsorization level c")
        ax.set_title(f"noise {noise:g}: at the last step")
        ax.grid(alpha=0.3)
        ax = axes[1][j]
        curves = df[(df["noise"] == noise) & (df["metric"] == "accuracy")]
        for i, c in enumerate(levels):
            for split, style in (("train", "-"), ("test", "--")):
                _curve(ax, curves[(curves["c"] == c) & (curves["split"] == split)], color=f"C{i}", linestyle=style)
        _steps(ax)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step")
        ax.set_title(f"noise {noise:g}: over training")
    axes[0][0].set_ylim(min(0, axes[0][0].get_ylim()[0]), 1.02)  # overfit can be negative
    axes[0][0].set_ylabel("accuracy / overfit")
    axes[1][0].set_ylabel("accuracy")
    _key(axes[0][-1], [Line2D([], [], color=c, marker=m, label=lab) for c, m, lab in final_style.values()])
    _key(axes[1][-1], _color_key([f"c = {c}" for c in levels]) + _style_key({"train": "-", "test": "--"}))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- W&S

ROBUST = ["sgd", "rm3", "ra3", "m3"]


def robust_optimizers_fig(metrics: pd.DataFrame):
    """W&S §3 (Figs. 2–3): one column per noise level, one row per split (train, test,
    pristine, corrupt accuracy); one line per gradient variant, SGD vs RM3 / RA3 / M3."""
    df = _curves(metrics, ["accuracy"])
    df = df[df["optimizer"].isin(ROBUST)]
    names = [o for o in ROBUST if o in set(df["optimizer"])]
    if len(names) < 2 or names == ["sgd"]:
        return None
    noises, splits = sorted(df["noise"].unique()), list(SPLIT_STYLE)
    fig, axes = _grid(len(splits), len(noises), w=2.9, h=2.0, sharex=True, sharey=True)
    for j, noise in enumerate(noises):
        for i, split in enumerate(splits):
            ax = axes[i][j]
            cell = df[(df["noise"] == noise) & (df["split"] == split)]
            if cell.empty:  # no corrupt examples at noise 0 (its axes keep their ticks: a shared grid)
                ax.text(0.5, 0.5, f"no {split} examples", ha="center", va="center", transform=ax.transAxes,
                        color="0.5")
            for k, name in enumerate(names):
                _curve(ax, cell[cell["optimizer"] == name], color=f"C{k}", label=name)
            _steps(ax)
            ax.set_ylim(0, 1.02)
            if j == 0:
                ax.set_ylabel(f"{split} accuracy")
        axes[0][j].set_title(f"noise {noise:g}")
        axes[-1][j].set_xlabel("step")
    _key(axes[0][-1], _color_key(names))
    fig.tight_layout()
    return fig


def easy_hard_fig(metrics: pd.DataFrame):
    """W&S Fig. 4: SGD from scratch on e-train and on h-train (and the full training set at
    noise 0 where the study has it); loss and accuracy on their own training set, e-test,
    h-test and the test set over steps."""
    keep = metrics["metric"].isin(["loss", "accuracy"]) & (metrics["layer"] == "all") & (metrics["null"] == -1)
    e6 = metrics[keep & (metrics["experiment"] == "E6")]
    if e6.empty:
        return None
    full = metrics[keep & (metrics["subset"] == "full") & (metrics["optimizer"] == "sgd")
                   & (metrics["noise"] == 0) & metrics["split"].isin(["train", "test"])]
    df = pd.concat([e6, full])
    styles = {"train": "-", "e-test": "--", "h-test": ":", "test": "-."}
    subsets = [s for s in ("e-train", "h-train", "full") if s in set(df["subset"])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    for ax, metric in zip(axes[0], ("loss", "accuracy")):
        for i, subset in enumerate(subsets):
            g = df[(df["metric"] == metric) & (df["subset"] == subset)]
            for split, style in styles.items():
                _curve(ax, g[g["split"] == split], color=f"C{i}", linestyle=style)
        _steps(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
    axes[0][0].set_yscale("log")
    axes[0][1].set_ylim(0, 1.02)
    _key(axes[0][1], _color_key([f"trained on {s}" for s in subsets])
         + _style_key({f"on {k}": s for k, s in styles.items()}))
    fig.tight_layout()
    return fig


def accuracy_by_difficulty_fig(table: pd.DataFrame, histogram: pd.DataFrame):
    """W&S Fig. 5a: first, how many examples have each difficulty (0 = easy in every easy/hard
    run, K = hard in every one); then one panel per noise level, final training accuracy by
    difficulty, one line per gradient variant (mean ± sd over seeds). Panels wrap at 3 a row."""
    if table.empty:
        return None
    t = table.assign(variant=variant(table))
    noises, variants = sorted(t["noise"].unique()), ordered(t["variant"].unique())
    cols = min(3, len(noises) + 1)
    rows = -(-(len(noises) + 1) // cols)
    fig, axes = _grid(rows, cols, w=3.6, h=2.7)
    flat = list(axes.flat)
    ax = flat[0]
    ax.bar(histogram["difficulty"], histogram["count"], color="C7")
    ax.set_title("examples per difficulty")
    ax.set_ylabel("examples")
    low = t["accuracy"].min()  # near 1 everywhere for SGD: a fixed 0–1 axis would hide the differences
    for ax, noise in zip(flat[1:], noises):
        cell = t[t["noise"] == noise]
        for i, var in enumerate(variants):
            g = cell[cell["variant"] == var].groupby("difficulty")["accuracy"]
            if g.ngroups:
                ax.errorbar(g.mean().index, g.mean().values, yerr=g.std(ddof=1).fillna(0).values,
                            marker="o", markersize=3, color=f"C{i}", capsize=2)
        ax.set_title(f"noise {noise:g}: final training accuracy")
        ax.set_ylim(max(0, low - 0.05), 1.01)
        ax.set_ylabel("accuracy")
    for ax in flat[len(noises) + 1:]:
        ax.axis("off")
    for ax in flat[:len(noises) + 1]:
        ax.set_xlabel("difficulty")
        ax.set_xticks(histogram["difficulty"])
        ax.grid(alpha=0.3)
    _key(flat[cols - 1], _color_key(variants))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- MC

def coherence_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    coh = metrics[metrics["metric"].isin(["m_coherence", "m_coherence_label"]) & (metrics["experiment"] == "E7")
                  & (metrics["subset"] == "full")]
    if coh.empty or not (coh["metric"] == "m_coherence").any():
        return coh.iloc[:0]
    # SGD per model: MC studies plain SGD; a model of its own (a BatchNorm cnn) is its own row
    return pd.concat([prefer_sgd(g) for _, g in coh.groupby("model", sort=True)])


def _models(coh: pd.DataFrame, main: str | None) -> list:
    """The study's own model first, then the others (MC's conditions) by name."""
    return sorted(coh["model"].unique(), key=lambda mod: (mod != main, mod))


def m_coherence_fig(metrics: pd.DataFrame, m: int | None = None, main: str | None = None):
    """MC Figs. 1 and 4, one column per noise level and, per model (`main` first), rows: train /
    test accuracy, m-coherence of the whole model and (when measured) of the label-dependent part
    alone; solid = training sample, dashed = test sample. Grey lines: 1 (orthogonal limit) and m."""
    coh = coherence_rows(metrics)
    if coh.empty:
        return None
    acc = _curves(metrics, ["accuracy"])
    noises = sorted(coh["noise"].unique())
    rows = []  # (model, what)
    for model in _models(coh, main):
        g = coh[coh["model"] == model]
        rows += [(model, "accuracy"), (model, "m_coherence")]
        rows += [(model, "m_coherence_label")] if (g["metric"] == "m_coherence_label").any() else []
    fig, axes = _grid(len(rows), len(noises), w=2.9, h=2.2, sharex=True)
    for i, (model, what) in enumerate(rows):
        opt = coh[coh["model"] == model]["optimizer"].iloc[0]
        for j, noise in enumerate(noises):
            ax = axes[i][j]
            src = acc if what == "accuracy" else coh[coh["layer"] == "all"]
            cell = src[(src["model"] == model) & (src["optimizer"] == opt) & (src["noise"] == noise)
                       & (src["metric"] == what)]
            if i == 0:
                ax.set_title(f"noise {noise:g}")
            if j == 0:
                label = {"accuracy": "accuracy", "m_coherence": "m-coherence",
                         "m_coherence_label": "m-coh., label part"}[what]
                ax.set_ylabel(f"{model} {opt}\n{label}")
            if cell.empty:  # another model measured at fewer noise levels (MC's conditions)
                _none_here(ax)
                continue
            for split, style in (("train", "-"), ("test", "--")):
                _curve(ax, cell[cell["split"] == split], color="C0" if what == "accuracy" else "C4",
                       linestyle=style)
            if what == "accuracy":
                ax.set_ylim(0, 1.02)
            else:
                ax.set_yscale("log")
                for level in (1, m) if m else (1,):
                    ax.axhline(level, color="0.6", linewidth=0.8)
            _steps(ax)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    _key(axes[0][-1], _style_key({"train": "-", "test": "--"}))
    fig.tight_layout()
    return fig


def m_coherence_layers_fig(metrics: pd.DataFrame, main: str | None = None):
    """MC Fig. 1's per-layer rows: m-coherence over steps, one panel per layer ("all" first),
    one row per model (`main` first; a row shares its log axis, so layers compare at a glance);
    one colour per noise level, solid = train sample, dashed = test sample."""
    coh = coherence_rows(metrics)
    coh = coh[coh["metric"] == "m_coherence"]
    if coh.empty:
        return None
    models = _models(coh, main)
    layers = {mod: ["all"] + sorted(set(coh[coh["model"] == mod]["layer"]) - {"all"}, key=_layer_order)
              for mod in models}
    noises = sorted(coh["noise"].unique())
    fig, axes = _grid(len(models), max(map(len, layers.values())), w=3.0, h=2.5, sharey="row")
    for i, model in enumerate(models):
        for j, ax in enumerate(axes[i]):
            if j >= len(layers[model]):
                ax.axis("off")
                continue
            layer = layers[model][j]
            cell = coh[(coh["model"] == model) & (coh["layer"] == layer)]
            for k, noise in enumerate(noises):
                for split, style in (("train", "-"), ("test", "--")):
                    _curve(ax, cell[(cell["noise"] == noise) & (cell["split"] == split)], color=f"C{k}",
                           linestyle=style)
            _steps(ax)
            ax.set_yscale("log")
            ax.set_title(f"{model}: {'whole model' if layer == 'all' else 'layer ' + layer}")
            ax.set_xlabel("step")
        axes[i][0].set_ylabel("m-coherence")
    _key(axes[0][len(layers[models[0]]) - 1],
         _color_key([f"noise {n:g}" for n in noises]) + _style_key({"train sample": "-", "test sample": "--"}))
    fig.tight_layout()
    return fig


def _layer_order(name: str):
    """Module names in network order: "1" < "3" < "10", "features.2" < "features.10"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


# ---------------------------------------------------------------------------- E8

def difficulty_scores_fig(table: pd.DataFrame):
    """E8: Spearman ρ of each difficulty score with difficulty (left) and AUROC of each score
    for finding corrupt labels (right); one row per gradient variant and noise level (E6: per
    training subset), mean over seeds."""
    if table.empty:
        return None
    label = np.where(table["subset"] == "full", variant(table) + table["noise"].map(lambda n: f", noise {n:g}"),
                     "sgd on " + table["subset"].astype(str))
    t = table.assign(row=label)
    t = t.assign(_full=t["subset"] != "full", _opt=t["optimizer"].map(lambda o: ORDER.index(o) if o in ORDER else 9))
    order = list(dict.fromkeys(t.sort_values(["_full", "subset", "noise", "_opt", "clip"])["row"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.2 * len(order) + 2.4), squeeze=False)
    for ax, (col, cmap, lim) in zip(axes[0], (("spearman_difficulty", "RdBu_r", (-1, 1)),
                                              ("auroc_corrupt", "viridis", (0, 1)))):
        wide = t.pivot_table(index="row", columns="score", values=col, aggfunc="mean", dropna=False)
        wide = wide.reindex(order)
        im = ax.imshow(wide.to_numpy(dtype=float), cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
        ax.set_xticks(range(wide.shape[1]), [c.replace("_", " ") for c in wide.columns], rotation=35,
                      ha="right", fontsize=7)
        ax.set_yticks(range(wide.shape[0]), wide.index, fontsize=7)
        ax.set_title({"spearman_difficulty": "Spearman ρ with difficulty",
                      "auroc_corrupt": "AUROC for corrupt labels (blank: none)"}[col])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig
