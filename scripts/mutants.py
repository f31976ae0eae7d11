"""Mutation testing of one module: `make mutants M=cglib/robust.py`.

Cosmic Ray 8 makes the mutants (one small change each: a comparison at its boundary, an operator,
a number, a boolean, a loop that runs zero times) and runs, for each, only the tests that
tests/mutation_map.yaml lists for the module. A mutant the tests still pass on is a survivor:
either a missing test or an equivalent mutant, recorded with its reason in
tests/mutants_equivalent.txt so that the next run shows only new survivors.

Cosmic Ray writes each mutant to the file on disk, so it works in a copy of the checkout (a
temporary directory, first on PYTHONPATH): the checkout itself, and whoever else is using it,
never sees a mutated module.

    python scripts/mutants.py cglib/robust.py [--root DIR] [--out results/mutants] [--timeout 120]

Prints the score and every survivor as file:line, writes the same to <out>/<module>.txt; exit 1
when a survivor is left, 2 when the mapped tests fail before any mutation.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

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


def run(module: str, root: Path, out: Path, timeout: float, mapping: Path, equivalent: Path) -> int:
    tests = mapped_tests(mapping, module)
    equivalents = read_equivalents(equivalent)
    source = (root / module).read_text().splitlines()
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        work = Path(tmp) / "tree"
        copy_tree(root, work)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   PYTHONDONTWRITEBYTECODE="1")
        pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", *tests]
        base = subprocess.run(pytest, cwd=work, env=env, capture_output=True, text=True)
        if base.returncode != 0:
            print(base.stdout[-3000:], base.stderr[-2000:], sep="\n")
            print(f"mutants: the mapped tests of {module} fail before any mutation ({' '.join(tests)})")
            return 2
        config = work / "cosmic-ray.toml"
        config.write_text(
            "[cosmic-ray]\n"
            f"module-path = {json.dumps(module)}\ntimeout = {timeout}\nexcluded-modules = []\n"
            f"test-command = {json.dumps(' '.join(map(quote, pytest)))}\n"
            "[cosmic-ray.distributor]\nname = \"local\"\n")
        results = mutate(work, env, config)
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
    return 1 if survivors else 0


def mutate(work: Path, env: dict, config: Path) -> list[tuple[str, int, int, str]]:
    """Cosmic Ray's session in the copy: every mutant of KEEP's operators, each tested by the
    config's test command; (operator, line, column, test outcome) of each."""
    from cosmic_ray import commands, modules
    from cosmic_ray.config import load_config
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    cfg, here, environ = load_config(str(config)), os.getcwd(), dict(os.environ)
    os.chdir(work)  # Cosmic Ray mutates module-path relative to the working directory
    os.environ.update(env)  # and its test command inherits this process's environment
    try:
        with use_db(str(work / "session.sqlite"), mode=WorkDB.Mode.create) as db:
            commands.init(modules.find_modules([Path(cfg["module-path"])]), db, cfg.operators_config)
            for item in list(db.pending_work_items):
                if item.mutations[0].operator_name not in KEEP:
                    db.set_result(item.job_id, WorkResult(output="not one of KEEP", worker_outcome=WorkerOutcome.SKIPPED))
            commands.execute(db, cfg)
            return [(m.operator_name.removeprefix("core/"), m.start_pos[0], m.start_pos[1], result.test_outcome.value)
                    for item, result in db.completed_work_items if result.worker_outcome != WorkerOutcome.SKIPPED
                    for m in item.mutations[:1]]
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)


def quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w./:=@+-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a module of the checkout, e.g. cglib/robust.py")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    parser.add_argument("--out", type=Path, help="where the report goes (default: <root>/results/mutants)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    return run(args.module, root, args.out or root / "results" / "mutants", args.timeout,
               root / "tests" / "mutation_map.yaml", root / "tests" / "mutants_equivalent.txt")


if __name__ == "__main__":
    sys.exit(main())
