"""The results tables of DESIGN.md §6: tidy metric rows → Parquet, written atomically.

Parquet bytes are a pure function of the rows: fixed column order and dtypes, no index, no
timestamps; so the same params give byte-identical files on CPU.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import zipfile
from pathlib import Path

import pandas as pd

from cglib import model_sources
from cglib.config import steps_of

METRIC_COLUMNS = {  # name → pandas dtype, in the order of DESIGN.md §6
    "run": "string", "experiment": "string", "dataset": "string", "model": "string",
    "optimizer": "string", "clip": "Int64", "noise": "float64", "seed": "int64",
    "subset": "string", "step": "int64", "epoch": "float64", "split": "string",
    "metric": "string", "layer": "string", "null": "int64", "value": "float64",
}
ROW_DEFAULTS = {"layer": "all", "null": -1, "subset": "full"}
# results/examples.parquet: one row per run and training example (E8 scores, cglib.scores)
EXAMPLE_COLUMNS = {
    "run": "string", "example": "int64", "label_clean": "int64", "label": "int64", "corrupt": "bool",
    "difficulty": "Int64", "forgetting_events": "float64", "first_learned_epoch": "float64",
    "cumulative_accuracy": "float64", "confidence": "float64", "variability": "float64",
    "aum": "float64", "el2n": "float64", "grand": "float64",
}
# What the aggregate stage writes under results/ (both engines declare exactly these)
# Every figure the report stage writes, as results/plots/<name>.png and .svg (the engines declare
# them up front, so the list is fixed; a study without the data gets a placeholder figure).
# Here rather than in cglib.report so the Snakefile can read it without importing matplotlib.
REPORT_FIGURES = {  # name → what the placeholder says the study does not measure
    "learning_curves": "learning curves (E1)",
    "loss_shares": "loss-reduction shares (E2, train.shares)",
    "winsorization": "winsorized SGD (E3)",
    "robust_optimizers": "RM3 / RA3 / M3 (E4)",
    "easy_hard": "easy / hard cross-generalization (E6)",
    "accuracy_by_difficulty": "accuracy by difficulty (E5)",
    "m_coherence": "m-coherence (E7, train.coherence)",
    "m_coherence_layers": "per-layer m-coherence (E7)",
    "difficulty_scores": "difficulty scores (E8)",
}
# What the report stage writes under its --out folder (both engines declare exactly these)
REPORT_OUTPUTS = ("report.html", "findings.json", "findings.csv",
                  *(f"plots/{name}.{ext}" for name in REPORT_FIGURES for ext in ("png", "svg")))
AGGREGATE_OUTPUTS = (
    "metrics.parquet", "runs.parquet", "examples.parquet", "summary.json",
    "plots/train_accuracy.csv", "plots/test_accuracy.csv", "plots/pristine_accuracy.csv",
    "plots/corrupt_accuracy.csv", "plots/accuracy_by_difficulty.csv", "plots/cross_generalization.csv",
    "plots/score_correlations.csv",
)


def model_label(model_params: dict) -> str:
    if model_params["name"] == "mlp":
        return "mlp-" + "x".join(map(str, model_params["hidden"]))
    if model_params["name"] == "cnn":  # -flat: the last feature map flattened into the head (pool none)
        flat = "-flat" if model_params.get("pool", "avg") == "none" else ""
        return "cnn-" + "x".join(map(str, model_params["channels"])) + flat
    if model_params["name"] in model_sources.SOURCES:  # torchvision-<arch>, <module>.<function>
        return model_sources.label(model_params)
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


def examples_frame(per_example: pd.DataFrame, run: str) -> pd.DataFrame:
    """One run's rows of results/examples.parquet, columns and dtypes of EXAMPLE_COLUMNS."""
    df = per_example.assign(run=run).reindex(columns=list(EXAMPLE_COLUMNS))
    return df.astype(EXAMPLE_COLUMNS)


class DamagedFile(RuntimeError):
    """An intermediate file is missing, truncated or not what it should be."""


def read_parquet(path: str | Path, made_by: str) -> pd.DataFrame:
    """pd.read_parquet with a one-line error naming the file and the stage that rebuilds it."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DamagedFile(f"{path}: not found; run {made_by} first") from None
    except Exception as err:  # pyarrow raises several types for a truncated or foreign file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedFile(f"{path}: damaged or not a Parquet table ({first}); delete it and rerun "
                          f"{made_by}") from None


def damage(path: str | Path) -> str | None:
    """Why an existing intermediate file is unreadable, judged by its envelope only: cheap enough
    for the Snakefile to check every input before it schedules (and so deletes) anything. A
    Parquet file starts and ends with PAR1 (a cut-off file lost its footer), torch's .pt is a zip
    archive whose directory sits at the end, JSON parses. None when intact or absent."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".parquet":
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(size - 4, 0))
            tail = fh.read(4)
        return None if size >= 12 and head == tail == b"PAR1" else "not a complete Parquet file"
    if path.suffix == ".pt":
        return None if zipfile.is_zipfile(path) else "not a complete torch file"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return "not valid JSON"
    return None


class WriteError(OSError):
    """An output could not be written (disk full, say); str() is one line naming the file."""


def _atomic(path: str | Path, write) -> None:
    """write(tmp) then rename onto `path`: a kill or a full disk never leaves a half file behind
    at `path`, and a failed write leaves no temp file behind either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # torch.save reports ENOSPC as a RuntimeError
            free = shutil.disk_usage(path.parent).free
            full = getattr(err, "errno", None) == errno.ENOSPC or free < (1 << 20)
            why = (f"no space left on the device ({free // 1024} KiB free); free some and rerun" if full
                   else str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise WriteError(f"{path}: could not be written: {why}") from None
        raise


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    _atomic(path, lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd"))


def write_text(text: str, path: str | Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def save_torch(obj, path: str | Path) -> None:
    import torch  # lazy: reading tables needs no torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (inputs of a run: a checkpoint made from other inputs is stale)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strict(obj):
    """NaN / ±inf → null: strict JSON (a bare NaN token breaks most JSON readers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(obj, path: str | Path) -> None:
    write_text(json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n", path)


def final_values(df: pd.DataFrame) -> dict:
    """Last-step E1 (E6: also e-test, h-test) values of one run: {'<split>_<metric>': value}."""
    e1 = df[(df["layer"] == "all") & (df["null"] == -1) & df["metric"].isin(["accuracy", "loss", "overfit"])
            & (df["experiment"] != "E5")]  # the per-difficulty table is E5's own digest
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
            "lr_schedule": t["lr_schedule"], "batch_size": t["batch_size"],
            "steps": steps_of(params, spec.get("subset", "full")),
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


# f^p must stay below f^c for this many tracked steps in a row to count as a crossing ("a single
# noisy dip is not a crossing"); cglib.findings and the report read it from here
CROSSING_HOLD = 5


def share_crossings(metrics: pd.DataFrame, hold: int = CROSSING_HOLD) -> dict:
    """Per run and designation (real = -1, nulls 0…K-1): the first step from which the pristine
    share of the loss reduction stays below the corrupt share (f^p < f^c) for `hold` tracked
    steps in a row (a single noisy dip is not a crossing), None if it never does; and f^p at
    step 0. CG §2.4: at 25 % and 50 % noise the real curves cross, the nulls do not."""
    f = metrics[(metrics["metric"] == "f_pristine") & (metrics["experiment"] == "E2")]
    out = {}
    for (run, null), g in f.groupby(["run", "null"], sort=True):
        g = g.sort_values("step")
        # below for `hold` tracked steps in a row; the last hold-1 steps cannot start a crossing
        # (a dip at the very end of the run is not one)
        stays = (g["value"] < 0.5)[::-1].astype(float).rolling(hold, min_periods=hold).min()[::-1]
        below = g[stays.fillna(0).astype(bool)]
        out.setdefault(run, {})["real" if null == -1 else f"null{null}"] = {
            "f_pristine_at_0": round(float(g["value"].iloc[0]), 4),
            "crossing_step": int(below["step"].iloc[0]) if len(below) else None}
    return out


def designation_sizes(examples: pd.DataFrame) -> dict:
    """|p| and |c| of one run's training set (its examples table): the sizes that turn the
    cumulative i^p, i^c back into sums of loss reductions, and the proper accuracy |p| / n."""
    n_corrupt = int(examples["corrupt"].astype(bool).sum())
    return {"n_pristine": len(examples) - n_corrupt, "n_corrupt": n_corrupt}


WINDOWED_COLUMNS = ["run", "null", "window", "step_first", "step_last", "f_pristine", "f_corrupt"]


def windowed_shares(e2: pd.DataFrame, runs: pd.DataFrame, window: int) -> pd.DataFrame:
    """CG §2.4's f^p and f^c on loss reductions summed over windows of `window` tracked steps
    rather than single steps (per-step f^p swings by ±1 where ⟨g, g⟩ is small). |p|·i^p is the
    running sum of ⟨g_t, g^p_t⟩ (step-weighted on the sparse part of the schedule), so a window's
    sum is the difference of |p|·i^p across it, likewise for c; the window's f^p is its pristine
    sum over both. Nulls have the real sizes. The last window may be shorter. Runs without
    n_pristine / n_corrupt in `runs`, or with an empty side, are left out.
    Columns: WINDOWED_COLUMNS."""
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    i = e2[e2["metric"].isin(["i_pristine", "i_corrupt"]) & (e2["experiment"] == "E2")]
    if i.empty or not {"n_pristine", "n_corrupt"} <= set(runs.columns):
        return pd.DataFrame(columns=WINDOWED_COLUMNS)
    sizes = runs.drop_duplicates("run").set_index("run")[["n_pristine", "n_corrupt"]]
    out = []
    for (run, null), g in i.groupby(["run", "null"], sort=True):
        if run not in sizes.index or min(sizes.loc[run]) == 0:
            continue
        w = g.pivot_table(index="step", columns="metric", values="value").sort_index()
        if not {"i_pristine", "i_corrupt"} <= set(w.columns):
            continue
        s_p = w["i_pristine"].to_numpy(float) * int(sizes.at[run, "n_pristine"])
        s_c = w["i_corrupt"].to_numpy(float) * int(sizes.at[run, "n_corrupt"])
        steps = w.index.to_numpy()
        for j, start in enumerate(range(0, len(steps), window)):
            end = min(start + window, len(steps)) - 1
            d_p = s_p[end] - (s_p[start - 1] if start else 0.0)
            d_c = s_c[end] - (s_c[start - 1] if start else 0.0)
            f_p = d_p / (d_p + d_c) if d_p + d_c > 0 else float("nan")
            out.append(dict(run=run, null=int(null), window=j, step_first=int(steps[start]),
                            step_last=int(steps[end]), f_pristine=f_p, f_corrupt=1.0 - f_p))
    return pd.DataFrame(out, columns=WINDOWED_COLUMNS)


# ---------------------------------------------------------------------------- E5 / E6 / E8 digests

# W&S §4.4, ResNet-18 on ImageNet: accuracy of a model trained on one pool, tested on the other
WS_CROSS_TABLE = {("e-train", "e-test"): 0.85, ("e-train", "h-test"): 0.17,
                  ("h-train", "e-test"): 0.44, ("h-train", "h-test"): 0.21}


def last_step(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last step."""
    return df[df["step"] == df.groupby("run")["step"].transform("max")]


def _per_run(df: pd.DataFrame, key: str, key_values: pd.Series | None = None) -> pd.DataFrame:
    """metric → columns, one row per (run, key); the run's constant columns joined back (clip is
    null for most runs, so it cannot be a groupby key)."""
    df = df.assign(_key=key_values if key_values is not None else df[key])
    wide = df.pivot_table(index=["run", "_key"], columns="metric", values="value", observed=True,
                          aggfunc="first").reset_index().rename(columns={"_key": key})
    wide.columns.name = None
    meta = df.drop_duplicates("run")[["run", "subset", "optimizer", "clip", "noise", "seed"]]
    return wide.merge(meta, on="run", how="left")


def accuracy_by_difficulty(metrics: pd.DataFrame) -> pd.DataFrame:
    """W&S Fig. 5a per run: final training accuracy and count per difficulty level (E5).
    Columns: run, optimizer, clip, noise, seed, difficulty, accuracy, count."""
    e5 = last_step(metrics[(metrics["experiment"] == "E5") & (metrics["subset"] == "full")])
    if e5.empty:
        return pd.DataFrame(columns=["run", "optimizer", "clip", "noise", "seed", "difficulty", "accuracy", "count"])
    wide = _per_run(e5, "difficulty", e5["split"].str.removeprefix("difficulty=").astype(int))
    wide["count"] = wide["count"].astype(int)
    cols = ["run", "optimizer", "clip", "noise", "seed", "difficulty", "accuracy", "count"]
    return wide[cols].sort_values(["noise", "optimizer", "clip", "seed", "difficulty"]).reset_index(drop=True)


def cross_generalization(metrics: pd.DataFrame) -> pd.DataFrame:
    """W&S §4.4 2×2 table (E6): final accuracy and loss of the e-train / h-train runs on e-test,
    h-test, the test set and their own training subset; mean and sd over seeds, with the paper's
    ImageNet numbers. Columns: trained_on, evaluated_on, accuracy, accuracy_sd, loss, seeds, paper."""
    e6 = last_step(metrics[(metrics["experiment"] == "E6") & metrics["metric"].isin(["accuracy", "loss"])
                            & (metrics["layer"] == "all")])
    cols = ["trained_on", "evaluated_on", "accuracy", "accuracy_sd", "loss", "seeds", "paper"]
    if e6.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (subset, split), g in e6.groupby(["subset", "split"], sort=True, observed=True):
        acc, loss = g[g["metric"] == "accuracy"]["value"], g[g["metric"] == "loss"]["value"]
        rows.append(dict(trained_on=subset, evaluated_on=split, accuracy=acc.mean(),
                         accuracy_sd=acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                         loss=loss.mean(), seeds=len(acc), paper=WS_CROSS_TABLE.get((subset, split))))
    return pd.DataFrame(rows, columns=cols)


def score_correlations(metrics: pd.DataFrame) -> pd.DataFrame:
    """E8 per run: Spearman ρ of each score with difficulty and AUROC of each score (oriented
    to hardness) for finding the corrupt labels. Columns: run, subset, optimizer, clip, noise,
    seed, score, spearman_difficulty, auroc_corrupt."""
    e8 = metrics[metrics["experiment"] == "E8"]
    cols = ["run", "subset", "optimizer", "clip", "noise", "seed", "score", "spearman_difficulty", "auroc_corrupt"]
    if e8.empty:
        return pd.DataFrame(columns=cols)
    kind = e8["metric"].str.extract(r"^(spearman_difficulty|auroc_corrupt)_(.+)$")
    wide = _per_run(e8.assign(metric=kind[0]), "score", kind[1])
    return wide.reindex(columns=cols).sort_values(["subset", "noise", "optimizer", "run", "score"]).reset_index(drop=True)


def histogram(diff: pd.DataFrame, k: int) -> pd.DataFrame:
    """difficulty 0…K → number of examples (zeros included). Here, not in cglib.difficulty, so the
    report stage reads it without importing torch."""
    counts = diff["difficulty"].value_counts().reindex(range(k + 1), fill_value=0)
    return pd.DataFrame({"difficulty": range(k + 1), "count": counts.to_numpy()})


def difficulty_plot_table(e5: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """For `dvc plots`: difficulty, count (examples of the training set at that level), then one
    column of final training accuracy per run."""
    wide = e5.pivot_table(index="difficulty", columns="run", values="accuracy", sort=True)
    wide.columns.name = None
    return hist.merge(wide.reset_index(), on="difficulty", how="left")


def difficulty_summary(seeds: pd.DataFrame, hist: pd.DataFrame, e5: pd.DataFrame, e6: pd.DataFrame,
                       e8: pd.DataFrame) -> dict:
    """summary.json's E5, E6, E8 digests."""
    r = lambda v: None if pd.isna(v) else round(float(v), 6)  # noqa: E731
    out = {"easyhard": {str(s["seed"]): {"step": int(s["step"]), "epoch": r(s["epoch"]),
                                         "accuracy": r(s["accuracy"]), "easy": int(s["easy"]),
                                         "hard": int(s["hard"])} for s in seeds.to_dict("records")},
           "difficulty_histogram": {str(int(d)): int(c) for d, c in zip(hist["difficulty"], hist["count"])}}
    out["accuracy_by_difficulty"] = {
        run: {str(int(d)): r(a) for d, a in zip(g["difficulty"], g["accuracy"])}
        for run, g in e5.groupby("run", sort=True)}
    out["cross_generalization"] = {f"{row['trained_on']} -> {row['evaluated_on']}": r(row["accuracy"])
                                   for row in e6.to_dict("records")}
    out["score_correlations"] = {
        run: {row["score"]: {"spearman_difficulty": r(row["spearman_difficulty"]),
                             "auroc_corrupt": r(row["auroc_corrupt"])} for row in g.to_dict("records")}
        for run, g in e8.groupby("run", sort=True)}
    return out
