"""Studies side by side: each claim's value, interval and verdict per study, the settings in
which the studies differ, and the headline numbers (final test accuracy, train−test gap and
memorisation per model, variant and noise level), as tables and one self-contained page.

A study is its results folder (findings.json from the report stage, runs.parquet from the
aggregate stage). The settings come from runs.parquet, the configuration each run recorded, so
a comparison needs no params file and cannot disagree with what actually ran.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cglib.tables import DamagedFile, read_parquet

NOT_MEASURED = "not measured"  # a verdict as findings.json spells it (cglib.cli.VERDICT_KEYS)
# runs.parquet columns that describe how a study trained (each shown where the studies differ)
SETTINGS = ("dataset", "model", "n_train", "batch_size", "lr", "momentum", "lr_schedule", "steps")
CLAIM_COLUMNS = ["id", "paper", "section", "claim", "study", "value", "low", "high", "n", "verdict", "reason"]
HEADLINE_COLUMNS = ["study", "model", "optimizer", "clip", "noise", "seeds", "test_accuracy", "gap", "memorisation"]


class CompareError(Exception):
    """A study folder lacks what a comparison reads; str() is one line naming the file."""


def load_study(folder: str | Path) -> dict:
    """{name, folder, findings: {id: entry}, runs: DataFrame} of one finished study."""
    folder = Path(folder)
    path = folder / "findings.json"
    if not path.is_file():
        raise CompareError(f"{path}: not found; build the study first (its report stage writes it)")
    try:
        findings = json.loads(path.read_text())
    except ValueError as err:
        raise CompareError(f"{path}: not valid JSON ({err})") from None
    try:
        runs = read_parquet(folder / "runs.parquet", "aggregate")
    except DamagedFile as err:
        raise CompareError(str(err)) from None
    names = runs["study"].dropna().unique().tolist() if "study" in runs else []
    return dict(name=names[0] if len(names) == 1 else folder.name, folder=str(folder), findings=findings, runs=runs)


def _labels(studies: list[dict]) -> list[str]:
    """Each study's column label: its name, or name (folder) where two share a name."""
    names = [s["name"] for s in studies]
    return [n if names.count(n) == 1 else f"{n} ({s['folder']})" for n, s in zip(names, studies)]


def claims_table(studies: list[dict]) -> pd.DataFrame:
    """Long form: one row per claim and study (a claim one study lacks is 'unmeasured' there)."""
    order = list(dict.fromkeys(cid for s in studies for cid in s["findings"]))
    rows = []
    for label, s in zip(_labels(studies), studies):
        for cid in order:
            e = s["findings"].get(cid)
            if e is None:
                first = next(st["findings"][cid] for st in studies if cid in st["findings"])
                e = dict(paper=first.get("paper"), section=first.get("section"), claim=first.get("claim"),
                         value=None, low=None, high=None, n=0, verdict=NOT_MEASURED,
                         reason="this study does not judge the claim")
            rows.append(dict(id=cid, paper=e.get("paper"), section=e.get("section"), claim=e.get("claim"), study=label,
                             value=e.get("value"), low=e.get("low"), high=e.get("high"), n=e.get("n"),
                             verdict=e.get("verdict"), reason=e.get("reason")))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS).astype({"n": "Int64"})


def _values(series: pd.Series) -> str:
    vals = sorted({str(v) for v in series.dropna().tolist()})
    return ", ".join(vals) if vals else "—"


def settings_table(studies: list[dict]) -> pd.DataFrame:
    """Rows: a setting, one column per study; only the settings whose values differ."""
    rows = {}
    for label, s in zip(_labels(studies), studies):
        runs = s["runs"]
        full = runs[runs["subset"] == "full"] if "subset" in runs else runs
        col = {k: _values(runs[k]) for k in SETTINGS if k in runs}
        col["noise levels"] = _values(full["noise"].map(lambda v: f"{v:g}"))
        variants = full["optimizer"] + full["clip"].map(lambda c: "" if pd.isna(c) else f" c={int(c)}")
        col["variants"] = _values(variants)
        col["seeds"] = _values(full["seed"])
        col["runs"] = str(len(runs))
        rows[label] = col
    table = pd.DataFrame(rows)
    differ = table.apply(lambda r: r.nunique(dropna=False) > 1, axis=1)
    return table[differ].rename_axis("setting").reset_index()


def headline_table(studies: list[dict]) -> pd.DataFrame:
    """Per study, model, variant and noise level, over its seeds: final test accuracy, the
    train−test gap, and memorisation = training accuracy on the corrupt examples (their wrong
    labels fitted; NaN at noise 0)."""
    out = []
    for label, s in zip(_labels(studies), studies):
        runs = s["runs"]
        full = runs[(runs["subset"] == "full") & (runs["status"] == "ok")].copy()
        full["gap"] = full["train_accuracy"] - full["test_accuracy"]
        full["clip"] = full["clip"].astype("Int64")
        keys = ["model", "optimizer", "clip", "noise"]
        g = full.groupby(keys, dropna=False, sort=True)
        t = g.agg(seeds=("seed", "nunique"), test_accuracy=("test_accuracy", "mean"), gap=("gap", "mean"),
                  memorisation=("corrupt_accuracy", "mean")).reset_index()
        out.append(t.assign(study=label))
    return pd.concat(out, ignore_index=True)[HEADLINE_COLUMNS]


def _num(v, digits=3) -> str:
    return "—" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def page(studies: list[dict]) -> str:
    """The comparison page: jinja2, autoescaped, the report's stylesheet, no network."""
    from cglib.report import environment  # the report's templates and settings

    labels = _labels(studies)
    claims = claims_table(studies)
    by_claim = []
    for cid, rows in claims.groupby("id", sort=False):
        first = rows.iloc[0]
        cells = []
        for label in labels:
            r = rows[rows["study"] == label].iloc[0]
            ci = f"[{_num(r['low'])}, {_num(r['high'])}]" if not pd.isna(r["low"]) and r["low"] is not None else ""
            cells.append(dict(value=_num(r["value"]), ci=ci, n="—" if pd.isna(r["n"]) else int(r["n"]),
                              label=r["verdict"], reason=r["reason"] or ""))
        by_claim.append(dict(id=cid, paper=first["paper"], section=first["section"], claim=first["claim"],
                             cells=cells, differ=len({c["label"] for c in cells}) > 1))
    head = headline_table(studies)
    rows = []
    for key, grp in head.groupby(["model", "optimizer", "clip", "noise"], dropna=False, sort=True):
        model, opt, clip, noise = key
        variant = opt + ("" if pd.isna(clip) else f" c={int(clip)}")
        cells = []
        for label in labels:
            r = grp[grp["study"] == label]
            cells.append("—" if r.empty else f"{_num(r['test_accuracy'].iloc[0])} / {_num(r['gap'].iloc[0])} / "
                                             f"{_num(r['memorisation'].iloc[0])} (n={int(r['seeds'].iloc[0])})")
        rows.append(dict(model=model, variant=variant, noise=f"{noise:g}", cells=cells))
    settings = settings_table(studies)
    return environment().get_template("compare.html.j2").render(
        labels=labels, claims=by_claim, headline=rows,
        settings=[dict(name=r["setting"], cols=[r[label] for label in labels]) for _, r in settings.iterrows()],
        folders=[s["folder"] for s in studies])
