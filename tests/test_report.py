"""The report stage: its figures on the smoke study's tables, the page as a person sees it
(headless Chromium: PNG, PDF, no JavaScript error, no missing image, no empty section), no
external URL, and sections present exactly when their data is."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from cglib import cli, config, findings, plots, report
from cglib import tables as cgtables
from cglib.tables import histogram
from conftest import PY, ROOT, copy_repo, run_stage, venv_env

BIN = Path(PY).parent
STUDY = "studies/smoke.yaml"


def chromium() -> str:
    """Debian's chromium (`make browser` installs it); a missing browser fails the test, as a
    missing dataset does: the report is checked as a person would see it, or not at all."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium not found: run `make browser` (apt-get install chromium)"
    return found


@pytest.fixture(scope="session")
def smoke(smoke_study) -> Path:
    """The smoke study through Snakemake (conftest.smoke_study, shared with tests/test_slurm.py);
    the report rule is part of its default target."""
    assert (smoke_study / "results" / "smoke" / "report.html").is_file()
    return smoke_study


def tables(root: Path):
    params = config.load_params(root / STUDY)
    res = root / "results" / params["study"]
    hist = histogram(pd.read_parquet(res / "difficulty.parquet"), len(params["difficulty"]["seeds"]))
    return (pd.read_parquet(res / "metrics.parquet"), pd.read_parquet(res / "runs.parquet"), hist,
            pd.read_csv(res / "difficulty_seeds.csv"), params)


def stand_in_card() -> pd.DataFrame:
    """A scorecard of cglib.findings' shape: the page must not depend on its numbers."""
    return pd.DataFrame([
        dict(id="a", paper="CG", section="§2.3", figure="cg-fig1", claim="c <b>1</b>", statistic="s", value=0.5,
             low=0.25, high=0.75, n=3, verdict="holds", reason="", detail="d"),
        dict(id="b", paper="W&S", section="§3", figure="ws-s3", claim="c2", statistic="s", value=float("nan"),
             low=float("nan"), high=float("nan"), n=0, verdict="not measured", reason="no data", detail="")],
        columns=findings.COLUMNS)


def every_claim_card() -> pd.DataFrame:
    """Every claim of CLAIMS with distinct numbers (low < value < high, unequal gaps), the
    verdicts in turn, and one claim without an interval (a single seed)."""
    rows = []
    for i, (cid, paper, section, figure, claim, statistic, _) in enumerate(findings.CLAIMS):
        verdict = findings.VERDICTS[i % len(findings.VERDICTS)]
        one = i == 4
        rows.append(dict(id=cid, paper=paper, section=section, figure=figure, claim=claim, statistic=statistic,
                         value=1.5 + i, low=float("nan") if one else 1.25 + i, high=float("nan") if one else 2.75 + i,
                         n=1 if one else 3 + i % 2, verdict=verdict,
                         reason="" if verdict == findings.HOLDS else f"why {cid}", detail=f"tests of {cid}"))
    return pd.DataFrame(rows, columns=findings.COLUMNS)


def has_data(fig) -> bool:
    return any(ax.lines or ax.images or ax.collections or ax.patches for ax in fig.axes)


# ---------------------------------------------------------------------------- outputs and figures

def test_stage_writes_every_declared_output_and_nothing_else(smoke, tmp_path):
    res = smoke / "results" / "smoke"
    for name in report.OUTPUTS:
        assert (res / name).stat().st_size > (2_000 if name.startswith("plots/") else 100), name
    run_stage("report", "--params", STUDY, "--results", "results/smoke", "--out", tmp_path / "out", cwd=smoke, check=True)
    written = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == {*report.OUTPUTS, cli.SCORECARD}  # the DVC metrics file is declared apart (not a figure)
    html = (res / "report.html").read_text()
    assert 50_000 < len(html) < 3_000_000
    assert not list(res.rglob("*.tmp"))


def test_each_figure_has_data_on_the_smoke_study(smoke, tmp_path):
    metrics, runs, hist, seeds, params = tables(smoke)
    t = report.prepare(metrics, runs, hist, seeds, params)
    opts = set(t.main["optimizer"])
    expect = {"winsorization": "winsorized" in opts, "robust_optimizers": bool(opts & {"rm3", "ra3", "m3"})}
    images = report.draw(t, tmp_path)
    for name in report.FIGURES:
        drawn = images[name] is not None
        assert drawn == expect.get(name, True), name
        assert (tmp_path / f"{name}.png").stat().st_size > (10_000 if drawn else 2_000), name
    for fig in (plots.learning_curves_fig(t.main), plots.m_coherence_fig(t.metrics, t.m),
                plots.loss_shares_fig(t.main, t.runs, t.window), plots.difficulty_scores_fig(t.e8)):
        assert has_data(fig)
        plt.close(fig)


def shares_table(window_steps: int = 25, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A hand-made E2 run at 50 % noise, real designation and one null world: per-step loss
    reductions of each side, f^p = their pristine share, i = running sums per example; and the
    runs table with the designation sizes."""
    rng = np.random.default_rng(seed)
    n_p, n_c, rows = 150, 150, []
    for null in (-1, 0):
        d_p, d_c = rng.uniform(0.1, 1.0, window_steps), rng.uniform(0.1, 1.0, window_steps)
        per = {"f_pristine": d_p / (d_p + d_c), "f_corrupt": d_c / (d_p + d_c),
               "i_pristine": np.cumsum(d_p) / n_p, "i_corrupt": np.cumsum(d_c) / n_c}
        for metric, values in per.items():
            rows += [dict(run="r", experiment="E2", optimizer="sgd", clip=None, noise=0.5, seed=0, subset="full",
                          split="train", metric=metric, layer="all", null=null, step=step, value=float(v))
                     for step, v in enumerate(values)]
    runs = pd.DataFrame([dict(run="r", status="ok", n_pristine=n_p, n_corrupt=n_c)])
    return pd.DataFrame(rows), runs


def test_loss_shares_fig_draws_the_windowed_shares_over_faint_per_step_ones():
    metrics, runs = shares_table()
    windows = cgtables.windowed_shares(metrics, runs, 10).sort_values(["null", "window"])
    assert len(windows) == 6  # 25 steps: windows of 10, 10 and 5, real and null
    fig = plots.loss_shares_fig(metrics, runs, 10)
    top = fig.axes[0]
    lines = {(ln.get_gid(), ln.get_color()): ln for ln in top.lines if ln.get_gid()}
    for kind, color in (("pristine", "C2"), ("corrupt", "C3")):
        for gid, null in (("windowed", -1), ("windowed-null", 0)):
            w = windows[windows["null"] == null]
            ln = lines[gid, color]
            assert np.allclose(ln.get_ydata(), w[f"f_{kind}"]), (kind, gid)
            assert np.allclose(ln.get_xdata(), (w["step_first"] + w["step_last"]) / 2)
        per_step = lines["per-step", color]  # the real designation step by step, faint and thin
        real = metrics[(metrics["metric"] == f"f_{kind}") & (metrics["null"] == -1)]
        assert np.allclose(per_step.get_ydata(), real["value"])
        assert per_step.get_alpha() < 0.5 and per_step.get_linewidth() < lines["windowed", color].get_linewidth()
    assert "10" in top.get_ylabel()
    plt.close(fig)
    # a per-step spike (a step where the loss barely moves) does not set the scale: the windows do
    spiked = metrics.copy()
    spiked.loc[(spiked["metric"] == "f_pristine") & (spiked["null"] == -1) & (spiked["step"] == 3), "value"] = 40.0
    fig = plots.loss_shares_fig(spiked, runs, 10)
    assert fig.axes[0].get_ylim()[1] < 1.5
    plt.close(fig)
    # without the designation sizes there are no windows: the per-step curves are the figure
    fig = plots.loss_shares_fig(metrics, runs[["run", "status"]], 10)
    assert not {ln.get_gid() for ln in fig.axes[0].lines} & {"windowed", "windowed-null", "per-step"}
    assert has_data(fig)
    plt.close(fig)


def test_windows_table_gives_the_statistics_the_claims_test():
    metrics, runs = shares_table()
    w = cgtables.windowed_shares(metrics, runs, 10)
    w = w.assign(diff=w["f_pristine"] - w["f_corrupt"]).sort_values("window")
    real, null = w[w["null"] == -1], w[w["null"] == 0]
    table = report._windows_table(metrics, runs, 10)
    (row,) = table["rows"]
    cell = dict(zip(table["columns"], row))
    assert cell["noise"] == "0.5" and cell["windows"] == 3 and "windows of 10 tracked steps" in table["caption"]
    assert cell["real, first window"] == f"{real['diff'].iloc[0]:+.3f} (steps 0–9)"
    later = real.iloc[1:].loc[real.iloc[1:]["diff"].idxmin()]
    assert cell["real, lowest later"] == f"{later['diff']:+.3f} (steps {later['step_first']}–{later['step_last']})"
    assert cell["real, highest"].startswith(f"{real['diff'].max():+.3f} ")
    assert cell["nulls, lowest"].startswith(f"{null['diff'].min():+.3f} ")


def test_matched_budget_table_per_seed_with_the_reasons_in_the_caption():
    tab = pd.DataFrame({"sgd": [1.0, 0.995], "rm3": [0.97, 0.5]}, index=pd.Index([0, 3], name="difficulty"))
    table = report._matched_table({0: (120, tab), 1: "SGD never reaches 0.99 training accuracy (seed 1)"})
    assert table["columns"] == ["seed", "step", "variant", "d=0", "d=3"]
    assert table["rows"] == [[0, 120, "sgd", "1.000", "0.995"], [0, 120, "rm3", "0.970", "0.500"]]
    assert "first evaluation step at which SGD" in table["caption"] and "seed 1" in table["caption"]


# ---------------------------------------------------------------------------- the scorecard

def scorecard_html(card: pd.DataFrame, shown) -> str:
    return report.environment().get_template("scorecard.html.j2").render(card=report.scorecard_table(card, shown))


def test_scorecard_groups_by_paper_in_claims_order_with_every_number():
    card = every_claim_card()
    shown = {"cg-fig1", "cg-fig23", "ws-fig5", "mc"}  # cg-s3, ws-s3 and ws-fig4 are not on this page
    t = report.scorecard_table(card, shown)
    papers = list(dict.fromkeys(c[1] for c in findings.CLAIMS))
    assert [g["paper"] for g in t["groups"]] == papers == ["CG", "W&S", "MC"]
    for g in t["groups"]:
        assert [r["id"] for r in g["rows"]] == [c[0] for c in findings.CLAIMS if c[1] == g["paper"]]
    assert [(c["verdict"], c["n"]) for c in t["counts"]] == [
        (v, int((card["verdict"] == v).sum())) for v in findings.VERDICTS]

    html = scorecard_html(card, shown)
    heads = [html.index(f">{escape(report.PAPERS[p])}<") for p in papers]
    assert heads == sorted(heads)
    positions = [html.index(f'<tr id="claim-{c[0]}">') for c in findings.CLAIMS]
    groups = [heads[papers.index(c[1])] for c in findings.CLAIMS]
    assert all(g < p for g, p in zip(groups, positions))  # each claim under its paper's heading
    for c in papers:
        mine = [p for cl, p in zip(findings.CLAIMS, positions) if cl[1] == c]
        assert mine == sorted(mine)
    for r in card.to_dict("records"):
        row = html.split(f'<tr id="claim-{r["id"]}">')[1].split("</tr>")[0]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        claim, stat, value, interval, n, verdict, reason, link = cells
        assert claim.startswith(escape(r["claim"])) and escape(f"{r['paper']} {r['section']}") in claim
        assert value == f"{r['value']:.3g}"
        assert interval == ("—" if pd.isna(r["low"]) else f"[{r['low']:.3g}, {r['high']:.3g}]"), r["id"]
        assert n == str(r["n"])
        assert verdict == r["verdict"] and f'class="verdict v-{r["verdict"].replace(" ", "-")}"' in row
        assert reason.startswith(escape(r["reason"]))
        assert f"<details><summary>tests</summary>tests of {r['id']}</details>" in reason
        if r["figure"] in shown:
            assert f'<a href="#{r["figure"]}"' in link, r["id"]
        else:  # its section is not on the page: no dead link
            assert "<a" not in link and "href" not in row, r["id"]
    for v in findings.VERDICTS:
        assert f'class="v-{v.replace(" ", "-")}">{int((card["verdict"] == v).sum())} ' in html


# ---------------------------------------------------------------------------- the page in a browser

def test_report_renders_in_chromium(smoke, tmp_path):
    """PNG and PDF as a person would get them; the page's own check (every image decoded,
    every section with content) read back from the DOM; no JavaScript error on the console."""
    url = (smoke / "results" / "smoke" / "report.html").as_uri()
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    shot, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    for args in (["--window-size=1280,2000", f"--screenshot={shot}"],
                 [f"--print-to-pdf={pdf}", "--no-pdf-header-footer"], ["--virtual-time-budget=5000", "--dump-dom"]):
        proc = subprocess.run([*base, *args, url], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000 and pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 100_000
    status = re.search(r'<body data-check="([^"]*)"', proc.stdout)
    assert status and status.group(1) == "ok", status.group(1) if status else proc.stdout[:500]


def test_make_screenshot_renders_the_report_s_first_screen(smoke, tmp_path):
    """`make screenshot` (the README's picture) from a finished study's page: a 1280 × 1400 PNG."""
    import struct

    shot = tmp_path / "shot.png"
    proc = subprocess.run(["make", "-s", "screenshot", f"REPORT={smoke / 'results' / 'smoke' / 'report.html'}", f"SHOT={shot}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 1400)
    missing = subprocess.run(["make", "-s", "screenshot", f"REPORT={tmp_path / 'none.html'}", f"SHOT={shot}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "none.html: no report yet; run make run first" in missing.stderr


def test_no_external_url(smoke):
    html = (smoke / "results" / "smoke" / "report.html").read_text()
    assert not re.search(r"https?://|ftp://|\b(?:src|href)\s*=\s*[\"']?//|@import|url\(", html, re.I)
    assert not re.search(r"\bsrc\s*=\s*[\"'](?!data:)", html)  # every source inline
    assert "<script src" not in html and "<link" not in html


# ---------------------------------------------------------------------------- sections follow the data

def with_variants(metrics: pd.DataFrame) -> pd.DataFrame:
    """The smoke study's SGD rows copied as a winsorized c=1 and an RM3 variant and as a second
    seed: a study with every section, built by hand."""
    sgd = metrics[(metrics["optimizer"] == "sgd") & (metrics["subset"] == "full")]
    copies = [metrics]
    for opt, clip, exp, seed, shift in (("winsorized", 1, "E3", 0, -0.1), ("rm3", None, "E4", 0, -0.05),
                                        ("sgd", None, None, 1, 0.02)):
        c = sgd[~sgd["experiment"].isin(["E2"] if seed == 0 else [])].copy()
        c["optimizer"], c["clip"], c["seed"] = opt, pd.array([clip] * len(c), dtype="Int64"), seed
        c["run"] = c["run"].str.replace("sgd_c0", f"{opt}_c{clip or 0}").str.replace("seed0", f"seed{seed}")
        if exp:
            c.loc[c["experiment"].isin(["E1"]), "experiment"] = exp
        c["value"] = c["value"] + shift * (c["metric"] == "accuracy").astype(float)
        copies.append(c)
    return pd.concat(copies, ignore_index=True).astype(metrics.dtypes.to_dict())


def page(metrics, runs, hist, seeds, params, out: Path) -> str:
    t = report.prepare(metrics, runs, hist, seeds, params)
    images = report.draw(t, out)
    return report.render(stand_in_card(), t, images, params, {}, report.provenance({}, cwd=out))


def test_sections_present_only_with_their_data(smoke, tmp_path):
    metrics, runs, hist, seeds, params = tables(smoke)
    full = page(with_variants(metrics), runs, hist, seeds, params, tmp_path / "full")
    for sid in ("cg-fig1", "cg-fig23", "cg-s3", "ws-s3", "ws-fig4", "ws-fig5", "mc", "e8", "runs", "provenance"):
        assert f'<section id="{sid}"' in full and f'href="#{sid}"' in full, sid
    cg1 = full.split('<section id="cg-fig1"')[1].split("</section>")[0]
    assert "mean over 2 seeds, band ± 1 sd" in cg1 and " ± " in cg1.split("<table>")[1]
    assert "&lt;b&gt;1&lt;/b&gt;" in full  # autoescaped
    card = full.split('<section id="findings"')[1].split("</section>")[0]
    assert '<a href="#cg-fig1"' in card and '<a href="#ws-s3"' in card and "[0.25, 0.75]" in card
    shares = full.split('<section id="cg-fig23"')[1].split("</section>")[0]
    assert f"windows of {params['findings']['share_window']} tracked steps" in shares and "real, lowest later" in shares
    fig5 = full.split('<section id="ws-fig5"')[1].split("</section>")[0]
    assert "at the last step" in fig5 and "at the matched budget" in fig5  # RM3 at noise 0: both tables
    assert "unknown (not a git checkout)" in full

    bare = metrics[~metrics["experiment"].isin(["E2", "E6", "E7"]) & (metrics["optimizer"] == "sgd")]
    part = page(bare, runs, hist, None, params, tmp_path / "bare")
    for sid in ("cg-s3", "ws-s3", "cg-fig23", "ws-fig4", "mc"):
        assert f'<section id="{sid}"' not in part and f'href="#{sid}"' not in part, sid
    for name in ("winsorization", "robust_optimizers", "loss_shares", "easy_hard", "m_coherence"):
        assert (tmp_path / "bare" / f"{name}.png").stat().st_size > 2_000  # the placeholder, still written
    assert '<section id="cg-fig1"' in part and '<section id="ws-fig5"' in part
    assert '<a href="#ws-s3"' not in part and "matched budget" not in part  # no dead link, no RM3 to match


def test_other_model_only_in_the_mc_figures(smoke):
    """A BatchNorm cnn's runs (E7 in MC's conditions) get their own rows in the MC figures and
    stay out of the CG / W&S ones."""
    metrics, runs, hist, seeds, params = tables(smoke)
    cnn = metrics[metrics["experiment"].isin(["E1", "E7"]) & (metrics["optimizer"] == "sgd")].copy()
    cnn["model"], cnn["run"] = "cnn", "cnn_" + cnn["run"]
    mixed = pd.concat([metrics, cnn], ignore_index=True)
    t = report.prepare(mixed, runs, hist, seeds, params)
    assert set(t.main["model"]) == {t.model} and len(t.main) == (metrics["model"] == t.model).sum()
    fig = plots.m_coherence_fig(mixed, main=t.model)
    row_models = [ax.get_ylabel().split()[0] for ax in fig.axes if ax.get_ylabel()]
    assert row_models[0] == t.model and set(row_models) == set(metrics["model"]) | {"cnn"}
    layers = plots.m_coherence_layers_fig(mixed, t.model)
    titles = [ax.get_title().split(":")[0] for ax in layers.axes if ax.axison]
    assert titles[0] == t.model and "cnn" in titles
    assert not {"cnn"} & set(t.e8["run"].str[:3]) and not (t.e5["run"].str.startswith("cnn_")).any()
    plt.close("all")


def test_wall_times_from_train_logs(tmp_path):
    (tmp_path / "a.log").write_text("step ...\ndone: ok on cpu, wall 17.8 s; final train_accuracy 1.000\n")
    (tmp_path / "b.log").write_text("killed before the end\n")
    assert report.run_logs(tmp_path, ["a", "b", "c"]) == {"a": ("cpu", 17.8)}


def test_snakemake_report_has_every_category(smoke):
    """`snakemake --report` on the finished smoke study: exit 0, one self-contained HTML holding
    every experiment's category and the page itself."""
    env = venv_env()
    out = smoke / "results" / "smoke" / "snakemake-report.html"
    proc = subprocess.run([str(BIN / "snakemake"), "--configfile", STUDY, "--report", str(out)], cwd=smoke,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = out.read_text()
    smk = "".join(p.read_text() for p in sorted((ROOT / "rules").glob("*.smk")))
    categories = set(re.findall(r'"(E\d [^"]+)"', smk)) | {"Report"}
    assert len(categories) == 9
    for category in categories:  # the report's JSON escapes non-ASCII (§ as \u00a7)
        assert json.dumps(category)[1:-1] in html, category
    for name in ("learning_curves.png", "report.html", "findings.csv"):
        assert name in html, name
