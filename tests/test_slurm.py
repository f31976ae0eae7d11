"""The SLURM profile (profiles/slurm) through the real snakemake-executor-plugin-slurm, against
stand-in SLURM commands (tests/slurm/: sbatch runs each job script here in the background,
sacct and squeue report its state), so the plugin's own submission and status path runs: every
job of the smoke study is submitted with the resources its rule asks for and the results equal a
local run's, byte for byte. Plus a dry run of each paper preset with the profile."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, copy_repo, tool

BIN = Path(tool("snakemake")).parent  # the stand-ins call the plugin's tools from here
STANDINS = ROOT / "tests" / "slurm"
STUDY = "studies/smoke.yaml"
PROFILE = ["--workflow-profile", "profiles/slurm"]
# the plugin waits 40 s before its first status check and backs off from there; here 1 s
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]
# outputs a study's results are made of (the figures and the page are checked in test_report.py)
RESULTS = ("*.parquet", "*.json", "*.csv", "*.pt")


def plugin_installed():
    """A missing plugin fails the tests, as a missing dataset does: make test installs it."""
    import importlib.util

    assert importlib.util.find_spec("snakemake_executor_plugin_slurm"), "pip install -e '.[slurm]'"


def slurm_env(state: Path) -> dict:
    plugin_installed()
    path = os.pathsep.join([str(STANDINS), str(BIN), os.environ["PATH"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return dict(env, PATH=path, FAKE_SLURM_DIR=str(state))


def snakemake(*args, cwd, env, timeout=600):
    return subprocess.run([tool("snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def planned_jobs(out: str) -> list[dict]:
    """A dry run's jobs: rule, wildcards (in order) and resources (numbers as ints)."""
    jobs = []
    for block in re.split(r"^(?=\s*(?:local)?rule \w+:$)", out, flags=re.M)[1:]:  # group members indented
        job = {"rule": re.match(r"\s*(?:local)?rule (\w+):", block).group(1), "wildcards": [], "resources": {}}
        for line in block.splitlines()[1:]:
            key, _, value = line.strip().partition(": ")
            if key == "wildcards":
                job["wildcards"] = [pair.split("=", 1)[1] for pair in value.split(", ")]
            elif key == "resources":
                pairs = (pair.split("=", 1) for pair in value.split(", "))
                job["resources"] = {k: int(v) if v.isdigit() else v for k, v in pairs}
        jobs.append(job)
    return jobs


LOCAL_RULES = {"all", "validate"}  # run by Snakemake itself, never submitted (Snakefile: localrules)


def dry_run(cwd, study, env) -> list[dict]:
    proc = snakemake("-n", "--forceall", *PROFILE, "--configfile", study, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [j for j in planned_jobs(proc.stdout + proc.stderr) if j["rule"] not in LOCAL_RULES]


def group_of(profile: Path) -> dict:
    import yaml

    return dict(item.split("=") for item in yaml.safe_load(profile.read_text())["groups"])


def expected_submissions(jobs: list[dict], groups: dict) -> dict:
    """sbatch --comment → the runtime, mem_mb, cpus_per_task and gpu one submission must ask.
    A group runs its members one after another (cores: 1 in the profile): the sum of their
    runtimes, the largest of their other requests."""
    keys = ("runtime", "mem_mb", "cpus_per_task", "gpu")
    out, members = {}, {}
    for job in jobs:
        res = {k: job["resources"].get(k, 0) for k in keys}
        if job["rule"] in groups:
            members.setdefault(groups[job["rule"]], []).append((job["rule"], res))
        else:
            wildcards = "_".join(job["wildcards"])
            out[f"rule_{job['rule']}" + (f"_wildcards_{wildcards}" if wildcards else "")] = res
    for group, jobs_in in members.items():
        rules = "_".join(sorted({rule for rule, _ in jobs_in}))
        out[f"rule_{group}_{rules}"] = {k: (sum if k == "runtime" else max)(r[k] for _, r in jobs_in) for k in keys}
    return out


def result_files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for pattern in RESULTS
            for folder in ("data", "results") for p in (root / folder).rglob(pattern)}


def test_smoke_study_through_the_slurm_plugin_matches_a_local_run(tmp_path, smoke_study):
    local, cluster, state = smoke_study, tmp_path / "slurm", tmp_path / "state"  # local: the session's run
    copy_repo(cluster)
    env = slurm_env(state)
    plan = dry_run(cluster, STUDY, env)
    proc = snakemake(*PROFILE, "--configfile", STUDY, *FAST_POLL, cwd=cluster, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    # every planned job went through sbatch once, with the resources its rule asks for
    calls = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    expected = expected_submissions(plan, group_of(cluster / "profiles/slurm/config.yaml"))
    assert sorted(c["options"]["--comment"] for c in calls) == sorted(expected)
    run_ids = {c["options"]["--job-name"] for c in calls}
    assert len(run_ids) == 1  # the plugin finds its jobs by this name (sacct --name)
    for call in calls:
        opts, want = call["options"], expected[call["options"]["--comment"]]
        assert opts["-t"] == str(want["runtime"]), opts
        assert opts["--mem"] == str(want["mem_mb"]), opts
        assert opts["--cpus-per-task"] == str(want["cpus_per_task"]), opts
        assert opts.get("--gpus") == (str(want["gpu"]) if want["gpu"] else None), opts
        assert opts["-A"] == "cg-test" and opts["-p"] == "cpu", opts  # guessed: last job's account, default partition
        assert Path(opts["-D"]) == cluster and opts["--export"] == "ALL", opts
        # ... and the request was enough: no job ran out of time or memory
        job = json.loads((state / "jobs" / f"{call['jobid']}.json").read_text())
        assert job["state"] == "COMPLETED", job
        assert job["end"] - job["start"] < 60 * want["runtime"] and job["peak_mb"] < want["mem_mb"], job
    assert any(c["options"]["--comment"].startswith("rule_setup_") for c in calls)  # short jobs grouped
    assert len(calls) < len(plan)

    # the same bytes as the local run
    got, want = result_files(cluster), result_files(local)
    assert "results/smoke/metrics.parquet" in want and "results/smoke/runs.parquet" in want
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []


@pytest.mark.parametrize("study", ["cg-winsorized.yaml", "ws-cifar10.yaml", "mc-cifar10.yaml"])
def test_paper_presets_plan_cluster_sized_jobs(workdir, tmp_path, study):
    """Each paper preset, as a SLURM user runs it (train.device: cuda; "auto" would ask for a
    card only if the login node showed one), dry-runs with the profile: every job asks for a
    runtime, memory and CPUs within what clusters grant, each training job for a GPU and for
    more time than the smoke study's, a ResNet job for more memory too (CIFAR-10 on the host)."""
    env = slurm_env(tmp_path / "state")
    smoke = {j["rule"]: j["resources"] for j in dry_run(workdir, STUDY, env)}
    preset = workdir / "studies" / study
    preset.write_text(re.sub(r"^(\s+device:) auto\b", r"\1 cuda", preset.read_text(), flags=re.M))
    plan = dry_run(workdir, f"studies/{study}", env)
    assert {"prepare", "corrupt", "easyhard", "difficulty", "train", "aggregate", "report"} <= \
        {j["rule"] for j in plan}
    for job in plan:
        res = job["resources"]
        assert 15 <= res["runtime"] <= 7 * 24 * 60, job  # a week: the longest most clusters allow
        assert 1024 <= res["mem_mb"] <= 64 * 1024 and res["cpus_per_task"] >= 1, job
        if job["rule"] in ("train", "train_subset", "easyhard", "train_mc"):
            assert res["gpu"] == 1, job
            assert res["mem_mb"] > smoke[job["rule"]]["mem_mb"], job
        if job["rule"] == "train":
            assert res["runtime"] > smoke["train"]["runtime"], job
    if "cifar10" in study:  # ResNet-18 on 50,000 images: hours per run
        assert min(j["resources"]["runtime"] for j in plan if j["rule"] == "train") >= 4 * 60
