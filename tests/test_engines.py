"""Snakemake and DVC describe the same jobs: same output files, same command lines."""
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, tool, venv_env


def snakemake_jobs(cwd):
    out = subprocess.run([tool("snakemake"), "-n", "-p", "--forceall"], cwd=cwd, env=venv_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cmds = {line.split("Shell command: ", 1)[1].strip() for line in (out.stdout + out.stderr).splitlines()
            if "Shell command: python" in line}
    summary = subprocess.run([tool("snakemake"), "--summary"], cwd=cwd, env=venv_env(),
                             capture_output=True, text=True, timeout=300)
    files = {line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if line.strip()}
    return files, cmds


def dvc_jobs(cwd):
    from dvc.repo import Repo

    repo = Repo(str(cwd))
    files = {str(Path(o.fs_path).relative_to(cwd)) for s in repo.index.stages for o in s.outs}
    cmds = {" ".join(s.cmd.split()) for s in repo.index.stages}
    return files, cmds


@pytest.mark.parametrize("study", ["params.yaml", "studies/smoke.yaml"])
def test_snakemake_and_dvc_describe_the_same_outputs(workdir, study):
    shutil.copy(ROOT / study, workdir / "params.yaml")  # DVC only reads params.yaml
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    subprocess.run([tool("dvc"), "init", "-q"], cwd=workdir, check=True, env=venv_env())
    sm_files, sm_cmds = snakemake_jobs(workdir)
    dvc_files, dvc_cmds = dvc_jobs(workdir)
    assert len(sm_files) > 5
    assert sm_files == dvc_files
    assert sm_cmds == dvc_cmds


def test_every_study_spells_what_dvc_reads():
    """DVC reads params.yaml raw (no schema defaults): every key a stage tracks, and clip on
    every optimizer entry, must be written out in each study that may become params.yaml."""
    import yaml

    from cglib.config import STAGE_KEYS

    for path in [ROOT / "params.yaml", *(ROOT / "studies").glob("*.yaml")]:
        raw = yaml.safe_load(path.read_text())
        opts = raw["train"]["optimizers"]
        assert all("clip" in o for o in opts), f"{path}: dvc.yaml interpolates ${{item.optimizer.clip}}"
        for dotted in (k for keys in STAGE_KEYS.values() for k in keys):
            node = raw
            for part in dotted.split("."):
                assert part in node, f"{path}: {dotted} must be spelled out for dvc"
                node = node[part]


def test_dvc_params_match_stage_keys():
    import yaml

    from cglib.config import STAGE_KEYS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, keys in STAGE_KEYS.items():
        assert stages[name]["params"] == keys, name


@pytest.mark.parametrize("study", sorted(p.name for p in (ROOT / "studies").glob("*.yaml")))
def test_every_study_validates_and_dry_runs(workdir, study):
    """Paper-scale presets are not run here, but they parse, validate and plan a full DAG."""
    out = subprocess.run([tool("snakemake"), "-n", "--configfile", f"studies/{study}"], cwd=workdir,
                         env=venv_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from cglib.config import load_params, run_grid

    p = load_params(ROOT / "studies" / study)
    counts = {line.split()[0]: line.split()[1] for line in (out.stdout + out.stderr).splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    grid = run_grid(p, subsets=False)
    assert int(counts["train"]) == sum(r.get("conditions") != "mc" for r in grid)  # grid + replicates
    assert int(counts.get("train_mc", 0)) == len(p["mc"]["noise"]) * len(p["mc"]["seeds"])
    assert counts["train_subset"] == str(len(p["difficulty"]["subsets"]) * len(p["train"]["seeds"]))
    assert counts["easyhard"] == str(len(p["difficulty"]["seeds"])) and counts["difficulty"] == "1"


def test_snakemake_lint_is_clean(workdir):
    """`snakemake --lint` finds nothing: every rule has a log and a software environment, and
    reads its files from its input (the params file included), never from a global variable."""
    out = subprocess.run([tool("snakemake"), "--lint"], cwd=workdir, env=venv_env(),
                         capture_output=True, text=True, timeout=300)
    said = out.stdout + out.stderr
    assert out.returncode == 0 and "Lints for" not in said and "good condition" in said, said[-3000:]


def test_conda_environment_installs_this_checkout():
    """envs/cglib.yaml installs the checkout (pins stay in pyproject.toml). Snakemake copies it to
    <conda prefix>/<hash>.yaml and conda reads pip paths from there: ../.. must be the checkout."""
    import yaml

    env = yaml.safe_load((ROOT / "envs" / "cglib.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    target = next(p.split(None, 1)[1] for p in pip if p.startswith(("-e ", "--editable ")))
    copy = ROOT / ".snakemake" / "conda" / "0123abcd.yaml"  # Snakemake's default --conda-prefix
    assert (copy.parent / target).resolve() == ROOT.resolve()
