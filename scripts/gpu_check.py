"""make gpu-check: train the smoke study on CUDA and on the CPU, and compare the results.

This is for someone with an NVIDIA GPU; the test suite cannot do it. Each run is a copy of the
workflow in its own temporary folder: `snakemake` with studies/smoke.yaml and train.device set
to the CPU or to CUDA, up to results/metrics.parquet. CUDA runs twice, to see whether a rerun
gives the same bytes. The comparison, one row per (run, step, split, metric, layer, null):

  step 0 (the same initial weights, so only rounding differs):
      accuracy        |Δ| ≤ 2/300 (two of the 300 training examples: a near-tie may flip)
      other metrics   |Δ| ≤ 1e-4 · max(1, |cpu|)   (loss, m-coherence, α, f^p / f^c, counts)
  last step of each run (up to 200 SGD steps amplify rounding differences):
      accuracy on train, pristine, corrupt, test of the grid runs (each ≥ 100 examples)
                      |Δ| ≤ 0.03 (3 points: 9 of the 300 training examples)
      loss, same rows |Δ| ≤ 0.1 · max(0.1, |cpu|)
  (The E5 / E6 rows of small groups are left out of the last-step checks: one example is
  several points there.)

It exits 0 when every row is inside its tolerance, 1 otherwise. It also exits 1, with one line,
on a machine without CUDA. The CUDA rerun line is information (README, GPUs section), not a
verdict. --keep DIR keeps the folders.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ("Snakefile", "rules", "stages", "schemas", "report", "profiles", "envs")  # cglib is installed
KEY = ["run", "experiment", "step", "split", "metric", "layer", "null"]


def run_study(folder: Path, device: str, cores: int) -> Path:
    """The smoke study on `device` in `folder`; returns its results folder."""
    folder.mkdir(parents=True)
    for name in WORKFLOW:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, folder / name)
    if (ROOT / "data" / "raw").is_dir():  # a dataset placed in the checkout rather than by Debian
        (folder / "data").mkdir()
        (folder / "data" / "raw").symlink_to(ROOT / "data" / "raw")
    text = (ROOT / "studies" / "smoke.yaml").read_text()
    lines = [f"  device: {device}" if line.startswith("  device:") else line for line in text.splitlines()]
    (folder / "study.yaml").write_text("\n".join(lines) + "\n")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(bin_dir / "snakemake"), "results/smoke/metrics.parquet", "results/smoke/runs.parquet", "--cores", str(cores),
           "--configfile", "study.yaml"]  # last: --configfile takes every word after it
    print(f"gpu-check: the smoke study on {device} in {folder}", flush=True)
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"gpu-check: snakemake failed on {device} (logs in {folder}/results/smoke/logs):\n{proc.stderr[-3000:]}")
    return folder / "results" / "smoke"


def devices_used(results: Path) -> set[str]:
    return {json.loads(p.read_text())["device"]["type"] for p in (results / "runs").glob("*/run.json")}


def compare(cpu: Path, cuda: Path) -> bool:
    import numpy as np
    import pandas as pd

    a, b = (pd.read_parquet(r / "metrics.parquet") for r in (cpu, cuda))
    both = a.merge(b, on=KEY, suffixes=("_cpu", "_cuda"), how="outer", indicator=True)
    if not (both["_merge"] == "both").all():
        print(f"  {int((both['_merge'] != 'both').sum())} rows are in one run's table only")
        return False
    n_train = 300  # studies/smoke.yaml, data.n_train
    diff = (both["value_cuda"] - both["value_cpu"]).abs()
    last = both["step"] == both.groupby("run")["step"].transform("max")
    big = both["split"].isin(["train", "pristine", "corrupt", "test"]) & ~both["experiment"].isin(["E5", "E6"])
    acc = both["metric"] == "accuracy"
    checks = [
        ("step 0, accuracy", (both["step"] == 0) & acc, 2 / n_train + 1e-9),
        ("step 0, other metrics", (both["step"] == 0) & ~acc, 1e-4 * np.maximum(1, both["value_cpu"].abs())),
        ("last step, accuracy", last & big & acc, 0.03),
        ("last step, loss", last & big & (both["metric"] == "loss"), 0.1 * np.maximum(0.1, both["value_cpu"].abs())),
    ]
    ok = True
    print(f"  {'rows':<24} {'n':>5} {'max |Δ|':>10} {'worst Δ/tol':>11}  verdict")
    for name, rows, tol in checks:
        tol = pd.Series(tol, index=both.index)[rows] if not np.isscalar(tol) else tol
        d = diff[rows]
        ratio = float((d / tol).max()) if len(d) else 0.0
        ok &= ratio <= 1
        print(f"  {name:<24} {len(d):>5} {d.max() if len(d) else 0:>10.2e} {ratio:>11.2f}  "
              f"{'ok' if ratio <= 1 else 'OUT OF TOLERANCE'}")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the CUDA device to check (default: cuda, the first free card)")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores for each study (default 2)")
    p.add_argument("--keep", default=None, help="keep the study folders under this folder")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine "
              "with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 1
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        cpu = run_study(base / "cpu", "cpu", args.cores)
        cuda = run_study(base / "cuda", args.device, args.cores)
        again = run_study(base / "cuda-again", args.device, args.cores)
        if devices_used(cuda) != {"cuda"}:
            print(f"gpu-check: the CUDA study trained on {sorted(devices_used(cuda))}", file=sys.stderr)
            return 1
        print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
              "CUDA vs CPU:")
        ok = compare(cpu, cuda)
        same = (cuda / "metrics.parquet").read_bytes() == (again / "metrics.parquet").read_bytes()
        print(f"gpu-check: a CUDA rerun gives {'the same bytes' if same else 'different bytes'} "
              "(metrics.parquet)")
        print(f"gpu-check: {'passed' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
