"""Mutation testing of one module: `make mutants M=cglib/robust.py` (or every mapped one: `make mutants`).

Cosmic Ray 8 makes the mutants (one small change each: a comparison at its boundary, an operator,
a number, a boolean, a loop that runs zero times), three operators of ours add the slips of tables
and fingerprints (scripts/mutant_operators.py: a dict entry or listed name dropped, neighbouring
values swapped, ceil ↔ floor), and the script runs, for each, only the tests
that tests/mutation_map.yaml lists for the module. A mutant the tests still pass on is a survivor:
either a missing test or an equivalent mutant, recorded with its reason in
tests/mutants_equivalent.txt so that the next run shows only new survivors.

Why not Cosmic Ray's own runner: it starts a fresh interpreter per mutant, and importing torch,
pandas and scipy costs seconds, more than most modules' tests; a module has hundreds of
mutants. So this script imports those libraries once, then runs each mutant's tests in a fork of
that warmed interpreter (pytest in-process; the fork imports cglib afresh, mutated), one per core
at a time. Each worker has its own copy of the checkout and writes its mutant to disk there (as
Cosmic Ray does), so a test that starts a subprocess sees the mutant too, and the checkout itself
is never touched. Nothing has run a torch operation before the fork, so no thread pool is copied.

    python scripts/mutants.py cglib/robust.py [--root DIR] [--out results/mutants] [--timeout 300] [--jobs N]
    python scripts/mutants.py --all                # every module of the map, then a table

Prints the score and every survivor as file:line, writes the same to <out>/<module>.txt; exit 1
when a survivor is left, 2 when the mapped tests fail before any mutation.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutant_operators import OPERATORS  # noqa: E402  (DropEntry, SwapAdjacentValues, RoundingReplacer)

ROOT = Path(__file__).resolve().parents[1]

# The slips that silently change a result, one line each: a comparison at its boundary or
# negated, ==/!=, is/is not, + -, * /, / //, & |, a dropped minus or not, and/or, True/False,
# a number off by one, a loop that never runs, break/continue, a narrowed except. Cosmic Ray's
# other operators (every operator into every other, variables inserted at random, decorators
# removed) mostly make mutants that crash at once or that nobody would type; they cost run time.
KEEP = {f"core/ReplaceComparisonOperator_{a}_{b}" for a, b in [
    ("Lt", "LtE"), ("LtE", "Lt"), ("Gt", "GtE"), ("GtE", "Gt"),     # the boundary
    ("Lt", "GtE"), ("LtE", "Gt"), ("Gt", "LtE"), ("GtE", "Lt"),     # the negation
    ("Eq", "NotEq"), ("NotEq", "Eq"), ("Is", "IsNot"), ("IsNot", "Is")]}
KEEP |= {f"core/ReplaceBinaryOperator_{a}_{b}" for a, b in [
    ("Add", "Sub"), ("Sub", "Add"), ("Mul", "Div"), ("Div", "Mul"), ("Div", "FloorDiv"),
    ("FloorDiv", "Div"), ("Pow", "Mul"), ("Mod", "FloorDiv"), ("BitAnd", "BitOr"), ("BitOr", "BitAnd")]}
KEEP |= {f"core/{name}" for name in [
    "ReplaceUnaryOperator_USub_UAdd", "ReplaceUnaryOperator_Delete_USub", "ReplaceUnaryOperator_Delete_Not",
    "ReplaceUnaryOperator_Delete_Invert", "ReplaceAndWithOr", "ReplaceOrWithAnd", "ReplaceTrueWithFalse",
    "ReplaceFalseWithTrue", "AddNot", "NumberReplacer", "ZeroIterationForLoop", "ReplaceBreakWithContinue",
    "ReplaceContinueWithBreak", "ExceptionReplacer"]}
# and ours (scripts/mutant_operators.py): a dict entry or listed name dropped, two neighbouring
# values swapped, a rounding turned the other way — the table and fingerprint slips

# not copied (outputs, caches, the venv); data/ is linked, the stage tests read the dataset
SKIP = {".git", ".venv", "results", ".snakemake", ".cache", ".pytest_cache", "__pycache__", "mutants",
        "data", ".dvc", "coherent_gradients.egg-info"}

# one kept equivalent: path:line  operator  `source line`  — reason
EQUIVALENT = re.compile(r"^(?P<path>\S+?):(?P<line>\d+)\s+(?P<op>\S+)\s+`(?P<code>.*)`\s+(?:—|--)\s+(?P<reason>\S.*)$")


def read_equivalents(path: Path) -> set[tuple[str, str, str]]:
    """(path, operator, stripped source line) of every kept equivalent: the line number is only a
    pointer for the reader, so an edit above a kept line does not bring its mutants back."""
    keys = set()
    for n, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = EQUIVALENT.match(line)
        if not m:
            sys.exit(f"{path}:{n}: not 'path:line operator `source line` — reason': {line}")
        keys.add((m["path"], m["op"].removeprefix("core/"), m["code"].strip()))
    return keys


def mapped_tests(mapping: Path, module: str) -> list[str]:
    entry = (yaml.safe_load(mapping.read_text()) or {}).get(module)
    if not entry:
        sys.exit(f"mutants: {mapping} lists no tests for {module}")
    args = list(entry["tests"])
    if entry.get("k"):
        args += ["-k", entry["k"]]
    return args


def copy_tree(root: Path, dest: Path) -> None:
    shutil.copytree(root, dest, ignore=lambda d, names: [n for n in names if n in SKIP and Path(d) == root
                                                         or n == "__pycache__"])
    if (root / "data").exists():
        (dest / "data").symlink_to(root / "data")


def run(module: str, root: Path, out: Path, timeout: float, mapping: Path, equivalent: Path,
        jobs: int = 0) -> tuple[int, dict]:
    tests = mapped_tests(mapping, module)
    equivalents = read_equivalents(equivalent)
    source = (root / module).read_text().splitlines()
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        trees = [Path(tmp) / f"tree{i}" for i in range(jobs)]
        for tree in trees:
            copy_tree(root, tree)
        base = run_tests(trees[0], tests, Path(tmp) / "base.log", timeout=None)
        if base != "survived":
            print((Path(tmp) / "base.log").read_text()[-4000:])
            print(f"mutants: the mapped tests of {module} fail before any mutation ({' '.join(tests)})")
            return 2, {}
        results = mutate(module, trees, tests, timeout, Path(tmp))
    killed, kept, survivors = 0, 0, []
    for op, row, col, outcome in results:
        code = source[row - 1].strip()
        if outcome != "survived":
            killed += 1  # a failing test, a timeout, or a mutant that cannot even be imported
        elif (module, op, code) in equivalents:
            kept += 1
        else:
            survivors.append((row, col, op, code))
    survivors.sort()
    scored = killed + len(survivors)
    score = 100.0 * killed / scored if scored else 100.0
    lines = [f"{module}: {killed + kept + len(survivors)} mutants, {killed} killed, {kept} equivalent "
             f"(tests/mutants_equivalent.txt), {len(survivors)} survived: score {score:.1f} %",
             f"tests: {' '.join(tests)}"]
    lines += [f"{module}:{row}:{col}  {op}  `{code}`" for row, col, op, code in survivors]
    report = "\n".join(lines) + "\n"
    print(report, end="")
    out.mkdir(parents=True, exist_ok=True)
    path = out / (module.removesuffix(".py").replace("/", ".") + ".txt")
    path.write_text(report)
    print(f"written to {path}")
    row = dict(module=module, mutants=killed + kept + len(survivors), killed=killed, equivalent=kept,
               survived=len(survivors), score=round(score, 1))
    return (1 if survivors else 0), row


def mutants_of(module: str, tmp: Path) -> list[tuple[str, int, int, str]]:
    """Cosmic Ray's mutants of the module, those of KEEP's operators: (operator, line, column,
    mutated source) each, in Cosmic Ray's order."""
    from cosmic_ray import commands, modules, plugins
    from cosmic_ray.ast import ast_nodes, get_ast
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.work_db import WorkDB, use_db

    original = (Path.cwd() / module).read_text() if not Path(module).is_absolute() else Path(module).read_text()
    found = []
    with use_db(str(tmp / "session.sqlite"), mode=WorkDB.Mode.create) as db:
        commands.init(modules.find_modules([Path(module)]), db, {})
        for item in db.pending_work_items:
            m = item.mutations[0]
            if m.operator_name not in KEEP:
                continue
            try:
                code = mutate_code(original, plugins.get_operator(m.operator_name)(), m.occurrence)
            except Exception as err:  # e.g. its ExceptionReplacer on `except (a.B, C)`: say so, go on
                print(f"mutants: Cosmic Ray cannot apply {m.operator_name} at {module}:{m.start_pos[0]} "
                      f"({type(err).__name__}: {err}); left out", file=sys.stderr)
                continue
            if code is not None:
                found.append((m.operator_name.removeprefix("core/"), m.start_pos[0], m.start_pos[1], code))
    # ours, enumerated as Cosmic Ray's init does: every position of every node, in tree order
    module_ast = get_ast(original)
    for name, operator in OPERATORS.items():
        positions = [start for node in ast_nodes(module_ast) for start, _ in operator().mutation_positions(node)]
        for occurrence, (row, col) in enumerate(positions):
            code = mutate_code(original, operator(), occurrence)
            if code is not None:
                found.append((name, row, col, code))
    return found


def run_tests(tree: Path, tests: list[str], log: Path, timeout: float | None) -> str:
    """The mapped tests in a fork of this interpreter, in `tree`: "survived" when they pass,
    "killed" when one fails, errors or the run outlasts the timeout."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
            # the tests use no plugin; loading the installed ones (xdist, hydra's) costs a second
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            import pytest
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code))
    return wait(pid, timeout)


def wait(pid: int, timeout: float | None) -> str:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed"
        time.sleep(0.05)


def mutate(module: str, trees: list[Path], tests: list[str], timeout: float,
           tmp: Path) -> list[tuple[str, int, int, str]]:
    """Every mutant, each in a free tree: written there, tested in a fork, the original put
    back. (operator, line, column, outcome) of each."""
    here = os.getcwd()
    os.chdir(trees[0])  # Cosmic Ray finds the module relative to the working directory
    try:
        todo = mutants_of(module, tmp)
    finally:
        os.chdir(here)
    original = (trees[0] / module).read_text()
    free, running, results = list(trees), {}, []
    total, t0 = len(todo), time.monotonic()
    while todo or running:
        while todo and free:
            op, row, col, code = todo.pop(0)
            tree = free.pop()
            (tree / module).write_text(code)
            log = tmp / f"{tree.name}.log"
            pid = os.fork()
            if pid == 0:
                os._exit(0 if run_tests(tree, tests, log, timeout) == "survived" else 1)
            running[pid] = (tree, (op, row, col))
        pid, status = os.wait()
        tree, key = running.pop(pid)
        (tree / module).write_text(original)
        free.append(tree)
        results.append((*key, "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"))
        if len(results) % 25 == 0 or len(results) == total:
            print(f"  {len(results)}/{total} mutants, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return results


REPORT_HEAD = re.compile(r"^(\S+): (\d+) mutants, (\d+) killed, (\d+) equivalent .*, (\d+) survived: score ([\d.]+) %$")


def previous_row(module: str, out: Path) -> dict:
    """A module's table row from its last report (its first line), or a row saying it was not run."""
    path = out / (module.removesuffix(".py").replace("/", ".") + ".txt")
    head = REPORT_HEAD.match(path.read_text().splitlines()[0]) if path.is_file() else None
    if not head or head.group(1) != module:
        return dict(module=module)
    n, killed, kept, survived = map(int, head.group(2, 3, 4, 5))
    return dict(module=module, mutants=n, killed=killed, equivalent=kept, survived=survived, score=float(head.group(6)))


def quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w./:=@+-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


WARM = "torch,torchvision,numpy,pandas,pyarrow.parquet,scipy.stats,matplotlib.pyplot,jinja2,pytest"


def warm(names: str = WARM) -> None:
    """Import, once, what every mutant's tests import: each fork then starts with them loaded.
    One thread each, since the workers already fill the cores. cglib itself is not imported here:
    each fork imports it from its own tree, mutated."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    sys.dont_write_bytecode = True
    for name in filter(None, names.split(",")):
        try:
            __import__(name)
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", help="a module of the checkout, e.g. cglib/robust.py")
    parser.add_argument("--all", action="store_true", help="every module of tests/mutation_map.yaml, then a table")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    parser.add_argument("--out", type=Path, help="where the reports go (default: <root>/results/mutants)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run")
    parser.add_argument("--jobs", type=int, default=0, help="mutants tested at once (default: one per core)")
    parser.add_argument("--from", dest="start", metavar="MODULE", help="with --all: start at this module of the map; "
                        "the table takes the earlier modules' rows from their last reports")
    parser.add_argument("--warm", default=WARM, help="modules imported once, before the forks (comma-separated; "
                        "default: the heavy ones cglib's tests import)")
    args = parser.parse_args(argv)
    if bool(args.module) == args.all:
        parser.error("give one module or --all")
    root = args.root.resolve()
    mapping, equivalent = root / "tests" / "mutation_map.yaml", root / "tests" / "mutants_equivalent.txt"
    out = args.out or root / "results" / "mutants"
    modules = list(yaml.safe_load(mapping.read_text())) if args.all else [args.module]
    earlier = []
    if args.start:
        if not args.all or args.start not in modules:
            parser.error(f"--from {args.start}: give it with --all, and a module of {mapping.name}")
        earlier, modules = modules[:modules.index(args.start)], modules[modules.index(args.start):]
    warm(args.warm)
    worst, rows = 0, [previous_row(m, out) for m in earlier]
    for module in modules:
        code, row = run(module, root, out, args.timeout, mapping, equivalent, args.jobs)
        worst = max(worst, code)
        if row:
            rows.append(row)
    if args.all:
        table = ["module                          mutants  killed  equivalent  survived  score"]
        table += [f"{r['module']:<32}" + (f"{r['mutants']:>7}{r['killed']:>8}{r['equivalent']:>12}{r['survived']:>10}"
                  f"{r['score']:>6.1f} %" if "score" in r else "      -  (not run)") for r in rows]
        print("\n".join(table))
        (out / "summary.txt").write_text("\n".join(table) + "\n")
    return worst


if __name__ == "__main__":
    sys.exit(main())
