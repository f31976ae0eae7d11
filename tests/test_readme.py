"""The README a newcomer follows: every link and every path of the repository it names exists
(no file outside the checkout), and its Python examples run on a finished study (the smoke
study), so they cannot go stale."""
import contextlib
import io
import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()
# folders and files of the checkout a README path may start with (results/ and data/ are outputs)
SOURCE = ("stages/", "cglib/", "rules/", "studies/", "schemas/", "profiles/", "scripts/", "tests/",
          "benchmarks/", "docs/", "envs/", "report/", ".ci/")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_and_path_the_readme_names_exists():
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", README, re.M)}
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            if target[1:] not in anchors:
                missing.append(target)
        elif not (ROOT / target).exists():
            missing.append(target)
    for path in re.findall(r"`([^`\s]+)`", README):
        if path.startswith("../") or "/shared/" in path:
            missing.append(path)  # outside the repository: a clone does not have it
        elif path.startswith(SOURCE) and not re.search(r"[<*{]", path) and not (ROOT / path).exists():
            missing.append(path)
    assert missing == []


def test_the_readme_python_examples_run_on_a_finished_study(smoke_study, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    monkeypatch.chdir(smoke_study)
    # the examples read the default study's folder; the finished study here is the smoke study
    assert all('study = "results/default"' in code for code in blocks)
    blocks = [code.replace('study = "results/default"', 'study = "results/smoke"') for code in blocks]
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
        assert out.getvalue().strip(), code
    # the curves example keeps the runs apart: one column per run at noise 0.5
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    curves = scope["curves"]
    assert curves.columns.tolist() == ["sgd_c0_noise0.5_seed0", "sgd_c0_noise0.5_seed1"]
    assert curves.index.name == "step" and len(curves) > 5 and curves.notna().all().all()
