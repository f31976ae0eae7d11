"""results/<study>/report.html: one self-contained page mirroring the papers' figures and tables, with
the findings scorecard on top; the same figures as PNG and SVG files under its plots/.

Each section is present only when the study produced its data. Figures are embedded as base64
PNG (dpi 100): a dense curve grid is a predictable ~100–200 KB as PNG, while inline SVG grows
with the number of points and carries `xmlns="http://…"` strings, which would blur the page's
"no external URL" check. The SVG files on disk are for papers and zooming.
"""
from __future__ import annotations

import base64
import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path
from subprocess import SubprocessError
from types import SimpleNamespace

import jinja2
import pandas as pd
import yaml

from cglib import findings, plots, tables

FIGURES, OUTPUTS = tables.REPORT_FIGURES, tables.REPORT_OUTPUTS
# W&S §4.3 (Fig. 5a), RM3 on ImageNet: top-1 training accuracy of the easiest and hardest examples
WS_FIG5A = {"easiest": 0.99, "hardest": 0.61}
VERSIONS = ("torch", "numpy", "pandas", "matplotlib", "snakemake", "dvc", "jinja2", "coherent-gradients")
WALL = re.compile(r"done: (\S+) on (\S+), wall ([0-9.]+) s")


# ---------------------------------------------------------------------------- inputs

def prepare(metrics: pd.DataFrame, runs: pd.DataFrame, hist: pd.DataFrame, seeds: pd.DataFrame | None,
            params: dict) -> SimpleNamespace:
    """The tables every figure and section reads. `main`: the runs of the study's own model
    (params model); runs of another model (a BatchNorm cnn for E7) only enter the MC section."""
    model = tables.model_label(params["model"])
    mine = metrics["model"].isin([model, params["model"]["name"]])  # as cglib.findings reads it
    main = metrics[mine] if mine.any() else metrics
    coh = params["train"].get("coherence", {})
    m = coh.get("train_sample") if coh.get("train_sample") == coh.get("test_sample") else None
    window = params.get("findings", {}).get("share_window", findings.SHARE_WINDOW)
    matched = findings.ws.matched_budget(findings.context(metrics, runs, params))  # W&S §4.3, as the claims
    return SimpleNamespace(metrics=metrics, main=main, runs=runs, hist=hist, seeds=seeds, model=model, m=m,
                           window=window, matched=matched, e5=tables.accuracy_by_difficulty(main),
                           e6=tables.cross_generalization(main), e8=tables.score_correlations(main))


def draw(t: SimpleNamespace, plots_dir: str | Path) -> dict:
    """Every figure of FIGURES → plots_dir/<name>.png and .svg; returns name → PNG bytes, None
    where the study has no data (a placeholder is written; the report omits the section)."""
    makers = {
        "learning_curves": lambda: plots.learning_curves_fig(t.main),
        "loss_shares": lambda: plots.loss_shares_fig(t.main, t.runs, t.window),
        "winsorization": lambda: plots.winsorization_fig(t.main),
        "robust_optimizers": lambda: plots.robust_optimizers_fig(t.main),
        "easy_hard": lambda: plots.easy_hard_fig(t.main),
        "accuracy_by_difficulty": lambda: plots.accuracy_by_difficulty_fig(t.e5, t.hist),
        "m_coherence": lambda: plots.m_coherence_fig(t.metrics, t.m, t.model),
        "m_coherence_layers": lambda: plots.m_coherence_layers_fig(t.metrics, t.model),
        "difficulty_scores": lambda: plots.difficulty_scores_fig(t.e8),
    }
    out = {}
    for name, what in FIGURES.items():
        fig = makers[name]()
        png = plots.save(fig if fig is not None else plots.placeholder(what), Path(plots_dir) / name)
        out[name] = png if fig is not None else None
    return out


def run_logs(log_dir: str | Path, runs) -> dict:
    """run → (device, wall seconds) from the last line of each train log ("done: ok on cpu, wall
    17.8 s; …"). Wall times live in logs only: run.json and the tables are a pure function of params."""
    out = {}
    for run in runs:
        path = Path(log_dir) / f"{run}.log"
        found = WALL.findall(path.read_text(errors="replace")) if path.is_file() else []
        if found:
            out[run] = (found[-1][1], float(found[-1][2]))
    return out


def provenance(runs_info: dict, cwd: str | Path = ".") -> dict:
    """Git commit (with a note when the tree has uncommitted changes), package versions, devices."""
    def git(*args):
        try:
            r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, SubprocessError):  # plain names: Cosmic Ray's ExceptionReplacer fails on a dotted one
            return None

    commit = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (plus uncommitted changes)"
    out = {"git commit": commit}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    devices = sorted({d for d, _ in runs_info.values()})
    out["device (train logs)"] = ", ".join(devices) or "unknown (no train logs)"
    return out


# ---------------------------------------------------------------------------- table cells

def _num(v, digits: int = 3) -> str:
    return "—" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _msd(values: pd.Series, digits: int = 3) -> str:
    """Mean ± sd over seeds (the mean alone for one seed)."""
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return _num(values.iloc[0], digits)
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _table(df: pd.DataFrame, **kw) -> dict:
    """A DataFrame of display strings → what the template's table macro renders."""
    return dict(columns=list(df.columns), rows=df.astype(object).where(df.notna(), "—").values.tolist(), **kw)


def _seeds_note(df: pd.DataFrame) -> str:
    n = df.groupby([c for c in ("optimizer", "clip", "noise", "subset") if c in df], dropna=False)["seed"].nunique()
    k = int(n.max()) if len(n) else 1
    return (f"Curves: mean over {k} seeds, band ± 1 sd; tables: mean ± sd." if k > 1
            else "One seed per configuration: no bands.")


def _finals(df: pd.DataFrame, keys: list[str], columns: dict) -> pd.DataFrame:
    """Last-step values per run → one row per `keys`, mean ± sd over seeds of each column
    (columns: label → (metric, split))."""
    last = tables.last_step(df)
    last = last[(last["layer"] == "all") & (last["null"] == -1)]
    last = last.assign(optimizer=_in_order(last["optimizer"]))
    rows = []
    for key, g in last.groupby(keys, sort=True, observed=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        for label, (metric, split) in columns.items():
            row[label] = _msd(g[(g["metric"] == metric) & (g["split"] == split)].set_index("run")["value"])
        row["seeds"] = g["seed"].nunique()
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.assign(noise=out["noise"].map("{:g}".format)) if "noise" in out else out


def _in_order(names: pd.Series) -> pd.Categorical:
    """Sorting by this puts SGD first, then RM3, RA3, M3, winsorized (plots.ORDER)."""
    return pd.Categorical(names.astype(str), categories=plots.ordered(names.astype(str).unique()), ordered=True)


FINAL = {"train acc.": ("accuracy", "train"), "test acc.": ("accuracy", "test"),
         "pristine acc.": ("accuracy", "pristine"), "corrupt acc.": ("accuracy", "corrupt"),
         "overfit": ("overfit", "train"), "train loss": ("loss", "train")}


# ---------------------------------------------------------------------------- sections

def sections(t: SimpleNamespace, images: dict) -> dict:
    """Section id → its content (figures, tables, caption); a section without data is absent."""
    full = t.main[t.main["subset"] == "full"]
    s = {}
    if images["learning_curves"]:
        sgd = plots.prefer_sgd(full[full["metric"].isin(["accuracy", "loss", "overfit"])])
        s["cg-fig1"] = dict(note=_seeds_note(sgd), tables=[_table(_finals(sgd, ["noise"], FINAL),
                                                                  caption=f"{sgd['optimizer'].iloc[0]}, last step")])
    if images["loss_shares"]:
        windows = _windows_table(t.main, t.runs, t.window)  # none without the designation sizes in runs
        s["cg-fig23"] = dict(note=_seeds_note(t.main[t.main["experiment"] == "E2"]),
                             window=t.window if windows["rows"] else None, tables=[windows] if windows["rows"] else [])
    if images["winsorization"]:
        w = full[full["optimizer"].isin(["sgd", "winsorized"])]
        w = w.assign(c=w["clip"].fillna(0).astype(int))
        cols = {k: FINAL[k] for k in ("train acc.", "test acc.", "overfit")}
        s["cg-s3"] = dict(note=_seeds_note(w), tables=[_table(_finals(w, ["noise", "c"], cols),
                                                              caption="last step; c = 0 is plain SGD")])
    if images["robust_optimizers"]:
        r = full[full["optimizer"].isin(plots.ROBUST)]
        cols = {k: FINAL[k] for k in ("pristine acc.", "corrupt acc.", "test acc.", "train acc.", "overfit")}
        s["ws-s3"] = dict(note=_seeds_note(r), tables=[_table(_finals(r, ["noise", "optimizer"], cols),
                                                              caption="last step, per noise level")])
    if images["easy_hard"]:
        tabs = [_cross_table(t.e6)]
        if t.seeds is not None and len(t.seeds):
            tabs.append(_table(t.seeds.assign(epoch=t.seeds["epoch"].map(_num), accuracy=t.seeds["accuracy"].map(_num)),
                               caption="where each easy/hard run (one per difficulty seed) made its split"))
        s["ws-fig4"] = dict(note=_seeds_note(t.main[t.main["experiment"] == "E6"]), tables=tabs)
    if images["accuracy_by_difficulty"]:
        tabs = [_difficulty_table(t.e5, t.hist)]
        if t.matched:
            tabs.append(_matched_table(t.matched))
        s["ws-fig5"] = dict(note=_seeds_note(t.e5), tables=tabs, side=True)
    if images["m_coherence"]:
        s["mc"] = dict(note=_seeds_note(t.metrics[t.metrics["experiment"] == "E7"]), m=t.m,
                       layers=bool(images["m_coherence_layers"]), tables=[_peaks(t.metrics)])
    if images["difficulty_scores"]:
        s["e8"] = dict(tables=[_scores_table(t.e8)])
    return s


def _windows_table(metrics: pd.DataFrame, runs: pd.DataFrame, window: int) -> dict:
    """CG §2.4 as the claims read it: per SGD run, f^p − f^c of the windowed shares in the real
    designation's first window, its lowest later window and its highest window, and the nulls'
    lowest window, each with its steps."""
    e2 = metrics[(metrics["experiment"] == "E2") & (metrics["subset"] == "full")]
    e2 = plots.prefer_sgd(e2) if len(e2) else e2
    w = tables.windowed_shares(e2, runs, window)
    meta = e2.drop_duplicates("run").set_index("run")
    w = w.assign(diff=w["f_pristine"] - w["f_corrupt"],
                 where=w["step_first"].astype(str) + "–" + w["step_last"].astype(str))

    def at(g, fn):  # the value of one window and its steps
        r = g.loc[fn(g["diff"])] if g["diff"].notna().any() else None
        return "—" if r is None else f"{r['diff']:+.3f} (steps {r['where']})"

    rows = []
    for run, g in w.groupby("run", sort=True):
        real, nulls = g[g["null"] == -1].sort_values("window"), g[g["null"] >= 0]
        later = real.iloc[1:]
        rows.append({"noise": f"{meta.at[run, 'noise']:g}", "optimizer": meta.at[run, "optimizer"],
                     "seed": int(meta.at[run, "seed"]), "windows": len(real),
                     "real, first window": at(real.iloc[:1], pd.Series.idxmax),
                     "real, lowest later": at(later, pd.Series.idxmin),
                     "real, highest": at(real, pd.Series.idxmax),
                     "nulls, lowest": at(nulls, pd.Series.idxmin)})
    df = pd.DataFrame(rows).sort_values(["noise", "seed"]) if rows else pd.DataFrame()
    margin = findings.cg.SHARE_MARGIN
    return _table(df, caption=f"f^p − f^c on loss reductions summed over windows of {window} tracked steps "
                              f"(findings.share_window), per run. CG §2.4: at 25 % and 50 % noise the real "
                              f"designation starts above (> {margin:g}) and crosses below (< −{margin:g}), the "
                              f"nulls stay above −{margin:g}; at 75 % the real one stays below −{margin:g}")


def _cross_table(e6: pd.DataFrame) -> dict:
    """W&S §4.4 2×2: rows trained on, columns evaluated on; ours (mean ± sd) with the paper's."""
    rows = []
    for trained, g in e6.groupby("trained_on", sort=True):
        row = {"trained on": trained}
        for _, r in g.iterrows():
            ours = _num(r["accuracy"]) + ("" if pd.isna(r["accuracy_sd"]) else f" ± {r['accuracy_sd']:.3f}")
            row[f"on {r['evaluated_on']}"] = ours + ("" if pd.isna(r["paper"]) else f" (paper {r['paper']:.2f})")
        rows.append(row)
    df = pd.DataFrame(rows)
    order = ["trained on"] + [c for c in ("on e-test", "on h-test", "on test", "on train") if c in df]
    return _table(df[order] if rows else df, caption="final accuracy; in brackets W&S §4.4 (ResNet-18, ImageNet)")


def _difficulty_table(e5: pd.DataFrame, hist: pd.DataFrame) -> dict:
    """W&S Fig. 5a as numbers: one row per noise level and variant, one column per difficulty
    level; the first row counts the examples, the last is the paper's RM3."""
    e5 = e5.assign(variant=_in_order(plots.variant(e5)))
    wide = e5.groupby(["noise", "variant", "difficulty"], observed=True)["accuracy"].apply(_msd).unstack("difficulty")
    wide.columns = [f"d={int(c)}" for c in wide.columns]
    wide = wide.reset_index().assign(noise=lambda d: d["noise"].map("{:g}".format))
    counts = {"noise": "", "variant": "examples",
              **{f"d={int(d)}": int(c) for d, c in zip(hist["difficulty"], hist["count"])}}
    paper = {"noise": "0", "variant": "W&S RM3 (ImageNet)", wide.columns[2]: WS_FIG5A["easiest"],
             wide.columns[-1]: WS_FIG5A["hardest"]}
    df = pd.concat([pd.DataFrame([counts]), wide, pd.DataFrame([paper])], ignore_index=True)
    return _table(df, caption="training accuracy by difficulty d at the last step (0 = easy in every easy/hard run)")


def _matched_table(matched: dict) -> dict:
    """W&S §4.3 at the matched budget (findings.ws.matched_budget): per seed, SGD's and RM3's
    training accuracy by difficulty at the first evaluation step where SGD reaches MATCHED_LEVEL;
    a seed without one gives its reason in the caption."""
    rows, reasons = [], []
    for seed, got in sorted(matched.items()):
        if isinstance(got, str):
            reasons.append(got)
            continue
        step, tab = got
        for opt in ("sgd", "rm3"):
            rows.append({"seed": seed, "step": step, "variant": opt,
                         **{f"d={int(d)}": _num(v) for d, v in tab[opt].items()}})
    df = pd.DataFrame(rows)
    if len(df):
        levels = sorted((c for c in df.columns if c.startswith("d=")), key=lambda c: int(c[2:]))
        df = df[["seed", "step", "variant", *levels]]
    level = findings.ws.MATCHED_LEVEL
    caption = (f"training accuracy by difficulty at the matched budget: the first evaluation step at which SGD "
               f"(same seed, real labels) reaches {level:g} training accuracy, where the W&S §4.3 claims are "
               "judged (levels holding examples)")
    if reasons:
        caption += ". Not compared: " + "; ".join(reasons)
    return _table(df, caption=caption)


def _peaks(metrics: pd.DataFrame) -> dict:
    """MC §5: peak m-coherence of the whole model and the step it is reached, per model, noise, sample."""
    coh = plots.coherence_rows(metrics)
    coh = coh[(coh["metric"] == "m_coherence") & (coh["layer"] == "all")].dropna(subset=["value"])
    top = coh.loc[coh.groupby(["run", "split"])["value"].idxmax()]
    rows = []
    for (model, noise), g in top.groupby(["model", "noise"], sort=True):
        row = {"model": model, "optimizer": g["optimizer"].iloc[0], "noise": f"{noise:g}"}
        for split in ("train", "test"):
            h = g[g["split"] == split]
            row[f"{split} peak"] = _msd(h["value"], 1)
            row[f"{split} step"] = ", ".join(map(str, h["step"])) or "—"
        rows.append(row)
    return _table(pd.DataFrame(rows), caption="peak m-coherence of the whole model and the step(s) reaching it")


def _scores_table(e8: pd.DataFrame) -> dict:
    """Per score: Spearman ρ with difficulty and AUROC for corrupt labels, mean ± sd over runs."""
    rows = [{"score": score, "Spearman ρ with difficulty": _msd(g["spearman_difficulty"]),
             "AUROC corrupt (noisy runs)": _msd(g["auroc_corrupt"]), "runs": g["run"].nunique()}
            for score, g in e8.groupby("score", sort=True)]
    return _table(pd.DataFrame(rows), caption="over all runs of the study's model (AUROC: runs with corrupt labels)")


def run_table(runs: pd.DataFrame, logs: dict) -> dict:
    rows = []
    for r in runs.to_dict("records"):
        device, wall = logs.get(r["run"], ("—", None))
        failed = {"text": r["status"], "cls": "verdict " + verdict_class(findings.FAILS)}
        status = r["status"] if r["status"] == "ok" else failed
        rows.append({"run": r["run"], "model": r.get("model", "—"), "status": status,
                     "steps": f"{r['steps_done']} / {r.get('steps', '?')}", "wall (s)": _num(wall, 1),
                     "device": device,
                     **{k: _num(r.get(f"{k}_accuracy")) for k in ("train", "test", "pristine", "corrupt")}})
    return _table(pd.DataFrame(rows), caption="final accuracies; wall time and device from the study's logs/train/")


PAPERS = {"CG": "CG — Coherent Gradients (ICLR 2020)",
          "W&S": "W&S — Weak and Strong Gradient Directions",
          "MC": "MC — Making coherence out of nothing at all"}
COUNT_LABELS = {findings.HOLDS: "hold", findings.FAILS: "do not hold", findings.INCONCLUSIVE: "inconclusive",
                findings.UNMEASURABLE: "not measurable", findings.UNMEASURED: "not measured"}


def _sig(v) -> str:
    """A claim's number, three significant digits (as the detail text: cglib.findings.verdict)."""
    if v is None or pd.isna(v):
        return "—"
    v = float(v)
    return f"{v:.2e}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.3g}"


def verdict_class(verdict: str) -> str:
    return "v-" + verdict.replace(" ", "-")


def scorecard_table(card: pd.DataFrame, shown=None) -> dict:
    """The scorecard (cglib.findings.COLUMNS) for the template: counts of every verdict, and the
    claims grouped by paper (PAPERS order, then any other, each in the card's order: CLAIMS).
    A claim links to its evidence (`#<figure>`) only when that section is on the page (`shown`)."""
    shown = set(TITLES) if shown is None else set(shown)
    groups = []
    for paper in [*[p for p in PAPERS if p in set(card["paper"])],
                  *[p for p in card["paper"].unique() if p not in PAPERS]]:
        rows = []
        for r in card[card["paper"] == paper].to_dict("records"):
            fig = r.get("figure")
            interval = "—" if pd.isna(r["low"]) or pd.isna(r["high"]) else f"[{_sig(r['low'])}, {_sig(r['high'])}]"
            rows.append(dict(id=r["id"], claim=r["claim"], section=f"{r['paper']} {r['section']}",
                             statistic=r["statistic"], value=_sig(r["value"]), interval=interval,
                             n=int(r["n"]), verdict=r["verdict"], cls=verdict_class(r["verdict"]),
                             reason=r["reason"] or "",  # detail: the tests, unless they only repeat it
                             detail="" if (r["detail"] or "") == (r["reason"] or "") else r["detail"],
                             href=f"#{fig}" if fig in shown else None,
                             evidence=TITLES[fig].split(" — ")[0] if fig in TITLES else None,
                             evidence_title=TITLES.get(fig, "")))
        groups.append(dict(paper=paper, title=PAPERS.get(paper, paper), rows=rows))
    counts = card["verdict"].value_counts()
    return dict(groups=groups, counts=[dict(verdict=v, n=int(counts.get(v, 0)), label=COUNT_LABELS[v],
                                            cls=verdict_class(v)) for v in findings.VERDICTS])


# ---------------------------------------------------------------------------- page

TITLES = {  # section id → heading, naming the paper figure or table it mirrors
    "cg-fig1": "CG Fig. 1 — accuracy and training loss under label noise",
    "cg-fig23": "CG Figs. 2–3 — pristine vs corrupt share of the loss reduction, with null worlds",
    "cg-s3": "CG §3 (Fig. 4) — winsorized SGD: level c vs train, test and overfit",
    "ws-s3": "W&S §3 (Figs. 2–3) — SGD vs RM3 / RA3 / M3",
    "ws-fig4": "W&S Fig. 4 and §4.4 — easy and hard examples, the 2×2 cross table",
    "ws-fig5": "W&S §4.3 (Fig. 5a) — accuracy by difficulty",
    "mc": "MC Figs. 1 and 4–5 — m-coherence over training, train vs test sample, per layer",
    "e8": "Difficulty scores (E8) — rank correlation with difficulty, AUROC for corrupt labels",
    "runs": "Runs",
    "params": "Study params (as validated, defaults filled in)",
    "provenance": "Provenance",
}


def environment() -> jinja2.Environment:
    """The page's templates (cglib/templates), autoescaped, strict about missing values."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def render(card: pd.DataFrame, t: SimpleNamespace, images: dict, params: dict, logs: dict, prov: dict) -> str:
    """The whole page (jinja2, autoescaped)."""
    env = environment()
    secs = sections(t, images)
    toc = [(k, TITLES[k]) for k in TITLES if k in secs or k in ("runs", "params", "provenance")]
    img = {k: base64.b64encode(v).decode("ascii") for k, v in images.items() if v}
    return env.get_template("report.html.j2").render(
        study=params["study"], card=scorecard_table(card, secs), s=secs, titles=TITLES, toc=toc, img=img,
        runs=run_table(t.runs, logs), params_yaml=yaml.safe_dump(params, sort_keys=False),
        prov=prov, n_runs=len(t.runs), n_ok=int((t.runs["status"] == "ok").sum()),
        dataset=params["data"]["dataset"], model=t.model)
