"""DVC's parallel queue on this pipeline: `dvc exp run --queue -S key=value` then
`dvc queue start -j 2` gives the same tables as running the same experiments one after the
other, and `dvc exp show` lists them. Every file a stage needs is tracked in git, so DVC's
temporary workspaces (.dvc/tmp/exps) hold everything."""
import hashlib
import json
import subprocess
import time
from pathlib import Path

from cglib import config
from conftest import tiny_params, tool, venv_env, write_params
OUTPUTS = ("results/tiny/metrics.parquet", "results/tiny/runs.parquet", "results/tiny/findings.json")
EXPERIMENTS = {"lr05": "train.lr=0.05", "lr2": "train.lr=0.2"}


def sh(args, cwd, timeout=900):
    env = venv_env()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def digests(root: Path) -> dict:
    return {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in OUTPUTS}


def test_queued_experiments_in_parallel_match_one_after_the_other(workdir):
    # a tiny study: one noise level, one E6 subset, so an experiment on train.lr reruns 3 stages
    p = tiny_params()
    p["corrupt"]["noise"] = [0.5]
    p["train"]["shares"] = {"steps": 0, "optimizers": [], "nulls": 0}
    p["difficulty"].update(seeds=[0, 1], subsets=["e-train"], subset_steps=40)
    write_params(workdir / "params.yaml", config.validate(p))  # every key spelled out: DVC reads keys literally
    sh(["git", "init", "-q"], workdir)
    sh(["git", "config", "user.email", "t@example.org"], workdir)
    sh(["git", "config", "user.name", "t"], workdir)
    sh([tool("dvc"), "init", "-q"], workdir)
    # the baseline, every stage: `dvc exp apply` checks out every output of dvc.yaml, the report's too
    sh([tool("dvc"), "repro"], workdir)  # the upstream stages come from its cache
    sh(["git", "add", "-A"], workdir)
    sh(["git", "commit", "-qm", "baseline"], workdir)

    # up to the aggregate tables (the report's figures add nothing to this comparison)
    for name, setting in EXPERIMENTS.items():
        sh([tool("dvc"), "exp", "run", "--queue", "-S", setting, "-n", name, "aggregate"], workdir)
    sh([tool("dvc"), "queue", "start", "-j", "2"], workdir)
    deadline = time.time() + 900
    while True:  # `queue start` hands the tasks to background workers
        status = sh([tool("dvc"), "queue", "status"], workdir)
        if not any(s in status for s in ("Queued", "Running")):
            break
        assert time.time() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status

    shown = json.loads(sh([tool("dvc"), "exp", "show", "--json"], workdir))
    names = {exp.get("name") for rev in shown for exp in (rev.get("experiments") or [])
             for exp in (exp.get("revs") or [exp])}
    assert set(EXPERIMENTS) <= names, names
    parallel = {}
    for name in EXPERIMENTS:
        sh([tool("dvc"), "exp", "apply", name], workdir)
        parallel[name] = digests(workdir)
        sh(["git", "checkout", "-q", "--", "."], workdir)
        sh([tool("dvc"), "checkout", "-q", "--force"], workdir)
    assert parallel["lr05"] != parallel["lr2"]  # the setting reached the runs

    for name, setting in EXPERIMENTS.items():  # the same experiments, one after the other
        sh([tool("dvc"), "exp", "run", "-S", setting, "aggregate"], workdir)
        assert digests(workdir) == parallel[name], name
        sh(["git", "checkout", "-q", "--", "."], workdir)
        sh([tool("dvc"), "checkout", "-q", "--force"], workdir)
