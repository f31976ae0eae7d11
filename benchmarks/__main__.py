"""Run the benchmarks: ``python -m benchmarks [--quick] [--only SUBSTRING] [--threads N]``.

Every module ``benchmarks/bench_*.py`` (sorted by name) provides ``run(quick: bool) ->
list[dict]``; each row has ``name``, ``ratio`` (fast / reference op time), ``target`` (float or
None), ``fast_ms``, ``reference_ms``, ``baseline`` (text naming the naive baseline),
``baseline_ratio`` (naive / reference op time, or None) and ``note``. Ratios are measured
within one run, so they are comparable across machines; absolute times are not.

Each module runs in a fresh Python process (same interpreter, same flags): one module's heap,
caches and compiled kernels must not change another's timings (the m-coherence benchmarks
leave hundreds of MB of freed blocks behind, which made the robust-step times 30% slower).

Prints one table and writes ``results/bench.json`` atomically. Rows already in that file whose
names were not re-measured (e.g. with ``--only``) are kept; the header fields describe this run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

import benchmarks

ROW_KEYS = ("name", "ratio", "target", "fast_ms", "reference_ms", "baseline", "baseline_ratio",
            "note")


def discover(only: str | None) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    return [n for n in names if only is None or only in n]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(v, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if v is None else format(v, spec)


def format_table(rows: list[dict], header: str) -> str:
    lines = [header,
             f"{'name':<22} {'ratio':>8} {'target':>7} {'ok':>3} {'fast ms':>9} {'ref ms':>9} "
             f"{'naive/ref':>9}  baseline; note"]
    for r in rows:
        ok = "-" if r["target"] is None else ("yes" if r["ratio"] <= r["target"] else "NO")
        lines.append(
            f"{r['name']:<22} {_fmt(r['ratio'], '8.2f')} {_fmt(r['target'], '7.2f')} {ok:>3} "
            f"{_fmt(r['fast_ms'], '9.2f')} {_fmt(r['reference_ms'], '9.2f')} "
            f"{_fmt(r['baseline_ratio'], '9.1f')}  {r['baseline']}; {r['note']}")
    return "\n".join(lines)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run_isolated(module: str, quick: bool, threads: int | None) -> list[dict]:
    """``benchmarks.<module>.run(quick)`` in a child process; its rows come back as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "benchmarks", "--worker", module, "--out", str(out)]
        cmd += (["--quick"] if quick else []) + ([f"--threads={threads}"] if threads else [])
        done = subprocess.run(cmd)
        if done.returncode:
            raise RuntimeError(f"benchmark module {module} exited with {done.returncode}")
        return json.loads(out.read_text())


def worker(module: str, quick: bool, out: Path) -> int:
    rows = importlib.import_module(f"benchmarks.{module}").run(quick=quick)
    out.write_text(json.dumps(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    ap.add_argument("--only", metavar="SUBSTRING", help="run only bench_* modules whose name "
                    "contains SUBSTRING")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: as configured)")
    ap.add_argument("--out", type=Path, default=Path("results/bench.json"))
    ap.add_argument("--worker", metavar="MODULE", help=argparse.SUPPRESS)  # see run_isolated
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker, args.quick, args.out)

    modules = discover(args.only)
    if not modules:
        print(f"no benchmark module matches {args.only!r}", file=sys.stderr)
        return 2
    rows, failed = [], []
    for name in modules:
        try:
            new = run_isolated(name, args.quick, args.threads)
        except Exception:  # noqa: BLE001 - report, keep the other benchmarks
            traceback.print_exc()
            failed.append(name)
            continue
        for r in new:
            missing = set(ROW_KEYS) - r.keys()
            if missing:
                raise KeyError(f"{name}: row {r.get('name')!r} lacks {sorted(missing)}")
            rows.append({k: r[k] for k in ROW_KEYS})

    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} CPUs)"}
    print(format_table(rows, f"torch {meta['torch']} | threads {meta['threads']} | "
                             f"{meta['machine']}" + (" | quick" if args.quick else "")))
    results = {}
    if args.out.exists():
        try:
            results = json.loads(args.out.read_text()).get("results", {})
        except (ValueError, AttributeError):
            results = {}
    results.update({r["name"]: r for r in rows})
    write_json_atomic(args.out, {**meta, "results": results})
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
