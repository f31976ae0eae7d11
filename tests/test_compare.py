"""stages/compare.py on two hand-made studies: the claims side by side (a claim one study lacks
is "not measured" there), only the settings that differ, the headline numbers by model, variant
and noise level, a page Chromium renders; one-line errors. The stage runs in-process (it imports
no torch; a process adds nothing here and would slow `make mutants` down)."""
import json
import re
import subprocess

import pandas as pd
import pytest

from cglib import compare
from test_stage_units import stage

MAIN = stage("compare")


def run_stage(_name, *args, check=False):
    """stages/compare.py's main in-process → (returncode, stdout, stderr) like a CompletedProcess."""
    import contextlib
    import io
    from types import SimpleNamespace

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            MAIN([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    if check:
        assert code == 0, err.getvalue()
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def run_row(run, optimizer, clip, noise, seed, train, test, corrupt, lr=0.1, subset="full", status="ok"):
    return dict(run=run, dataset="fashion_mnist", model="mlp-64", optimizer=optimizer, clip=clip, noise=noise,
                seed=seed, subset=subset, study=None, status=status, n_train=300, batch_size=30, lr=lr, momentum=0.0,
                lr_schedule="constant", steps=200, train_accuracy=train, test_accuracy=test, corrupt_accuracy=corrupt)


def claim(value, low, high, n, verdict, reason="r"):
    return dict(paper="CG", section="§2.3", claim="a claim", value=value, low=low, high=high, n=n,
                verdict=verdict, reason=reason)


def study(folder, name, findings, runs):
    folder.mkdir()
    (folder / "findings.json").write_text(json.dumps(findings))
    pd.DataFrame(runs).assign(study=name).astype({"clip": "Int64"}).to_parquet(folder / "runs.parquet")
    return folder


@pytest.fixture
def two(tmp_path):
    a = study(tmp_path / "a", "base", {"c1": claim(0.9, 0.8, 1.0, 3, "holds"), "c2": claim(0.1, None, None, 1, "inconclusive")},
              [run_row("sgd_c0_noise0_seed0", "sgd", None, 0.0, 0, 1.0, 0.8, None),
               run_row("sgd_c0_noise0.5_seed0", "sgd", None, 0.5, 0, 0.9, 0.5, 0.8),
               run_row("sgd_c0_noise0.5_seed1", "sgd", None, 0.5, 1, 0.7, 0.5, 0.4),
               run_row("sgd_c0_e-train_seed0", "sgd", None, 0.0, 0, 1.0, 0.1, None, subset="e-train")])
    b = study(tmp_path / "b", "fast", {"c1": claim(0.2, 0.1, 0.3, 3, "does not hold")},
              [run_row("sgd_c0_noise0.5_seed0", "sgd", None, 0.5, 0, 0.8, 0.6, 0.6, lr=0.3),
               run_row("winsorized_c2_noise0.5_seed0", "winsorized", 2, 0.5, 0, 0.6, 0.55, 0.2, lr=0.3)])
    return a, b


def test_tables_side_by_side(two, tmp_path):
    proc = run_stage("compare", *two, "--out", tmp_path / "out", check=True)
    assert proc.stdout.strip() == f"{tmp_path / 'out'}/compare.html: 2 studies, 2 claims"
    claims = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert list(claims.columns) == compare.CLAIM_COLUMNS
    got = claims[["id", "study", "value", "low", "high", "n", "verdict"]].astype(object).where(claims.notna(), None)
    assert got.values.tolist() == [
        ["c1", "base", 0.9, 0.8, 1.0, 3, "holds"], ["c2", "base", 0.1, None, None, 1, "inconclusive"],
        ["c1", "fast", 0.2, 0.1, 0.3, 3, "does not hold"], ["c2", "fast", None, None, None, 0, "not measured"]]
    settings = pd.read_csv(tmp_path / "out" / "settings.csv", dtype=str)
    assert settings.values.tolist() == [["lr", "0.1", "0.3"], ["noise levels", "0, 0.5", "0.5"],
                                        ["variants", "sgd", "sgd, winsorized c=2"], ["seeds", "0, 1", "0"],
                                        ["runs", "4", "2"]]
    head = pd.read_csv(tmp_path / "out" / "headline.csv")
    assert list(head.columns) == compare.HEADLINE_COLUMNS
    rows = head.astype(object).where(head.notna(), None).values.tolist()
    assert rows == [["base", "mlp-64", "sgd", None, 0.0, 1, 0.8, pytest.approx(0.2), None],
                    ["base", "mlp-64", "sgd", None, 0.5, 2, 0.5, pytest.approx(0.3), pytest.approx(0.6)],
                    ["fast", "mlp-64", "sgd", None, 0.5, 1, 0.6, pytest.approx(0.2), 0.6],
                    ["fast", "mlp-64", "winsorized", 2, 0.5, 1, 0.55, pytest.approx(0.05), 0.2]]


def test_page_lists_both_studies_and_renders_in_chromium(two, tmp_path):
    from test_report import chromium

    run_stage("compare", *two, "--out", tmp_path / "out", check=True)
    html = (tmp_path / "out" / "compare.html").read_text()
    assert "<th>base</th><th>fast</th>" in html
    row = re.search(r'<tr id="c1">(.*?)</tr>', html, re.S).group(1)
    assert row.count("differ") == 2 and "<b>holds</b>" in row and "<b>does not hold</b>" in row  # verdicts differ
    assert "0.900 [0.800, 1.000] (n=3)" in row
    assert not re.search(r"https?://", html)
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                           "--virtual-time-budget=5000", "--dump-dom", (tmp_path / "out" / "compare.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and re.search(r'<body data-check="ok"', proc.stdout), proc.stdout[:300]


def test_bad_inputs_are_one_line_errors(two, tmp_path):
    one = run_stage("compare", two[0], "--out", tmp_path / "out")
    assert one.returncode == 2 and "give two or more results folders" in one.stderr
    missing = run_stage("compare", two[0], tmp_path / "none", "--out", tmp_path / "out")
    assert missing.returncode == 1 and missing.stderr == (
        f"error: {tmp_path / 'none'}/findings.json: not found; build the study first (its report stage writes it)\n")
    (two[1] / "runs.parquet").write_bytes(b"PAR1")
    damaged = run_stage("compare", *two, "--out", tmp_path / "out")
    assert damaged.returncode == 1 and damaged.stderr.startswith(f"error: {two[1] / 'runs.parquet'}: ")
    assert not (tmp_path / "out").exists()  # nothing written before every input is read
