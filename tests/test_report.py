"""The report stage: its figures on the smoke study's tables, the page as a person sees it
(headless Chromium: PNG, PDF, no JavaScript error, no missing image, no empty section), no
external URL, and sections present exactly when their data is."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from cglib import config, plots, report
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
    assert (smoke_study / "results" / "report.html").is_file()
    return smoke_study


def tables(root: Path):
    params = config.load_params(root / STUDY)
    res = root / "results"
    hist = histogram(pd.read_parquet(res / "difficulty.parquet"), len(params["difficulty"]["seeds"]))
    return (pd.read_parquet(res / "metrics.parquet"), pd.read_parquet(res / "runs.parquet"), hist,
            pd.read_csv(res / "difficulty_seeds.csv"), params)


def stand_in_card() -> pd.DataFrame:
    """A scorecard of cglib.findings' shape: the page must not depend on its numbers."""
    return pd.DataFrame([
        dict(id="a", paper="CG", section="§2.3", claim="c <b>1</b>", statistic="s", value=0.5, detail="d",
             n_seeds=1, verdict="holds"),
        dict(id="b", paper="W&S", section="§3", claim="c2", statistic="s", value=float("nan"), detail="",
             n_seeds=0, verdict="not measured")])


def has_data(fig) -> bool:
    return any(ax.lines or ax.images or ax.collections or ax.patches for ax in fig.axes)


# ---------------------------------------------------------------------------- outputs and figures

def test_stage_writes_every_declared_output_and_nothing_else(smoke, tmp_path):
    res = smoke / "results"
    for name in report.OUTPUTS:
        assert (res / name).stat().st_size > (2_000 if name.startswith("plots/") else 100), name
    run_stage("report", "--params", STUDY, "--results", "results", "--out", tmp_path / "out", cwd=smoke, check=True)
    written = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == set(report.OUTPUTS)
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
                plots.loss_shares_fig(t.main), plots.difficulty_scores_fig(t.e8)):
        assert has_data(fig)
        plt.close(fig)


# ---------------------------------------------------------------------------- the page in a browser

def test_report_renders_in_chromium(smoke, tmp_path):
    """PNG and PDF as a person would get them; the page's own check (every image decoded,
    every section with content) read back from the DOM; no JavaScript error on the console."""
    url = (smoke / "results" / "report.html").as_uri()
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


def test_no_external_url(smoke):
    html = (smoke / "results" / "report.html").read_text()
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
    assert "unknown (not a git checkout)" in full

    bare = metrics[~metrics["experiment"].isin(["E2", "E6", "E7"]) & (metrics["optimizer"] == "sgd")]
    part = page(bare, runs, hist, None, params, tmp_path / "bare")
    for sid in ("cg-s3", "ws-s3", "cg-fig23", "ws-fig4", "mc"):
        assert f'<section id="{sid}"' not in part and f'href="#{sid}"' not in part, sid
    for name in ("winsorization", "robust_optimizers", "loss_shares", "easy_hard", "m_coherence"):
        assert (tmp_path / "bare" / f"{name}.png").stat().st_size > 2_000  # the placeholder, still written
    assert '<section id="cg-fig1"' in part and '<section id="ws-fig5"' in part


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
    out = smoke / "results" / "snakemake-report.html"
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
