"""End to end: the smoke study through Snakemake, then through DVC, same bytes."""
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd

from cglib import config
from cglib.scores import SCORES
from cglib.tables import AGGREGATE_OUTPUTS, EXAMPLE_COLUMNS, METRIC_COLUMNS
from conftest import PY, copy_repo, kill_after, tiny_params, tool, venv_env, write_params


def sh(args, cwd, timeout=600):
    env = venv_env()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def dry_run_stages(out: str) -> list[str]:
    """The stages a `dvc repro --dry` lists, in order."""
    return re.findall(r"^Running stage '([^']+)':$", out, re.M)


def dvc_stages(cwd) -> set[str]:
    from dvc.repo import Repo

    return {s.name for s in Repo(str(cwd)).index.stages}


METRICS_WIDTH = 120  # README: `dvc metrics show` fits a 120-column terminal


def check_metrics(shown: str, res: Path) -> None:
    """`dvc metrics show` of a finished study: one line of the scorecard, its counts those of
    findings.json's verdicts and runs.parquet's statuses; no per-run leaf of summary.json."""
    import json
    from collections import Counter

    from cglib.cli import VERDICT_KEYS

    lines = [line.rstrip() for line in shown.strip().splitlines()]
    assert max(map(len, lines)) <= METRICS_WIDTH, shown
    assert len(lines) == 2 and lines[1].startswith(f"{res.relative_to(res.parent.parent)}/scorecard.json"), shown
    table = dict(zip(lines[0].split(), lines[1].split()))
    verdicts = Counter(c["verdict"] for c in json.loads((res / "findings.json").read_text()).values())
    runs = pd.read_parquet(res / "runs.parquet")
    want = {k: verdicts.get(v, 0) for v, k in VERDICT_KEYS.items()}
    want.update(runs=int((runs["status"] == "ok").sum()), diverged=int((runs["status"] != "ok").sum()))
    assert {k: int(v) for k, v in table.items() if k != "Path"} == want and want["runs"] == len(runs) > 0
    assert sum(verdicts.values()) > 5 and "summary" not in shown


def check_results(res: Path):
    m = pd.read_parquet(res / "metrics.parquet")
    assert list(m.columns) == list(METRIC_COLUMNS)
    runs = pd.read_parquet(res / "runs.parquet")
    assert len(runs) == 6 and set(runs["status"]) == {"ok"}  # 2 grid, 1 replicate, 2 E6, 1 mc
    assert set(runs["subset"]) == {"full", "e-train", "h-train"}
    mc = runs.set_index("run").loc["mc_sgd_c0_noise0.5_seed0"]  # E7 in MC's conditions: the mc section
    assert (mc["model"], mc["steps"], mc["lr"], mc["momentum"]) == ("cnn-4x8", 60, 0.04, 0.9)
    assert set(runs.loc[runs["run"] != mc.name, "model"]) == {"mlp-64"}
    assert set(m.loc[m["run"] == mc.name, "step"]) >= {0, 60} and m.loc[m["run"] == mc.name, "step"].max() == 60
    assert (m.loc[m["run"] == mc.name, "metric"] == "m_coherence").any()
    assert runs.loc[runs["run"] == "sgd_c0_noise0.5_seed1", "seed"].tolist() == [1]  # the replicate
    # |p| and |c| of each run (windowed shares, proper accuracy) are its label table's
    labels = pd.read_parquet(res / "corrupt" / "noise=0.5.parquet")
    row = runs.set_index("run").loc["sgd_c0_noise0.5_seed0"]
    assert (row["n_pristine"], row["n_corrupt"]) == (int((~labels["corrupt"]).sum()), int(labels["corrupt"].sum()))
    assert row["n_corrupt"] > 0 and set(runs.loc[runs["subset"] != "full", "n_corrupt"]) == {0}
    assert all((res / name).is_file() for name in AGGREGATE_OUTPUTS)
    acc = m[m["metric"] == "accuracy"]
    assert acc["value"].between(0, 1).all()
    assert (m["step"] == 0).any() and m["step"].max() == 200
    levels = {f"difficulty={k}" for k in range(3)}  # K = 2 easy/hard seeds in the smoke study
    full = m[m["subset"] == "full"]
    assert set(full["split"]) - levels == {"train", "test", "pristine", "corrupt"}
    assert set(full.loc[full["noise"] == 0, "split"]) - levels == {"train", "test", "pristine"}  # no corrupt at ε = 0
    assert set(m.loc[m["experiment"] == "E5", "split"]) <= levels
    assert set(m.loc[m["experiment"] == "E6", "split"]) == {"train", "test", "e-test", "h-test"}
    # E8: one row per full run and training example, every score; per-run correlations
    ex = pd.read_parquet(res / "examples.parquet")
    assert list(ex.columns) == list(EXAMPLE_COLUMNS)
    sizes = ex.groupby("run").size()
    assert (sizes[runs.loc[runs["subset"] == "full", "run"]] == 300).all()
    assert ex.groupby("run")["example"].apply(lambda e: e.is_unique).all()
    assert set(SCORES) <= set(ex.columns) and not ex[list(SCORES)].isna().any().any()
    corr = pd.read_csv(res / "plots" / "score_correlations.csv")
    assert corr.loc[corr["run"] == mc.name, "spearman_difficulty"].isna().all()  # mc runs: no difficulty
    corr = corr[corr["run"] != mc.name]
    assert set(corr["score"]) == set(SCORES) and corr["spearman_difficulty"].between(-1, 1).all()
    assert corr.loc[corr["noise"] == 0.5, "auroc_corrupt"].notna().all()
    assert corr.loc[corr["noise"] == 0, "auroc_corrupt"].isna().all()
    diff = pd.read_parquet(res / "difficulty.parquet")
    assert list(diff.columns) == ["example", "difficulty", "hard_seed0", "hard_seed1"] and len(diff) == 300
    e5 = pd.read_csv(res / "plots" / "accuracy_by_difficulty.csv")
    assert e5["difficulty"].tolist() == [0, 1, 2] and e5["count"].sum() == 300
    e6 = pd.read_csv(res / "plots" / "cross_generalization.csv")
    assert set(zip(e6["trained_on"], e6["evaluated_on"])) >= {
        (a, b) for a in ("e-train", "h-train") for b in ("e-test", "h-test", "test")}
    labels = pd.read_parquet(res / "corrupt" / "noise=0.5.parquet")
    assert len(labels) == 300 and labels["corrupt"].sum() + (~labels["corrupt"]).sum() == 300
    # train accuracy = pristine and corrupt accuracies weighted by their counts
    one = m[m["run"] == "sgd_c0_noise0.5_seed0"]
    last = one[(one["step"] == 200) & (one["metric"] == "accuracy")].set_index("split")["value"]
    n_c = labels["corrupt"].sum()
    mixed = (last["pristine"] * (300 - n_c) + last["corrupt"] * n_c) / 300
    assert abs(mixed - last["train"]) < 1e-6
    # a pristine example is learned before a corrupt one (CG §2.3): early on, pristine accuracy leads
    early = one[(one["metric"] == "accuracy") & one["step"].between(10, 100)]
    wide = early.pivot_table(index="step", columns="split", values="value")
    assert (wide["pristine"] > wide["corrupt"]).mean() >= 0.75
    assert (res / "plots" / "learning_curves.png").stat().st_size > 10_000


def tree_md5(folder: Path) -> dict:
    """md5 of every file under a study's folder but its logs (which hold wall times)."""
    return {str(p.relative_to(folder)): md5(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and "logs" not in p.relative_to(folder).parts}


def test_smoke_study_snakemake_then_dvc(tmp_path, smoke_study):
    workdir = tmp_path / "study"  # the session's Snakemake run of the smoke study, copied with
    shutil.copytree(smoke_study, workdir, symlinks=True)  # its timestamps and Snakemake's records
    sh(["git", "init", "-q"], workdir)  # .dvc/ is there already, as in a clone
    res = workdir / "results" / "smoke"
    check_results(res)
    alone = tree_md5(res)  # the smoke study built alone
    first = {p: alone[p] for p in ("metrics.parquet", "runs.parquet")}
    assert "Nothing to be done" in sh([tool("snakemake"), "-n", "--configfile", "studies/smoke.yaml"], workdir)
    # a changed value re-runs the stages that read it and not the others: every rule takes the
    # params file as an ancient input (its values are the rules' params), validate as a plain one
    study = workdir / "studies" / "smoke.yaml"
    original = study.read_bytes()
    study.write_text(original.decode().replace("  lr: 0.1\n", "  lr: 0.11\n", 1))
    plan = sh([tool("snakemake"), "-n", "--configfile", "studies/smoke.yaml"], workdir)
    planned = set(re.findall(r"^(\w+)\s+\d+$", plan, re.M)) - {"total"}
    assert planned == {"validate", "train", "train_subset", "aggregate", "report", "all"}, plan
    study.write_bytes(original)

    # a damaged run table: Snakemake stops before any job with one line naming it, so the good
    # aggregate tables stay (a started aggregate job would delete them); the README's recovery
    # (delete it, rerun) brings back the same bytes
    damaged = res / "runs" / "sgd_c0_noise0.5_seed0" / "metrics.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])
    env = venv_env()
    kept = {p: md5(res / p) for p in ("metrics.parquet", "runs.parquet", "summary.json")}
    for extra in ([], ["--forcerun", "aggregate"]):
        fail = subprocess.run([tool("snakemake"), "--cores", "2", "--configfile", "studies/smoke.yaml", *extra],
                              cwd=workdir, env=env, capture_output=True, text=True)
        assert fail.returncode == 1
        assert fail.stderr.strip().splitlines()[-1] == (
            "error: results/smoke/runs/sgd_c0_noise0.5_seed0/metrics.parquet: damaged (not a complete Parquet "
            "file); nothing was run or deleted. Delete it and rebuild it: rm results/smoke/runs/sgd_c0_noise0.5_seed0/"
            "metrics.parquet && snakemake --cores all results/smoke/runs/sgd_c0_noise0.5_seed0/metrics.parquet")
        assert {p: md5(res / p) for p in kept} == kept
    # the recovery as printed: the run again, the same bytes (a plain `snakemake` would not rebuild
    # it: the tables made from it are up to date, and stay so)
    damaged.unlink()
    sh([tool("snakemake"), "--cores", "2", str(damaged.relative_to(workdir)), "--configfile", "studies/smoke.yaml"],
       workdir)  # --configfile last: it takes every word after it
    assert tree_md5(res) == alone
    assert "Nothing to be done" in sh([tool("snakemake"), "-n", "--configfile", "studies/smoke.yaml"], workdir)

    # a second study in the same checkout, through DVC: the smoke study at another learning rate
    # and under another name. It builds its own folder, shares the prepared data (equal data
    # sections), and leaves the first study's folder as it was.
    (workdir / "params.yaml").write_text(original.decode().replace("study: smoke\n", "study: smoke-b\n", 1)
                                         .replace("  lr: 0.1\n", "  lr: 0.11\n", 1))
    sh([tool("dvc"), "repro"], workdir)
    other = workdir / "results" / "smoke-b"
    assert tree_md5(res) == alone
    assert "shared: data/prepared/fashion_mnist-" in (other / "logs" / "prepare.log").read_text()
    # (a link to the shared file, tests/test_stage_units.py; DVC then keeps its own copy from its cache)
    both = tree_md5(other)
    assert set(both) == set(alone)  # the same outputs, every one
    # what train.lr does not reach is the same bytes through either engine (the command lines
    # are the same: tests/test_engines.py); E7's run in MC's conditions has the mc section's lr
    same = ["prepared.pt", "params.ok", "difficulty.parquet", "difficulty_splits.parquet", "difficulty_seeds.csv",
            *(p for p in alone if p.startswith(("corrupt/", "easyhard/", "runs/mc_")))]
    assert len(same) == 12 and {p: both[p] for p in same} == {p: alone[p] for p in same}
    assert both["runs/sgd_c0_noise0_seed0/metrics.parquet"] != alone["runs/sgd_c0_noise0_seed0/metrics.parquet"]
    # a finished build: the dry run plans nothing; the DVC metrics fit a terminal
    assert dry_run_stages(sh([tool("dvc"), "repro", "--dry", "--force-downstream"], workdir)) == []
    check_metrics(sh([tool("dvc"), "metrics", "show"], workdir), other)
    # and each engine then finds nothing to do for its study (Snakemake with the file it ran
    # with: every rule takes the params file as an input, so another file name is another input)
    assert "Nothing to be done" in sh([tool("snakemake"), "-n", "--configfile", "studies/smoke.yaml"], workdir)
    assert "up to date" in sh([tool("dvc"), "status"], workdir).lower()

    # the two side by side: both studies' verdicts, and the one setting in which they differ
    sh([PY, "stages/compare.py", "smoke", "smoke-b", "--out", "results/compare"], workdir)
    claims = pd.read_csv(workdir / "results" / "compare" / "compare.csv")
    assert set(claims["study"]) == {"smoke", "smoke-b"} and claims.groupby("study").size().nunique() == 1
    settings = pd.read_csv(workdir / "results" / "compare" / "settings.csv")
    assert settings["setting"].tolist() == ["lr"], settings
    from test_compare import chromium_dom
    page = workdir / "results" / "compare" / "compare.html"
    assert "<th>smoke</th><th>smoke-b</th>" in page.read_text()
    shown = chromium_dom(page, tmp_path / "p")
    assert shown.returncode == 0 and re.search(r'<body data-check="ok"', shown.stdout), shown.stdout[:300]

    # a typo'd key in a section no changed stage reads: DVC stops before touching anything
    lock = (workdir / "dvc.lock").read_bytes()
    params = workdir / "params.yaml"
    params.write_text(params.read_text().replace("  threads: 1", "  threads: 1\n  thread: 2"))
    bad = subprocess.run([tool("dvc"), "repro"], cwd=workdir, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "train.thread: unknown key" in bad.stdout + bad.stderr
    assert (workdir / "dvc.lock").read_bytes() == lock


def test_dvc_dry_run_plans_every_stage_of_a_fresh_clone(tmp_path):
    """DVC's dry run hashes each stage's dependencies, upstream outputs included, so on a fresh
    clone plain `dvc repro --dry` stops at the first one missing (treeverse/dvc#9021);
    --force-downstream plans every stage below one that would run, without hashing them."""
    clone = copy_repo(tmp_path / "clone")  # the files a fresh clone has (.dvc/config included)
    sh(["git", "init", "-q"], clone)
    shutil.copy(clone / "studies" / "smoke.yaml", clone / "params.yaml")
    plan = dry_run_stages(sh([tool("dvc"), "repro", "--dry", "--force-downstream"], clone))
    stages = dvc_stages(clone)
    assert len(stages) == 15 and sorted(plan) == sorted(stages)  # every stage, once
    assert plan[0] == "validate" and plan.index("prepare") < plan.index("corrupt@0") < plan.index("aggregate")
    assert plan[-2:] == ["aggregate", "report"]
    assert not (clone / "results").exists() and not (clone / "data").exists() and not (clone / "dvc.lock").exists()


def test_stale_checkpoint_is_not_resumed_by_either_engine(workdir):
    """The issue's scenario through each engine: kill a run after a checkpoint, change
    corrupt.seed, rerun. The engine rebuilds the label table; the run must start afresh, say why
    in its log, and give the table of a run never killed (not the old labels' rows)."""
    sh(["git", "init", "-q"], workdir)
    sh([tool("dvc"), "init", "-q"], workdir)
    run = "sgd_c0_noise0.5_seed0"
    out = "results/tiny"  # the study's folder
    train = [PY, "stages/train.py", "--params", "params.yaml", "--data", f"{out}/prepared.pt",
             "--labels", f"{out}/corrupt/noise=0.5.parquet", "--difficulty", f"{out}/difficulty.parquet",
             "--noise", "0.5", "--optimizer", "sgd", "--clip", "0", "--seed", "0"]
    ckpt, log = workdir / out / "checkpoints" / f"{run}.pt", workdir / out / "logs" / "train" / f"{run}.log"
    inputs = {"snakemake": [tool("snakemake"), "--cores", "2", f"{out}/corrupt/noise=0.5.parquet",
                            f"{out}/difficulty.parquet"],
              "dvc": [tool("dvc"), "repro", "corrupt", "difficulty"]}
    # the run and what it depends on (not the aggregate): the engine decides what is stale
    finish = {"snakemake": [tool("snakemake"), "--cores", "2", f"{out}/runs/{run}/metrics.parquet"],
              "dvc": [tool("dvc"), "repro", "train"]}
    for engine, (before, after) in (("snakemake", (0, 1)), ("dvc", (1, 0))):
        p = tiny_params(steps=1500, checkpoint_every=50, batch_size=30,
                        shares={"steps": 100, "nulls": 2})  # shares: its tracker state is checkpointed too
        p["corrupt"].update(noise=[0.5], seed=before)
        p["difficulty"].update(subset_steps=20, seeds=[0])  # one easy/hard run is enough here
        p = config.validate(p)  # every key spelled out: DVC fills in no schema defaults
        write_params(workdir / "params.yaml", p)
        sh(inputs[engine], workdir)
        kill_after([*train, "--out", f"{out}/runs/{run}", "--log", f"{out}/logs/train/{run}.log"], ckpt, workdir)
        p["corrupt"]["seed"] = after
        write_params(workdir / "params.yaml", p)
        sh(finish[engine], workdir)
        text = log.read_text()
        assert "resumed" not in text, engine
        assert f"starting afresh: checkpoint {out}/checkpoints/{run}.pt was made with other input labels" in text
        sh([*train, "--out", "ref", "--checkpoint", "ref.ckpt"], workdir)  # the same run, never killed
        assert md5(workdir / out / "runs" / run / "metrics.parquet") == md5(workdir / "ref" / "metrics.parquet"), engine
        assert not ckpt.exists()
