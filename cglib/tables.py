"""The results tables of DESIGN.md §6: tidy metric rows → Parquet, written atomically.

Parquet bytes are a pure function of the rows: fixed column order and dtypes, no index, no
timestamps; so the same params give byte-identical files on CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

METRIC_COLUMNS = {  # name → pandas dtype, in the order of DESIGN.md §6
    "run": "string", "experiment": "string", "dataset": "string", "model": "string",
    "optimizer": "string", "clip": "Int64", "noise": "float64", "seed": "int64",
    "subset": "string", "step": "int64", "epoch": "float64", "split": "string",
    "metric": "string", "layer": "string", "null": "int64", "value": "float64",
}
ROW_DEFAULTS = {"layer": "all", "null": -1, "subset": "full"}


def model_label(model_params: dict) -> str:
    if model_params["name"] == "mlp":
        return "mlp-" + "x".join(map(str, model_params["hidden"]))
    return model_params["name"]


def run_constants(params: dict, spec: dict) -> dict:
    """The columns every row of one run shares."""
    return dict(run=spec["run"], dataset=params["data"]["dataset"], model=model_label(params["model"]),
                optimizer=spec["optimizer"],
                clip=spec["clip"] if spec["optimizer"] == "winsorized" else None,
                noise=float(spec["noise"]), seed=int(spec["seed"]), subset=spec.get("subset", "full"))


def metrics_frame(rows: list[dict], constants: dict) -> pd.DataFrame:
    full = [{**ROW_DEFAULTS, **constants, **r} for r in rows]
    df = pd.DataFrame(full, columns=list(METRIC_COLUMNS))
    return df.astype(METRIC_COLUMNS)


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
    os.replace(tmp, path)


def write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_torch(obj, path: str | Path) -> None:
    """torch.save through a temp file: a kill mid-write never leaves a half file behind."""
    import torch  # lazy: reading tables needs no torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def final_values(df: pd.DataFrame) -> dict:
    """Last-step E1 values of one run: {'<split>_<metric>': value}."""
    e1 = df[(df["layer"] == "all") & (df["null"] == -1) & df["metric"].isin(["accuracy", "loss", "overfit"])]
    if e1.empty:
        return {}
    last = e1[e1["step"] == e1["step"].max()]
    return {f"{s}_{m}": float(v) for s, m, v in zip(last["split"], last["metric"], last["value"])}


def run_row(params: dict, spec: dict, status: str, steps_done: int, final: dict) -> dict:
    """One row of results/runs.parquet: the run's whole configuration and its final metrics.
    No wall times here: they would break byte-identical Parquet across reruns (they are in run.json)."""
    t = params["train"]
    return {**run_constants(params, spec), "study": params["study"], "status": status,
            "steps_done": int(steps_done), "n_train": params["data"]["n_train"],
            "base": t["base"], "lr": float(t["lr"]), "momentum": float(t["momentum"]),
            "lr_schedule": t["lr_schedule"], "batch_size": t["batch_size"], "steps": t["steps"],
            "hidden": json.dumps(params["model"].get("hidden")), **final}


def summary(params: dict, runs: pd.DataFrame, metrics: pd.DataFrame) -> dict:
    """results/summary.json (DVC metrics): final numbers per run, coherence peaks (E7) and the
    steps where the pristine and corrupt shares of the loss reduction cross (E2)."""
    keep = [c for c in runs.columns if c.endswith(("_accuracy", "_loss", "_overfit"))]
    out = {"study": params["study"], "runs": {
        r["run"]: {"status": r["status"], **{k: round(float(r[k]), 6) for k in keep if pd.notna(r[k])}}
        for r in runs.to_dict("records")}}
    if (metrics["experiment"] == "E7").any():
        out["m_coherence_peaks"] = coherence_peaks(metrics)
    if (metrics["experiment"] == "E2").any():
        out["share_crossings"] = share_crossings(metrics)
    return out


def plot_tables(metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Wide step × run tables for `dvc plots` (x: step, one y column per run)."""
    base = metrics[(metrics["layer"] == "all") & (metrics["null"] == -1)]
    out = {}
    for split in ("train", "test", "pristine", "corrupt"):
        sel = base[(base["metric"] == "accuracy") & (base["split"] == split)]
        # always written (an empty table when, e.g., no run has corrupt examples): the engines
        # declare these files up front
        wide = sel.pivot_table(index="step", columns="run", values="value", sort=True)
        out[f"{split}_accuracy"] = wide.reset_index() if not sel.empty else pd.DataFrame({"step": []})
    return out


# ---------------------------------------------------------------------------- E2 / E7 digests

def coherence_peaks(metrics: pd.DataFrame) -> dict:
    """Per run and sample split: the peak m-coherence of the whole model and of each layer."""
    coh = metrics[(metrics["metric"] == "m_coherence") & (metrics["experiment"] == "E7")]
    out = {}
    for (run, split, layer), g in coh.groupby(["run", "split", "layer"], sort=True):
        g = g.dropna(subset=["value"])
        if g.empty:
            continue
        top = g.loc[g["value"].idxmax()]
        out.setdefault(run, {}).setdefault(split, {})[layer] = {"peak": round(float(top["value"]), 4),
                                                                "step": int(top["step"])}
    return out


def share_crossings(metrics: pd.DataFrame, hold: int = 5) -> dict:
    """Per run and designation (real = -1, nulls 0…K-1): the first step from which the pristine
    share of the loss reduction stays below the corrupt share (f^p < f^c) for `hold` tracked
    steps in a row (a single noisy dip is not a crossing), None if it never does; and f^p at
    step 0. CG §2.4: at 25 % and 50 % noise the real curves cross, the nulls do not."""
    f = metrics[(metrics["metric"] == "f_pristine") & (metrics["experiment"] == "E2")]
    out = {}
    for (run, null), g in f.groupby(["run", "null"], sort=True):
        g = g.sort_values("step")
        stays = (g["value"] < 0.5)[::-1].astype(int).rolling(hold, min_periods=1).min()[::-1]
        below = g[stays.astype(bool) & (g["value"] < 0.5)]
        out.setdefault(run, {})["real" if null == -1 else f"null{null}"] = {
            "f_pristine_at_0": round(float(g["value"].iloc[0]), 4),
            "crossing_step": int(below["step"].iloc[0]) if len(below) else None}
    return out
