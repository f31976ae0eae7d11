"""What every claim reads: the main model's curves per run, keyed and paired by seed.

A run's key is (optimizer, clip, noise, seed), clip 0 when not winsorized (SGD is c = 0), so two
variants at the same noise level pair up by seed.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

CURVE_EXPERIMENTS = ("E1", "E3", "E4")  # SGD, winsorized, M3/RM3/RA3 curves: same rows, different codes


def eps(e: float) -> str:
    return f"ε={e:g}"


def key(row) -> tuple:
    return row["optimizer"], 0 if pd.isna(row["clip"]) else int(row["clip"]), float(row["noise"]), int(row["seed"])


def per_run(rows: pd.DataFrame, fn) -> dict:
    """{(optimizer, clip, noise, seed): fn(rows of that run)}."""
    return {key(g.iloc[0]): fn(g) for _, g in rows.groupby("run", sort=True)}


def curve(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one curve, sorted, NaNs dropped."""
    g = g.dropna(subset=["value"]).sort_values("step")
    return g["step"].to_numpy(float), g["value"].to_numpy(float)


def step_mean(g: pd.DataFrame) -> float:
    """Step-weighted mean of one curve over the whole run (trapezoid area / length in steps).
    Evaluation steps are log-spaced, so a plain mean over them would weight the first 10 steps
    as much as the last 90 %."""
    x, y = curve(g)
    if len(x) == 0:
        return math.nan
    return float(y[0]) if x[-1] == x[0] else float(np.trapezoid(y, x) / (x[-1] - x[0]))


def early_mean(g: pd.DataFrame, until: int) -> float:
    """Step-weighted mean of a curve over steps 0…until (the evaluation steps in that range)."""
    return step_mean(g[g["step"] <= until])


def last_value(g: pd.DataFrame) -> float:
    x, y = curve(g)
    return float(y[-1]) if len(y) else math.nan


def steps_to(g: pd.DataFrame, level: float) -> float:
    """The step at which a curve first reaches `level`, linearly interpolated between the two
    evaluation steps around the crossing (the schedule is log-spaced, so the next evaluation
    step alone would round up by as much as a factor 2); nan if it never does."""
    x, y = curve(g)
    hit = np.flatnonzero(y >= level)
    if len(hit) == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (level - y0) / (y1 - y0) * (x1 - x0))


def first_step_at(g: pd.DataFrame, level: float) -> int | None:
    """The first evaluation step at which a curve is ≥ level (no interpolation: a step that was
    measured), None if it never is."""
    x, y = curve(g)
    hit = np.flatnonzero(y >= level)
    return int(x[hit[0]]) if len(hit) else None


def select(m: pd.DataFrame, split: str, metric: str = "accuracy", experiments=CURVE_EXPERIMENTS) -> pd.DataFrame:
    """The main model's full-data rows of one curve kind (real designation, whole model)."""
    return m[m["experiment"].isin(experiments) & (m["subset"] == "full") & (m["split"] == split)
             & (m["metric"] == metric) & (m["layer"] == "all") & (m["null"] == -1)]


def curves(ctx, split: str, metric: str = "accuracy", fn=step_mean) -> dict:
    """{(optimizer, clip, noise, seed): fn(curve)} of the main model, cached per (split, metric, fn)."""
    k = (split, metric, fn)
    if k not in ctx["curves"]:
        ctx["curves"][k] = per_run(select(ctx["main"], split, metric), fn)
    return ctx["curves"][k]


def by_seed(d: dict, optimizer: str, clip: int, noise: float) -> dict:
    """{seed: value} of one grid cell."""
    return {k[3]: v for k, v in d.items() if k[:3] == (optimizer, clip, noise)}


def paired(a: dict, b: dict, fn) -> dict:
    """{seed: fn(a[seed], b[seed])} over the seeds both hold."""
    return {s: fn(a[s], b[s]) for s in sorted(set(a) & set(b))}


def noise_levels(d: dict, optimizer: str, clip: int = 0) -> list[float]:
    return sorted({k[2] for k in d if k[:2] == (optimizer, clip)})


def log_ratio_safe(a: float, b: float) -> float:
    """a / b for positive numbers, nan otherwise (a ratio judged on log10)."""
    return a / b if a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b) else math.nan
