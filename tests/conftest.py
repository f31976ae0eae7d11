import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def venv_env() -> dict:
    """This environment with the venv's bin first on PATH: stages and engines find its python."""
    return dict(os.environ, PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def tool(name: str) -> str:
    """A console script of this environment (snakemake, dvc, ...): next to sys.executable (a
    venv, however made), else on PATH (e.g. ~/.local/bin of a user install)."""
    here = Path(PY).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    assert found, f"{name}: not next to {PY} nor on PATH; install the dev extra (pip install -e '.[dev]')"
    return found


def run_stage(stage: str, *args, cwd=None, check=False, timeout=600, fresh=False):
    """Run stages/<stage>.py as the engines do; returns the CompletedProcess. cwd: a fresh
    temporary folder unless given, so default outputs (results/checkpoints/<run>.pt) of tests
    running side by side (pytest -n 2) never meet. The process is a fork of a warmed interpreter
    (tests/stage_server.py: the same script, argv, cwd and environment, without ~4 s of imports);
    fresh=True starts a new interpreter instead, for what a fork would share (the hash seed)."""
    cwd = cwd or tempfile.mkdtemp(prefix="stage-")
    env = venv_env()
    cmd = [PY, str(ROOT / "stages" / f"{stage}.py"), *map(str, args)]
    if fresh:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    else:
        proc = _stage_server().run(cmd, cwd, env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


class StageServer:
    """The client of tests/stage_server.py: one server per test process, started on first use,
    one request at a time (a test process runs one test at a time)."""

    def __init__(self):
        self.proc = subprocess.Popen([PY, str(ROOT / "tests" / "stage_server.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=venv_env())

    def run(self, cmd: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
        import json
        import selectors

        with tempfile.TemporaryDirectory(prefix="stage-out-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            req = dict(script=cmd[1], argv=cmd[2:], cwd=str(cwd), env=env, stdout=str(out), stderr=str(err))
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            pid = json.loads(self.proc.stdout.readline())["pid"]
            with selectors.DefaultSelector() as sel:
                sel.register(self.proc.stdout, selectors.EVENT_READ)
                if not sel.select(timeout):
                    os.kill(pid, signal.SIGKILL)
                    self.proc.stdout.readline()
                    raise subprocess.TimeoutExpired(cmd, timeout)
            code = json.loads(self.proc.stdout.readline())["returncode"]
            return subprocess.CompletedProcess(cmd, code, out.read_text(), err.read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


_server: StageServer | None = None


def _stage_server() -> StageServer:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = StageServer()
    return _server


def pytest_sessionfinish(session, exitstatus):
    if _server is not None and _server.proc.poll() is None:
        _server.close()


def kill_after(cmd, path: Path, cwd=None, linger: float = 0.0) -> None:
    """Start `cmd`, SIGKILL it `linger` seconds after `path` exists (a run killed after a
    checkpoint)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(linger)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.exists(), "no checkpoint was written before the kill"


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def tiny_params(**train) -> dict:
    """A synthetic study that trains in about a second."""
    t = dict(optimizers=[{"name": "sgd", "clip": 0}], seeds=[0], lr=0.1, batch_size=20, steps=60,
             eval_per_decade=3, checkpoint_every=20, threads=1, device="cpu")
    t.update(train)
    return {"study": "tiny",
            "data": {"dataset": "synthetic", "n_train": 200, "n_test": 100,
                     "synthetic": {"dim": 10, "classes": 4, "n_train_total": 400, "n_test_total": 200}},
            "corrupt": {"noise": [0, 0.5]}, "model": {"name": "mlp", "hidden": [32]}, "train": t,
            "difficulty": {"seeds": [0, 1, 2], "lr": 0.05, "batch_size": 20, "max_steps": 300, "el2n_epoch": 2}}


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow files (not data/results) in a temp folder."""
    for name in ("Snakefile", "dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("rules", "stages", "schemas", "studies", "profiles", "cglib", "report", "envs"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def copy_repo(dest: Path) -> Path:
    """The repo's files (tracked and new, not ignored) in `dest`, as a fresh clone has them."""
    dest.mkdir(parents=True)
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> Path:
    """The smoke study, run by Snakemake once per test session in a copy of the repo; the xdist
    workers share it through a file lock. Tests read it and must not change it. Works with and
    without pytest-xdist (-p no:xdist has no worker_id fixture: the variable is read instead)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # gw0, gw1, ...: each worker's basetemp is a subfolder
        base = base.parent  # one folder for every worker of this session
    root, done = base / "smoke-study", base / "smoke-study.done"
    with FileLock(str(base / "smoke-study.lock")):
        if not done.is_file():
            if root.exists():
                shutil.rmtree(root)
            copy_repo(root)
            env = venv_env()
            proc = subprocess.run([tool("snakemake"), "--cores", "2", "--configfile",
                                   "studies/smoke.yaml"], cwd=root, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done.write_text("ok\n")
    return root
