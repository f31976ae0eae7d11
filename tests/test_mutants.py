"""`make mutants`: scripts/mutants.py on a tiny module of its own, with a planted survivor (so the
target cannot report 100 % by not testing anything) and a kept equivalent (left out of the score)."""
import subprocess
import sys
import textwrap

from conftest import ROOT

# the tiny modules below import nothing heavy: pre-import pytest only (the default also loads torch & co.)
MUTANTS = [sys.executable, str(ROOT / "scripts" / "mutants.py"), "--warm", "pytest"]

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
    return subprocess.run([*MUTANTS, "tiny.py", "--root", str(tmp_path)],
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


def test_all_runs_every_mapped_module_and_writes_the_table(tmp_path):
    tree(tmp_path)
    (tmp_path / "tiny2.py").write_text("def one():\n    return 1\n")
    (tmp_path / "tests" / "test_tiny2.py").write_text("from tiny2 import one\n\n\ndef test_one():\n    assert one() == 1\n")
    (tmp_path / "tests" / "mutation_map.yaml").write_text(
        "tiny.py:\n  tests: [tests/test_tiny.py]\ntiny2.py:\n  tests: [tests/test_tiny2.py]\n")
    run = subprocess.run([*MUTANTS, "--all", "--root", str(tmp_path),
                          "--jobs", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr  # tiny's two survivors
    table = (tmp_path / "results" / "mutants" / "summary.txt").read_text().splitlines()
    assert table[0].split() == ["module", "mutants", "killed", "equivalent", "survived", "score"]
    assert [r.split() for r in table[1:]] == [["tiny.py", "4", "2", "0", "2", "50.0", "%"],
                                             ["tiny2.py", "2", "2", "0", "0", "100.0", "%"]]  # 1 → 0 and 1 → 2
    # --from: the run starts at tiny2.py; tiny.py's row comes from its report (its tests, now
    # killing every mutant, are not run again), and a module without a report says so
    (tmp_path / "tests" / "test_tiny.py").write_text(TESTS + "\n\ndef test_edges():\n    assert over(3, 3) and under(3, 3)"
                                                     " and not over(2, 3) and not under(2, 3)\n")
    again = subprocess.run([*MUTANTS, "--all", "--from", "tiny2.py", "--root", str(tmp_path), "--jobs", "1"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    table = (tmp_path / "results" / "mutants" / "summary.txt").read_text().splitlines()
    assert [r.split() for r in table[1:]] == [["tiny.py", "4", "2", "0", "2", "50.0", "%"],
                                             ["tiny2.py", "2", "2", "0", "0", "100.0", "%"]]
    (tmp_path / "results" / "mutants" / "tiny.txt").unlink()
    subprocess.run([*MUTANTS, "--all", "--from", "tiny2.py", "--root", str(tmp_path), "--jobs", "1"],
                   capture_output=True, text=True, timeout=120)
    table = (tmp_path / "results" / "mutants" / "summary.txt").read_text().splitlines()
    assert table[1].split() == ["tiny.py", "-", "(not", "run)"]
    bad = subprocess.run([*MUTANTS, "--all", "--from", "nope.py", "--root", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--from nope.py: give it with --all, and a module of mutation_map.yaml" in bad.stderr


def test_a_mutant_that_hangs_is_stopped_at_the_timeout_and_counts_as_killed(tmp_path):
    (tmp_path / "tests").mkdir()
    # `while n > 0` → `while n >= 0` never ends, nor does `n - 1` → `n + 1`
    (tmp_path / "loop.py").write_text("def count(n):\n    k = 0\n    while n > 0:\n        n = n - 1\n        k = k + 1\n    return k\n")
    (tmp_path / "tests" / "test_loop.py").write_text("from loop import count\n\n\ndef test_count():\n    assert count(3) == 3\n")
    (tmp_path / "tests" / "mutation_map.yaml").write_text("loop.py:\n  tests: [tests/test_loop.py]\n")
    run = subprocess.run([*MUTANTS, "loop.py", "--root", str(tmp_path),
                          "--timeout", "3"], capture_output=True, text=True, timeout=300)
    first = run.stdout.splitlines()[0]
    assert run.returncode == 0 and first.endswith("0 survived: score 100.0 %"), run.stdout + run.stderr


def test_the_make_target_runs_the_driver_on_the_module_it_is_given():
    plan = subprocess.run(["make", "-n", "mutants", "M=cglib/corruption.py"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert "scripts/mutants.py cglib/corruption.py" in plan
    every = subprocess.run(["make", "-n", "mutants"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "scripts/mutants.py --all" in every


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


def test_our_operators_make_exactly_their_examples_and_nothing_else():
    from cosmic_ray.ast import ast_nodes, get_ast
    from cosmic_ray.mutating import mutate_code

    sys.path.insert(0, str(ROOT / "scripts"))
    from mutant_operators import OPERATORS

    for name, operator in OPERATORS.items():
        for ex in operator.examples():
            assert mutate_code(ex.pre_mutation_code + "\n", operator(), ex.occurrence) == ex.post_mutation_code + "\n", name
    count = lambda op, src: sum(1 for node in ast_nodes(get_ast(src)) for _ in op().mutation_positions(node))
    drop, swap, rounding = OPERATORS["DropEntry"], OPERATORS["SwapAdjacentValues"], OPERATORS["RoundingReplacer"]
    assert count(drop, "x = {'a': 1}\n") == 0                      # a dict of one keeps it
    assert count(drop, "x = {k: v for k, v in y}\n") == 0          # a comprehension has no entries
    assert count(drop, "x = [a, b]\n") == 0                        # only lists of names (strings)
    assert count(drop, "f(a=1, b=2)\n") == 0                       # only dict(...), not every call
    assert count(drop, "x = {'a': 1, 'b': 2, **c}\n") == 3
    assert count(swap, "x = {'a': 1, 'b': 1, 'c': 2}\n") == 1      # equal neighbours: no swap
    assert count(rounding, "n = ceil\nm = x.round\nk = int(y)\n") == 0   # only a call of ceil/floor/round
    assert mutate_code("x = {'a': 1, 'b': 2, 'c': 3}\n", drop(), 2) == "x = {'a': 1, 'b': 2}\n"
    assert mutate_code("x = {'a': 1, 'b': 2, 'c': 3}\n", swap(), 1) == "x = {'a': 1, 'b': 3, 'c': 2}\n"


def test_a_dropped_key_no_test_reads_survives(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "row.py").write_text("def row(x):\n    return {'mean': x, 'n': 1}\n")
    (tmp_path / "tests" / "test_row.py").write_text("from row import row\n\n\ndef test_row():\n    assert row(2)['mean'] == 2\n")
    (tmp_path / "tests" / "mutation_map.yaml").write_text("row.py:\n  tests: [tests/test_row.py]\n")
    run = subprocess.run([*MUTANTS, "row.py", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    survivors = [line for line in run.stdout.splitlines() if line.startswith("row.py:2:")]
    # 'n' dropped, 1 → 0 and 1 → 2 survive; 'mean' dropped and the swap are killed
    assert survivors == ["row.py:2:23  DropEntry  `return {'mean': x, 'n': 1}`",
                         "row.py:2:28  NumberReplacer  `return {'mean': x, 'n': 1}`",
                         "row.py:2:28  NumberReplacer  `return {'mean': x, 'n': 1}`"], run.stdout + run.stderr
