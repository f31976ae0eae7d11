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


def run_row(run, optimizer, clip, noise, seed, train, test, corrupt, subset="full", status="ok", **settings):
    row = dict(run=run, dataset="fashion_mnist", model="mlp-64", optimizer=optimizer, clip=clip, noise=noise,
               seed=seed, subset=subset, study=None, status=status, n_train=300, batch_size=30, lr=0.1, momentum=0.0,
               lr_schedule="constant", steps=200, train_accuracy=train, test_accuracy=test, corrupt_accuracy=corrupt)
    return {**row, **settings}


def claim(value, low, high, n, verdict, text="a claim", reason="why"):
    return dict(paper="CG", section="§2.3", claim=text, value=value, low=low, high=high, n=n, verdict=verdict,
                reason=reason)


def study(folder, name, findings, runs, drop=()):
    folder.mkdir()
    (folder / "findings.json").write_text(json.dumps(findings))
    df = pd.DataFrame(runs).assign(study=name).astype({"clip": "Int64"})
    df.drop(columns=list(drop)).to_parquet(folder / "runs.parquet")
    return folder


# b differs from a in every setting; momentum is missing from b's table (an older build)
OTHER = dict(dataset="mnist", model="mlp-32", n_train=200, batch_size=20, lr=0.3, lr_schedule="cosine", steps=100)


@pytest.fixture
def two(tmp_path):
    # claims in an order that is not sorted; z is judged alike by both, y by one study only
    a = study(tmp_path / "a", "base", {"z": claim(0.5, 0.4, 0.6, 3, "holds"),
                                       "y": claim(0.1, None, None, 1, "inconclusive", reason="1 seed"),
                                       "x": claim(0.9, 0.8, 1.0, 3, "holds")},
              [run_row("sgd_c0_noise0.5_seed0", "sgd", None, 0.5, 0, 0.9, 0.5, 0.8),  # not in sorted order
               run_row("sgd_c0_noise0_seed0", "sgd", None, 0.0, 0, 1.0, 0.8, None),
               run_row("sgd_c0_noise0.5_seed1", "sgd", None, 0.5, 1, 0.7, 0.5, 0.4),
               run_row("sgd_c0_e-train_seed5", "sgd", None, 0.0, 5, 1.0, 0.1, None, subset="e-train")])
    b = study(tmp_path / "b", "fast", {"z": claim(0.6, 0.5, 0.7, 3, "holds", text="the claim as b words it"),
                                       "x": claim(0.2, 0.1, 0.3, 3, "does not hold")},
              [run_row("sgd_c0_noise0.5_seed0", "sgd", None, 0.5, 0, 0.8, 0.6, 0.6, **OTHER),
               run_row("winsorized_c2_noise0.5_seed0", "winsorized", 2, 0.5, 0, 0.6, 0.55, 0.2, **OTHER)],
              drop=["momentum"])
    return a, b


def test_tables_side_by_side(two, tmp_path):
    proc = run_stage("compare", *two, "--out", tmp_path / "out", check=True)
    assert proc.stdout.strip() == f"{tmp_path / 'out'}/compare.html: 2 studies, 3 claims"
    claims = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert list(claims.columns) == compare.CLAIM_COLUMNS
    got = claims.astype(object).where(claims.notna(), None).values.tolist()
    assert got == [
        ["z", "CG", "§2.3", "a claim", "base", 0.5, 0.4, 0.6, 3, "holds", "why"],
        ["y", "CG", "§2.3", "a claim", "base", 0.1, None, None, 1, "inconclusive", "1 seed"],
        ["x", "CG", "§2.3", "a claim", "base", 0.9, 0.8, 1.0, 3, "holds", "why"],
        ["z", "CG", "§2.3", "the claim as b words it", "fast", 0.6, 0.5, 0.7, 3, "holds", "why"],
        ["y", "CG", "§2.3", "a claim", "fast", None, None, None, 0, "not measured", "this study does not judge the claim"],
        ["x", "CG", "§2.3", "a claim", "fast", 0.2, 0.1, 0.3, 3, "does not hold", "why"]]
    settings = pd.read_csv(tmp_path / "out" / "settings.csv", dtype=str, keep_default_na=False)
    assert settings.values.tolist() == [
        ["dataset", "fashion_mnist", "mnist"], ["model", "mlp-64", "mlp-32"], ["n_train", "300", "200"],
        ["batch_size", "30", "20"], ["lr", "0.1", "0.3"], ["momentum", "0.0", ""], ["lr_schedule", "constant", "cosine"],
        ["steps", "200", "100"], ["noise levels", "0, 0.5", "0.5"], ["variants", "sgd", "sgd, winsorized c=2"],
        ["seeds", "0, 1", "0"], ["runs", "4", "2"]]  # the e-train run's seed 5 is not a grid seed
    head = pd.read_csv(tmp_path / "out" / "headline.csv")
    assert list(head.columns) == compare.HEADLINE_COLUMNS
    rows = head.astype(object).where(head.notna(), None).values.tolist()
    assert rows == [["base", "mlp-64", "sgd", None, 0.0, 1, 0.8, pytest.approx(0.2), None],
                    ["base", "mlp-64", "sgd", None, 0.5, 2, 0.5, pytest.approx(0.3), pytest.approx(0.6)],
                    ["fast", "mlp-32", "sgd", None, 0.5, 1, 0.6, pytest.approx(0.2), 0.6],
                    ["fast", "mlp-32", "winsorized", 2, 0.5, 1, 0.55, pytest.approx(0.05), 0.2]]


def test_labels_name_the_folder_where_two_studies_share_a_name(two, tmp_path):
    third = study(tmp_path / "c", "base", {}, [run_row("sgd_c0_noise0_seed0", "sgd", None, 0.0, 0, 1, 1, None)])
    studies = [compare.load_study(f) for f in (*two, third)]
    assert compare._labels(studies) == [f"base ({two[0]})", "fast", f"base ({third})"]
    mixed = study(tmp_path / "d", "x", {}, [run_row("r", "sgd", None, 0.0, 0, 1, 1, None)])
    pd.read_parquet(mixed / "runs.parquet").assign(study=["x"]).iloc[[0, 0]].assign(study=["x", "y"]).to_parquet(
        mixed / "runs.parquet")
    assert compare.load_study(mixed)["name"] == "d"  # no single study name in the table: the folder's


def chromium_dom(page, profile) -> subprocess.CompletedProcess:
    """The page's DOM as headless Chromium leaves it once its script has run."""
    from test_report import chromium
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def test_page_lists_both_studies_and_renders_in_chromium(two, tmp_path):
    run_stage("compare", *two, "--out", tmp_path / "out", check=True)
    html = (tmp_path / "out" / "compare.html").read_text()
    assert "<th>base</th><th>fast</th>" in html
    rows = re.findall(r'<tr id="(\w)">(.*?)</tr>', html, re.S)
    assert [r[0] for r in rows] == ["z", "y", "x"]  # the first study's order
    cells = {cid: re.findall(r'<td class="([^"]*)" title="([^"]*)">\s*(.*?)</td>', body, re.S) for cid, body in rows}
    text = {cid: [(cls, title, " ".join(t.replace("<br>", " ").split())) for cls, title, t in c] for cid, c in cells.items()}
    assert text["z"] == [("v-holds", "why", "0.500 [0.400, 0.600] (n=3) <b>holds</b>"),
                         ("v-holds", "why", "0.600 [0.500, 0.700] (n=3) <b>holds</b>")]  # alike: not framed
    assert text["y"] == [("v-inconclusive differ", "1 seed", "0.100 (n=1) <b>inconclusive</b>"),
                         ("v-not-measured differ", "this study does not judge the claim", "— (n=0) <b>not measured</b>")]
    assert text["x"][1] == ("v-does-not-hold differ", "why", "0.200 [0.100, 0.300] (n=3) <b>does not hold</b>")
    assert "<b>CG §2.3</b> a claim" in dict(rows)["z"]  # the first study's wording
    headline = html[html.index('id="headline"'):]
    body = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr><td>.*?</tr>", headline, re.S)]
    assert body == [["mlp-32", "sgd", "0.5", "—", "0.600 / 0.200 / 0.600 (n=1)"],
                    ["mlp-32", "winsorized c=2", "0.5", "—", "0.550 / 0.050 / 0.200 (n=1)"],
                    ["mlp-64", "sgd", "0", "0.800 / 0.200 / — (n=1)", "—"],
                    ["mlp-64", "sgd", "0.5", "0.500 / 0.300 / 0.600 (n=2)", "—"]]
    settings = html[html.index('id="settings"'):html.index('id="claims"')]
    assert "<tr><td>lr</td><td>0.1</td><td>0.3</td></tr>" in settings
    assert not re.search(r"https?://", html)
    proc = chromium_dom(tmp_path / "out" / "compare.html", tmp_path / "p")
    assert proc.returncode == 0 and re.search(r'<body data-check="ok"', proc.stdout), proc.stdout[:300]


def test_identical_studies_differ_in_no_setting(two, tmp_path):
    run_stage("compare", two[0], two[0], "--out", tmp_path / "out", check=True)
    assert pd.read_csv(tmp_path / "out" / "settings.csv").empty
    assert "No setting differs" in (tmp_path / "out" / "compare.html").read_text()


def test_bad_inputs_are_one_line_errors(two, tmp_path):
    one = run_stage("compare", two[0], "--out", tmp_path / "out")
    assert one.returncode == 2 and "give two or more results folders" in one.stderr
    missing = run_stage("compare", two[0], tmp_path / "none", "--out", tmp_path / "out")
    assert missing.returncode == 1 and missing.stderr == (
        f"error: {tmp_path / 'none'}/findings.json: not found; build the study first (its report stage writes it)\n")
    (two[1] / "findings.json").write_text("{")
    broken = run_stage("compare", *two, "--out", tmp_path / "out")
    assert broken.returncode == 1 and broken.stderr.startswith(f"error: {two[1] / 'findings.json'}: not valid JSON (")
    (two[1] / "findings.json").write_text("{}")
    (two[1] / "runs.parquet").write_bytes(b"PAR1")
    damaged = run_stage("compare", *two, "--out", tmp_path / "out")
    assert damaged.returncode == 1 and damaged.stderr.startswith(f"error: {two[1] / 'runs.parquet'}: ")
    assert not (tmp_path / "out").exists()  # nothing written before every input is read
