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
                  & metrics["split"].isin(list(SPLIT_STYLE))].copy()
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
