"""What every stage script shares: argument parsing, params validation, logging.

Stages know nothing about Snakemake or DVC: both engines call the same command line.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from pathlib import Path

from cglib.config import load_or_exit
from cglib.tables import WriteError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="study params file (default: params.yaml)")
    p.add_argument("--log", default=None, help="also write the log to this file")
    return p


def start(p: argparse.ArgumentParser, argv=None):
    """Parse args, validate params before any work (exit 2), set up logging → (args, params, log)."""
    args = p.parse_args(argv)
    params = load_or_exit(args.params)
    logger = logging.getLogger(Path(sys.argv[0]).stem)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(message)s")
    handlers = [logging.StreamHandler(sys.stderr)]
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    global _logger
    _logger = logger

    def log_crash(kind, value, tb):  # a crash's traceback goes to the stage's log file too
        if isinstance(value, WriteError):  # a full disk is not a bug: one line naming the file
            logger.error(f"error: {value}")
            return
        logger.error("".join(traceback.format_exception(kind, value, tb)).rstrip())

    sys.excepthook = log_crash
    return args, params, logger.info


_logger: logging.Logger | None = None


def study_dir(params: dict) -> Path:
    """results/<study>: the folder every output of a study lives in (the engines' and the stages'
    default), so that studies of other names never overwrite each other."""
    return Path("results") / params["study"]


def fail(message: str, code: int = 1):
    """One line `error: …` on stderr and in the stage's log, then exit `code`."""
    if _logger is not None and _logger.handlers:
        _logger.error(f"error: {message}")
    else:
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


REBUILD = " (rm {path}; then snakemake --cores all, or dvc repro)"  # a hint for read_table


def read_table(path, made_by: str, hint: str = ""):
    """A Parquet input of a stage; a damaged or missing one is a one-line error naming it and
    `made_by`, the stage that rebuilds it (plus `hint`, where {path} is the file: REBUILD)."""
    from cglib.tables import DamagedFile, read_parquet

    try:
        return read_parquet(path, made_by)
    except DamagedFile as err:
        fail(f"{err}{hint.format(path=path)}")


def load_training_data(path, train_params: dict):
    """For stages that train: torch threads and device from the train section (a CUDA job
    claims its card here, cglib.gpu), then the prepared data on that device (a one-line error
    naming the file if it is missing or damaged, or if the device cannot be had)."""
    import torch  # lazy: stages that only read tables need no torch

    from cglib import gpu
    from cglib.data import DataError, load_prepared
    from cglib.models import pick_device

    if train_params["threads"]:
        torch.set_num_threads(train_params["threads"])
    say = _logger.info if _logger is not None else print
    try:
        device = pick_device(train_params["device"], log=say)
    except RuntimeError as err:  # gpu.CardsBusy (no free card) is one
        fail(str(err).splitlines()[0])
    gpu.configure(train_params, device)  # TF32 and deterministic kernels, on CUDA only
    try:
        return load_prepared(path, device), device
    except DataError as err:
        fail(str(err))


def check_model_on(data: dict, model: dict, key: str = "model", winsorized_at: str | None = None) -> None:
    """A torchvision or import model checked on the loaded data, as validation checks it where it
    can (cglib.model_sources.check_model; here on the CPU where the meta device cannot build it):
    one line naming the key, exit 2, before any training."""
    from cglib import model_sources

    if model["name"] not in model_sources.SOURCES:
        return
    try:
        model_sources.check_model(key, model, tuple(data["input_shape"]), data["num_classes"], winsorized_at,
                                  cpu_fallback=True)
    except model_sources.ModelError as err:
        fail(str(err), code=2)


# ---------------------------------------------------------------------------- environment

LOCK_PATH = Path(__file__).resolve().parent.parent / "requirements.lock"  # `make lock` writes it


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Jinja2 = jinja2, ruamel.yaml = ruamel-yaml


def read_lock(path=LOCK_PATH) -> dict[str, str]:
    """requirements.lock's pins: canonical name → version (`name==version` lines; comments and
    blank lines skipped). A line of another form is a one-line error naming the file and line."""
    pins = {}
    for no, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or ";" in line or " @ " in line:
            raise ValueError(f"{path}:{no}: expected name==version, got {line!r}")
        pins[_canonical(name.strip())] = version.strip()
    return pins


def environment(path=LOCK_PATH) -> dict[str, str]:
    """Provenance of the Python environment for the report: every installed distribution with
    its version (the resolved set), and how it compares with requirements.lock (the versions
    `make` installs): differing, missing and unpinned distributions by name."""
    import importlib.metadata

    installed = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            installed[_canonical(name)] = dist.version
    own = _canonical("coherent-gradients")  # this checkout, installed editable: not pinned
    listed = ", ".join(f"{n} {v}" for n, v in sorted(installed.items()))
    try:
        pins = read_lock(path)
    except FileNotFoundError:
        return {"requirements.lock": f"{path}: not found (installed outside this checkout)",
                "installed packages": listed}
    except ValueError as err:
        return {"requirements.lock": str(err), "installed packages": listed}
    differ = [f"{n} {installed[n]} (lock {v})" for n, v in sorted(pins.items())
              if n in installed and installed[n] != v]
    missing = [n for n in sorted(pins) if n not in installed]
    extra = [n for n in sorted(installed) if n not in pins and n != own]
    if not (differ or missing or extra):
        state = f"every installed distribution as pinned ({len(pins)} pins)"
    else:
        state = "; ".join(part for part in (
            differ and "differ: " + ", ".join(differ),
            missing and "not installed: " + ", ".join(missing),
            extra and "not in the lock: " + ", ".join(extra)) if part)
    return {"requirements.lock": state, "installed packages": listed}


# ---------------------------------------------------------------------------- DVC metrics

SCORECARD = "scorecard.json"  # the report stage's DVC metrics file (dvc.yaml, rules/report.smk)
# findings verdicts → short keys: `dvc metrics show` prints one column per key, and every
# key is always written (0 when absent) so the columns stay the same between experiments
VERDICT_KEYS = {"holds": "holds", "does not hold": "fails", "inconclusive": "inconclusive",
                "not measurable": "unmeasurable", "not measured": "unmeasured"}


def scorecard(findings: dict, status) -> dict:
    """The study in a few numbers for `dvc metrics show` / `dvc metrics diff` (one line of at
    most 120 columns): runs finished and diverged, then how many claims of findings.json
    ({claim id: {..., "verdict": ...}}) have each verdict. The per-claim verdicts, values and
    intervals stay in findings.json, the per-run numbers in summary.json."""
    status = list(status)
    out = {"runs": sum(s == "ok" for s in status), "diverged": sum(s != "ok" for s in status)}
    out.update(dict.fromkeys(VERDICT_KEYS.values(), 0))
    for cid, claim in findings.items():
        verdict = claim.get("verdict") if isinstance(claim, dict) else None
        if verdict not in VERDICT_KEYS:
            raise ValueError(f"findings.json: {cid}: verdict {verdict!r} is not one of {', '.join(VERDICT_KEYS)}")
        out[VERDICT_KEYS[verdict]] += 1
    return out
