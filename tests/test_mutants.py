"""`make mutants`: scripts/mutants.py on a tiny module of its own, with a planted survivor (so the
target cannot report 100 % by not testing anything) and a kept equivalent (left out of the score)."""
import subprocess
import sys
import textwrap

from conftest import ROOT

TINY = '''\
def over(x, limit):
    return x >= limit


def under(x, limit):
    return limit <= x
'''
# both tested only away from the boundary: over's `>=` → `>` and under's `<=` → `<` survive
TESTS = '''\
from tiny import over, under


def test_over():
    assert over(5, 3) and not over(1, 3)


def test_under():
    assert under(5, 3) and not under(1, 3)
'''


def tree(tmp_path, equivalent=""):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tiny.py").write_text(TINY)
    (tmp_path / "tests" / "test_tiny.py").write_text(TESTS)
    (tmp_path / "tests" / "mutation_map.yaml").write_text("tiny.py:\n  tests: [tests/test_tiny.py]\n")
    (tmp_path / "tests" / "mutants_equivalent.txt").write_text(textwrap.dedent(equivalent))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "mutants.py"), "tiny.py", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)


def test_a_planted_survivor_is_reported_with_its_line_and_written_to_the_report(tmp_path):
    run = tree(tmp_path, """\
        # not equivalent, but kept here: the run leaves it out of the score and the survivors
        tiny.py:2  core/ReplaceComparisonOperator_GtE_Gt  `return x >= limit`  — kept for the test
        """)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    # 4 mutants: over's >= into > and <, under's <= into < and >; one kept, one survives
    assert lines[0] == "tiny.py: 4 mutants, 2 killed, 1 equivalent (tests/mutants_equivalent.txt), 1 survived: score 66.7 %"
    assert lines[2] == "tiny.py:6:17  ReplaceComparisonOperator_LtE_Lt  `return limit <= x`"
    assert (tmp_path / "results" / "mutants" / "tiny.txt").read_text().splitlines() == lines[:3]
    assert (tmp_path / "tiny.py").read_text() == TINY  # mutated in a copy, never in the checkout


def test_the_make_target_runs_the_driver_on_the_module_it_is_given():
    plan = subprocess.run(["make", "-n", "mutants", "M=cglib/corruption.py"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert "scripts/mutants.py cglib/corruption.py" in plan
    usage = subprocess.run(["make", "-s", "-o", ".venv/.installed", "mutants"], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode != 0 and "usage: make mutants M=cglib/<module>.py" in usage.stdout


def test_every_mapped_module_exists_and_every_kept_equivalent_parses():
    import yaml

    sys.path.insert(0, str(ROOT / "scripts"))
    import mutants

    mapping = yaml.safe_load((ROOT / "tests" / "mutation_map.yaml").read_text())
    for module, entry in mapping.items():
        assert (ROOT / module).is_file(), module
        assert all((ROOT / t.split("::")[0]).is_file() for t in entry["tests"]), module
    kept = mutants.read_equivalents(ROOT / "tests" / "mutants_equivalent.txt")
    assert all(path in mapping for path, _, _ in kept)
