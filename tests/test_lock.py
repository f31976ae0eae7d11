"""requirements.lock: the Makefile installs the venv from it, the report records the resolved
versions against it (cglib.cli.environment)."""
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cglib import cli
from conftest import ROOT

OWN = "coherent-gradients"  # this checkout, installed editable: the one distribution not pinned


def installed() -> dict[str, str]:
    return {cli._canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}


def test_the_lock_pins_every_dependency_of_pyproject_within_its_range():
    """Wherever the tests run: the lock resolves pyproject.toml's dependencies and dev extra
    (torch and torchvision at their exact pins), one name==version line each."""
    import tomllib

    from packaging.requirements import Requirement

    pins = cli.read_lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    reqs += project["optional-dependencies"]["slurm"] + project["optional-dependencies"]["bench"]
    for spec in reqs:
        req = Requirement(spec)
        if cli._canonical(req.name) == OWN:  # the dev extra names the slurm and bench extras
            continue
        name = cli._canonical(req.name)
        assert name in pins, f"requirements.lock: {req.name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")
    assert OWN not in pins


@pytest.mark.skipif(not (Path(sys.prefix) / ".installed").is_file(),
                    reason="not a venv made by `make venv` (no .installed stamp): its versions are its own")
def test_every_distribution_of_the_makefile_venv_is_pinned_at_its_version():
    pins, have = cli.read_lock(), installed()
    assert {n: v for n, v in have.items() if n != OWN and pins.get(n) != v} == {}
    assert [n for n in pins if n not in have] == []
    assert cli.environment()["requirements.lock"].startswith("every installed distribution as pinned")


def test_make_venv_installs_from_the_lock_once():
    """The recipe installs the lock, then the checkout without resolving again; the stamp
    depends on the lock, so a changed lock reinstalls and an unchanged one does nothing."""
    plan = subprocess.run(["make", "-n", "-W", "requirements.lock", "venv"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    lines = [line for line in plan.splitlines() if "pip install" in line]
    assert len(lines) == 2 and "-r requirements.lock" in lines[0] and "--no-deps -e ." in lines[1], plan
    assert "pip check" in plan and "touch .venv/.installed" in plan
    stamp = ROOT / ".venv" / ".installed"
    fresh = stamp.is_file() and all(stamp.stat().st_mtime >= (ROOT / f).stat().st_mtime
                                    for f in ("requirements.lock", "pyproject.toml"))
    quiet = subprocess.run(["make", "-q", "venv"], cwd=ROOT, capture_output=True, text=True)
    assert (quiet.returncode == 0) == fresh  # -q: 0 when up to date, 1 when the recipe would run


def test_environment_names_what_differs_from_the_lock(tmp_path):
    have = installed()
    name, version = sorted((n, v) for n, v in have.items() if n != OWN)[0]
    lock = tmp_path / "requirements.lock"
    others = "".join(f"{n}=={v}\n" for n, v in sorted(have.items()) if n not in (OWN, name))
    lock.write_text(f"# header\n{name}==0.0.0\nnot-a-real-dist==1.0\n{others}")
    state = cli.environment(lock)["requirements.lock"]
    assert f"differ: {name} {version} (lock 0.0.0)" in state
    assert "not installed: not-a-real-dist" in state and "not in the lock" not in state
    lock.write_text(others)  # `name` unpinned
    assert cli.environment(lock)["requirements.lock"] == f"not in the lock: {name}"
    listed = cli.environment(lock)["installed packages"]
    assert f"{name} {version}" in listed and re.search(r"\btorch \d", listed)


def test_a_malformed_lock_line_names_the_file_and_line(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.0\ntorch>=2\n")
    with pytest.raises(ValueError, match=r"requirements\.lock:2: expected name==version, got 'torch>=2'"):
        cli.read_lock(lock)
    assert cli.environment(lock)["requirements.lock"].endswith("got 'torch>=2'")
    assert "not found" in cli.environment(tmp_path / "missing.lock")["requirements.lock"]
