"""Figures of the results tables (matplotlib, no display needed)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

SPLIT_STYLE = {"train": ("C0", "-"), "test": ("C1", "-"), "pristine": ("C2", "--"), "corrupt": ("C3", "--")}


def learning_curves(metrics: pd.DataFrame, path: str | Path) -> None:
    """E1/E3/E4 grid: one panel per optimizer variant (rows) × noise level (columns);
    train/test/pristine/corrupt accuracy over steps (mean over seeds), as CG Fig. 1 and W&S Fig. 3."""
    acc = metrics[(metrics["metric"] == "accuracy") & (metrics["layer"] == "all") & (metrics["null"] == -1)
                  & metrics["split"].isin(list(SPLIT_STYLE)) & (metrics["subset"] == "full")].copy()
    acc["variant"] = acc["optimizer"] + acc["clip"].map(lambda c: "" if pd.isna(c) else f" c={c}")
    variants, noises = sorted(acc["variant"].unique()), sorted(acc["noise"].unique())
    fig, axes = plt.subplots(len(variants), len(noises), figsize=(3.2 * len(noises), 2.6 * len(variants)),
                             sharex=True, sharey=True, squeeze=False)
    for i, var in enumerate(variants):
        for j, noise in enumerate(noises):
            ax = axes[i][j]
            cell = acc[(acc["variant"] == var) & (acc["noise"] == noise)]
            for split, (color, style) in SPLIT_STYLE.items():
                curve = cell[cell["split"] == split].groupby("step")["value"].mean()
                if not curve.empty:
                    ax.plot(curve.index, curve.values, color=color, linestyle=style, label=split)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"noise {noise:g}")
            if j == 0:
                ax.set_ylabel(f"{var}\naccuracy")
            if i == len(variants) - 1:
                ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _empty(path, what: str) -> None:
    """The engines declare every figure up front; a study that does not measure `what` gets a
    placeholder saying so rather than a missing file."""
    fig, ax = plt.subplots(figsize=(4, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"this study does not measure {what}", ha="center", va="center")
    _save(fig, path)


def _prefer_sgd(df: pd.DataFrame) -> pd.DataFrame:
    """The SGD runs where there are any (E2/E7 are about plain SGD), else the first variant."""
    names = set(df["optimizer"])
    return df[df["optimizer"] == ("sgd" if "sgd" in names else min(names))]


def _finish(fig, axes, ylabel: str, path, fontsize: int) -> None:
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=fontsize)
    fig.tight_layout()
    _save(fig, path)


def coherence_curves(metrics: pd.DataFrame, path) -> None:
    """E7 (MC Fig. 3 style): m-coherence over steps, one panel per layer ("all" first),
    one line per noise level; solid = train sample, dashed = test sample (SGD runs, seed mean).
    A second row, when measured: the label-dependent part of the gradients alone."""
    coh = metrics[metrics["metric"].isin(["m_coherence", "m_coherence_label"]) & (metrics["experiment"] == "E7")
                  & (metrics["subset"] == "full")]
    if coh.empty or not (coh["metric"] == "m_coherence").any():
        return _empty(path, "m-coherence (train.coherence)")
    coh = _prefer_sgd(coh)
    layers = ["all"] + sorted(set(coh["layer"]) - {"all"})
    noises = sorted(coh["noise"].unique())
    kinds = [k for k in ("m_coherence", "m_coherence_label") if (coh["metric"] == k).any()]
    fig, axes = plt.subplots(len(kinds), len(layers), figsize=(3.4 * len(layers), 3 * len(kinds)),
                             squeeze=False)
    for row, kind in zip(axes, kinds):
        for ax, layer in zip(row, layers):
            for i, noise in enumerate(noises):
                for split, style in (("train", "-"), ("test", "--")):
                    c = coh[(coh["metric"] == kind) & (coh["layer"] == layer) & (coh["noise"] == noise)
                            & (coh["split"] == split)]
                    curve = c.groupby("step")["value"].mean()
                    if not curve.empty:
                        ax.plot(curve.index, curve.values, color=f"C{i}", linestyle=style,
                                label=f"ε={noise:g} {split}")
            ax.set_xscale("symlog", linthresh=10)
            ax.set_yscale("log")
            ax.set_title(f"layer {layer}" + (": label part" if kind == "m_coherence_label" else ""))
    _finish(fig, axes, "m-coherence", path, fontsize=6)


def share_curves(metrics: pd.DataFrame, path) -> None:
    """E2 (CG Figs. 2–3 style), one column per noise level: top, f^p and f^c per step; bottom,
    the cumulative per-example contributions i^p and i^c. Real designation bold, the K null
    worlds thin (SGD runs, first seed)."""
    e2 = metrics[(metrics["experiment"] == "E2")]
    if e2.empty:
        return _empty(path, "loss-reduction shares (train.shares)")
    e2 = _prefer_sgd(e2)
    e2 = e2[e2["seed"] == e2["seed"].min()]
    noises = sorted(n for n in e2["noise"].unique() if 0 < n < 1) or sorted(e2["noise"].unique())
    fig, axes = plt.subplots(2, len(noises), figsize=(3.4 * len(noises), 5.6), sharex=True, squeeze=False)
    for j, noise in enumerate(noises):
        cell = e2[e2["noise"] == noise]
        for row, group in enumerate(("f", "i")):
            ax = axes[row][j]
            for (metric, null), g in cell[cell["metric"].str.startswith(group + "_")].groupby(["metric", "null"]):
                real = null == -1
                g = g.sort_values("step")
                ax.plot(g["step"], g["value"], color="C2" if metric.endswith("pristine") else "C3",
                        linewidth=2 if real else 0.7, alpha=1 if real else 0.6, label=metric if real else None)
            ax.set_xscale("symlog", linthresh=10)  # dense early steps and the sparse rest alike
            if row == 0:
                ax.set_title(f"noise {noise:g} (thin: nulls)")
    axes[1][0].set_ylabel("cumulative per example")
    axes[1][0].legend(fontsize=7)
    _finish(fig, axes, "share of loss reduction", path, fontsize=7)


# ---------------------------------------------------------------------------- E5 / E6 / E8

def accuracy_by_difficulty(table: pd.DataFrame, histogram: pd.DataFrame, path) -> None:
    """W&S Fig. 5a: left, how many examples have each difficulty (0 = easy in every easy/hard
    run, K = hard in every one); then one panel per noise level, final training accuracy by
    difficulty, one line per gradient variant (mean over seeds)."""
    if table.empty:
        return _empty(path, "accuracy by difficulty (E5)")
    t = table.assign(variant=table["optimizer"] + table["clip"].map(lambda c: "" if pd.isna(c) else f" c={c}"))
    noises = sorted(t["noise"].unique())
    fig, axes = plt.subplots(1, len(noises) + 1, figsize=(3.2 * (len(noises) + 1), 3), squeeze=False)
    ax = axes[0][0]
    ax.bar(histogram["difficulty"], histogram["count"], color="C7")
    ax.set_title("difficulty histogram")
    ax.set_ylabel("examples")
    for ax, noise in zip(axes[0][1:], noises):
        cell = t[t["noise"] == noise]
        for i, (var, g) in enumerate(cell.groupby("variant", sort=True)):
            curve = g.groupby("difficulty")["accuracy"].mean()
            ax.plot(curve.index, curve.values, marker="o", markersize=3, color=f"C{i}", label=var)
        ax.set_title(f"noise {noise:g}: final train accuracy")
        ax.set_ylim(0, 1.02)
    for ax in axes[0]:
        ax.set_xlabel("difficulty")
        ax.set_xticks(histogram["difficulty"])
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def easy_hard_curves(metrics: pd.DataFrame, path) -> None:
    """W&S Fig. 4: SGD from scratch on e-train and on h-train; training loss and the loss and
    accuracy on e-test, h-test and the test set over steps (mean over seeds)."""
    e6 = metrics[(metrics["experiment"] == "E6") & (metrics["layer"] == "all")
                 & metrics["metric"].isin(["loss", "accuracy"])]
    if e6.empty:
        return _empty(path, "easy / hard cross-generalization (E6)")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    styles = {"train": "-", "e-test": "--", "h-test": ":", "test": "-."}
    for ax, metric in zip(axes[0], ("loss", "accuracy")):
        for i, (subset, g) in enumerate(e6[e6["metric"] == metric].groupby("subset", sort=True)):
            for split, style in styles.items():
                curve = g[g["split"] == split].groupby("step")["value"].mean()
                if not curve.empty:
                    ax.plot(curve.index, curve.values, color=f"C{i}", linestyle=style,
                            label=f"trained on {subset}, {split}")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_title(metric)
    _finish(fig, axes, "", path, fontsize=6)


def score_heatmaps(table: pd.DataFrame, path) -> None:
    """E8: Spearman ρ of each difficulty score with difficulty (left) and AUROC of each score
    for finding corrupt labels (right), one row per run."""
    if table.empty:
        return _empty(path, "difficulty scores (E8)")
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.28 * table["run"].nunique() + 2.2), squeeze=False)
    for ax, (col, cmap, lim) in zip(axes[0], (("spearman_difficulty", "RdBu_r", (-1, 1)),
                                              ("auroc_corrupt", "viridis", (0, 1)))):
        wide = table.pivot_table(index="run", columns="score", values=col, sort=False, dropna=False)
        im = ax.imshow(wide.to_numpy(dtype=float), cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
        ax.set_xticks(range(wide.shape[1]), wide.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(wide.shape[0]), wide.index, fontsize=6)
        ax.set_title(col.replace("_", " "))
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    _save(fig, path)
